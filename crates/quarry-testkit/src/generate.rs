//! Deterministic synthetic trade files.
//!
//! The same options always produce the same bytes: a seeded ChaCha stream
//! drives every choice. About 10 000 users, each with a fixed client type
//! and a portfolio of 6 of the 50 symbols, trade over two years; a configurable share of rows is
//! broken in every way the validator knows, spread evenly over the reasons.

use std::io::{self, Write};

use chrono::{NaiveDate, TimeDelta};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Debug, Clone)]
pub struct GenOptions {
    pub rows: u64,
    pub seed: u64,
    /// Share of rows that are invalid, e.g. 0.001.
    pub bad_share: f64,
    pub users: u32,
}

impl Default for GenOptions {
    fn default() -> Self {
        Self {
            rows: 1000,
            seed: 42,
            bad_share: 0.001,
            users: 10_000,
        }
    }
}

const SYMBOLS: [(&str, u32); 50] = [
    ("AAPL", 180),
    ("MSFT", 380),
    ("GOOGL", 140),
    ("AMZN", 150),
    ("META", 350),
    ("NVDA", 500),
    ("TSLA", 240),
    ("BRK.B", 360),
    ("JPM", 170),
    ("V", 260),
    ("JNJ", 160),
    ("WMT", 160),
    ("PG", 150),
    ("MA", 420),
    ("UNH", 520),
    ("HD", 330),
    ("DIS", 95),
    ("BAC", 32),
    ("XOM", 110),
    ("CVX", 150),
    ("KO", 60),
    ("PEP", 170),
    ("CSCO", 50),
    ("ORCL", 115),
    ("INTC", 40),
    ("AMD", 120),
    ("NFLX", 480),
    ("ADBE", 560),
    ("CRM", 250),
    ("PFE", 30),
    ("MRK", 105),
    ("ABBV", 150),
    ("T", 17),
    ("VZ", 38),
    ("NKE", 100),
    ("MCD", 290),
    ("IBM", 160),
    ("QCOM", 130),
    ("TXN", 170),
    ("AVGO", 900),
    ("COST", 600),
    ("SBUX", 95),
    ("GS", 380),
    ("MS", 90),
    ("C", 50),
    ("SPY", 450),
    ("QQQ", 390),
    ("IWM", 190),
    ("DIA", 350),
    ("GLD", 190),
];

/// Symbols each user trades.
const PORTFOLIO: usize = 6;

const CLIENT_TYPES: [&str; 3] = ["gold", "silver", "bronze"];

/// The broken rows: one per reason code, cycled.
const BAD_KINDS: usize = 14;

/// Writes a CSV of `opts.rows` trades (plus header) to `out`.
pub fn generate(opts: &GenOptions, out: &mut impl Write) -> io::Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let start = NaiveDate::from_ymd_opt(2023, 1, 2).expect("date");
    let span_secs: i64 = 2 * 364 * 86_400;
    let users = opts.users.max(1);
    let bad_every = if opts.bad_share > 0.0 {
        (1.0 / opts.bad_share).round().max(1.0) as u64
    } else {
        u64::MAX
    };
    writeln!(
        out,
        "timestamp,user_id,client_type,symbol,side,quantity,price"
    )?;
    let mut line = String::with_capacity(96);
    let mut bad_kind = 0usize;
    for i in 0..opts.rows {
        let user = rng.random_range(0..users);
        let user_id = 1000 + user;
        // A user's client type is fixed: derived from the user, not drawn per row.
        let ct = CLIENT_TYPES[(user % 3) as usize];
        // Each user trades a fixed portfolio of a few symbols, as real clients do.
        let pick = rng.random_range(0..PORTFOLIO);
        let (sym, base) = SYMBOLS[(user as usize * 11 + pick * 7) % SYMBOLS.len()];
        let side = if rng.random_bool(0.5) { "buy" } else { "sell" };
        let qty_cents: u32 = rng.random_range(1..=10_000);
        let price_cents: u64 = base as u64 * rng.random_range(80..=120);
        let secs = rng.random_range(0..span_secs);
        let ts = start.and_hms_opt(0, 0, 0).expect("time") + TimeDelta::seconds(secs);
        let mut f: [String; 7] = [
            ts.format("%Y-%m-%d %H:%M:%S").to_string(),
            user_id.to_string(),
            ct.to_string(),
            sym.to_string(),
            side.to_string(),
            format!("{}.{:02}", qty_cents / 100, qty_cents % 100),
            format!("{}.{:02}", price_cents / 100, price_cents % 100),
        ];
        if (i + 1).is_multiple_of(bad_every) {
            // kind 2k: field k missing; kind 2k+1: field k invalid
            let field = bad_kind / 2;
            f[field] = if bad_kind.is_multiple_of(2) {
                String::new()
            } else {
                [
                    "2023-02-30 10:00:00",
                    "30 03",
                    "platinum",
                    "$$$",
                    "hold",
                    "-1",
                    "abc",
                ][field]
                    .to_string()
            };
            bad_kind = (bad_kind + 1) % BAD_KINDS;
        }
        line.clear();
        line.push_str(&f.join(","));
        line.push('\n');
        out.write_all(line.as_bytes())?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bytes_and_every_bad_kind() {
        let opts = GenOptions {
            rows: 2000,
            bad_share: 0.01,
            ..Default::default()
        };
        let mut a = Vec::new();
        let mut b = Vec::new();
        generate(&opts, &mut a).unwrap();
        generate(&opts, &mut b).unwrap();
        assert_eq!(a, b);
        let text = String::from_utf8(a).unwrap();
        assert_eq!(text.lines().count(), 2001);
        for marker in [
            "2023-02-30",
            ",30 03,",
            "platinum",
            "$$$",
            "hold",
            ",-1,",
            ",abc",
        ] {
            assert!(text.contains(marker), "{marker}");
        }
        let mut c = Vec::new();
        generate(&GenOptions { seed: 7, ..opts }, &mut c).unwrap();
        assert_ne!(text.as_bytes(), &c[..]);
    }
}
