//! Exact decimals in a database without a decimal type.
//!
//! SQLite stores each quantity, price and sum as the REAL nearest to the
//! exact decimal (what users' SQL reads), and beside it the exact value
//! wherever the REAL alone could not give it back:
//! - `trades.quantity_units`/`price_units`: the value in units of 10^-8, set
//!   when |units| ≥ 2^50. Below that, `round(real · 10^8)` is the exact
//!   value (the REAL is within 2^-53 relative of it and the product adds one
//!   more rounding: under 0.26 units of error in all), so the common row
//!   pays one NULL byte, not eight;
//! - `agg_trades_weekly.total_volume_exact`/`total_pnl_exact`: the exact
//!   decimal text, set when it has more than 15 significant digits. Up to
//!   15, the REAL's shortest round-trip text is the exact decimal (and
//!   `CAST(total_pnl AS TEXT)` prints it), so `COALESCE(total_pnl_exact,
//!   total_pnl)` is exact for users' SQL.
//!
//! The functions below, registered on the writer's connection, let SQL fold
//! `trades` into weekly rows exactly (the ELT aggregate and the recomputed
//! weeks): `quarry_volume(quantity, quantity_units)` and
//! `quarry_pnl(side, quantity, quantity_units, price, price_units)` sum in
//! 128-bit scaled integers and return the sum as a 16-byte blob, which
//! `quarry_real(sum, scale)` and `quarry_exact(sum, scale)` turn into the
//! stored REAL and exact text. Never a sum of REALs.

use quarry_core::decimal::{self, PNL_SCALE, SCALE};
use rusqlite::functions::{Aggregate, Context, FunctionFlags};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, Error};

/// Units (10^-8) at or above which `trades` keeps the exact integer.
const UNITS_EXACT_FROM: i128 = 1 << 50;

/// The stored exact units of a quantity or price: only when the REAL does
/// not give them back.
pub(super) fn units_column(units: i128) -> Option<i64> {
    (units.abs() >= UNITS_EXACT_FROM).then_some(units as i64)
}

/// A quantity or price back from its REAL and its units column.
pub(super) fn units_of(real: f64, units: Option<i64>) -> i128 {
    match units {
        Some(u) => u.into(),
        None => (real * 1e8).round() as i128,
    }
}

/// Whether a scaled value has more than 15 significant digits (trailing
/// zeros do not count). A value of `d` digits ending in `t` zeros has `d - t`
/// significant ones, so this is one 128-bit remainder by 10^(d-15), not a
/// loop of divisions by 10: it runs for every weekly row written.
fn over_15_digits(v: i128) -> bool {
    let digits = v.unsigned_abs().checked_ilog10().map_or(0, |d| d + 1);
    digits > 15 && v % 10i128.pow(digits - 15) != 0
}

/// The stored exact text of a sum: only when the REAL does not give it back.
pub(super) fn exact_column(v: i128, scale: u32) -> Option<String> {
    over_15_digits(v).then(|| decimal::format_scaled(v, scale))
}

/// A sum back from its REAL and its exact text column, at `scale`.
pub(super) fn sum_of(real: f64, exact: Option<&str>, scale: u32) -> Result<i128, String> {
    match exact {
        Some(t) => decimal::parse_scaled(t.as_bytes(), scale)
            .map_err(|e| format!("exact value {t:?} is not a decimal: {e:?}")),
        None => {
            decimal::from_f64(real, scale).map_err(|e| format!("{real} is not a decimal: {e:?}"))
        }
    }
}

fn user_err(e: impl Into<String>) -> Error {
    Error::UserFunctionError(e.into().into())
}

/// Argument `i` as a quantity or price in units, from the REAL at `i` and
/// the units column at `i + 1`.
fn units_arg(ctx: &Context<'_>, i: usize) -> rusqlite::Result<i128> {
    let real: f64 = ctx.get(i)?;
    let units: Option<i64> = ctx.get(i + 1)?;
    Ok(units_of(real, units))
}

/// Σ quantity: `quarry_volume(quantity, quantity_units)`, at scale 8.
struct Volume;

impl Aggregate<i128, Vec<u8>> for Volume {
    fn init(&self, _: &mut Context<'_>) -> rusqlite::Result<i128> {
        Ok(0)
    }

    fn step(&self, ctx: &mut Context<'_>, sum: &mut i128) -> rusqlite::Result<()> {
        *sum += units_arg(ctx, 0)?;
        Ok(())
    }

    fn finalize(&self, _: &mut Context<'_>, sum: Option<i128>) -> rusqlite::Result<Vec<u8>> {
        Ok(sum.unwrap_or(0).to_le_bytes().to_vec())
    }
}

/// Σ ±quantity·price (sells positive):
/// `quarry_pnl(side, quantity, quantity_units, price, price_units)`, at scale 16.
struct Pnl;

impl Aggregate<i128, Vec<u8>> for Pnl {
    fn init(&self, _: &mut Context<'_>) -> rusqlite::Result<i128> {
        Ok(0)
    }

    fn step(&self, ctx: &mut Context<'_>, sum: &mut i128) -> rusqlite::Result<()> {
        let amount = units_arg(ctx, 1)? * units_arg(ctx, 3)?;
        match ctx.get_raw(0) {
            ValueRef::Text(b"sell") => *sum += amount,
            ValueRef::Text(b"buy") => *sum -= amount,
            other => return Err(user_err(format!("side {other:?} is not buy or sell"))),
        }
        Ok(())
    }

