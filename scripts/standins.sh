# Local stand-ins for the warehouse backends, sourced by scripts/test.sh:
# installs what is missing, starts each server on loopback with fresh state
# under $CACHE/standins, exports the URL the backend tests read, and stops
# the servers when the script exits. A server that does not come up fails
# the script (and so the tests) with the end of its log.

STANDINS="$CACHE/standins"
STANDIN_PIDS=()
STANDIN_DIRS=()
stop_standins() {
    for pid in "${STANDIN_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${STANDIN_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    for dir in "${STANDIN_DIRS[@]}"; do
        rm -rf "$dir"
    done
}
trap stop_standins EXIT

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# wait_for NAME URL LOG: polls URL for up to 30 s.
wait_for() {
    local deadline=$((SECONDS + 30))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if curl -sf --max-time 2 "$2" >/dev/null; then
            echo "$1 is up at $2"
            return 0
        fi
        sleep 0.1
    done
    echo "end of $3:"
    tail -n 30 "$3" || true
    echo "scripts/test.sh: the $1 stand-in did not answer at $2 within 30 s (log: $3)" >&2
    exit 1
}

# ClickHouse (Debian's clickhouse-server) on 127.0.0.1:18123.
start_clickhouse() {
    if ! command -v clickhouse-server >/dev/null && [ ! -x /usr/sbin/clickhouse-server ]; then
        as_root apt-get update -q &&
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q clickhouse-server clickhouse-client ||
            { echo "scripts/test.sh: cannot install clickhouse-server from Debian's archive" >&2; exit 1; }
    fi
    local d="$STANDINS/clickhouse"
    rm -rf "$d"
    mkdir -p "$d/data" "$d/tmp" "$d/user_files" "$d/format_schemas" "$d/log"
    /usr/sbin/clickhouse-server --config-file=/etc/clickhouse-server/config.xml -- \
        --path="$d/data/" --tmp_path="$d/tmp/" --user_files_path="$d/user_files/" \
        --format_schema_path="$d/format_schemas/" \
        --logger.log="$d/log/server.log" --logger.errorlog="$d/log/server.err.log" \
        --logger.level=information --listen_host=127.0.0.1 \
        --http_port=18123 --tcp_port=19000 --interserver_http_port=19009 \
        >"$d/log/stdout.log" 2>&1 &
    STANDIN_PIDS+=("$!")
    wait_for ClickHouse http://127.0.0.1:18123/ping "$d/log/server.err.log"
    export QUARRY_TEST_CLICKHOUSE_URL=http://127.0.0.1:18123
    # The retry test starts (and restarts) a server of its own with this binary.
    export QUARRY_TEST_CLICKHOUSE_SERVER=/usr/sbin/clickhouse-server
}

# PostgreSQL (Debian's postgresql package), for the PostgreSQL source tests:
# a fresh cluster initialised in a temporary directory, listening on a free
# loopback port, with the superuser `quarry` (password quarry-test, SCRAM);
# the tests create their own databases and a SELECT-only role. The server
# refuses to run as root, so under root it runs as the package's `postgres`
# user.
start_postgres() {
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$bin" ]; then
        as_root apt-get update -q &&
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql ||
            { echo "scripts/test.sh: cannot install postgresql from Debian's archive" >&2; exit 1; }
        bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    fi
    local d port as=()
    d=$(mktemp -d "${TMPDIR:-/tmp}/quarry-postgres.XXXXXX")
    STANDIN_DIRS+=("$d")
    if [ "$(id -u)" = 0 ]; then
        chown postgres: "$d"
        as=(setpriv --reuid=postgres --regid=postgres --init-groups)
    fi
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    echo quarry-test >"$d/password"
    chmod 644 "$d/password"
    "${as[@]}" "$bin/initdb" -D "$d/data" -U quarry --pwfile="$d/password" --auth=scram-sha-256 \
        -E UTF8 --no-sync >"$d/initdb.log" 2>&1 ||
        { tail -n 30 "$d/initdb.log"; echo "scripts/test.sh: initdb failed (log above)" >&2; exit 1; }
    "${as[@]}" "$bin/postgres" -D "$d/data" -h 127.0.0.1 -p "$port" -k "$d" -c fsync=off \
        >"$d/server.log" 2>&1 &
    STANDIN_PIDS+=("$!")
    local deadline=$((SECONDS + 30))
    until "$bin/pg_isready" -q -h 127.0.0.1 -p "$port"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            tail -n 30 "$d/server.log" || true
            echo "scripts/test.sh: the PostgreSQL stand-in did not answer on 127.0.0.1:$port within 30 s" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "PostgreSQL is up at 127.0.0.1:$port"
    export QUARRY_TEST_POSTGRES_URL="postgresql://quarry@127.0.0.1:$port/postgres"
    export QUARRY_TEST_POSTGRES_PASSWORD=quarry-test
}

