"""Shared bits of the peer jobs: their arguments, Quarry's validation rules
for the validated variants, and the top-3 files.

Quarry's rules (crates/quarry-transform/src/validate.rs), which the
validated variants reproduce: every field is trimmed of Unicode White_Space;
a row is rejected if
  - timestamp is empty or not a valid date and time (the generator writes only
    `YYYY-MM-DD HH:MM:SS`, and that is the form the peers accept; Quarry also
    takes a `T` separator, fractional seconds and offsets) or lies outside
    Quarry's nanosecond range;
  - user_id is empty, longer than 64 bytes, or holds whitespace or control
    characters;
  - client_type is not gold/silver/bronze, side not buy/sell (ASCII case
    ignored: they are lower-cased);
  - symbol is empty, longer than 32 bytes or not [A-Z0-9][A-Z0-9._/:^=-]*
    after ASCII upper-casing;
  - quantity or price is not a decimal number in (0, 9999999999.99999999]
    with at most 8 decimals (Decimal(18, 8)): an optional `+`, digits with an
    optional point, an optional exponent of up to 4 digits; trailing zeros do
    not count as decimals, so `1.50000000000` and `100e-10` are exact.

The patterns below read the same in Rust's regex (Polars), RE2 (DuckDB,
pyarrow behind pandas' string methods) and Python's re: ASCII classes only
([0-9], not \\d), non-ASCII characters written as themselves.
"""
import argparse
import csv
import os

TOP_CLIENT = "bronze"
CLIENT_TYPES = ["gold", "silver", "bronze"]
SIDES = ["buy", "sell"]
COLUMNS = ["timestamp", "user_id", "client_type", "symbol", "side", "quantity", "price"]

# Unicode White_Space: what Rust's str::trim removes (Python's str.strip would
# also take U+001C..U+001F, DuckDB's trim only spaces, so it is spelled out).
WHITESPACE = ("\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
              "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")

TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"
# The parsers of the tools roll second 60 over, take one-digit fields or a
# sign: the shape is checked first, the calendar by the parser.
TIMESTAMP_RE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2} ([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]$"
# Quarry keeps timestamps as i64 nanoseconds since the epoch.
TIMESTAMP_MIN, TIMESTAMP_MAX = "1677-09-21 00:12:44", "2262-04-11 23:47:16"

# No Unicode White_Space, no control character (Cc).
USER_ID_RE = "^[^\\x00-\\x20\\x7f-\\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$"
USER_ID_MAX_BYTES = 64
# Checked before upper-casing, with both cases: Unicode upper-casing (all the
# tools have) would turn a few non-ASCII letters (ı, ſ, ﬁ) into ASCII ones.
SYMBOL_RE = r"^[A-Za-z0-9][A-Za-z0-9._/:^=-]*$"
SYMBOL_MAX_BYTES = 32

# A plain decimal that is certainly within Decimal(18, 8) (leading zeros, at
# most 10 integer digits, at most 8 decimals plus trailing zeros): all the
# generator writes. Whatever else is valid has an exponent; such text is split
# by AMOUNT_EXP_RE into (integer digits, decimals, exponent) and checked by
# exponent_rule(). A minus sign is never valid (the value must be > 0).
AMOUNT_PLAIN_RE = r"^\+?0*([0-9]{1,10}(\.[0-9]{0,8}0*)?|\.[0-9]{1,8}0*)$"
AMOUNT_EXP_RE = r"^\+?([0-9]*)(?:\.([0-9]*))?[eE]([+-]?[0-9]{1,4})$"
# Quarry reads the digits into an i128 before scaling: more is invalid.
I128_MAX = "170141183460469231731687303715884105727"


def exponent_rule(digits, decimals, exponent, length, lstrip0, rstrip0):
    """Whether `<digits>.<decimals>e<exponent>` is exact at 8 decimals, below
    1e10 and not zero, given the tool's string functions (length in bytes,
    strip leading/trailing '0'). With all = digits + decimals, its point is
    len(digits) + exponent places in, so after z leading zeros the value has
    len(digits) + exponent - z integer digits and needs len(significant
    digits) - that many decimals."""
    both = digits + decimals
    significant = lstrip0(both)
    int_digits = length(digits) + exponent - (length(both) - length(significant))
    mantissa = lstrip0(digits + rstrip0(decimals))
    return ((length(significant) > 0) & (int_digits <= 10)
            & (length(rstrip0(significant)) - int_digits <= 8)
            & ((length(mantissa) < 39) | ((length(mantissa) == 39) & (mantissa <= I128_MAX))))


def args():
    """SOURCE DB OUTDIR [--validated]."""
    ap = argparse.ArgumentParser()
    ap.add_argument("source")
    ap.add_argument("db")
    ap.add_argument("out")
    ap.add_argument("--validated", action="store_true", help="Quarry's full validation rules")
    return ap.parse_args()


def write_top(out, metric, rows):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"top_{TOP_CLIENT}_by_{metric.removeprefix('total_')}.csv"), "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["user_id", metric])
        for user, value in rows:
            w.writerow([user, f"{float(value):.4f}"])
