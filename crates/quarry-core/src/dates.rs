//! Dates as Arrow `Date32` values (days since 1970-01-01) and the text forms
//! the warehouses store and the run records use.

use chrono::{NaiveDate, TimeDelta, Utc};

fn epoch() -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).expect("the epoch is a date")
}

/// `YYYY-MM-DD` of a day number.
pub fn date_text(days: i32) -> String {
    (epoch() + TimeDelta::days(days.into()))
        .format("%Y-%m-%d")
        .to_string()
}

/// The day number of `YYYY-MM-DD`.
pub fn parse_date(text: &str) -> Option<i32> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| i32::try_from((d - epoch()).num_days()).ok())
}

/// The Monday of the week of a day number (weeks start on Monday).
pub fn week_start(day: i32) -> i32 {
    // 1970-01-01 was a Thursday: day 0 is 3 days after a Monday.
    day - (day + 3).rem_euclid(7)
}

/// The current UTC time as RFC 3339 with milliseconds (run records).
pub fn now_text() -> String {
    Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_as_text() {
        for (days, text) in [
            (0, "1970-01-01"),
            (19_723, "2024-01-01"),
            (-1, "1969-12-31"),
        ] {
            assert_eq!(date_text(days), text);
            assert_eq!(parse_date(text), Some(days));
        }
        assert_eq!(parse_date("2024-02-30"), None);
        assert_eq!(week_start(19_723), 19_723); // Monday 2024-01-01
        assert_eq!(week_start(19_729), 19_723); // Sunday 2024-01-07
        assert_eq!(week_start(0), -3); // Thursday 1970-01-01
        assert_eq!(week_start(-4), -10);
        assert!(now_text().ends_with('Z'));
    }
}
