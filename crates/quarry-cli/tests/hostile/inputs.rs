//! Sources a run must refuse or skip: links out of the data roots (and a
//! forged ticket for a file there), FIFOs and devices, files of unknown or
//! unsupported compressed formats, and user ids that would be spreadsheet formulas.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::cli::{fails, one_line_error, run_ok, run_within};
use crate::common::procs::Stack;
use crate::common::{Env, HEADER, fixtures, user_dir};

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_out_of_the_data_roots_are_refused_and_nothing_is_quoted() {
    use std::os::unix::fs::symlink;
    let env = Env::new();
    let d = env.data.join("d");
    std::fs::create_dir(&d).unwrap();
    std::fs::copy(fixtures().join("trades_sample.csv"), d.join("good.csv")).unwrap();
    let stack = Stack::start(&env, &[]);
    let run = |source: &Path| {
        run_within(
            env.dir.path(),
            &[
                "run",
                "-q",
                "--transformer",
                &stack.transformer.url(),
                "--loader",
                &stack.loader.url(),
                "--source",
                source.to_str().unwrap(),
            ],
            &[],
            Duration::from_secs(60),
        )
    };
    // A file link, then a directory link, each pointing out of the root.
    symlink("/etc/passwd", d.join("passwd.csv")).unwrap();
    let err = one_line_error(
        &run(&d),
        &["passwd.csv", "outside the extractor's data roots"],
    );
    assert!(!err.contains("root:"), "{err}");
    std::fs::remove_file(d.join("passwd.csv")).unwrap();
    symlink("/etc", d.join("etc")).unwrap();
    let err = one_line_error(&run(&d), &["etc", "outside the extractor's data roots"]);
    assert!(!err.contains("root:"), "{err}");
    std::fs::remove_file(d.join("etc")).unwrap();
    // Without them the directory is read.
    let out = run(&d);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A forged ticket for a file outside the roots: refused, content unsaid.
    let channel = quarry_core::grpc::connect("extractor", &stack.extractor.url())
        .await
        .unwrap();
    let mut flight = arrow_flight::FlightClient::new(channel);
    let ticket = quarry_proto::ExtractTicket {
        file: "/etc/passwd".into(),
        format: quarry_proto::SourceFormat::Csv as i32,
        csv: None,
        batch_rows: 0,
    };
    let e = match flight
        .do_get(arrow_flight::Ticket::new(prost::Message::encode_to_vec(
            &ticket,
        )))
        .await
    {
        Ok(mut stream) => {
            use futures::StreamExt;
            stream.next().await.unwrap().unwrap_err().to_string()
        }
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("PermissionDenied") || e.contains("permission"),
        "{e}"
    );
    assert!(e.contains("outside") && !e.contains("root:"), "{e}");
    stack.stop();
}

#[cfg(unix)]
#[test]
fn fifos_and_devices_are_refused_at_once() {
    let dir = user_dir();
    let fifo = dir.path().join("data/f.csv");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    fails(
        dir.path(),
        &["run", "-q", "--source", "data/f.csv"],
        &["f.csv is a FIFO", "regular files only"],
    );
    fails(
        dir.path(),
        &["run", "-q", "--source", "/dev/zero", "--format", "csv"],
        &["/dev/zero is a device"],
    );
    // A FIFO in a directory source is skipped and reported.
    run_ok(dir.path(), &["run", "-q", "--source", "data"]);
    let report = std::fs::read_to_string(dir.path().join("output/quality_report.json")).unwrap();
    let q: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(q["skipped_files"][0]["reason"], "a FIFO", "{q}");
}

#[test]
fn directory_sources_skip_and_report_unknown_files() {
    let dir = user_dir();
    std::fs::write(dir.path().join("data/notes.txt"), "not trades\n").unwrap();
    std::fs::write(
        dir.path().join("data/old.tar.xz"),
        [0xfd, b'7', b'z', b'X', b'Z', 0],
    )
    .unwrap();
    std::fs::write(dir.path().join("data/dump.gz"), [0x1f, 0x8b, 8, 0]).unwrap();
    run_ok(dir.path(), &["run", "-q", "--source", "data"]);
    let q: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("output/quality_report.json")).unwrap(),
    )
    .unwrap();
    let skipped: Vec<String> = q["skipped_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let file = s["file"].as_str().unwrap();
            let name = Path::new(file).file_name().unwrap().to_str().unwrap();
            format!("{name}: {}", s["reason"].as_str().unwrap())
        })
        .collect();
    assert_eq!(
        skipped,
        [
            "dump.gz: gzip-compressed, but the name does not say the format inside (e.g. trades.csv.gz)",
            "notes.txt: unknown extension .txt",
            "old.tar.xz: compressed input (.xz) is not supported: Quarry reads gzip, zstd and bzip2"
        ]
    );
    assert_eq!(q["rows_in"], 800);
    // Named directly, a compressed file Quarry cannot read is refused with the reason.
    fails(
        dir.path(),
        &["run", "-q", "--source", "data/old.tar.xz"],
        &["compressed input (.xz) is not supported"],
    );
}

#[test]
fn top_lists_cannot_carry_spreadsheet_formulas() {
    let dir = user_dir();
    let mut rows = String::from(HEADER);
    for (user, qty) in [("=HYPERLINK(\"x\")", 900), ("+1", 800), ("@SUM(A1)", 700)] {
        rows.push_str(&format!(
            "2024-01-01 10:00:00,\"{}\",bronze,A,sell,{qty},1\n",
            user.replace('"', "\"\"")
        ));
    }
    std::fs::write(dir.path().join("data/f.csv"), rows).unwrap();
    run_ok(dir.path(), &["run", "-q", "--source", "data/f.csv"]);
    let csv = std::fs::read_to_string(dir.path().join("output/top_bronze_by_volume.csv")).unwrap();
    assert_eq!(
        csv,
        "user_id,total_volume\n\"'=HYPERLINK(\"\"x\"\")\",900\n'+1,800\n'@SUM(A1),700\n"
    );
}
