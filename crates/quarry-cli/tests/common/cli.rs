//! The `quarry` command as a user runs it: in a directory, within a
//! deadline, and failing in one line.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use super::procs::{exit_within, quarry};

/// Runs `quarry ARGS` in `dir`, killing it after `deadline`.
pub fn run_within(dir: &Path, args: &[&str], vars: &[(&str, &str)], deadline: Duration) -> Output {
    let mut child = quarry()
        .args(args)
        .envs(vars.iter().copied())
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if exit_within(&mut child, deadline).is_none() {
        let out = child.wait_with_output().unwrap();
        panic!(
            "quarry {args:?} still running after {deadline:?}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    child.wait_with_output().unwrap()
}

/// Runs `quarry ARGS` in `dir` (60 s at most) and fails the test unless it
/// succeeds.
pub fn run_ok(dir: &Path, args: &[&str]) -> Output {
    let out = run_within(dir, args, &[], Duration::from_secs(60));
    assert_succeeded(&out, args);
    out
}

/// Runs `quarry ARGS` in `dir` (however long it takes); fails the test
/// unless it succeeds. Returns stdout.
pub fn quarry_ok(dir: &Path, args: &[&str]) -> String {
    let out = quarry().args(args).current_dir(dir).output().unwrap();
    assert_succeeded(&out, args);
    String::from_utf8(out.stdout).unwrap()
}

/// Fails the test, with the command's stderr, unless `quarry ARGS` exited 0.
fn assert_succeeded(out: &Output, args: &[&str]) {
    assert!(
        out.status.success(),
        "quarry {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `quarry ARGS` in `dir` and expects it to fail in one line holding
/// every needle; returns that line.
pub fn fails(dir: &Path, args: &[&str], needles: &[&str]) -> String {
    one_line_error(
        &run_within(dir, args, &[], Duration::from_secs(60)),
        needles,
    )
}

/// Exit code 1 and exactly one line on stderr holding every needle.
pub fn one_line_error(out: &Output, needles: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.starts_with("quarry: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in: {err}");
    }
    err
}

/// Peak resident memory (KiB) of a `quarry run -q --no-raw-trades` of
/// `source` into the SQLite file `db` (in `dir`), which must succeed.
pub fn peak_of_run(dir: &Path, vars: &[(&str, &str)], source: &str, db: &str) -> u64 {
    let args = [
        "run",
        "-q",
        "--no-raw-trades",
        "--sqlite",
        db,
        "--source",
        source,
    ];
    let (out, kib) = peak_kib(dir, vars, &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    kib
}

/// Peak resident memory (KiB) of `quarry ARGS`, measured by /usr/bin/time.
pub fn peak_kib(dir: &Path, vars: &[(&str, &str)], args: &[&str]) -> (Output, u64) {
    let mut cmd = std::process::Command::new("/usr/bin/time");
    cmd.args(["-f", "peak_kib=%M", env!("CARGO_BIN_EXE_quarry")])
        .args(args)
        .envs(vars.iter().copied())
        .env_remove("QUARRY_CONFIG")
        .current_dir(dir);
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let kib = err
        .lines()
        .find_map(|l| l.strip_prefix("peak_kib="))
        .unwrap_or_else(|| panic!("no peak memory in: {err}"))
        .trim()
        .parse()
        .unwrap();
    // Leave the command's own stderr, without time's lines.
    let own: String = err
        .lines()
        .filter(|l| !l.starts_with("peak_kib=") && !l.starts_with("Command exited"))
        .map(|l| format!("{l}\n"))
        .collect();
    (
        Output {
            stderr: own.into_bytes(),
            ..out
        },
        kib,
    )
}
