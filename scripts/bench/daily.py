"""Quarry's daily-load benchmark: what one day of trades costs when it lands
in a warehouse that already holds a lot.

For each warehouse size (--bases, e.g. 1M and 10M generated trades over two
years, raw trades loaded) and each backend (SQLite, ClickHouse), it loads the
base once, then times a run of one day (--day-rows trades on Wednesday
2024-01-03, whose week already holds six other days) in ETL and in ELT mode,
alternately, --reps times each. That run replaces the day and recomputes its
week from all seven days, so its cost should follow the size of the week, not
of the warehouse. Prints medians and the ratio of the largest base to the
smallest.

With --baseline DIR (the binaries of an earlier Quarry) it also times the
full-file ETL run of the largest base, raw trades on, with this Quarry and
the earlier one alternately.

Run it through `scripts/bench.sh daily`, which builds Quarry.
"""
import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import time_v  # noqa: E402

DAY = "2024-01-03"


def day_file(args, path):
    """--day-rows generated trades moved onto DAY (their times of day kept)."""
    if os.path.exists(path):
        return
    tmp = path + ".gen.csv"
    subprocess.run([f"{args.bin}/quarry", "gen", "--rows", str(args.day_rows), "--seed", "7",
                    "--out", tmp], check=True)
    with open(tmp) as src, open(path, "w") as out:
        out.write(next(src))
        for line in src:
            ts, rest = line.split(",", 1)
            # Bad timestamps stay as they are: they are rejected either way.
            out.write(f"{DAY}{ts[10:]},{rest}" if len(ts) == 19 else line)
    os.remove(tmp)


def base_file(args, rows):
    path = os.path.join(args.data, f"trades_{rows}.csv")
    if not os.path.exists(path):
        subprocess.run([f"{args.bin}/quarry", "gen", "--rows", str(rows), "--out", path], check=True)
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
                        wall, rss = b.run(args.bin, day, rows, ["--mode", mode])
                        results.setdefault((name, rows, mode), []).append((wall, rss))
                b.reset(rows)
        print(f"\n## one day ({args.day_rows:,} trades) into a warehouse holding N trades; "
              f"{args.reps} runs each, medians")
        print("| backend | mode | " + " | ".join(f"N = {r:,}" for r in args.bases)
              + f" | {args.bases[-1]:,} / {args.bases[0]:,} |")
        print("|---|---|" + "---|" * (len(args.bases) + 1))
        for name in args.backends.split(","):
            for mode in ("etl", "elt"):
                walls = [statistics.median(w for w, _ in results[(name, r, mode)]) for r in args.bases]
                cells = " | ".join(f"{w:.2f} s" for w in walls)
                print(f"| {name} | {mode} | {cells} | {walls[-1] / walls[0]:.2f} |")
        if args.baseline:
            rows = args.bases[-1]
            src = base_file(args, rows)
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
