//! `quarry gen`: deterministic synthetic trades as CSV.

use std::path::Path;

use anyhow::{Context, bail};
use quarry_testkit::{GenOptions, generate};

/// Writes `rows` trades to `out`, the same ones for the same arguments.
pub(crate) fn gen_trades(
    rows: u64,
    out: &Path,
    seed: u64,
    bad_share: f64,
    users: u32,
) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&bad_share) {
        bail!("--bad-share must be between 0 and 1");
    }
    if !out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
    {
        bail!(
            "quarry gen writes CSV: name the output file .csv (got {})",
            out.display()
        );
    }
    let file =
        std::fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let opts = GenOptions {
        rows,
        seed,
        bad_share,
        users,
    };
    generate(&opts, &mut w).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("wrote {rows} trades to {}", out.display());
    Ok(())
}
