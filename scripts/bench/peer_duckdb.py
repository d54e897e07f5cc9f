"""The comparison job in DuckDB: CSV -> weekly aggregate -> agg_trades_weekly
in SQLite (sqlite extension) -> top-3 CSVs.
usage: peer_duckdb.py [--validated] SOURCE DB OUTDIR

Plain: what a DuckDB user writes. read_csv with typed columns (TIMESTAMP,
DOUBLE, VARCHAR ids; ignore_errors skips the rows that do not convert), rows
with a NULL dropped, the cheap typed filters (quantity and price > 0, known
client types and sides), GROUP BY, DOUBLE sums.

--validated: Quarry's rules (common.py) on the text as read: every field
trimmed, client_type and side lower-cased, symbol upper-cased, the patterns,
byte lengths and ranges checked, exact DECIMAL sums. Amounts are cast to
DECIMAL(18, 8), Quarry's own type, and widened to DECIMAL(38, 8) for the
sums: casting text straight to DECIMAL(38, 8) costs DuckDB about 4 µs a value
(that, not the SQLite write, made the earlier version of this job take
minutes). The PnL sums are DECIMAL(38, 16), and DuckDB turns those into
DOUBLE exactly but slowly (about 1 µs a value, through text).

Both: the aggregate is kept in a DuckDB table for the top-3 queries and
copied into a SQLite table created beforehand with Quarry's column types
(INSERT ... SELECT through the sqlite extension).
"""
import pathlib

import duckdb
import duckdb_extension_sqlite_scanner as ext

from common import (AMOUNT_EXP_RE, AMOUNT_PLAIN_RE, CLIENT_TYPES, I128_MAX, SIDES, SYMBOL_MAX_BYTES, SYMBOL_RE,
                    TIMESTAMP_FORMAT, TIMESTAMP_MAX, TIMESTAMP_MIN, TIMESTAMP_RE, TOP_CLIENT,
                    USER_ID_MAX_BYTES, USER_ID_RE, WHITESPACE, args, write_top)

a = args()
con = duckdb.connect()
# The extension ships in a PyPI package: install it from the file, no download.
con.execute(f"INSTALL '{next(pathlib.Path(ext.__file__).parent.rglob('*.duckdb_extension'))}'")
con.execute("LOAD sqlite_scanner")


def sql_list(values):
    return ", ".join(f"'{v}'" for v in values)


PLAIN = f"""
SELECT * FROM read_csv(?, header = true, delim = ',', quote = '"', ignore_errors = true,
    columns = {{'timestamp': 'TIMESTAMP', 'user_id': 'VARCHAR', 'client_type': 'VARCHAR', 'symbol': 'VARCHAR',
               'side': 'VARCHAR', 'quantity': 'DOUBLE', 'price': 'DOUBLE'}})
WHERE COLUMNS(*) IS NOT NULL AND quantity > 0 AND price > 0
  AND client_type IN ({sql_list(CLIENT_TYPES)}) AND side IN ({sql_list(SIDES)})
"""


# common.exponent_rule on the parts of AMOUNT_EXP_RE (i: integer digits, f: decimals,
# e: exponent), and the value written without exponent (DuckDB's own cast of an
# exponent form fails beyond 38 digits, which Quarry accepts up to i128).
con.execute(f"""
CREATE MACRO int_digits(x) AS length(x.i) + try_cast(nullif(x.e, '') AS INTEGER)
                              - (length(x.i || x.f) - length(ltrim(x.i || x.f, '0')));
CREATE MACRO significant(x) AS rtrim(ltrim(x.i || x.f, '0'), '0');
CREATE MACRO mantissa(x) AS ltrim(x.i || rtrim(x.f, '0'), '0');
CREATE MACRO exponent_ok(x) AS significant(x) <> '' AND int_digits(x) <= 10
    AND length(significant(x)) - int_digits(x) <= 8
    AND (length(mantissa(x)) < 39 OR (length(mantissa(x)) = 39 AND mantissa(x) <= '{I128_MAX}'));
CREATE MACRO without_exponent(x) AS CASE
    WHEN int_digits(x) <= 0 THEN '0.' || repeat('0', -int_digits(x)) || significant(x)
    WHEN int_digits(x) >= length(significant(x))
        THEN significant(x) || repeat('0', int_digits(x) - length(significant(x)))
    ELSE significant(x)[:int_digits(x)] || '.' || significant(x)[int_digits(x) + 1:] END;
""")