    fn finalize(&self, _: &mut Context<'_>, sum: Option<i128>) -> rusqlite::Result<Vec<u8>> {
        Ok(sum.unwrap_or(0).to_le_bytes().to_vec())
    }
}

/// A sum blob of the aggregates above.
fn sum_arg(ctx: &Context<'_>) -> rusqlite::Result<(i128, u32)> {
    let bytes: [u8; 16] = ctx
        .get_raw(0)
        .as_blob()?
        .try_into()
        .map_err(|_| user_err("not a sum of quarry_volume or quarry_pnl"))?;
    let scale: i64 = ctx.get(1)?;
    if scale != SCALE as i64 && scale != PNL_SCALE as i64 {
        return Err(user_err(format!("scale {scale}")));
    }
    Ok((i128::from_le_bytes(bytes), scale as u32))
}

/// Registers the functions on `conn` (the writer's connection).
pub(super) fn register(conn: &Connection) -> rusqlite::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    conn.create_aggregate_function("quarry_volume", 2, flags, Volume)?;
    conn.create_aggregate_function("quarry_pnl", 5, flags, Pnl)?;
    conn.create_scalar_function("quarry_real", 2, flags, |ctx| {
        let (v, scale) = sum_arg(ctx)?;
        Ok(decimal::to_f64(v, scale))
    })?;
    conn.create_scalar_function("quarry_exact", 2, flags, |ctx| {
        let (v, scale) = sum_arg(ctx)?;
        Ok(exact_column(v, scale))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_come_back_exactly_from_the_real_below_the_threshold() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..200_000 {
            // xorshift: values spread over every magnitude below 2^50.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let units = (x >> (14 + x % 40)) as i128;
            let units = units.min(UNITS_EXACT_FROM - 1);
            for u in [units, -units, UNITS_EXACT_FROM - 1 - (x % 1000) as i128] {
                let real = decimal::to_f64(u, SCALE);
                assert_eq!(units_of(real, units_column(u)), u, "{u}");
            }
        }
        let big = 999_999_999_999_999_999i128; // 9999999999.99999999
        assert_eq!(units_column(big), Some(big as i64));
        assert_eq!(
            units_of(decimal::to_f64(big, SCALE), units_column(big)),
            big
        );
    }

    #[test]
    fn sums_keep_their_exact_text_past_fifteen_digits() {
        let v = decimal::parse_scaled(b"3069696488.1704671885", PNL_SCALE).unwrap();
        let text = exact_column(v, PNL_SCALE).unwrap();
        assert_eq!(text, "3069696488.1704671885");
        let real = decimal::to_f64(v, PNL_SCALE);
        assert_eq!(sum_of(real, Some(&text), PNL_SCALE).unwrap(), v);
        let small = decimal::parse_scaled(b"-69146.6913", PNL_SCALE).unwrap();
        assert_eq!(exact_column(small, PNL_SCALE), None);
        assert_eq!(
            sum_of(decimal::to_f64(small, PNL_SCALE), None, PNL_SCALE).unwrap(),
            small
        );
        assert!(!over_15_digits(0));
        assert!(!over_15_digits(-123_450));
        assert!(!over_15_digits(999_999_999_999_999));
        assert!(over_15_digits(1_234_567_890_123_456));
        assert!(!over_15_digits(1_234_567_890_123_450));
        assert!(!over_15_digits(-123_456_789_012_345 * 10i128.pow(20)));
        assert!(over_15_digits(-(123_456_789_012_345 * 10i128.pow(20) + 1)));
        assert!(over_15_digits(i128::MIN));
    }

    #[test]
    fn sql_folds_trades_exactly() {
        let c = Connection::open_in_memory().unwrap();
        register(&c).unwrap();
        c.execute_batch("CREATE TABLE t (side TEXT, q REAL, qu INTEGER, p REAL, pu INTEGER)")
            .unwrap();
        let rows = [
            ("sell", "12345678.12345678", "98765432.87654321"),
            ("buy", "0.1", "0.2"),
            ("sell", "0.1", "0.7"),
        ];
        let (mut vol, mut pnl) = (0i128, 0i128);
        for (side, q, p) in rows {
            let q = decimal::parse_scaled(q.as_bytes(), SCALE).unwrap();
            let p = decimal::parse_scaled(p.as_bytes(), SCALE).unwrap();
            vol += q;
            pnl += if side == "sell" { q * p } else { -q * p };
            c.execute(
                "INSERT INTO t VALUES (?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![
                    side,
                    decimal::to_f64(q, SCALE),
                    units_column(q),
                    decimal::to_f64(p, SCALE),
                    units_column(p)
                ],
            )
            .unwrap();
        }
        let (v, p, real): (Option<String>, Option<String>, f64) = c
            .query_row(
                "SELECT quarry_exact(v, 8), quarry_exact(p, 16), quarry_real(p, 16) FROM
                   (SELECT quarry_volume(q, qu) AS v, quarry_pnl(side, q, qu, p, pu) AS p FROM t)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(
            v.as_deref(),
            Some(decimal::format_scaled(vol, SCALE).as_str())
        );
        assert_eq!(
            p.as_deref(),
            Some(decimal::format_scaled(pnl, PNL_SCALE).as_str())
        );
        assert_eq!(real, decimal::to_f64(pnl, PNL_SCALE));
    }
}
