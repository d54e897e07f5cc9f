"""The comparison job in Polars (streaming engine): CSV -> weekly aggregate ->
agg_trades_weekly in SQLite (write_database through ADBC) -> top-3 CSVs.
usage: peer_polars.py [--validated] SOURCE DB OUTDIR

Plain: what a Polars user writes. A typed scan_csv schema (Float64, String
ids, the timestamp parsed with its format; unparsable values become null),
nulls dropped, the cheap typed filters (quantity and price > 0, known client
types and sides), group_by, Float64 sums.

--validated: Quarry's rules (common.py) on the text as read: every field
trimmed, client_type and side lower-cased, symbol upper-cased, the patterns,
byte lengths and ranges checked, exact Decimal sums (Decimal(38, 16), as
Quarry's PnL scale; Polars' decimals cost about what Float64 does here),
written as REAL like Quarry's.
"""
from datetime import datetime

import polars as pl

from common import (AMOUNT_EXP_RE, AMOUNT_PLAIN_RE, CLIENT_TYPES, COLUMNS, SIDES, SYMBOL_MAX_BYTES, SYMBOL_RE,
                    TIMESTAMP_FORMAT, TIMESTAMP_MAX, TIMESTAMP_MIN, TIMESTAMP_RE, TOP_CLIENT,
                    USER_ID_MAX_BYTES, USER_ID_RE, WHITESPACE, args, exponent_rule, write_top)

a = args()
# Exact: Quarry's PnL scale (q * p of two 8-decimal amounts).
EXACT = pl.Decimal(38, 16)


def plain():
    # The CSV reader parses a Datetime column 7x slower than str.to_datetime
    # given the format (1.1 µs a value, Polars 2.1), so the timestamp is read as text.
    schema = {"timestamp": pl.String, "user_id": pl.String, "client_type": pl.String,
              "symbol": pl.String, "side": pl.String, "quantity": pl.Float64, "price": pl.Float64}
    return (
        pl.scan_csv(a.source, schema=schema, ignore_errors=True)
        .with_columns(pl.col("timestamp").str.to_datetime(TIMESTAMP_FORMAT, strict=False, time_unit="us"))
        .drop_nulls()
        .filter(pl.col("quantity") > 0, pl.col("price") > 0,
                pl.col("client_type").is_in(CLIENT_TYPES), pl.col("side").is_in(SIDES))
    )


def amount(text):
    """Text -> exact Decimal, null unless a valid amount (common.exponent_rule
    for the text that is no plain decimal)."""
    parts = text.str.extract_groups(AMOUNT_EXP_RE)
    exp_ok = exponent_rule(parts.struct[0], parts.struct[1].fill_null(""), parts.struct[2].cast(pl.Int32),
                           lambda s: s.str.len_bytes(), lambda s: s.str.strip_chars_start("0"),
                           lambda s: s.str.strip_chars_end("0"))
    return pl.when(text.str.contains(AMOUNT_PLAIN_RE) | exp_ok).then(text.cast(EXACT, strict=False))


def validated():
    t = {c: pl.col(c) for c in COLUMNS}
    rows = pl.scan_csv(a.source, infer_schema=False).with_columns(pl.col(COLUMNS).str.strip_chars(WHITESPACE))
    # The exponent rule is dozens of string operations, which Polars would run
    # on every row of the column (nulls included, 0.6 µs a row): rows whose
    # amounts are not both plain decimals take another branch of the plan, the
    # only one that runs it (the file is still read once).
    plain = (t["quantity"].str.contains(AMOUNT_PLAIN_RE) & t["price"].str.contains(AMOUNT_PLAIN_RE)).fill_null(False)
    rows = pl.concat([rows.filter(plain).with_columns(pl.col("quantity", "price").cast(EXACT)),
                      rows.filter(~plain).with_columns(amount(t["quantity"]), amount(t["price"]))])
    ts = t["timestamp"].str.to_datetime(TIMESTAMP_FORMAT, strict=False, time_unit="us")
    valid = (
        t["timestamp"].str.contains(TIMESTAMP_RE)
        & ts.is_between(*(datetime.strptime(b, TIMESTAMP_FORMAT) for b in (TIMESTAMP_MIN, TIMESTAMP_MAX)))
        & t["user_id"].str.contains(USER_ID_RE) & (t["user_id"].str.len_bytes() <= USER_ID_MAX_BYTES)
        & t["client_type"].str.to_lowercase().is_in(CLIENT_TYPES)
        & t["symbol"].str.contains(SYMBOL_RE) & (t["symbol"].str.len_bytes() <= SYMBOL_MAX_BYTES)
        & t["side"].str.to_lowercase().is_in(SIDES)
        & (t["quantity"] > 0) & (t["price"] > 0)
    )
    return (
        rows.select(timestamp=ts, user_id=t["user_id"], client_type=t["client_type"].str.to_lowercase(),
                    symbol=t["symbol"].str.to_uppercase(), side=t["side"].str.to_lowercase(),
                    quantity=t["quantity"], price=t["price"], valid=valid)
        .filter(pl.col("valid").fill_null(False))
    )


q, p = pl.col("quantity"), pl.col("price")
agg = (
    (validated() if a.validated else plain())
    .group_by(week_start_date=pl.col("timestamp").dt.date().dt.truncate("1w"),
              client_type="client_type", user_id="user_id", symbol="symbol")
    .agg(total_volume=q.sum(), total_pnl=pl.when(pl.col("side") == "sell").then(q * p).otherwise(-q * p).sum(),
         trade_count=pl.len())
    .collect(engine="streaming")
)
bronze = agg.filter(pl.col("client_type") == TOP_CLIENT).group_by("user_id").agg(
    pl.col("total_volume").sum(), pl.col("total_pnl").sum())
(agg.with_columns(pl.col("total_volume", "total_pnl").cast(pl.Float64))
 .write_database("agg_trades_weekly", f"sqlite:///{a.db}", engine="adbc", if_table_exists="replace"))
for metric in ("total_volume", "total_pnl"):
    top = bronze.sort([metric, "user_id"], descending=[True, False]).head(3)
    write_top(a.out, metric, zip(top["user_id"], top[metric]))
