//! Sources beyond plain local files, through the real `quarry` binary:
//! compressed files of every codec Quarry reads, and objects in S3 (the
//! moto stand-in scripts/test.sh starts).

mod common;

use std::io::Write;
use std::path::Path;

use common::Env;
use common::cli::{fails, one_line_error, peak_of_run, quarry_ok, run_within};
use common::fixtures;

/// The sample under `env`'s data root as `name`, compressed by `compress`.
fn write_sample(env: &Env, name: &str, compress: fn(&[u8]) -> Vec<u8>) {
    let plain = std::fs::read(fixtures().join("trades_sample.csv")).unwrap();
    env.write(name, compress(&plain));
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(data, 3).unwrap()
}

fn bzip2(data: &[u8]) -> Vec<u8> {
    let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Every table (the rejected rows' source file reduced to `data/trades`)
/// and the top-3 report files of a run in `env`.
fn results(env: &Env, file: &str) -> (Vec<String>, Vec<String>) {
    let source = env.data.join(file).display().to_string();
    let tables = env
        .snapshot()
        .iter()
        .map(|r| r.replace(&source, "data/trades"))
        .collect();
    let reports = ["top_bronze_by_volume.csv", "top_bronze_by_pnl.csv"]
        .iter()
        .map(|f| std::fs::read_to_string(env.dir.path().join("output").join(f)).unwrap())
        .collect();
    (tables, reports)
}

fn run_sample(env: &Env, file: &str) -> (Vec<String>, Vec<String>) {
    let source = format!("data/{file}");
    quarry_ok(env.dir.path(), &["run", "-q", "--source", &source]);
    results(env, file)
}

#[test]
fn compressed_samples_give_the_tables_and_reports_of_the_plain_file() {
    let plain = Env::new();
    write_sample(&plain, "trades.csv", |d| d.to_vec());
    let expected = run_sample(&plain, "trades.csv");
    assert_eq!(plain.count("SELECT count(*) FROM trades_rejected"), 10);

    for (file, compress) in [
        ("trades.csv.gz", gzip as fn(&[u8]) -> Vec<u8>),
        ("trades.csv.zst", zstd),
        ("trades.csv.bz2", bzip2),
    ] {
        let env = Env::new();
        write_sample(&env, file, compress);
        assert_eq!(run_sample(&env, file), expected, "{file}");
    }

    // A directory of compressed parts: gzip members written one after the
    // other (`cat a.gz b.gz`) and a zstd part; line numbers count the
    // decompressed lines of each file.
    let env = Env::new();
    let text = std::fs::read_to_string(fixtures().join("trades_sample.csv")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let (header, rows) = (lines[0], &lines[1..]);
    let part = |rows: &[&str]| format!("{header}\n{}\n", rows.join("\n"));
    let mut concatenated = gzip(part(&rows[..300]).as_bytes());
    concatenated.extend(gzip(format!("{}\n", rows[300..500].join("\n")).as_bytes()));
    env.write("a.csv.gz", concatenated);
    env.write("b.csv.zst", zstd(part(&rows[500..]).as_bytes()));
    quarry_ok(env.dir.path(), &["run", "-q", "--source", "data"]);
    assert_eq!(results(&env, "x").1, expected.1);
    assert_eq!(
        env.count("SELECT count(*) FROM agg_trades_weekly"),
        plain.count("SELECT count(*) FROM agg_trades_weekly")
    );
    // Each rejected row keeps its own file and its decompressed line: the
    // sample's line L is line L of a.csv.gz up to 501, then line L - 500 of
    // b.csv.zst.
    let rejected = |e: &Env| -> Vec<(String, i64)> {
        let conn = e.conn();
        let mut st = conn
            .prepare("SELECT source_file, source_row FROM trades_rejected ORDER BY 2")
            .unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let mut expected_rows: Vec<(String, i64)> = rejected(&plain)
        .into_iter()
        .map(|(_, l)| match l {
            ..=501 => ("a.csv.gz".to_string(), l),
            _ => ("b.csv.zst".to_string(), l - 500),
        })
        .collect();
    let mut got: Vec<(String, i64)> = rejected(&env)
        .into_iter()
        .map(|(f, l)| {
            (
                Path::new(&f).file_name().unwrap().to_str().unwrap().into(),
                l,
            )
        })
        .collect();
    expected_rows.sort();
    got.sort();
    assert_eq!(got.len(), 10);
    assert_eq!(got, expected_rows);
}

/// A nightly run reads only its day's landing folder: `{yesterday}` in
/// --source is the UTC date before today, and the folder of another day
/// (holding a file that would fail the run) is not opened.
#[test]
fn a_day_placeholder_reads_only_that_days_landing_folder() {
    let plain = Env::new();
    write_sample(&plain, "trades.csv", |d| d.to_vec());
    let expected = run_sample(&plain, "trades.csv");

    let env = Env::new();
    let day = |d: chrono::NaiveDate| d.format("%Y-%m-%d").to_string();
    let yesterday = chrono::Utc::now().date_naive().pred_opt().unwrap();
    let before = yesterday.pred_opt().unwrap();
    for d in [yesterday, before] {
        std::fs::create_dir_all(env.data.join("landing").join(day(d))).unwrap();
    }
    let file = format!("landing/{}/trades.csv", day(yesterday));
    write_sample(&env, &file, |d| d.to_vec());
    env.write(
        &format!("landing/{}/trades.csv", day(before)),
        "not a trades file\n",
    );
    quarry_ok(
        env.dir.path(),
        &["run", "-q", "--source", "data/landing/{yesterday}"],
    );
    assert_eq!(results(&env, &file), expected);
}

#[test]
fn a_truncated_or_misnamed_file_fails_in_one_line_and_changes_nothing() {
    let env = Env::new();
    write_sample(&env, "trades.csv", |d| d.to_vec());
    quarry_ok(
        env.dir.path(),
        &["run", "-q", "--source", "data/trades.csv"],
    );
    let before = env.snapshot();

    let whole = gzip(&std::fs::read(fixtures().join("trades_sample.csv")).unwrap());
    env.write("cut.csv.gz", &whole[..whole.len() * 2 / 3]);
    fails(
        env.dir.path(),
        &["run", "--source", "data/cut.csv.gz"],
        &["cut.csv.gz line ", "gzip data is corrupt or cut short"],
    );
    assert_eq!(env.snapshot(), before);

    env.write("plain.csv.zst", "timestamp,user_id\n");
    fails(
        env.dir.path(),
        &["run", "--source", "data/plain.csv.zst"],
        &[
            "plain.csv.zst",
            "the name says zstd but the content is not compressed",
        ],
    );
    env.write("old.parquet.gz", gzip(b"PAR1"));
    fails(
        env.dir.path(),
        &["run", "--source", "data/old.parquet.gz"],
        &["old.parquet.gz", "Parquet compresses its own pages"],
    );
    assert_eq!(env.snapshot(), before);
    assert!(Path::new(&env.db).exists());
}

/// A bucket of its own on the S3 stand-in, and the variables that point
/// `quarry` at it.
struct Bucket {
    endpoint: String,
    name: String,
}

impl Bucket {
    fn new(tag: &str) -> Self {
        let endpoint = quarry_testkit::standin("QUARRY_TEST_S3_ENDPOINT");
        let name = format!("quarry-src-{tag}-{}", std::process::id());
        let b = Self { endpoint, name };
        b.curl(&["-X", "PUT", &b.url("")]);
        b
    }

    fn url(&self, key: &str) -> String {
        format!("{}/{}/{key}", self.endpoint, self.name)
    }

    fn curl(&self, args: &[&str]) {
        let out = std::process::Command::new("curl")
            .arg("-sSf")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "curl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn put(&self, key: &str, bytes: &[u8]) {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), bytes).unwrap();
        self.curl(&["-T", tmp.path().to_str().unwrap(), &self.url(key)]);
    }

    fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("QUARRY_STORAGE__S3__ENDPOINT", self.endpoint.clone()),
            ("QUARRY_STORAGE__S3__ALLOW_HTTP", "true".into()),
            ("QUARRY_STORAGE__S3__VIRTUAL_HOSTED_STYLE", "false".into()),
        ]
    }

    fn run(&self, env: &Env, args: &[&str]) -> std::process::Output {
        let vars = self.vars();
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run_within(
            env.dir.path(),
            args,
            &vars,
            std::time::Duration::from_secs(120),
        )
    }

    fn run_ok(&self, env: &Env, args: &[&str]) {
        let out = self.run(env, args);
        assert!(
            out.status.success(),
            "quarry {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
#[ignore = "needs the S3 stand-in (moto): scripts/test.sh runs it"]
fn objects_in_s3_give_the_tables_and_reports_of_local_files() {
    let plain = Env::new();
    write_sample(&plain, "trades.csv", |d| d.to_vec());
    let expected = run_sample(&plain, "trades.csv");

    let bucket = Bucket::new("sample");
    let sample = std::fs::read(fixtures().join("trades_sample.csv")).unwrap();
    bucket.put("landing/trades.csv.gz", &gzip(&sample));
    let env = Env::new();
    let source = format!("s3://{}/landing/trades.csv.gz", bucket.name);
    bucket.run_ok(&env, &["run", "-q", "--source", &source]);
    let tables: Vec<String> = env
        .snapshot()
        .iter()
        .map(|r| r.replace(&source, "data/trades"))
        .collect();
    assert_eq!((tables, results(&env, "none").1), expected);

    // A glob over keys and a prefix: the same rows split over objects of
    // several formats; files of no known format are skipped and reported.
    let text = String::from_utf8(sample).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let part = |rows: &[&str]| format!("{}\n{}\n", lines[0], rows.join("\n"));
    bucket.put("parts/2024-a.csv", part(&lines[1..400]).as_bytes());
    bucket.put(
        "parts/2024-b.csv.zst",
        &zstd(part(&lines[400..]).as_bytes()),
    );
    bucket.put("parts/notes.txt", b"not trades");
    bucket.put("parts/sub/2024-c.csv", part(&lines[1..3]).as_bytes());
    let report = |env: &Env| -> serde_json::Value {
        let text = std::fs::read_to_string(env.dir.path().join("output/quality_report.json"));
        serde_json::from_str(&text.unwrap()).unwrap()
    };
    let env = Env::new();
    let glob = format!("s3://{}/parts/2024-*", bucket.name);
    bucket.run_ok(&env, &["run", "-q", "--source", &glob]);
    assert_eq!(report(&env)["rows_in"], 800);
    assert_eq!(results(&env, "none").1, expected.1, "{glob}");
    let env = Env::new();
    let prefix = format!("s3://{}/parts/", bucket.name);
    bucket.run_ok(&env, &["run", "-q", "--source", &prefix]);
    let q = report(&env);
    assert_eq!(q["rows_in"], 802, "{q}");
    assert_eq!(
        q["skipped_files"][0]["file"],
        format!("s3://{}/parts/notes.txt", bucket.name),
        "{q}"
    );

    // A bucket that does not exist, an object that does not: one line each.
    let env = Env::new();
    for (source, needle) in [
        (
            "s3://quarry-no-such-bucket/x.csv".to_string(),
            "s3://quarry-no-such-bucket/x.csv: The specified bucket does not exist (NoSuchBucket)",
        ),
        (
            format!("s3://{}/landing/missing.csv", bucket.name),
            "missing.csv: no such object, and no objects under it",
        ),
    ] {
        one_line_error(&bucket.run(&env, &["run", "--source", &source]), &[needle]);
    }
}

#[test]
#[ignore = "needs the S3 stand-in (moto): scripts/test.sh runs it"]
fn served_services_read_only_the_objects_in_the_extractors_roots() {
    let bucket = Bucket::new("roots");
    let sample = std::fs::read(fixtures().join("trades_sample.csv")).unwrap();
    bucket.put("landing/t.csv", &sample);
    bucket.put("secret/t.csv", &sample);
    let env = Env::new();
    let roots = format!("[\"s3://{}/landing/\"]", bucket.name);
    let mut vars = bucket.vars();
    vars.push(("QUARRY_EXTRACTOR__DATA_ROOTS", roots));
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let stack = common::procs::Stack::start(&env, &vars);
    let (transformer, loader) = (stack.transformer.url(), stack.loader.url());
    let run = |source: String| {
        let args = [
            "run",
            "-q",
            "--transformer",
            &transformer,
            "--loader",
            &loader,
            "--source",
            &source,
        ];
        bucket.run(&env, &args)
    };
    let out = run(format!("s3://{}/landing/", bucket.name));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let loaded = env.snapshot();
    let outside = "outside the extractor's data roots";
    for (source, why) in [
        (format!("s3://{}/secret/t.csv", bucket.name), outside),
        (format!("s3://{}/*/t.csv", bucket.name), outside),
        (format!("s3://{}/landing2/t.csv", bucket.name), outside),
        (format!("s3://{}/", bucket.name), outside),
        (
            format!("s3://{}/landing/../secret/t.csv", bucket.name),
            "a key may not contain . or .. segments",
        ),
    ] {
        one_line_error(&run(source.clone()), &[why, &source]);
    }
    assert_eq!(env.snapshot(), loaded);
    stack.stop();
}

#[test]
#[ignore = "needs the S3 stand-in (moto): scripts/test.sh runs it"]
fn objects_outside_the_roots_are_permission_denied() {
    let bucket = Bucket::new("denied");
    bucket.put("landing/t.csv", b"x");
    bucket.put("secret/t.csv", b"x");
    let env = Env::new();
    let mut config = env.config.clone();
    config.extractor.data_roots = vec![format!("s3://{}/landing/", bucket.name).into()];
    config.storage.s3.endpoint = bucket.endpoint.clone();
    config.storage.s3.allow_http = true;
    config.storage.s3.virtual_hosted_style = false;
    let roots = quarry_extractor::source::DataRoots::new(&config.extractor.data_roots).unwrap();
    let stores = quarry_extractor::objects::Stores::new(config.storage.clone());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let resolve = |source: String| {
        let (roots, stores) = (roots.clone(), &stores);
        rt.block_on(async {
            tokio::task::block_in_place(|| {
                quarry_extractor::source::resolve(
                    &source,
                    quarry_proto::SourceFormat::Unspecified,
                    &roots,
                    stores,
                )
            })
        })
    };
    let ok = resolve(format!("s3://{}/landing/", bucket.name)).unwrap();
    assert_eq!(ok.files.len(), 1);
    for source in [
        format!("s3://{}/secret/t.csv", bucket.name),
        format!("s3://{}/*/t.csv", bucket.name),
        format!("s3://{}/landing2/t.csv", bucket.name),
        format!("s3://{}/", bucket.name),
    ] {
        let e = resolve(source.clone()).unwrap_err();
        assert_eq!(
            e.kind(),
            quarry_core::ErrorKind::PermissionDenied,
            "{source}: {e}"
        );
    }
}

#[test]
#[ignore = "needs the S3 stand-in (moto): scripts/test.sh runs it"]
fn a_200_mb_object_is_streamed_in_bounded_memory() {
    let env = Env::new();
    // Generated trades of 200 users: few weekly groups, so what a run holds
    // is its read buffers and batches, not its aggregate.
    let file = env.data.join("big.csv");
    let opts = quarry_testkit::GenOptions {
        rows: 3_800_000,
        users: 200,
        ..Default::default()
    };
    quarry_testkit::generate(
        &opts,
        &mut std::io::BufWriter::new(std::fs::File::create(&file).unwrap()),
    )
    .unwrap();
    let bytes = std::fs::metadata(&file).unwrap().len();
    assert!(bytes > 200_000_000, "{bytes} bytes");
    let bucket = Bucket::new("big");
    bucket.curl(&["-T", file.to_str().unwrap(), &bucket.url("big.csv")]);

    let vars = bucket.vars();
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let peak_of = |source: &str, db: &str| peak_of_run(env.dir.path(), &vars, source, db);
    let file_peak = peak_of(&file.display().to_string(), "file.db");
    let object_peak = peak_of(&format!("s3://{}/big.csv", bucket.name), "s3.db");
    let groups = |db: &str| {
        let c = rusqlite::Connection::open(env.dir.path().join(db)).unwrap();
        c.query_row(
            "SELECT count(*), sum(trade_count) FROM agg_trades_weekly",
            [],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
        )
        .unwrap()
    };
    assert_eq!(groups("s3.db"), groups("file.db"));
    // The same bytes streamed from a file are the yardstick; the object
    // held whole would add its 190 MiB to it. Its ranged reads (8 MiB, the
    // next one in flight) and the HTTP client may add a few tens.
    assert!(
        object_peak < file_peak + 64 * 1024,
        "peak RSS from S3 {object_peak} KiB, from the file {file_peak} KiB"
    );
}
