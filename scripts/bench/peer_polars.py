"""The comparison job in Polars (streaming engine): CSV -> validate -> weekly
aggregate -> agg_trades_weekly in SQLite (ADBC) -> top-3 CSVs.
usage: peer_polars.py SOURCE DB OUTDIR"""
import sys

import polars as pl

from common import TOP_CLIENT, write_top

src, db, out = sys.argv[1:4]
c = lambda n: pl.col(n).str.strip_chars()  # noqa: E731
ts = c("timestamp").str.to_datetime("%Y-%m-%d %H:%M:%S", strict=False, time_zone="UTC")
q = c("quantity").cast(pl.Float64, strict=False)
p = c("price").cast(pl.Float64, strict=False)
ct = c("client_type").str.to_lowercase()
side = c("side").str.to_lowercase()
sym = c("symbol").str.to_uppercase()
uid = c("user_id")
valid = (
    ts.is_not_null()
    & uid.str.contains(r"^\S{1,64}$")
    & ct.is_in(["gold", "silver", "bronze"])
    & sym.str.contains(r"^[A-Z0-9][A-Z0-9._/:^=-]{0,31}$")
    & side.is_in(["buy", "sell"])
    & (q > 0)
    & (p > 0)
)
agg = (
    pl.scan_csv(src, infer_schema=False)
    .filter(valid.fill_null(False))
    .group_by(
        week_start_date=ts.dt.date().dt.truncate("1w"),
        client_type=ct,
        user_id=uid,
        symbol=sym,
    )
    .agg(
        total_volume=q.sum(),
        total_pnl=pl.when(side == "sell").then(q * p).otherwise(-q * p).sum(),
        trade_count=pl.len(),
    )
    .collect(engine="streaming")
)
agg.write_database("agg_trades_weekly", f"sqlite:///{db}", engine="adbc", if_table_exists="replace")
bronze = agg.filter(pl.col("client_type") == TOP_CLIENT).group_by("user_id").agg(
    pl.col("total_volume").sum(), pl.col("total_pnl").sum()
)
for metric in ("total_volume", "total_pnl"):
    top = bronze.sort([metric, "user_id"], descending=[True, False]).head(3)
    write_top(out, metric, zip(top["user_id"], top[metric]))
