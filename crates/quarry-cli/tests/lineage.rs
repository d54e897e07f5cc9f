//! OpenLineage events of runs through the real `quarry` binary: a local
//! HTTP collector receives START and COMPLETE for a good run, START and FAIL
//! for a failing one; each event is checked with the openlineage-python
//! client's classes (QUARRY_PYTHON, set by scripts/test.sh); a dead
//! collector does not slow a run down.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Env;
use common::cli::run_within;
use serde_json::Value;

/// A collector on a loopback port: answers 200 to every POST and keeps the
/// bodies.
struct Collector {
    url: String,
    events: Arc<Mutex<Vec<Value>>>,
}

impl Collector {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/api/v1/lineage", listener.local_addr().unwrap());
        let events = Arc::new(Mutex::new(Vec::new()));
        let kept = events.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let kept = kept.clone();
                std::thread::spawn(move || serve(conn, &kept));
            }
        });
        Self { url, events }
    }

    fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }
}

/// Reads HTTP/1.1 requests from one connection (kept alive) until it closes.
fn serve(conn: std::net::TcpStream, kept: &Mutex<Vec<Value>>) {
    let mut writer = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        assert!(line.starts_with("POST /api/v1/lineage "), "{line}");
        let mut length = 0;
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).unwrap();
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((k, v)) = header.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        kept.lock()
            .unwrap()
            .push(serde_json::from_slice(&body).unwrap());
        writer
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .unwrap();
    }
}

fn run(env: &Env, source: &str, vars: &[(&str, &str)]) -> std::process::Output {
    run_within(
        env.dir.path(),
        &["run", "-q", "--source", source],
        vars,
        Duration::from_secs(120),
    )
}

/// Checks `events` with the openlineage-python client's classes.
fn check_with_python_client(events: &[Value]) {
    let python = quarry_testkit::standin("QUARRY_PYTHON");
    let file = tempfile::NamedTempFile::new().unwrap();
    let lines: Vec<String> = events.iter().map(|e| e.to_string()).collect();
    std::fs::write(file.path(), lines.join("\n")).unwrap();
    let out = std::process::Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../scripts/lineage_events.py"
        ))
        .arg(file.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        events.len().to_string()
    );
}

fn facet<'a>(dataset: &'a Value, kind: &str, name: &str) -> &'a Value {
    &dataset[kind][name]
}

fn output<'a>(event: &'a Value, table: &str) -> &'a Value {
    event["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == table)
        .unwrap_or_else(|| panic!("no output {table} in {event}"))
}

#[test]
#[ignore = "needs openlineage-python (QUARRY_PYTHON): scripts/test.sh runs it"]
fn runs_emit_start_then_complete_or_fail_to_an_http_collector() {
    let collector = Collector::start();
    let vars = [
        ("QUARRY_LINEAGE__TRANSPORT", "http"),
        ("QUARRY_LINEAGE__URL", collector.url.as_str()),
    ];
    let env = Env::new();
    let sample = env.copy_fixture();
    let out = run(&env, &sample.display().to_string(), &vars);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = collector.events();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["eventType"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["START", "COMPLETE"], "{events:?}");
    let (start, complete) = (&events[0], &events[1]);
    assert_eq!(start["run"]["runId"], complete["run"]["runId"]);
    assert_eq!(complete["job"]["namespace"], "quarry");
    assert_eq!(complete["job"]["name"], "trades_pipeline");
    // The input: the file, its columns and the rows read.
    let input = &complete["inputs"][0];
    assert_eq!(input["namespace"], "file");
    assert_eq!(
        input["name"],
        sample.canonicalize().unwrap().display().to_string()
    );
    assert_eq!(
        facet(input, "inputFacets", "dataQualityMetrics")["rowCount"],
        800
    );
    let columns: Vec<&str> = facet(input, "facets", "schema")["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(&columns[..3], ["timestamp", "user_id", "client_type"]);
    // The outputs: rows written per table, as the warehouse holds them.
    let db = env.db.canonicalize().unwrap();
    for (table, sql) in [
        ("trades", "SELECT count(*) FROM trades"),
        ("trades_rejected", "SELECT count(*) FROM trades_rejected"),
        (
            "agg_trades_weekly",
            "SELECT count(*) FROM agg_trades_weekly",
        ),
    ] {
        let o = output(complete, table);
        assert_eq!(o["namespace"], format!("sqlite://{}", db.display()));
        assert_eq!(
            facet(o, "outputFacets", "outputStatistics")["rowCount"],
            env.count(sql),
            "{table}"
        );
    }
    let assertions = &facet(
        output(complete, "trades"),
        "facets",
        "dataQualityAssertions",
    )["assertions"];
    assert!(!assertions.as_array().unwrap().is_empty(), "{complete}");

    // A run that fails (a required column missing): START, then FAIL with
    // the error.
    let bad = env.write("bad.csv", "timestamp,user_id\n2024-01-01 00:00:00,1\n");
    let out = run(&env, &bad.display().to_string(), &vars);
    assert!(!out.status.success());
    let events = collector.events();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["eventType"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["START", "COMPLETE", "START", "FAIL"]);
    let message = events[3]["run"]["facets"]["errorMessage"]["message"]
        .as_str()
        .unwrap();
    assert!(message.contains("client_type"), "{message}");
    assert_eq!(events[2]["run"]["runId"], events[3]["run"]["runId"]);

    check_with_python_client(&events);
}

#[test]
fn events_go_to_an_ndjson_file() {
    let env = Env::new();
    let sample = env.copy_fixture();
    let path = env.dir.path().join("lineage.ndjson");
    let vars = [
        ("QUARRY_LINEAGE__TRANSPORT", "file"),
        ("QUARRY_LINEAGE__PATH", path.to_str().unwrap()),
    ];
    for _ in 0..2 {
        let out = run(&env, &sample.display().to_string(), &vars);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = std::fs::read_to_string(&path).unwrap();
    let kinds: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["eventType"].to_string())
        .collect();
    assert_eq!(
        kinds,
        ["\"START\"", "\"COMPLETE\"", "\"START\"", "\"COMPLETE\""]
    );
}

#[test]
fn a_dead_collector_leaves_the_run_time_unchanged() {
    // A port that refuses connections, and one that accepts them and never
    // answers.
    let refused = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let env = Env::new();
    let sample = env.copy_fixture();
    let source = sample.display().to_string();
    let timed = |vars: &[(&str, &str)]| {
        let t = Instant::now();
        let out = run(&env, &source, vars);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        t.elapsed()
    };
    let refused_url = format!("http://127.0.0.1:{refused}/api/v1/lineage");
    let silent_url = format!("http://127.0.0.1:{silent_port}/api/v1/lineage");
    // Side by side, alternating: off, refused, silent, three times each.
    let mut times = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..3 {
        times[0].push(timed(&[]));
        for (i, url) in [(1, &refused_url), (2, &silent_url)] {
            times[i].push(timed(&[
                ("QUARRY_LINEAGE__TRANSPORT", "http"),
                ("QUARRY_LINEAGE__URL", url.as_str()),
            ]));
        }
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[1]
    };
    let off = median(&mut times[0]);
    // Refused: nothing waits. Silent: at shutdown the queued events get a
    // bounded wait (2 s), the only cost a collector that hangs can add, and
    // only to the process's exit.
    assert!(
        median(&mut times[1]) < off + Duration::from_millis(500),
        "off {off:?}, refused {:?}",
        times[1]
    );
    assert!(
        median(&mut times[2]) < off + Duration::from_secs(3),
        "off {off:?}, silent {:?}",
        times[2]
    );
    drop(silent);
}
