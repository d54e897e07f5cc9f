"""What a source costs: the same generated trades read by `quarry run` from
the plain local CSV file, from that file gzip-compressed, from the .csv.gz
in S3 (moto's server on loopback) and from a PostgreSQL table (loaded with
COPY FROM, timestamp indexed), side by side.

Each run is embedded Quarry with raw trades off (the source is what differs;
the warehouse writes are the same for all), into a fresh SQLite file. The
sources alternate within each repetition; medians of --reps are printed with
each one's ratio to the plain file and its peak RSS. Every source must give
the top-3 report files of the plain file.

Run it through `scripts/bench.sh sources`, which builds Quarry and starts
moto and PostgreSQL (scripts/standins.sh).
"""
import argparse
import gzip
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import time_v  # noqa: E402

SOURCES = ("file", "gzip", "s3", "postgres")


def gzipped(plain):
    path = plain + ".gz"
    if not os.path.exists(path):
        with open(plain, "rb") as src, gzip.open(path + ".tmp", "wb", compresslevel=6) as out:
            shutil.copyfileobj(src, out, 1 << 20)
        os.rename(path + ".tmp", path)
    return path


def put_object(endpoint, bucket, key, path):
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/{bucket}", method="PUT")).read()
    subprocess.run(["curl", "-sSf", "-T", path, f"{endpoint}/{bucket}/{key}"], check=True)


def psql(url, password, script):
    subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", url], input=script, text=True, check=True,
                   env={**os.environ, "PGPASSWORD": password})


def load_table(url, password, plain):
    """A typed trades table (timestamptz, numeric, text) holding the file's
    rows: loaded as text with COPY FROM, then cast. The generator's bad
    timestamps and amounts become NULL (rejected either way, so the top-3
    files stay those of the file)."""
    day = "substr(timestamp, 9, 2)::int"
    month_days = ("extract(day from make_date(substr(timestamp, 1, 4)::int, substr(timestamp, 6, 2)::int, 1)"
                  " + interval '1 month - 1 day')::int")
    number = "'^-?[0-9]+(\\.[0-9]+)?$'"
    psql(url, password, f"""
        SET TimeZone = 'UTC';
        DROP TABLE IF EXISTS staging, trades;
        CREATE UNLOGGED TABLE staging (timestamp text, user_id text, client_type text, symbol text,
                                       side text, quantity text, price text);
        \\copy staging FROM '{plain}' WITH (FORMAT csv, HEADER true)
        CREATE TABLE trades AS SELECT
            CASE WHEN timestamp ~ '^[0-9]{{4}}-[01][0-9]-[0-3][0-9] [0-2][0-9]:[0-5][0-9]:[0-5][0-9]$'
                  AND substr(timestamp, 6, 2)::int BETWEEN 1 AND 12
                  AND {day} BETWEEN 1 AND {month_days}
                 THEN timestamp::timestamptz END AS timestamp,
            user_id, client_type, symbol, side,
            CASE WHEN quantity ~ {number} THEN quantity::numeric END AS quantity,
            CASE WHEN price ~ {number} THEN price::numeric END AS price
        FROM staging;
        DROP TABLE staging;
        CREATE INDEX ON trades (timestamp);
        ANALYZE trades;""")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--s3-endpoint", required=True)
    p.add_argument("--postgres-url", required=True)
    p.add_argument("--postgres-password", required=True)
    a = p.parse_args()

    plain = os.path.join(a.data, f"trades_{a.rows}.csv")
    if not os.path.exists(plain):
        subprocess.run([f"{a.bin}/quarry", "gen", "--rows", str(a.rows), "--out", plain], check=True)
    gz = gzipped(plain)
    bucket = f"bench-{os.getpid()}"
    put_object(a.s3_endpoint, bucket, "trades.csv.gz", gz)
    load_table(a.postgres_url, a.postgres_password, plain)
    source = {
        "file": plain,
        "gzip": gz,
        "s3": f"s3://{bucket}/trades.csv.gz",
        "postgres": f"{a.postgres_url}?table=public.trades",
    }
    env = {**os.environ, "PGPASSWORD": a.postgres_password,
           "QUARRY_STORAGE__S3__ENDPOINT": a.s3_endpoint, "QUARRY_STORAGE__S3__ALLOW_HTTP": "true",
           "QUARRY_STORAGE__S3__VIRTUAL_HOSTED_STYLE": "false"}
    print(f"# {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start, "
          f"{time.strftime('%Y-%m-%d %H:%M')}; {a.rows} rows, plain {os.path.getsize(plain) / 1e6:.0f} MB, "
          f"gzip {os.path.getsize(gz) / 1e6:.0f} MB")
    times = {s: [] for s in SOURCES}
    tops = {}
    loads = []
    with tempfile.TemporaryDirectory() as work:
        for rep in range(a.reps):
            for s in SOURCES:
                run_dir = os.path.join(work, s)
                shutil.rmtree(run_dir, ignore_errors=True)
                os.makedirs(run_dir)
                cmd = [f"{a.bin}/quarry", "run", "-q", "--no-raw-trades", "--source", source[s],
                       "--sqlite", os.path.join(run_dir, "w.db"), "--output", os.path.join(run_dir, "out")]
                times[s].append(time_v(cmd, env=env))
                loads.append(os.getloadavg()[0])
                out = os.path.join(run_dir, "out")
                tops[s] = [open(os.path.join(out, f)).read()
                           for f in ("top_bronze_by_volume.csv", "top_bronze_by_pnl.csv")]
                print(f"  rep {rep + 1} {s:9} {times[s][-1][0]:7.2f} s {times[s][-1][1] / 1024:6.0f} MiB", flush=True)
    for s in SOURCES:
        if tops[s] != tops["file"]:
            sys.exit(f"{s}: the top-3 files differ from the plain file's")
    base = statistics.median(t for t, _ in times["file"])
    print(f"\nmedians of {a.reps} (load average between runs {min(loads):.2f}–{max(loads):.2f}):")
    print(f"{'source':10} {'wall s':>8} {'/ file':>7} {'peak RSS MiB':>13}")
    for s in SOURCES:
        wall = statistics.median(t for t, _ in times[s])
        rss = statistics.median(r for _, r in times[s]) / 1024
        print(f"{s:10} {wall:8.2f} {wall / base:7.2f} {rss:13.0f}")


if __name__ == "__main__":
    main()
