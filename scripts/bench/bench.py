"""Quarry's benchmark: the same job (CSV -> validate -> weekly aggregate ->
agg_trades_weekly in SQLite -> top-3 CSVs) run by Quarry embedded (raw trades
off; with --raw also on), Quarry as three service processes, and peer jobs in
Polars, DuckDB and pandas, each in two variants:
  plain      what a user of the tool writes: typed read, unparsable values
             null, rows with a null dropped, the cheap typed filters; it keeps
             the few bad rows only Quarry's full rules reject (user ids with a
             space, symbols like "$$$");
  validated  Quarry's full validation rules, as fast as the tool allows.
Before timing it checks every tool against Quarry: the validated peers and
Quarry's other setups must give the same aggregate (row count, sums) and the
same top-3 lists (to 4 decimals); the plain peers the same top-3 users (their
values include the bad rows they keep: the largest difference is printed). The
validated peers are also run on hand-written edge cases of every rule
(rules_check.py). Then it times the tools alternately under /usr/bin/time -v
and prints medians, each tool's ratio to the fastest peer, and the targets.

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


PEERS = ("polars", "duckdb", "pandas")
TOOLS = ("quarry", "quarry-raw", "quarry-services", *(f"{p}{v}" for p in PEERS for v in ("", "-validated")))
LABELS = {"quarry": "embedded", "quarry-raw": "raw on", "quarry-services": "3 processes",
          **{p: "plain" for p in PEERS}, **{f"{p}-validated": "validated" for p in PEERS}}
# The targets: (tool, as printed, bound, of what).
TARGETS = (("quarry", "quarry (raw off)", 0.8, "fastest peer"), ("quarry-raw", "quarry-raw", 2.0, "fastest peer"),
           ("quarry-services", "quarry-services", 1.15, "quarry"))


class Runner:
    def __init__(self, args, work):
        self.args, self.work = args, work
        self.bin = args.bin

    def fresh(self, name):
        d = os.path.join(self.work, name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        return os.path.join(d, "agg.db"), os.path.join(d, "out")

    def run(self, tool, src):
        """Runs one tool on src: (wall s, peak RSS KiB, db, outdir, RSS per process or None)."""
        if tool in ("quarry", "quarry-raw"):
            return self.quarry(src, raw=tool == "quarry-raw")
        if tool == "quarry-services":
            return self.quarry_services(src)
        return self.peer(tool, src)

    def quarry(self, src, raw=False):
        db, out = self.fresh("quarry-raw" if raw else "quarry")
        cmd = [f"{self.bin}/quarry", "run", "--source", src, "--sqlite", db, "--output", out, "-q"]
        if not raw:
            cmd.append("--no-raw-trades")
        wall, rss = time_v(cmd)
        return wall, rss, db, out, None

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

    def peer(self, tool, src):
        db, out = self.fresh(tool)
        name, _, variant = tool.partition("-")
        cmd = [self.args.python, os.path.join(HERE, f"peer_{name}.py"), src, db, out]
        wall, rss = time_v(cmd + (["--validated"] if variant else []))
        return wall, rss, db, out, None


def summary(db, out):
    """Row count, sums and top-3 lists of one tool's result."""
    with sqlite3.connect(db) as c:
        n, vol, pnl, trades = c.execute("SELECT count(*), sum(total_volume), sum(total_pnl), sum(trade_count)"
                                        " FROM agg_trades_weekly").fetchone()
    tops = {}
    for metric in ("volume", "pnl"):
        with open(os.path.join(out, f"top_bronze_by_{metric}.csv")) as f:
            tops[metric] = [(r[0], round(float(r[1]), 4)) for r in list(csv.reader(f))[1:]]
    return {"groups": n, "volume": vol, "pnl": pnl, "trades": trades, "tops": tops}


def close(a, b, rel=1e-6):
    return abs(a - b) <= rel * abs(b) + 1e-6


