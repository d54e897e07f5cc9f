"""Quarry's daily-load benchmark: what one day of trades costs when it lands
in a warehouse that already holds a lot.

For each warehouse size (--bases, e.g. 1M and 10M generated trades at the
density of the daily feed, --day-rows a day: 14 and 143 days; raw trades
loaded) and each backend (SQLite, ClickHouse), it loads the base once, then
times a run of one day (--day-rows trades on Wednesday 2024-01-03, whose
week already holds six other days) in ETL and in ELT mode, alternately,
--reps times each. That run replaces the day and recomputes its
week from all seven days, so its cost should follow the size of the week, not
of the warehouse. Prints medians and the ratio of the largest base to the
smallest, of the whole `quarry run` (the run, then the top-N report files
read back from the warehouse), with the run's time until its commit and
the commit's (total_ms and commit_ms as pipeline_runs records them).

With --baseline DIR (the binaries of an earlier Quarry) it also times the
full-file ETL run of `quarry gen --rows <largest base>` (two years), raw
trades on, with this Quarry and the earlier one alternately.

Run it through `scripts/bench.sh daily`, which builds Quarry.
"""
import argparse
import datetime
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import time_v  # noqa: E402

# The warehouse's days start on a Monday; the day run lands on the Wednesday.
BASE_START = "2024-01-01"
DAY = "2024-01-03"


def redated(args, path, gen_args, date_of):
    """Writes `quarry gen GEN_ARGS` to path (unless it exists) with each
    trade's date replaced by date_of() (its time of day kept). Bad
    timestamps stay as they are: they are rejected either way."""
    if os.path.exists(path):
        return
    tmp = path + ".gen.csv"
    subprocess.run([f"{args.bin}/quarry", "gen", *gen_args, "--out", tmp], check=True)
    with open(tmp) as src, open(path, "w") as out:
        out.write(next(src))
        for line in src:
            ts, rest = line.split(",", 1)
            out.write(f"{date_of()}{ts[10:]},{rest}" if len(ts) == 19 else line)
    os.remove(tmp)


def day_file(args, path):
    """--day-rows generated trades moved onto DAY."""
    redated(args, path, ["--rows", str(args.day_rows), "--seed", "7"], lambda: DAY)


