//! Trade timestamps: `YYYY-MM-DD HH:MM:SS` or `YYYY-MM-DDTHH:MM:SS`, optional
//! fractional seconds (up to 9 digits), optional `Z` or `±HH:MM` offset.
//! Naive timestamps are UTC. Parsed by hand: this runs once per input row and
//! the format is fixed, so a byte-level parser avoids chrono's format
//! interpretation and any allocation; chrono still validates the calendar.

use chrono::NaiveDate;

const NANOS_PER_SEC: i64 = 1_000_000_000;
const NANOS_PER_DAY: i64 = 86_400 * NANOS_PER_SEC;

fn digits(b: &[u8]) -> Option<u32> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0u32, |a, d| a * 10 + (d - b'0') as u32))
}

/// Nanoseconds since the Unix epoch (UTC), or `None` if the text is not an
/// accepted timestamp or falls outside 1677–2262 (the nanosecond range).
pub fn parse(s: &[u8]) -> Option<i64> {
    if s.len() < 19 || s[4] != b'-' || s[7] != b'-' || s[13] != b':' || s[16] != b':' {
        return None;
    }
    if !matches!(s[10], b' ' | b'T' | b't') {
        return None;
    }
    let year = digits(&s[0..4])? as i32;
    let month = digits(&s[5..7])?;
    let day = digits(&s[8..10])?;
    let hour = digits(&s[11..13])?;
    let minute = digits(&s[14..16])?;
    let second = digits(&s[17..19])?;
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(year, month, day)?;
    let mut rest = &s[19..];
    let mut frac_nanos: i64 = 0;
    if let Some(r) = rest.strip_prefix(b".") {
        let n = r.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 || n > 9 {
            return None;
        }
        frac_nanos = digits(&r[..n])? as i64 * 10i64.pow(9 - n as u32);
        rest = &r[n..];
    }
    let offset_secs: i64 = match rest {
        [] | [b'Z'] | [b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let h = digits(&[*h1, *h2])? as i64;
            let m = digits(&[*m1, *m2])? as i64;
            if h > 23 || m > 59 {
                return None;
            }
            let off = h * 3600 + m * 60;
            if *sign == b'-' { -off } else { off }
        }
        _ => return None,
    };
    let days = date
        .signed_duration_since(NaiveDate::from_ymd_opt(1970, 1, 1)?)
        .num_days();
    let secs = days * 86_400 + (hour * 3600 + minute * 60 + second) as i64 - offset_secs;
    secs.checked_mul(NANOS_PER_SEC)?.checked_add(frac_nanos)
}

/// The UTC date of a timestamp, as days since the epoch (Arrow Date32).
pub fn trade_date(nanos: i64) -> i32 {
    nanos.div_euclid(NANOS_PER_DAY) as i32
}

pub use quarry_core::dates::week_start;

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Datelike, Weekday};

    fn iso(nanos: i64) -> String {
        DateTime::from_timestamp_nanos(nanos)
            .format("%Y-%m-%dT%H:%M:%S%.f")
            .to_string()
    }

    fn date(days: i32) -> NaiveDate {
        NaiveDate::from_ymd_opt(1970, 1, 1).unwrap() + chrono::TimeDelta::days(days as i64)
    }

    #[test]
    fn accepts_the_documented_forms() {
        let p = |s: &str| parse(s.as_bytes()).map(iso);
        assert_eq!(p("2023-01-02 03:04:05").unwrap(), "2023-01-02T03:04:05");
        assert_eq!(p("2023-01-02T03:04:05").unwrap(), "2023-01-02T03:04:05");
        assert_eq!(
            p("2023-01-02T03:04:05.5").unwrap(),
            "2023-01-02T03:04:05.500"
        );
        assert_eq!(
            p("2023-01-02 03:04:05.123456789Z").unwrap(),
            "2023-01-02T03:04:05.123456789"
        );
        assert_eq!(
            p("2023-01-02T03:04:05+02:00").unwrap(),
            "2023-01-02T01:04:05"
        );
        // An offset can move the trade to another UTC day, week and year.
        assert_eq!(
            p("2023-01-01T01:00:00+02:00").unwrap(),
            "2022-12-31T23:00:00"
        );
        assert_eq!(
            p("2022-12-31T23:30:00-01:00").unwrap(),
            "2023-01-01T00:30:00"
        );
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "2023-13-01 00:00:00",
            "2023-02-29 00:00:00",
            "2023-01-01 24:00:00",
            "2023-01-01 00:60:00",
            "2023-01-01 00:00:60",
            "2023-01-01",
            "01/02/2023 00:00:00",
            "2023-01-01 00:00:00.",
            "2023-01-01 00:00:00.1234567890",
            "2023-01-01 00:00:00+0200",
            "2023-01-01 00:00:00+24:00",
            "2023-01-01 00:00:00 UTC",
            "2023-01-01x00:00:00",
            "9999-01-01 00:00:00",
            "not a date at all",
        ] {
            assert_eq!(parse(bad.as_bytes()), None, "{bad}");
        }
        assert!(parse(b"2024-02-29 00:00:00").is_some());
    }

    #[test]
    fn weeks_start_on_monday_across_year_ends() {
        for days in -1000..1000 {
            let ws = date(week_start(days));
            assert_eq!(ws.weekday(), Weekday::Mon);
            let d = date(days);
            assert!(ws <= d && (d - ws).num_days() < 7);
        }
        // 2023-01-01 is a Sunday: its week starts on 2022-12-26.
        let sunday = trade_date(parse(b"2023-01-01 12:00:00").unwrap());
        assert_eq!(date(week_start(sunday)).to_string(), "2022-12-26");
        let before_epoch = trade_date(parse(b"1969-12-31 23:59:59").unwrap());
        assert_eq!(date(before_epoch).to_string(), "1969-12-31");
    }
}
