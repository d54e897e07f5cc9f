"""Checks that the validated peers keep exactly the rows Quarry keeps, on
hand-written edge cases of every rule (common.py): runs Quarry and each peer
with --validated on one small CSV and compares their agg_trades_weekly.
usage: rules_check.py --bin DIR [--python PY] [--work DIR] [polars duckdb pandas]
"""
import argparse
import csv
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile

from common import COLUMNS, WHITESPACE

HERE = os.path.dirname(os.path.abspath(__file__))
OK = ("2024-03-06 12:00:00", "gold", "AAPL", "buy", "2.5", "10.25")

# (field, text, accepted by Quarry). Quarry's other timestamp forms (T, fractions,
# offsets) are left out: the peers accept only the plain form (common.py).
CASES = [
    ("timestamp", "2023-02-30 10:00:00", False), ("timestamp", "2023-02-28 10:00:60", False),
    ("timestamp", "2023-2-28 10:00:00", False), ("timestamp", "+2023-02-28 10:00:00", False),
    ("timestamp", "2023-02-28 1:00:00", False), ("timestamp", "2023-01-01 24:00:00", False),
    ("timestamp", "2024-02-29 00:00:00", True), ("timestamp", " 2023-02-28 10:00:00\t", True),
    ("timestamp", "\u30002023-02-28 10:00:00\x85", True), ("timestamp", "\x1c2023-02-28 10:00:00", False),
    ("timestamp", "2023-02-28 10:00:00 UTC", False), ("timestamp", "", False),
    ("timestamp", "1677-09-21 00:12:43", False), ("timestamp", "1677-09-21 00:12:44", True),
    ("timestamp", "2262-04-11 23:47:16", True), ("timestamp", "2262-04-11 23:47:17", False),
    ("user_id", "30 03", False), ("user_id", "a\x1fb", False), ("user_id", "a\xa0b", False),
    ("user_id", "a\u2003b", False), ("user_id", "a\x85b", False), ("user_id", "ab\u200b", True),
    ("user_id", "\u00e9t\u00e9", True), ("user_id", "x" * 64, True), ("user_id", "x" * 65, False),
    ("user_id", "\u00e9" * 32, True), ("user_id", "\u00e9" * 33, False), ("user_id", " u7 \t", True),
    ("user_id", "\u3000", False), ("user_id", "", False),
    ("client_type", "GOLD", True), ("client_type", " Silver ", True), ("client_type", "platinum", False),
    ("client_type", "gold\xa0", True), ("client_type", "\uff27\uff2f\uff2c\uff24", False),
    ("client_type", "", False),
    ("symbol", "aapl", True), ("symbol", "brk.b", True), ("symbol", "$$$", False),
    ("symbol", "\u017fPY", False), ("symbol", "\u0131BM", False), ("symbol", "A" * 32, True),
    ("symbol", "A" * 33, False), ("symbol", "-A", False), ("symbol", "a-b/c:d^e=f.g", True),
    ("symbol", "A_B", True), ("symbol", "A B", False), ("symbol", "", False),
    ("side", "BUY", True), ("side", " Sell", True), ("side", "hold", False), ("side", "", False),
    ("quantity", "1.123456789", False), ("quantity", "1.12345678", True), ("quantity", "1.50000000000", True),
    ("quantity", "1e5", True), ("quantity", "1E-8", True), ("quantity", "1e-9", False),
    ("quantity", "100e-10", True), ("quantity", "100.000e-10", True), ("quantity", "10.5e-8", False),
    ("quantity", "+1", True), ("quantity", ".5", True), ("quantity", "1.", True), ("quantity", ".", False),
    ("quantity", "-1", False), ("quantity", "0", False), ("quantity", "0.00", False), ("quantity", "-0", False),
    ("quantity", "9999999999.99999999", True), ("quantity", "10000000000", False),
    ("quantity", "1e10", False), ("quantity", "9.99999999999999999e9", True), ("quantity", "1_000", False),
    ("quantity", "1,5", False), ("quantity", "0x10", False), ("quantity", "\u0661", False),
    ("quantity", "1e+05", True), ("quantity", "1e00005", False), ("quantity", "1e", False),
    ("quantity", "e5", False), ("quantity", ".e5", False), ("quantity", "nan", False), ("quantity", "inf", False),
    ("quantity", "00000000000000000000000000001.5", True), ("quantity", " 2.5 ", True),
    ("quantity", "0.00000001e0", True), ("quantity", "0.000000001e1", True),
    ("quantity", "1" + "0" * 38 + "e-38", True), ("quantity", "2" + "0" * 38 + "e-38", False),
    ("quantity", "abc", False), ("quantity", "", False),
    ("price", "9999999999.99999999", True), ("price", "abc", False), ("price", "-1", False),
    ("price", "0.00000001", True), ("price", "1.000000001", False), ("price", "", False),
]