def amount(t):
    """Text -> DECIMAL(18, 8), NULL unless valid. CASE evaluates the exponent
    rule only for the rows that are no plain decimal."""
    x = f"regexp_extract({t}, '{AMOUNT_EXP_RE}', ['i', 'f', 'e'])"
    return f"""CASE WHEN regexp_full_match({t}, '{AMOUNT_PLAIN_RE}') THEN try_cast({t} AS DECIMAL(18, 8))
                    WHEN exponent_ok({x}) THEN without_exponent({x})::DECIMAL(18, 8) END"""


def text(c):
    """Trimmed. trim(c, characters) takes DuckDB 1 µs a value with this set of
    characters: only values that start or end with one go through it."""
    return f"CASE WHEN regexp_matches({c}, '^[{WHITESPACE}]|[{WHITESPACE}]$') THEN trim({c}, '{WHITESPACE}') ELSE {c} END"


VALIDATED = f"""
SELECT * FROM (
  SELECT try_strptime(CASE WHEN regexp_full_match(timestamp, '{TIMESTAMP_RE}') THEN timestamp END,
                      '{TIMESTAMP_FORMAT}') AS timestamp,
         user_id, lower(client_type) AS client_type, upper(symbol) AS symbol, lower(side) AS side,
         {amount('quantity')} AS quantity, {amount('price')} AS price,
         regexp_full_match(user_id, '{USER_ID_RE}') AND strlen(user_id) <= {USER_ID_MAX_BYTES}
         AND regexp_full_match(symbol, '{SYMBOL_RE}') AND strlen(symbol) <= {SYMBOL_MAX_BYTES} AS ok
  FROM (SELECT {', '.join(f'{text(c)} AS {c}' for c in
                          ('timestamp', 'user_id', 'client_type', 'symbol', 'side', 'quantity', 'price'))}
        FROM read_csv(?, header = true, delim = ',', quote = '"', all_varchar = true))
)
WHERE ok AND timestamp BETWEEN '{TIMESTAMP_MIN}' AND '{TIMESTAMP_MAX}'
  AND client_type IN ({sql_list(CLIENT_TYPES)}) AND side IN ({sql_list(SIDES)}) AND quantity > 0 AND price > 0
"""

if a.validated:
    # Pushed down, the filter would carry copies of the trimming and parsing
    # expressions it reads and they would run twice (a third of the CPU time).
    con.execute("SET disabled_optimizers = 'filter_pushdown'")
# DECIMAL(18, 8) * DECIMAL(18, 8) stays DECIMAL(18, ...) in DuckDB: widen first.
q = "quantity::DECIMAL(38, 8)" if a.validated else "quantity"
con.execute(f"""
CREATE TABLE agg AS
SELECT date_trunc('week', timestamp)::DATE AS week_start_date, client_type, user_id, symbol,
       sum({q}) AS total_volume,
       sum(CASE WHEN side = 'sell' THEN {q} * price ELSE -{q} * price END) AS total_pnl,
       count(*) AS trade_count
FROM ({VALIDATED if a.validated else PLAIN})
GROUP BY ALL
""", [a.source])
con.execute(f"ATTACH '{a.db}' AS s (TYPE sqlite)")
con.execute("""CREATE TABLE s.agg_trades_weekly (week_start_date TEXT NOT NULL, client_type TEXT NOT NULL,
    user_id TEXT NOT NULL, symbol TEXT NOT NULL, total_volume REAL NOT NULL, total_pnl REAL NOT NULL,
    trade_count INTEGER NOT NULL)""")
con.execute("INSERT INTO s.agg_trades_weekly SELECT * FROM agg")
for metric in ("total_volume", "total_pnl"):
    rows = con.execute(f"""SELECT user_id, sum({metric}) AS v FROM agg WHERE client_type = '{TOP_CLIENT}'
                           GROUP BY user_id ORDER BY v DESC, user_id LIMIT 3""").fetchall()
    write_top(a.out, metric, rows)
