//! Exact fixed-point decimals.
//!
//! Quantities and prices are integers scaled by 10^8; sums are `i128` at the
//! same scale, PnL products at 10^16. This module is hand-written rather than
//! built on a decimal crate because the hot path parses hundreds of millions
//! of fields: it must not allocate, must reject (not round) digits beyond the
//! scale, and must produce exactly the fixed scale the accumulators use.

/// Decimal places of quantities and prices.
pub const SCALE: u32 = 8;
/// Decimal places of `quantity * price` and of PnL sums.
pub const PNL_SCALE: u32 = 2 * SCALE;

/// Why a decimal text was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecimalError {
    /// Not a decimal number (includes NaN and infinities).
    Syntax,
    /// More significant decimal places than the scale can hold exactly.
    TooPrecise,
    /// Too large for the fixed-point type.
    Overflow,
}

/// Parses decimal text (`157.35`, `-1`, `.5`, `1.`, `+2.5e-3`) into an integer
/// scaled by `10^scale`. Exact: digits that the scale cannot represent are an
/// error unless they are zeros.
pub fn parse_scaled(s: &[u8], scale: u32) -> Result<i128, DecimalError> {
    let (neg, rest) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let mut mantissa: i128 = 0;
    let mut frac_digits: i32 = 0;
    let mut digits = 0usize;
    let mut seen_dot = false;
    let mut i = 0;
    // Zeros after the decimal point not yet folded into the mantissa; they are
    // dropped when nothing non-zero follows, so "1.50000000000" parses at scale 8.
    let mut pending_zeros: i32 = 0;
    while i < rest.len() {
        let c = rest[i];
        match c {
            b'0'..=b'9' => {
                digits += 1;
                let d = (c - b'0') as i128;
                if seen_dot {
                    if d == 0 {
                        pending_zeros += 1;
                    } else {
                        for _ in 0..pending_zeros {
                            mantissa = mantissa.checked_mul(10).ok_or(DecimalError::Overflow)?;
                        }
                        frac_digits += pending_zeros + 1;
                        pending_zeros = 0;
                        mantissa = mantissa
                            .checked_mul(10)
                            .and_then(|m| m.checked_add(d))
                            .ok_or(DecimalError::Overflow)?;
                    }
                } else {
                    mantissa = mantissa
                        .checked_mul(10)
                        .and_then(|m| m.checked_add(d))
                        .ok_or(DecimalError::Overflow)?;
                }
            }
            b'.' if !seen_dot => seen_dot = true,
            b'e' | b'E' => break,
            _ => return Err(DecimalError::Syntax),
        }
        i += 1;
    }
    if digits == 0 {
        return Err(DecimalError::Syntax);
    }
    let mut exp: i32 = 0;
    if i < rest.len() {
        // exponent part
        let e = &rest[i + 1..];
        let (eneg, edigits) = match e.first() {
            Some(b'-') => (true, &e[1..]),
            Some(b'+') => (false, &e[1..]),
            _ => (false, e),
        };
        if edigits.is_empty() || edigits.len() > 4 || !edigits.iter().all(u8::is_ascii_digit) {
            return Err(DecimalError::Syntax);
        }
        let v: i32 = edigits.iter().fold(0, |a, d| a * 10 + (d - b'0') as i32);
        exp = if eneg { -v } else { v };
    }
    // value = mantissa * 10^(exp - frac_digits); we want value * 10^scale.
    let shift = scale as i32 + exp - frac_digits;
    let mut v = mantissa;
    if v != 0 {
        if shift >= 0 {
            for _ in 0..shift {
                v = v.checked_mul(10).ok_or(DecimalError::Overflow)?;
            }
        } else {
            for _ in 0..(-shift) {
                if v % 10 != 0 {
                    return Err(DecimalError::TooPrecise);
                }
                v /= 10;
            }
        }
    }
    Ok(if neg { -v } else { v })
}

/// Formats an integer scaled by `10^scale` as the shortest exact decimal
/// text: `691466913, 4` → `69146.6913`, `-5000, 4` → `-0.5`, `0` → `0`.
pub fn format_scaled(v: i128, scale: u32) -> String {
    let neg = v < 0;
    let abs = v.unsigned_abs();
    let pow = 10u128.pow(scale);
    let int = abs / pow;
    let mut frac = abs % pow;
    let mut out = String::with_capacity(24);
    if neg {
        out.push('-');
    }
    out.push_str(&int.to_string());
    if frac != 0 {
        let mut width = scale as usize;
        while frac.is_multiple_of(10) {
            frac /= 10;
            width -= 1;
        }
        out.push('.');
        out.push_str(&format!("{frac:0width$}"));
    }
    out
}

/// Removes up to `scale` trailing decimal zeros from a scaled integer.
fn strip_zeros<T>(mut v: T, mut scale: u32) -> (T, u32)
where
    T: Copy + PartialEq + From<i32> + std::ops::Rem<Output = T> + std::ops::Div<Output = T>,
{
    for (step, p) in [(8, 100_000_000), (4, 10_000), (2, 100), (1, 10)] {
        let p = T::from(p);
        if scale >= step && v % p == T::from(0) {
            v = v / p;
            scale -= step;
        }
    }
    (v, scale)
}