def base_file(args, rows):
    """`rows` generated trades at the day's density (--day-rows a day), their
    days drawn at random from the weeks from BASE_START on: the warehouse of
    a daily feed, N / day-rows days long, loaded as one backfill."""
    path = os.path.join(args.data, f"daily_base_{rows}_{args.day_rows}.csv")
    days = max(7, -(-rows // args.day_rows))
    start = datetime.date.fromisoformat(BASE_START)
    texts = [(start + datetime.timedelta(days=d)).isoformat() for d in range(days)]
    pick = random.Random(11)
    redated(args, path, ["--rows", str(rows)], lambda: texts[pick.randrange(days)])
    return path
    tmp = path + ".gen.csv"
    subprocess.run([f"{args.bin}/quarry", "gen", "--rows", str(rows), "--out", tmp], check=True)
    days = max(7, -(-rows // args.day_rows))
    start = datetime.date.fromisoformat(BASE_START)
    texts = [(start + datetime.timedelta(days=d)).isoformat() for d in range(days)]
    pick = random.Random(11)
    with open(tmp) as src, open(path, "w") as out:
        out.write(next(src))
        for line in src:
            ts, rest = line.split(",", 1)
            out.write(f"{texts[pick.randrange(days)]}{ts[10:]},{rest}" if len(ts) == 19 else line)
    os.remove(tmp)
    return path


class Backend:
    def __init__(self, name, args, work):
        self.name, self.args, self.work = name, args, work

    def target(self, rows):
        """The `quarry run` arguments and environment of the warehouse of one base."""
        if self.name == "sqlite":
            return ["--sqlite", os.path.join(self.work, f"base_{rows}.db")], dict(os.environ)
        env = dict(os.environ,
                   QUARRY_WAREHOUSE__CLICKHOUSE__URL=self.args.clickhouse_url,
                   QUARRY_WAREHOUSE__CLICKHOUSE__DATABASE=f"quarry_bench_{rows}")
        return ["--warehouse", "clickhouse"], env

    def reset(self, rows):
        if self.name == "sqlite":
            for suffix in ("", "-wal", "-shm"):
                p = os.path.join(self.work, f"base_{rows}.db{suffix}")
                if os.path.exists(p):
                    os.remove(p)
        else:
            subprocess.run(["curl", "-sf", "--data-binary", f"DROP DATABASE IF EXISTS quarry_bench_{rows}",
                            self.args.clickhouse_url], check=True, stdout=subprocess.DEVNULL)

    def last_run(self, rows):
        """(total_ms, commit_ms) of the latest run, as pipeline_runs holds them."""
        sql = "SELECT total_ms, commit_ms FROM {}pipeline_runs{} ORDER BY started_at DESC LIMIT 1"
        if self.name == "sqlite":
            with sqlite3.connect(os.path.join(self.work, f"base_{rows}.db")) as c:
                return c.execute(sql.format("", "")).fetchone()
        out = subprocess.run(["curl", "-sf", "--data-binary",
                              sql.format(f"quarry_bench_{rows}.", " FINAL") + " FORMAT JSONCompact",
                              self.args.clickhouse_url], check=True, capture_output=True, text=True).stdout
        total, commit = json.loads(out)["data"][0]
        return int(total), int(commit)

    def run(self, bin_dir, src, rows, extra=()):
        target, env = self.target(rows)
        out = os.path.join(self.work, "out")
        return time_v([f"{bin_dir}/quarry", "run", "--source", src, "--output", out, "-q", *target, *extra],
                      env=env)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bases", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--day-rows", type=int, default=70_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--backends", default="sqlite,clickhouse")
    ap.add_argument("--clickhouse-url", default=os.environ.get("QUARRY_TEST_CLICKHOUSE_URL", "http://127.0.0.1:18123"))
    ap.add_argument("--baseline", help="directory of an earlier Quarry's binaries: full-file run side by side")
    ap.add_argument("--data", default=os.path.expanduser("~/.cache/quarry/bench"))
    ap.add_argument("--bin", required=True, help="directory of the release binaries")
    args = ap.parse_args()
    os.makedirs(args.data, exist_ok=True)
    print(f"# {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start, {time.strftime('%Y-%m-%d %H:%M')}")
    day = os.path.join(args.data, f"day_{DAY}_{args.day_rows}.csv")
    day_file(args, day)
    work = tempfile.mkdtemp(prefix="quarry-daily-", dir=args.data)
    results = {}
    try:
        for name in args.backends.split(","):
            b = Backend(name, args, work)
            for rows in args.bases:
                src = base_file(args, rows)
                b.reset(rows)
                wall, _ = b.run(args.bin, src, rows)
                print(f"  {name}: base of {rows:,} trades loaded in {wall:.1f} s", flush=True)
                for rep in range(args.reps):
                    for mode in ("etl", "elt"):
                        wall, _ = b.run(args.bin, day, rows, ["--mode", mode])
                        total_ms, commit_ms = b.last_run(rows)
                        results.setdefault((name, rows, mode), []).append((wall, total_ms / 1000, commit_ms / 1000))
                b.reset(rows)
        print(f"\n## one day ({args.day_rows:,} trades) into a warehouse holding N trades; "
              f"{args.reps} runs each, medians: quarry run wall (the run until its commit / the commit)")
        print("| backend | mode | " + " | ".join(f"N = {r:,}" for r in args.bases)
              + f" | wall {args.bases[-1]:,} / {args.bases[0]:,} |")
        print("|---|---|" + "---|" * (len(args.bases) + 1))
        for name in args.backends.split(","):
            for mode in ("etl", "elt"):
                med = [[statistics.median(x[k] for x in results[(name, r, mode)]) for k in range(3)]
                       for r in args.bases]
                cells = " | ".join(f"{w:.2f} s ({t:.2f} / {c:.2f})" for w, t, c in med)
                print(f"| {name} | {mode} | {cells} | {med[-1][0] / med[0][0]:.2f} |")
        if args.baseline:
            rows = args.bases[-1]
            src = os.path.join(args.data, f"trades_{rows}.csv")
            if not os.path.exists(src):
                subprocess.run([f"{args.bin}/quarry", "gen", "--rows", str(rows), "--out", src], check=True)
            b = Backend("sqlite", args, work)
            full = {"this": [], "baseline": []}
            for _ in range(args.reps):
                for who, bin_dir in random.sample([("this", args.bin), ("baseline", args.baseline)], 2):
                    b.reset(rows)
                    full[who].append(b.run(bin_dir, src, rows))
            b.reset(rows)
            print(f"\n## full-file ETL run, {rows:,} trades, raw trades on, SQLite; {args.reps} runs each, medians")
            print("| Quarry | wall s | peak RSS MB |")
            print("|---|---|---|")
            for who in ("baseline", "this"):
                print(f"| {who} | {statistics.median(w for w, _ in full[who]):.2f} | "
                      f"{statistics.median(r for _, r in full[who]) / 1024:.0f} |")
            ratio = statistics.median(w for w, _ in full["this"]) / statistics.median(w for w, _ in full["baseline"])
            print(f"this / baseline wall: {ratio:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"# load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