def write_cases(path):
    """One row per case, each under its own user id (but for user_id cases),
    rows of extreme amounts, and as many valid rows as cases."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(COLUMNS)
        for i, (field, text, _) in enumerate(CASES):
            row = dict(zip(["timestamp", "client_type", "symbol", "side", "quantity", "price"], OK),
                       user_id=f"case{i}")
            row[field] = text
            w.writerow([row[c] for c in COLUMNS])
        w.writerow([OK[0], "big", "bronze", "BIG", "sell", "9999999999.99999999", "9999999999.99999999"])
        w.writerow([OK[0], "big", "bronze", "BIG", "buy", "0.00000001", "0.00000001"])
        for _ in CASES:  # Quarry fails a run of which less than half is valid
            w.writerow([OK[0], "filler", *OK[1:]])


def table(db):
    with sqlite3.connect(db) as c:
        r = lambda v, d: None if v is None else round(v, d)  # noqa: E731
        return sorted((str(w), ct, u, s, r(v, 6), r(p, 2), n) for w, ct, u, s, v, p, n in c.execute(
            "SELECT week_start_date, client_type, user_id, symbol, total_volume, total_pnl, trade_count"
            " FROM agg_trades_weekly"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--work")
    ap.add_argument("peers", nargs="*", default=["polars", "duckdb", "pandas"])
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="quarry-rules-", dir=a.work)
    try:
        src = os.path.join(work, "cases.csv")
        write_cases(src)
        subprocess.run([f"{a.bin}/quarry", "run", "--source", src, "--sqlite", os.path.join(work, "quarry.db"),
                        "--output", os.path.join(work, "quarry"), "--no-raw-trades", "-q"],
                       check=True, stdout=subprocess.DEVNULL)
        want = table(os.path.join(work, "quarry.db"))
        kept = {u for _, _, u, _, _, _, _ in want}
        wrong = [(f, t) for i, (f, t, ok) in enumerate(CASES)
                 if ((t.strip(WHITESPACE) if f == "user_id" else f"case{i}") in kept) != ok]
        if wrong:
            sys.exit(f"Quarry itself disagrees with the expected outcome of: {wrong}")
        bad = 0
        for peer in a.peers:
            db = os.path.join(work, f"{peer}.db")
            subprocess.run([a.python, os.path.join(HERE, f"peer_{peer}.py"), "--validated", src, db,
                            os.path.join(work, peer)], check=True)
            got = table(db)
            if got != want:
                bad += 1
                print(f"{peer}-validated differs from Quarry on the edge cases:")
                for r in sorted(set(want) - set(got)):
                    print(f"  only Quarry: {r}")
                for r in sorted(set(got) - set(want)):
                    print(f"  only {peer}: {r}")
        if bad:
            sys.exit(1)
        print(f"rules: {', '.join(p + '-validated' for p in a.peers)} keep the same {len(want)} groups "
              f"as Quarry from {len(CASES)} edge cases")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
