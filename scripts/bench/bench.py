"""Quarry's benchmark: the same job (CSV -> validate -> weekly aggregate ->
agg_trades_weekly in SQLite -> top-3 CSVs, raw trades off) run by Quarry
embedded, Quarry as three service processes, and peer jobs in Polars, DuckDB
and pandas. Checks that every tool produces the same aggregate before timing,
then times the tools alternately under /usr/bin/time -v and prints medians.

Run it through scripts/bench.sh, which builds Quarry and the peers' virtualenv.
"""
import argparse
import csv
import os
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def time_v(cmd, env=None, log=None):
    """Runs cmd under /usr/bin/time -v; returns (wall s, peak RSS KiB)."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        r = subprocess.run(["/usr/bin/time", "-v", "-o", tf.name, *cmd], env=env,
                           stdout=subprocess.DEVNULL, stderr=log or subprocess.PIPE, text=True)
        if r.returncode != 0:
            sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr or ''}")
        return parse_time(tf.read())


def parse_time(text):
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (.+)", text).group(1)
    parts = [float(x) for x in wall.split(":")]
    secs = sum(v * 60 ** (len(parts) - 1 - i) for i, v in enumerate(parts))
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    return secs, rss


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, deadline=30):
    end = time.time() + deadline
    while time.time() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


class Runner:
    def __init__(self, args, work):
        self.args, self.work = args, work
        self.bin = args.bin

    def fresh(self, name):
        d = os.path.join(self.work, name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        return os.path.join(d, "agg.db"), os.path.join(d, "out")

    def quarry(self, src, raw=False):
        db, out = self.fresh("quarry-raw" if raw else "quarry")
        cmd = [f"{self.bin}/quarry", "run", "--source", src, "--sqlite", db, "--output", out, "-q"]
        if not raw:
            cmd.append("--no-raw-trades")
        wall, rss = time_v(cmd)
        return wall, rss, db, out

    def quarry_services(self, src):
        db, out = self.fresh("quarry-services")
        ports = {s: free_port() for s in ("extractor", "transformer", "loader")}
        env = dict(os.environ,
                   QUARRY_EXTRACTOR__LISTEN=f"127.0.0.1:{ports['extractor']}",
                   QUARRY_EXTRACTOR__DATA_ROOTS=f'["{os.path.dirname(os.path.abspath(src))}"]',
                   QUARRY_TRANSFORMER__LISTEN=f"127.0.0.1:{ports['transformer']}",
                   QUARRY_TRANSFORMER__EXTRACTOR_URL=f"http://127.0.0.1:{ports['extractor']}",
                   QUARRY_TRANSFORMER__LOADER_URL=f"http://127.0.0.1:{ports['loader']}",
                   QUARRY_LOADER__LISTEN=f"127.0.0.1:{ports['loader']}",
                   QUARRY_WAREHOUSE__SQLITE__PATH=db,
                   QUARRY_LOG="warn")
        procs = {}
        for s in ("loader", "extractor", "transformer"):
            tf = os.path.join(self.work, f"{s}.time")
            procs[s] = (subprocess.Popen(["/usr/bin/time", "-v", "-o", tf, f"{self.bin}/quarry-{s}"], env=env,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), tf)
            wait_port(ports[s])
        try:
            wall, _ = time_v([f"{self.bin}/quarry", "run", "--source", os.path.abspath(src),
                              "--transformer", f"http://127.0.0.1:{ports['transformer']}",
                              "--loader", f"http://127.0.0.1:{ports['loader']}",
                              "--output", out, "--no-raw-trades", "-q"], env=env)
        finally:
            for p, _ in procs.values():
                # /usr/bin/time does not forward signals: stop its child.
                kids = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
                for k in kids:
                    os.kill(int(k), signal.SIGTERM)
            for p, _ in procs.values():
                p.wait(timeout=120)
        rss = {s: parse_time(open(tf).read())[1] for s, (_, tf) in procs.items()}
        return wall, max(rss.values()), db, out, rss

    def peer(self, name, src):
        db, out = self.fresh(name)
        wall, rss = time_v([self.args.python, os.path.join(HERE, f"peer_{name}.py"), src, db, out])
        return wall, rss, db, out


def summary(db, out):
    """Row count, sums and top-3 lists of one tool's result."""
    with sqlite3.connect(db) as c:
        n, vol, pnl = c.execute("SELECT count(*), sum(total_volume), sum(total_pnl) FROM agg_trades_weekly").fetchone()
    tops = {}
    for metric in ("volume", "pnl"):
        with open(os.path.join(out, f"top_bronze_by_{metric}.csv")) as f:
            tops[metric] = [(r[0], round(float(r[1]), 4)) for r in list(csv.reader(f))[1:]]
    return n, vol, pnl, tops


