"""The comparison job in DuckDB: CSV -> validate -> weekly aggregate (exact
DECIMAL sums) -> agg_trades_weekly in SQLite (sqlite extension) -> top-3 CSVs.
usage: peer_duckdb.py SOURCE DB OUTDIR"""
import pathlib
import sys

import duckdb
import duckdb_extension_sqlite_scanner as ext

from common import TOP_CLIENT, write_top

src, db, out = sys.argv[1:4]
con = duckdb.connect()
# The extension ships in a PyPI package: install it from the file, no download.
con.execute(f"INSTALL '{next(pathlib.Path(ext.__file__).parent.rglob('*.duckdb_extension'))}'")
con.execute("LOAD sqlite_scanner")
con.execute(f"""
CREATE TEMP TABLE agg AS
WITH t AS (
  SELECT try_strptime(trim(timestamp), '%Y-%m-%d %H:%M:%S') AS ts,
         trim(user_id) AS user_id, lower(trim(client_type)) AS client_type,
         upper(trim(symbol)) AS symbol, lower(trim(side)) AS side,
         try_cast(trim(quantity) AS DECIMAL(38, 8)) AS q, try_cast(trim(price) AS DECIMAL(38, 8)) AS p
  FROM read_csv('{src}', all_varchar = true, header = true)
)
SELECT date_trunc('week', ts)::DATE AS week_start_date, client_type, user_id, symbol,
       sum(q) AS total_volume, sum(CASE WHEN side = 'sell' THEN q * p ELSE -q * p END) AS total_pnl,
       count(*) AS trade_count
FROM t
WHERE ts IS NOT NULL AND regexp_full_match(user_id, '\\S{{1,64}}')
  AND client_type IN ('gold', 'silver', 'bronze')
  AND regexp_full_match(symbol, '[A-Z0-9][A-Z0-9._/:^=-]{{0,31}}')
  AND side IN ('buy', 'sell') AND q > 0 AND p > 0
GROUP BY ALL
""")
con.execute(f"ATTACH '{db}' AS s (TYPE sqlite)")
con.execute("CREATE TABLE s.agg_trades_weekly AS SELECT week_start_date, client_type, user_id, symbol, "
            "total_volume::DOUBLE AS total_volume, total_pnl::DOUBLE AS total_pnl, trade_count FROM agg")
for metric in ("total_volume", "total_pnl"):
    rows = con.execute(f"""SELECT user_id, sum({metric}) AS v FROM agg WHERE client_type = '{TOP_CLIENT}'
                           GROUP BY user_id ORDER BY v DESC, user_id LIMIT 3""").fetchall()
    write_top(out, metric, rows)