# venv_from DIR REQUIREMENTS: (re)creates the virtualenv DIR unless it holds
# exactly the pinned packages already.
venv_from() {
    if ! "$1/bin/pip" freeze 2>/dev/null | sort | diff -q - <(sort "$2") >/dev/null; then
        python3 -m venv "$1"
        "$1/bin/pip" install --quiet --disable-pip-version-check -r "$2" ||
            { echo "scripts/test.sh: cannot install the stand-in packages of $2" >&2; exit 1; }
    fi
}

# S3 (PyPI moto[server], in its own virtualenv) on 127.0.0.1:15055; the
# tests create their own buckets. moto accepts any credentials.
start_s3() {
    local venv="$CACHE/venv-s3"
    venv_from "$venv" scripts/requirements-s3.txt
    local d="$STANDINS/s3"
    rm -rf "$d"
    mkdir -p "$d"
    "$venv/bin/moto_server" -H 127.0.0.1 -p 15055 >"$d/moto.log" 2>&1 &
    STANDIN_PIDS+=("$!")
    wait_for S3 http://127.0.0.1:15055/moto-api/ "$d/moto.log"
    export QUARRY_TEST_S3_ENDPOINT=http://127.0.0.1:15055
    export AWS_ACCESS_KEY_ID=quarry-test AWS_SECRET_ACCESS_KEY=quarry-test
}

# BigQuery emulator (PyPI bqemulator, in its own virtualenv) on 127.0.0.1:
# REST on 19050, Storage Read/Write gRPC on 19060. duckdb is pinned and its
# spatial extension installed from the wheel: otherwise the emulator tries to
# download the extension and dies.
start_bigquery() {
    local venv="$CACHE/venv-bigquery"
    venv_from "$venv" scripts/requirements-bigquery.txt
    "$venv/bin/python" -c "import duckdb, pathlib, duckdb_extension_spatial as m; duckdb.sql(\"INSTALL '%s'\" % next(pathlib.Path(m.__file__).parent.glob('extensions/*/spatial.duckdb_extension')))"
    local d="$STANDINS/bigquery"
    rm -rf "$d"
    mkdir -p "$d/gcs"
    BQEMU_GCS_LOCAL_ROOT="$d/gcs" "$venv/bin/bqemulator" start --project quarry-test \
        --rest-host 127.0.0.1 --rest-port 19050 --grpc-host 127.0.0.1 --grpc-port 19060 --log-level warning \
        >"$d/emulator.log" 2>&1 &
    STANDIN_PIDS+=("$!")
    wait_for BigQuery http://127.0.0.1:19050/readyz "$d/emulator.log"
    export QUARRY_TEST_BIGQUERY_URL=http://127.0.0.1:19050
    export QUARRY_TEST_BIGQUERY_GRPC=http://127.0.0.1:19060
    export QUARRY_TEST_BIGQUERY_PROJECT=quarry-test
    # The emulator accepts any bearer token; the tests hand it over the way a
    # short production run can (warehouse.bigquery.access_token_env).
    export QUARRY_TEST_BIGQUERY_TOKEN=emulator
    # The retry test starts (and restarts) an emulator of its own with this binary.
    export QUARRY_TEST_BIGQUERY_EMULATOR="$venv/bin/bqemulator"
}

# Snowflake stand-in: fakesnow's HTTP server (PyPI, pinned in
# scripts/requirements-snowflake.txt) on 127.0.0.1:18765, one shared
# in-memory database (tests create a database of their own per run).
start_snowflake() {
    local venv="$CACHE/venv-snowflake"
    venv_from "$venv" scripts/requirements-snowflake.txt
    local d="$STANDINS/snowflake"
    rm -rf "$d"
    mkdir -p "$d/log"
    "$venv/bin/fakesnow" -s --host 127.0.0.1 -p 18765 >"$d/log/server.log" 2>&1 &
    STANDIN_PIDS+=("$!")
    # Any HTTP answer (404 for /) means it is up.
    local deadline=$((SECONDS + 30))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if curl -s --max-time 2 -o /dev/null http://127.0.0.1:18765/; then
            echo "fakesnow is up at http://127.0.0.1:18765"
            export QUARRY_TEST_SNOWFLAKE_URL=http://127.0.0.1:18765
            # fakesnow accepts any password; the backend reads it from here.
            export QUARRY_SNOWFLAKE_PASSWORD=fakesnow
            # Snowflake's own Python connector (installed with fakesnow)
            # decrypts what the stage uploads encrypt, as a second opinion.
            export QUARRY_TEST_SNOWFLAKE_PYTHON="$venv/bin/python"
            return 0
        fi
        sleep 0.1
    done
    echo "end of $d/log/server.log:"
    tail -n 30 "$d/log/server.log" || true
    echo "scripts/test.sh: the Snowflake stand-in (fakesnow) did not answer at http://127.0.0.1:18765 within 30 s" >&2
    exit 1
}