def same(a, b):
    return (a[0] == b[0] and abs(a[1] - b[1]) <= 1e-6 * abs(b[1]) + 1e-6
            and abs(a[2] - b[2]) <= 1e-6 * abs(b[2]) + 1e-6
            and [u for u, _ in a[3]["volume"]] == [u for u, _ in b[3]["volume"]]
            and [u for u, _ in a[3]["pnl"]] == [u for u, _ in b[3]["pnl"]]
            and all(abs(x[1] - y[1]) <= 1e-3 for m in ("volume", "pnl") for x, y in zip(a[3][m], b[3][m])))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tools", default="quarry,quarry-services,polars,duckdb,pandas")
    ap.add_argument("--raw", action="store_true", help="also time Quarry with raw trades loaded")
    ap.add_argument("--data", default=os.path.expanduser("~/.cache/quarry/bench"))
    ap.add_argument("--bin", required=True, help="directory of the release binaries")
    ap.add_argument("--python", default=sys.executable)
    args = ap.parse_args()
    tools = args.tools.split(",")
    os.makedirs(args.data, exist_ok=True)
    load = os.getloadavg()
    print(f"# {os.cpu_count()} cores, load average {load[0]:.2f} at start, {time.strftime('%Y-%m-%d %H:%M')}")
    for rows in args.rows:
        src = os.path.join(args.data, f"trades_{rows}.csv")
        if not os.path.exists(src):
            print(f"generating {src}", flush=True)
            subprocess.run([f"{args.bin}/quarry", "gen", "--rows", str(rows), "--out", src], check=True)
        work = tempfile.mkdtemp(prefix="quarry-bench-", dir=args.data)
        r = Runner(args, work)
        run = {
            "quarry": lambda: r.quarry(src),
            "quarry-services": lambda: r.quarry_services(src),
            "polars": lambda: r.peer("polars", src),
            "duckdb": lambda: r.peer("duckdb", src),
            "pandas": lambda: r.peer("pandas", src),
        }
        if args.raw:
            run["quarry-raw"] = lambda: r.quarry(src, raw=True)
            tools_here = tools + ["quarry-raw"]
        else:
            tools_here = tools
        # Correctness first: every tool must agree with Quarry before any timing counts.
        results = {t: [] for t in tools_here}
        reference = None
        for t in tools_here:
            res = run[t]()
            s = summary(res[2], res[3])
            reference = reference or s
            if not same(s, reference):
                sys.exit(f"{t} disagrees with {tools_here[0]} at {rows} rows:\n{s}\nvs\n{reference}")
            results[t].append(res)
            print(f"  checked {t}: {s[0]} groups, wall {res[0]:.2f} s", flush=True)
        for _ in range(args.reps - 1):
            for t in tools_here:
                results[t].append(run[t]())
        base = statistics.median(x[0] for x in results[tools_here[0]])
        print(f"\n## {rows:,} rows ({os.path.getsize(src) / 1e9:.2f} GB), {args.reps} runs each, medians")
        print("| tool | wall s | peak RSS MB | Quarry/tool wall |")
        print("|---|---|---|---|")
        for t in tools_here:
            wall = statistics.median(x[0] for x in results[t])
            rss = statistics.median(x[1] for x in results[t]) / 1024
            print(f"| {t} | {wall:.2f} | {rss:.0f} | {base / wall:.2f} |")
        if "quarry-services" in results:
            per = results["quarry-services"][-1][4]
            print("services peak RSS MB: " + ", ".join(f"{k} {v / 1024:.0f}" for k, v in per.items()))
        if args.raw:
            wall = statistics.median(x[0] for x in results["quarry-raw"])
            print(f"raw trades on: {rows / wall / 1e6:.2f}M rows/s end to end")
        shutil.rmtree(work, ignore_errors=True)
    print(f"# load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
