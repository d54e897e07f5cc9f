//! The archiver end to end: the reference sample through the pipeline, old
//! partitions archived through the running service (gRPC) to a local
//! directory, S3 (the moto server scripts/test.sh starts) or from ClickHouse,
//! read back over Flight DoGet and as plain Parquet, and restored.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use arrow_flight::Ticket;
use arrow_flight::flight_service_client::FlightServiceClient;
use common::Env;
use futures::TryStreamExt;
use prost::Message;
use quarry_core::config::WarehouseKind;
use quarry_core::{Config, Table};
use quarry_proto::archiver_service_client::ArchiverServiceClient;
use quarry_proto::{ArchiveRequest, ColdTicket, ListPartitionsRequest, RestoreRequest};
use quarry_testkit::rows_text;
use quarry_warehouse::Warehouse;

/// Every hot row of `trades`, as sorted text, by partition.
async fn hot(wh: &dyn Warehouse) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for p in wh.list_partitions(Table::Trades).await.unwrap() {
        let mut rows = rows_text(
            &wh.read_partition(Table::Trades, &p.partition)
                .await
                .unwrap(),
        );
        rows.sort();
        out.insert(p.partition, rows);
    }
    out
}

/// Starts the archiver service of `config` on a loopback port; returns its URL.
async fn start_archiver(config: &Config) -> (String, tokio::sync::oneshot::Sender<()>) {
    let archiver = quarry_archiver::Archiver::open(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(archiver.serve(listener, async {
        let _ = stopped.await;
    }));
    (url, stop)
}

/// The sample through the pipeline; then, as of 2023-03-15 with 30 hot days,
/// the 43 days before 2023-02-13 move to `config.archiver.cold_root`; hot plus
/// cold hold exactly the original rows; restore brings the warehouse back.
/// Returns the rows archived.
async fn round_trip(env: &Env) -> u64 {
    let src = env.copy_fixture();
    env.run(&src).await.unwrap();
    let wh = quarry_warehouse::open(&env.config.warehouse).unwrap();
    let before = hot(wh.as_ref()).await;
    assert_eq!(before.len(), 91);

    let (url, _stop) = start_archiver(&env.config).await;
    let mut c = ArchiverServiceClient::connect(url.clone()).await.unwrap();
    let req = |dry_run| ArchiveRequest {
        table: "trades".into(),
        as_of: "2023-03-15".into(),
        dry_run,
    };
    let dry = c.archive(req(true)).await.unwrap().into_inner();
    assert_eq!(dry.cutoff, "2023-02-13");
    assert_eq!(dry.moves.len(), 43);
    assert!(dry.moves.iter().all(|m| m.outcome == "would_archive"));
    assert_eq!(hot(wh.as_ref()).await, before, "a dry run moves nothing");

    let done = c.archive(req(false)).await.unwrap().into_inner();
    assert_eq!(done.moves.len(), 43);
    assert!(
        done.moves
            .iter()
            .all(|m| m.outcome == "archived" && m.files == 1 && m.bytes > 0),
        "{:?}",
        done.moves
    );
    let after = hot(wh.as_ref()).await;
    assert_eq!(after.len(), 48);
    assert!(after.keys().all(|p| p.as_str() >= "2023-02-13"));

    // Hot plus cold (read over Flight) is the original, partition by partition.
    let channel = quarry_core::grpc::connect("archiver", &url).await.unwrap();
    let mut flight = FlightServiceClient::new(channel);
    let mut union = after.clone();
    for m in &done.moves {
        let ticket = ColdTicket {
            table: "trades".into(),
            partition: m.partition.clone(),
        };
        let stream = flight
            .do_get(Ticket::new(ticket.encode_to_vec()))
            .await
            .unwrap()
            .into_inner();
        let batches: Vec<_> = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
            stream.map_err(arrow_flight::error::FlightError::from),
        )
        .try_collect()
        .await
        .unwrap();
        let mut rows = rows_text(&batches);
        rows.sort();
        assert_eq!(rows.len() as u64, m.rows);
        assert!(union.insert(m.partition.clone(), rows).is_none());
    }
    assert_eq!(union, before, "hot + cold = the original rows");

    let listed = c
        .list_partitions(ListPartitionsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .partitions;
    assert_eq!(listed.len(), 91);
    assert_eq!(listed.iter().filter(|p| p.cold_rows.is_some()).count(), 43);
    assert_eq!(listed.iter().filter(|p| p.hot_rows.is_some()).count(), 48);

    let restored = c
        .restore(RestoreRequest {
            table: "trades".into(),
            from: "2023-01-01".into(),
            to: "2023-02-12".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(restored.moves.len(), 43);
    assert_eq!(
        hot(wh.as_ref()).await,
        before,
        "restored to the pre-archive state"
    );
    wh.close().await.unwrap();
    done.moves.iter().map(|m| m.rows).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_and_a_local_directory() {
    let mut env = Env::new();
    env.config.archiver.cold_root = env.dir.path().join("cold").display().to_string();
    round_trip(&env).await;
    let files = cold_days(&env);
    assert_eq!(files.len(), 43, "one directory per archived day");
    assert!(files.iter().all(|f| f.starts_with("trade_date=2023-")));
}

/// The day directories of the cold tree of `trades`.
fn cold_days(env: &Env) -> Vec<String> {
    std::fs::read_dir(env.dir.path().join("cold/trades"))
        .unwrap()
        .map(|d| d.unwrap().file_name().into_string().unwrap())
        .collect()
}

/// The cold tree is plain Hive-layout Parquet any reader takes: pyarrow
/// (from the virtualenv scripts/test.sh provides) reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs pyarrow (QUARRY_PYTHON): scripts/test.sh runs it"]
async fn pyarrow_reads_the_cold_tree() {
    let python = quarry_testkit::standin("QUARRY_PYTHON");
    let mut env = Env::new();
    env.config.archiver.cold_root = env.dir.path().join("cold").display().to_string();
    let archived = round_trip(&env).await;
    let cold = env.dir.path().join("cold/trades");
    let script = "import sys, pyarrow.compute as pc, pyarrow.dataset as ds\n\
        t = ds.dataset(sys.argv[1], format='parquet', partitioning='hive').to_table()\n\
        print(t.num_rows, len(pc.unique(t['trade_date'])), t.schema.field('quantity').type)";
    let out = Command::new(python)
        .args(["-c", script])
        .arg(&cold)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8(out.stdout).unwrap();
    assert_eq!(s.trim(), format!("{archived} 43 decimal128(18, 8)"));
}

/// Against the moto S3 server scripts/test.sh starts (QUARRY_TEST_S3_ENDPOINT).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the S3 stand-in (moto): scripts/test.sh runs it"]
async fn sqlite_and_s3() {
    let endpoint = quarry_testkit::standin("QUARRY_TEST_S3_ENDPOINT");
    let bucket = format!("quarry-test-{}", std::process::id());
    let out = Command::new("curl")
        .args(["-sf", "-X", "PUT"])
        .arg(format!("{endpoint}/{bucket}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "creating bucket {bucket} at {endpoint} failed"
    );
    let mut env = Env::new();
    env.config.archiver.cold_root = format!("s3://{bucket}/cold");
    let s3 = &mut env.config.storage.s3;
    s3.endpoint = endpoint;
    s3.allow_http = true;
    s3.virtual_hosted_style = false;
    assert!(round_trip(&env).await > 0);
}

/// The same round trip with ClickHouse as the warehouse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the ClickHouse stand-in: scripts/test.sh runs it"]
async fn clickhouse_and_a_local_directory() {
    let url = quarry_testkit::standin("QUARRY_TEST_CLICKHOUSE_URL");
    let mut env = Env::new();
    env.config.warehouse.kind = WarehouseKind::Clickhouse;
    env.config.warehouse.clickhouse.url = url;
    env.config.warehouse.clickhouse.database = format!("quarry_archive_{}", std::process::id());
    env.config.archiver.cold_root = env.dir.path().join("cold").display().to_string();
    assert!(round_trip(&env).await > 0);
}

/// `quarry archive …` as a user runs it, in-process archiver, SQLite.
#[test]
fn the_archive_commands() {
    let dir = common::user_dir();
    let lineage = dir.path().join("lineage.ndjson");
    let quarry = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_quarry"))
            .env_remove("QUARRY_CONFIG")
            .env("QUARRY_LINEAGE__TRANSPORT", "file")
            .env("QUARRY_LINEAGE__PATH", &lineage)
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let ok = |args: &[&str]| {
        let (code, out, err) = quarry(args);
        assert_eq!(code, Some(0), "quarry {args:?}: {err}");
        out
    };
    // Nothing to archive yet: one line, and no database created.
    let (code, _, err) = quarry(&["archive", "list"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("agg_result.db does not exist"), "{err}");
    assert!(!dir.path().join("agg_result.db").exists());

    ok(&["run", "-q"]);
    let dry = ok(&["archive", "run", "--as-of", "2023-03-15", "--dry-run"]);
    assert!(
        dry.contains("partitions before 2023-02-13 are due"),
        "{dry}"
    );
    assert_eq!(dry.matches("would_archive").count(), 43, "{dry}");
    assert!(
        !dir.path().join("cold/trades").exists(),
        "a dry run writes nothing"
    );

    let run = ok(&["archive", "run", "--as-of", "2023-03-15"]);
    assert_eq!(run.matches("archived").count(), 43, "{run}");
    assert_eq!(
        std::fs::read_dir(dir.path().join("cold/trades"))
            .unwrap()
            .count(),
        43
    );
    let list = ok(&["archive", "list"]);
    assert!(list.contains("48 hot, 43 cold partitions"), "{list}");
    let status = ok(&["archive", "status", "--events", "5"]);
    assert!(
        status.contains("hot days: 30") && status.contains("archived"),
        "{status}"
    );

    let restore = ok(&[
        "archive",
        "restore",
        "--from",
        "2023-01-01",
        "--to",
        "2023-01-31",
    ]);
    assert_eq!(restore.matches("restored").count(), 31, "{restore}");
    let list = ok(&["archive", "list"]);
    assert!(list.contains("79 hot, 43 cold partitions"), "{list}");

    // Bad input: one clear line.
    let (code, _, err) = quarry(&["archive", "run", "--as-of", "15/03/2023"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("not a date like"), "{err}");
    let (code, _, err) = quarry(&["archive", "run", "--table", "agg_trades_weekly"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("is not archived"), "{err}");

    // Lineage: the run, the archive run and the restore each emitted START
    // and COMPLETE, the refused archive run START and FAIL; the dry run and
    // the arguments refused by the command line nothing.
    let events: Vec<serde_json::Value> = std::fs::read_to_string(&lineage)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seen: Vec<String> = events
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["job"]["name"].as_str().unwrap(),
                e["eventType"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            "trades_pipeline START",
            "trades_pipeline COMPLETE",
            "archive START",
            "archive COMPLETE",
            "restore START",
            "restore COMPLETE",
            "archive START",
            "archive FAIL",
        ]
    );
    let db = dir.path().join("agg_result.db").canonicalize().unwrap();
    let cold = dir.path().join("cold").canonicalize().unwrap();
    let (archived, restored) = (&events[3], &events[5]);
    assert_eq!(
        archived["inputs"][0]["namespace"],
        format!("sqlite://{}", db.display())
    );
    assert_eq!(archived["inputs"][0]["name"], "trades");
    assert_eq!(archived["outputs"][0]["namespace"], "file");
    assert_eq!(
        archived["outputs"][0]["name"],
        format!("{}/trades", cold.display())
    );
    let rows = |e: &serde_json::Value| {
        e["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"]
            .as_u64()
            .unwrap()
    };
    // The sample's trades before 2023-02-13, and those of January back.
    assert!(
        rows(archived) > rows(restored) && rows(restored) > 0,
        "{archived} {restored}"
    );
    assert_eq!(restored["outputs"][0]["name"], "trades");
    assert!(
        events[7]["run"]["facets"]["errorMessage"]["message"]
            .as_str()
            .unwrap()
            .contains("is not archived")
    );
}

/// Started as a service with `interval_secs`, the archiver moves what is due
/// on its own (as of today: every day of the 2023 sample) and says so in
/// its status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_archives_on_its_schedule() {
    let mut env = Env::new();
    env.config.archiver.cold_root = env.dir.path().join("cold").display().to_string();
    env.config.archiver.interval_secs = 1;
    let src = env.copy_fixture();
    env.run(&src).await.unwrap();
    let (url, _stop) = start_archiver(&env.config).await;
    let mut c = ArchiverServiceClient::connect(url).await.unwrap();
    // Every scheduled run reports in the status; the first moves all 91
    // days, and a later one (a second apart) may already have found
    // nothing more: wait until a run has happened, then count the moves.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        let s = c
            .status(quarry_proto::StatusRequest { events: 200 })
            .await
            .unwrap()
            .into_inner();
        if !s.last_run_at.is_empty() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "no scheduled run");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(
        ["archived 91", "nothing due"].contains(&status.last_run_result.as_str()),
        "{status:?}"
    );
    let archived = status
        .events
        .iter()
        .filter(|e| e.action == "archived")
        .count();
    assert_eq!(archived, 91, "{status:?}");
    let wh = quarry_warehouse::open(&env.config.warehouse).unwrap();
    assert!(wh.list_partitions(Table::Trades).await.unwrap().is_empty());
}

/// A run into a week whose other days are in the cold tier is refused before
/// anything changes, in one line naming the days and the restore command;
/// once they are restored, the same run recomputes the week from all its
/// days, as one run over the final data would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_week_with_archived_days_is_restored_before_it_is_recomputed() {
    let mut env = Env::new();
    env.config.archiver.cold_root = env.dir.path().join("cold").display().to_string();
    let src = env.copy_fixture();
    env.run(&src).await.unwrap();
    let (url, _stop) = start_archiver(&env.config).await;
    let mut c = ArchiverServiceClient::connect(url).await.unwrap();
    c.archive(ArchiveRequest {
        table: "trades".into(),
        as_of: "2023-03-15".into(),
        dry_run: false,
    })
    .await
    .unwrap();

    // A corrected delivery of Wednesday 2023-02-08, whose week is cold.
    let day = "2023-02-08 10:00:00,9001,bronze,AAPL,sell,2.5,100.25\n\
               2023-02-08 11:00:00,9001,bronze,AAPL,buy,1,99.5\n";
    let late = env.write("late.csv", format!("{}{day}", common::HEADER));
    let before = env.snapshot();
    let e = env.run(&late).await.unwrap_err();
    let msg = e.message();
    assert!(
        msg.contains("cold tier")
            && msg.contains("2023-02-06")
            && msg.contains(
                "quarry archive restore --table trades --from 2023-02-06 --to 2023-02-12"
            )
            && !msg.contains('\n'),
        "{msg}"
    );
    assert_eq!(
        env.snapshot(),
        before,
        "a refused run changed the warehouse"
    );

    c.restore(RestoreRequest {
        table: "trades".into(),
        from: "2023-02-06".into(),
        to: "2023-02-12".into(),
    })
    .await
    .unwrap();
    env.run(&late).await.unwrap();

    // The same data as one run: the sample with that day's rows replaced.
    let whole = Env::new();
    let sample = std::fs::read_to_string(&src).unwrap();
    let mut final_data: String = sample
        .lines()
        .filter(|l| {
            let ts = l.split(',').next().unwrap_or_default().trim();
            let utc_day = quarry_transform::timestamp::parse(ts.as_bytes())
                .map(quarry_transform::timestamp::trade_date);
            utc_day != quarry_core::dates::parse_date("2023-02-08")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    final_data.push_str(day);
    whole
        .run(&whole.write("trades.csv", final_data))
        .await
        .unwrap();
    let week = |e: &Env| {
        let c = e.conn();
        let mut st = c
            .prepare(
                "SELECT client_type, user_id, symbol, quote(total_volume), quote(total_pnl), trade_count
                 FROM agg_trades_weekly WHERE week_start_date = '2023-02-06' ORDER BY 1, 2, 3",
            )
            .unwrap();
        st.query_map([], |r| {
            Ok(format!(
                "{}|{}|{}|{}|{}|{}",
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?
            ))
        })
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
    };
    let got = week(&env);
    assert!(got.iter().any(|r| r.contains("|9001|")), "{got:?}");
    assert_eq!(got, week(&whole));
}