def check(tool, s, ref):
    """None if tool's summary s agrees with Quarry's ref, else what differs. Plain
    peers: the same top users; returns also the largest relative difference
    of their top values."""
    ids = all([u for u, _ in s["tops"][m]] == [u for u, _ in ref["tops"][m]] for m in ref["tops"])
    diffs = [abs(x - y) / max(abs(y), 1e-9) for m in ref["tops"] for (_, x), (_, y) in zip(s["tops"][m], ref["tops"][m])]
    if LABELS[tool] == "plain":
        # Their values include the few bad rows they keep (0.3% on a top-3
        # value at 50M rows): only the users must be the same.
        return (None if ids else "top-3 users"), max(diffs)
    if s["groups"] != ref["groups"] or s["trades"] != ref["trades"]:
        return "row count", 0.0
    if not (close(s["volume"], ref["volume"]) and close(s["pnl"], ref["pnl"])):
        return "sums", 0.0
    if s["tops"] != ref["tops"]:
        return "top-3 lists", 0.0
    return None, 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tools", default=",".join(t for t in TOOLS if t != "quarry-raw"),
                    help=f"comma-separated, of {', '.join(TOOLS)} (default: all but quarry-raw)")
    ap.add_argument("--raw", action="store_true", help="also time Quarry with raw trades loaded (quarry-raw)")
    ap.add_argument("--data", default=os.path.expanduser("~/.cache/quarry/bench"))
    ap.add_argument("--bin", required=True, help="directory of the release binaries")
    ap.add_argument("--python", default=sys.executable)
    args = ap.parse_args()
    tools = [t for t in args.tools.split(",") if t]
    if args.raw and "quarry-raw" not in tools:
        tools.append("quarry-raw")
    if unknown := set(tools) - set(TOOLS):
        sys.exit(f"unknown tools: {', '.join(sorted(unknown))} (known: {', '.join(TOOLS)})")
    os.makedirs(args.data, exist_ok=True)
    print(f"# {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    validated = [t.split("-")[0] for t in tools if t.endswith("-validated")]
    if validated:
        subprocess.run([args.python, os.path.join(HERE, "rules_check.py"), "--bin", args.bin,
                        "--python", args.python, "--work", args.data, *validated], check=True)
    for rows in args.rows:
        src = os.path.join(args.data, f"trades_{rows}.csv")
        if not os.path.exists(src):
            print(f"generating {src}", flush=True)
            subprocess.run([f"{args.bin}/quarry", "gen", "--rows", str(rows), "--out", src], check=True)
        work = tempfile.mkdtemp(prefix="quarry-bench-", dir=args.data)
        r = Runner(args, work)
        load_start = os.getloadavg()[0]
        loads = []
        # Correctness first: every tool must agree with Quarry before any timing counts.
        results = {t: [] for t in tools}
        ref = summary(*r.run("quarry", src)[2:4]) if "quarry" not in tools else None
        largest = 0.0
        for t in sorted(tools, key=lambda t: t != "quarry"):
            res = r.run(t, src)
            loads.append(os.getloadavg()[0])
            s = summary(res[2], res[3])
            ref = ref or s
            wrong, diff = check(t, s, ref)
            if wrong:
                sys.exit(f"{t} disagrees with quarry at {rows} rows ({wrong}):\n{s}\nvs\n{ref}")
            largest = max(largest, diff)
            note = f", top values differ by up to {diff:.1e}" if LABELS[t] == "plain" else ""
            print(f"  checked {t}: {s['groups']} groups of {s['trades']} rows{note}, wall {res[0]:.2f} s",
                  flush=True)
            results[t].append(res)
        if any(LABELS[t] == "plain" for t in tools):
            print(f"  plain peers: largest relative difference of a top-3 value from Quarry's {largest:.1e}")
        for _ in range(args.reps - 1):
            for t in tools:
                results[t].append(r.run(t, src))
                loads.append(os.getloadavg()[0])
        wall = {t: statistics.median(x[0] for x in results[t]) for t in tools}
        rss = {t: statistics.median(x[1] for x in results[t]) / 1024 for t in tools}
        peers = [t for t in tools if LABELS[t] in ("plain", "validated")]
        fastest = min(peers, key=wall.get) if peers else None
        print(f"\n## {rows:,} rows ({os.path.getsize(src) / 1e9:.2f} GB), {args.reps} runs each, medians")
        print(f"load average (1 min): {load_start:.2f} at start, {os.getloadavg()[0]:.2f} at end, "
              f"median between runs {statistics.median(loads):.2f}")
        print("| tool | label | wall s | peak RSS MB | tool / fastest peer |")
        print("|---|---|---|---|---|")
        for t in tools:
            ratio = f"{wall[t] / wall[fastest]:.2f}" if fastest else "—"
            print(f"| {t} | {LABELS[t]} | {wall[t]:.2f} | {rss[t]:.0f} | {ratio} |")
        if fastest:
            print(f"fastest peer: {fastest} ({LABELS[fastest]}), {wall[fastest]:.2f} s")
        if "quarry-services" in results:
            per = {s: statistics.median(x[4][s] for x in results["quarry-services"]) / 1024
                   for s in results["quarry-services"][0][4]}
            print("quarry-services peak RSS MB: " + ", ".join(f"{k} {v:.0f}" for k, v in per.items()))
        if "quarry-raw" in results:
            print(f"raw trades on: {rows / wall['quarry-raw'] / 1e6:.2f}M rows/s end to end")
        for t, name, bound, of in TARGETS:
            base = wall.get(fastest) if of == "fastest peer" else wall.get(of)
            if t in wall and base:
                ratio = wall[t] / base
                print(f"target {name} <= {bound} x {of}: {ratio:.2f} x, {'met' if ratio <= bound else 'NOT met'}")
            else:
                print(f"target {name} <= {bound} x {of}: not measured")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