/// Powers of ten that are exact doubles.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// The `f64` nearest to an exact scaled decimal (correctly rounded, once).
pub fn to_f64(v: i128, scale: u32) -> f64 {
    // Trailing zeros first: a PnL at scale 16 usually has only 4 real places.
    // In 64-bit arithmetic as soon as the value fits (128-bit division is a
    // library call): one 128-bit step of 8 places brings most sums there.
    let (v, scale) = match i64::try_from(v) {
        Err(_) if scale >= 8 && v % 100_000_000 == 0 => (v / 100_000_000, scale - 8),
        _ => (v, scale),
    };
    let (v, scale) = match i64::try_from(v) {
        Ok(small) => {
            let (small, scale) = strip_zeros(small, scale);
            (i128::from(small), scale)
        }
        Err(_) => strip_zeros(v, scale),
    };
    // When both the integer and the power of ten are exact doubles, one IEEE
    // division is correctly rounded: the common case, without any text.
    if v.unsigned_abs() <= 1 << 53 && (scale as usize) < POW10.len() {
        return v as f64 / POW10[scale as usize];
    }
    // Otherwise go through the exact text: Rust's float parser rounds correctly.
    format_scaled(v, scale)
        .parse()
        .expect("formatted decimal parses")
}

/// Recovers the decimal a stored `f64` stands for: the shortest text that
/// round-trips to the same double, read at `scale`. Exact whenever the
/// original decimal had at most 15 significant digits.
pub fn from_f64(v: f64, scale: u32) -> Result<i128, DecimalError> {
    if !v.is_finite() {
        return Err(DecimalError::Syntax);
    }
    // `Display` for f64 prints the shortest round-trip digits, never an exponent.
    let text = v.to_string();
    match parse_scaled(text.as_bytes(), scale) {
        Err(DecimalError::TooPrecise) => round_to_scale(&text, scale),
        other => other,
    }
}

/// Parses text with more places than `scale`, rounding half away from zero.
fn round_to_scale(text: &str, scale: u32) -> Result<i128, DecimalError> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    let keep = &frac[..(scale as usize).min(frac.len())];
    let next = frac.as_bytes().get(scale as usize).copied().unwrap_or(b'0');
    let mut v = parse_scaled(format!("{int}.{keep}").as_bytes(), scale)?;
    if next >= b'5' {
        v += if text.starts_with('-') { -1 } else { 1 };
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<i128, DecimalError> {
        parse_scaled(s.as_bytes(), SCALE)
    }

    #[test]
    fn parses_plain_and_scientific_text() {
        assert_eq!(p("157.35"), Ok(15_735_000_000));
        assert_eq!(p("-1"), Ok(-100_000_000));
        assert_eq!(p("+.5"), Ok(50_000_000));
        assert_eq!(p("1."), Ok(100_000_000));
        assert_eq!(p("0.00000001"), Ok(1));
        assert_eq!(p("1.50000000000"), Ok(150_000_000));
        assert_eq!(p("2.5e-3"), Ok(250_000));
        assert_eq!(p("1E2"), Ok(10_000_000_000));
        assert_eq!(p("0"), Ok(0));
        assert_eq!(p("0.000000000"), Ok(0));
    }

    #[test]
    fn rejects_what_is_not_an_exact_decimal() {
        for bad in [
            "", ".", "-", "abc", "1.2.3", "NaN", "inf", "1e", "1e+", "1,5", " 1",
        ] {
            assert_eq!(p(bad), Err(DecimalError::Syntax), "{bad:?}");
        }
        assert_eq!(p("0.000000001"), Err(DecimalError::TooPrecise));
        assert_eq!(p("1e-9"), Err(DecimalError::TooPrecise));
        assert_eq!(p("1e40"), Err(DecimalError::Overflow));
    }

    #[test]
    fn formats_shortest_exact_text() {
        assert_eq!(format_scaled(691_466_913, 4), "69146.6913");
        assert_eq!(format_scaled(-2_004_569, 4), "-200.4569");
        assert_eq!(format_scaled(-5000, 4), "-0.5");
        assert_eq!(format_scaled(0, 8), "0");
        assert_eq!(format_scaled(1, 8), "0.00000001");
        assert_eq!(format_scaled(12_300_000_000, 8), "123");
    }

    #[test]
    fn the_fast_double_path_matches_the_exact_text_path() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..100_000 {
            // xorshift: a spread of magnitudes and digits
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = (x >> (x % 40)) as i128 * if x & 1 == 0 { 1 } else { -1 };
            // times powers of ten: sums past 64 bits with trailing zeros
            for v in [v, v * 100_000_000, v * 10i128.pow(12)] {
                for scale in [4, SCALE, PNL_SCALE] {
                    let text: f64 = format_scaled(v, scale).parse().unwrap();
                    assert_eq!(to_f64(v, scale), text, "{v} / 10^{scale}");
                }
            }
        }
    }

    #[test]
    fn converts_to_the_nearest_double_once() {
        // 0.1 + 0.2 summed in floats drifts; summed exactly it does not.
        let exact = p("0.1").unwrap() + p("0.2").unwrap();
        assert_eq!(to_f64(exact, SCALE), 0.3);
        assert_eq!(to_f64(691_466_913, 4), 69146.6913);
        assert_eq!(
            from_f64(69146.6913, PNL_SCALE),
            Ok(691_466_913 * 10i128.pow(12))
        );
        assert_eq!(from_f64(-200.4569, 4), Ok(-2_004_569));
    }
}
