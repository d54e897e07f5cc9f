"""The comparison job in pandas: CSV -> validate -> weekly aggregate ->
agg_trades_weekly in SQLite (to_sql) -> top-3 CSVs.
usage: peer_pandas.py SOURCE DB OUTDIR"""
import sqlite3
import sys

import pandas as pd

from common import TOP_CLIENT, write_top

src, db, out = sys.argv[1:4]
df = pd.read_csv(src, dtype=str, keep_default_na=False)
df = df.apply(lambda s: s.str.strip())
ts = pd.to_datetime(df["timestamp"], format="%Y-%m-%d %H:%M:%S", errors="coerce")
q = pd.to_numeric(df["quantity"], errors="coerce")
p = pd.to_numeric(df["price"], errors="coerce")
ct, side, sym = df["client_type"].str.lower(), df["side"].str.lower(), df["symbol"].str.upper()
valid = (
    ts.notna()
    & df["user_id"].str.fullmatch(r"\S{1,64}")
    & ct.isin(["gold", "silver", "bronze"])
    & sym.str.fullmatch(r"[A-Z0-9][A-Z0-9._/:^=-]{0,31}")
    & side.isin(["buy", "sell"])
    & (q > 0)
    & (p > 0)
)
t = pd.DataFrame({
    "week_start_date": (ts - pd.to_timedelta(ts.dt.weekday, unit="D")).dt.strftime("%Y-%m-%d"),
    "client_type": ct, "user_id": df["user_id"], "symbol": sym,
    "total_volume": q, "total_pnl": q * p * side.map({"sell": 1.0, "buy": -1.0}),
})[valid]
agg = t.groupby(["week_start_date", "client_type", "user_id", "symbol"], as_index=False).agg(
    total_volume=("total_volume", "sum"), total_pnl=("total_pnl", "sum"), trade_count=("total_volume", "size"))
with sqlite3.connect(db) as con:
    agg.to_sql("agg_trades_weekly", con, if_exists="replace", index=False, chunksize=100_000)
bronze = agg[agg["client_type"] == TOP_CLIENT].groupby("user_id")[["total_volume", "total_pnl"]].sum()
for metric in ("total_volume", "total_pnl"):
    top = bronze.reset_index().sort_values([metric, "user_id"], ascending=[False, True]).head(3)
    write_top(out, metric, zip(top["user_id"], top[metric]))
