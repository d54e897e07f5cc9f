//! Incremental weekly aggregation and duplicate detection.
//!
//! Batches of validated trades are folded into one accumulator keyed by
//! (week_start_date, client_type, user_id, symbol). User ids and symbols are
//! interned to integers, so memory grows with the number of groups and
//! distinct keys, never with the number of input rows.

mod groups;

use std::sync::{Arc, Mutex};

use arrow::array::{
    ArrayRef, AsArray, BooleanArray, Date32Builder, Decimal128Builder, Int64Builder,
    PrimitiveArray, RecordBatch, StringArray, StringBuilder,
};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{Date32Type, Decimal128Type, TimestampNanosecondType};
use hashbrown::{HashMap, HashSet};
use quarry_core::schema::{AGG_SCHEMA, INPUT_COLUMNS, PNL_TYPE, VOLUME_TYPE};
use quarry_core::{Error, Result};
use xxhash_rust::xxh3::xxh3_64;

use self::groups::{EMPTY, GroupKey, GroupTable, Interner, Slot, Totals, USER_BITS};
use crate::spill::HashRuns;
use crate::timestamp::week_start;
use crate::validate::Field;

/// The client types, by the index a group key carries.
const CLIENT_TYPES: [&str; 3] = ["gold", "silver", "bronze"];

/// The accumulator of one partition of the weeks. Duplicate rows share their
/// week, so duplicate detection is exact within a partition.
struct Part {
    /// One interner per client type: a user id can appear under several.
    users: [Interner; 3],
    symbols: Interner,
    /// One table per week: output comes out in week order (cheap for the
    /// warehouse's partition index), and a table resize, which briefly holds
    /// the old and the new table, costs one week's groups, not all of them.
    weeks: HashMap<i32, usize>,
    /// The group tables, in `weeks` order of first appearance.
    tables: Vec<(i32, GroupTable)>,
    seen: Seen,
    /// Reused buffer of one row's normalised bytes, for its hash.
    row_bytes: Vec<u8>,
    /// Trades and Σ quantity per (trade_date, client type), for the
    /// consistency check.
    daily: HashMap<(i32, u8), DayTotals>,
    /// The newest trade timestamp (ns), for the freshness check.
    newest: Option<i64>,
    /// Reused buffer of the rows of one batch to fold: (table, group,
    /// hash of the group, Σ quantity, ±notional).
    folds: Vec<(usize, u64, u64, i128, i128)>,
    /// Whether the weekly groups are built: off when the warehouse computes
    /// the aggregate (ELT), which saves their memory and their time.
    groups: bool,
}

/// Trades and volume (Σ quantity, scaled by 10^8) of one day and client type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DayTotals {
    pub trades: u64,
    pub volume: i128,
}

/// What the run's valid rows looked like, beside the aggregate itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    /// Per (trade_date as days since the epoch, client type).
    pub daily: std::collections::BTreeMap<(i32, &'static str), DayTotals>,
    /// Newest trade timestamp, ns since the epoch.
    pub newest: Option<i64>,
}

/// Hashes of the normalised rows, for exact-duplicate detection.
enum Seen {
    /// Deduplicating: each row is checked as it arrives.
    Online { set: HashSet<u64>, duplicates: u64 },
    /// Only counting: hashes are appended and counted once at the end by an
    /// external sort, so memory stays bounded whatever the input size.
    Deferred { hashes: HashRuns },
}

/// Rows between a slot's prefetch and its update: enough for the load to
/// arrive, few enough that it is still in the cache.
const PREFETCH_AHEAD: usize = 16;

/// Weeks are spread over this many independently locked partitions, so
/// batches validated on different threads fold into the totals in parallel.
const PARTS: usize = 2;

/// Row hashes each part keeps in memory before spilling a sorted run (64 MiB).
const SPILL_HASHES: usize = 8 << 20;

/// Incremental weekly aggregation shared by the threads of a run.
pub struct Aggregator {
    parts: Vec<Mutex<Part>>,
    /// Hashes of the rows' key columns, when key uniqueness is checked. One
    /// set for all weeks: rows with the same key may fall in different weeks.
    keys: Option<KeyHashes>,
}

struct KeyHashes {
    columns: KeyColumns,
    hashes: Mutex<HashRuns>,
}

/// The input columns that identify a trade, as a set of `Field` indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyColumns(u8);

impl KeyColumns {
    /// None for no columns; unknown names are refused by config validation
    /// and ignored here.
    pub fn from_names(names: &[String]) -> Option<Self> {
        let mask = names
            .iter()
            .filter_map(|n| INPUT_COLUMNS.iter().position(|c| c == n))
            .fold(0u8, |m, i| m | 1 << i);
        (mask != 0).then_some(Self(mask))
    }

    fn has(self, field: Field) -> bool {
        self.0 & 1 << field as u8 != 0
    }
}

/// The hash of each row's key columns (normalised values).
fn key_hashes(c: &Columns<'_>, key: KeyColumns) -> Vec<u64> {
    let mut b = Vec::with_capacity(128);
    (0..c.ts.len())
        .map(|i| {
            b.clear();
            for f in Field::ALL.into_iter().filter(|f| key.has(*f)) {
                match f {
                    Field::Timestamp => b.extend_from_slice(&c.ts.value(i).to_le_bytes()),
                    Field::UserId => b.extend_from_slice(c.user.value(i).as_bytes()),
                    Field::ClientType => b.extend_from_slice(c.ct.value(i).as_bytes()),
                    Field::Symbol => b.extend_from_slice(c.symbol.value(i).as_bytes()),
                    Field::Side => b.extend_from_slice(c.side.value(i).as_bytes()),
                    Field::Quantity => b.extend_from_slice(&c.qty.value(i).to_le_bytes()),
                    Field::Price => b.extend_from_slice(&c.price.value(i).to_le_bytes()),
                }
                b.push(0xff); // separator: no UTF-8 text contains 0xff
            }
            xxh3_64(&b)
        })
        .collect()
}

struct Columns<'a> {
    ts: &'a PrimitiveArray<TimestampNanosecondType>,
    user: &'a StringArray,
    ct: &'a StringArray,
    symbol: &'a StringArray,
    side: &'a StringArray,
    qty: &'a PrimitiveArray<Decimal128Type>,
    price: &'a PrimitiveArray<Decimal128Type>,
    date: &'a PrimitiveArray<Date32Type>,
}

impl Part {
    fn new(dedup: bool) -> Self {
        Self {
            users: Default::default(),
            symbols: Interner::default(),
            weeks: HashMap::new(),
            tables: Vec::new(),
            seen: if dedup {
                Seen::Online {
                    set: HashSet::new(),
                    duplicates: 0,
                }
            } else {
                Seen::Deferred {
                    hashes: HashRuns::new(SPILL_HASHES),
                }
            },
            row_bytes: Vec::with_capacity(128),
            daily: HashMap::new(),
            newest: None,
            folds: Vec::new(),
            groups: true,
        }
    }

    /// Folds the given rows (all of this partition's weeks) into the totals;
    /// marks dropped duplicates in `keep`.
    fn ingest(
        &mut self,
        c: &Columns<'_>,
        rows: &[(u32, i32)],
        keep: &mut Option<Vec<bool>>,
    ) -> Result<()> {
        for &(i, week) in rows {
            let i = i as usize;
            let (user, ct, symbol, side) = (
                c.user.value(i),
                c.ct.value(i),
                c.symbol.value(i),
                c.side.value(i),
            );
            let (q, price) = (c.qty.value(i), c.price.value(i));
            let b = &mut self.row_bytes;
            b.clear();
            b.extend_from_slice(&c.ts.value(i).to_le_bytes());
            for s in [user, ct, symbol, side] {
                b.extend_from_slice(s.as_bytes());
                b.push(0xff); // separator: no UTF-8 text contains 0xff
            }
            b.extend_from_slice(&q.to_le_bytes());
            b.extend_from_slice(&price.to_le_bytes());
            let hash = xxh3_64(b);
            match &mut self.seen {
                Seen::Online { set, duplicates } => {
                    if !set.insert(hash) {
                        *duplicates += 1;
                        keep.get_or_insert_with(|| vec![true; c.ts.len()])[i] = false;
                        continue;
                    }
                }
                Seen::Deferred { hashes } => hashes.push(hash)?,
            }
            // Values are normalised by validation: the first byte tells them apart.
            let client_type: u8 = match ct.as_bytes().first() {
                Some(b'g') => 0,
                Some(b's') => 1,
                Some(b'b') => 2,
                _ => return Err(Error::internal(format!("unnormalised client_type {ct:?}"))),
            };
            let day = self
                .daily
                .entry((c.date.value(i), client_type))
                .or_default();
            day.trades += 1;
            day.volume += q;
            let ts = c.ts.value(i);
            self.newest = Some(self.newest.map_or(ts, |n| n.max(ts)));
            if !self.groups {
                continue;
            }
            let user_id = self.users[client_type as usize].id(user);
            if user_id >= 1 << USER_BITS {
                return Err(Error::internal(
                    "more than 2^30 distinct users of one client type",
                ));
            }
            let key = GroupKey {
                user: (client_type as u32) << USER_BITS | user_id,
                symbol: self.symbols.id(symbol),
            };
            let notional = q * price;
            let pnl = if side.as_bytes().first() == Some(&b's') {
                notional
            } else {
                -notional
            };
            let table = *self.weeks.entry(week).or_insert_with(|| {
                self.tables.push((week, GroupTable::new()));
                self.tables.len() - 1
            });
            let key = key.packed();
            self.folds.push((table, key, GroupTable::hash(key), q, pnl));
        }
        // Folded in a second, short loop: its probes into the group tables
        // (mostly cache misses) do not depend on each other; each row's slot
        // is prefetched `PREFETCH_AHEAD` rows before it is updated.
        for j in 0..self.folds.len() {
            if let Some(&(table, _, hash, _, _)) = self.folds.get(j + PREFETCH_AHEAD) {
                self.tables[table].1.prefetch(hash);
            }
            let (table, key, hash, q, pnl) = self.folds[j];
            let t = self.tables[table].1.totals(key, hash);
            let (volume, p, count) = (t.volume, t.pnl, t.count);
            t.volume = volume + q;
            t.pnl = p + pnl;
            t.count = count
                .checked_add(1)
                .ok_or_else(|| Error::internal("more than 2^32 trades in one group"))?;
        }
        self.folds.clear();
        Ok(())
    }
}

/// The duplicate counts of a finished run, computed apart from the
/// aggregate output so the two can run on different cores.
pub struct DuplicateCount {
    seen: Vec<Seen>,
    keys: Option<HashRuns>,
}

/// Rows repeating an earlier row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Duplicates {
    /// Exact duplicates (dropped, if deduplicating).
    pub exact: u64,
    /// Rows repeating an earlier row's key columns (None: not checked).
    pub key: Option<u64>,
}

impl DuplicateCount {
    pub fn count(self) -> Result<Duplicates> {
        let exact = self
            .seen
            .into_iter()
            .map(|seen| match seen {
                Seen::Online { duplicates, .. } => Ok(duplicates),
                Seen::Deferred { hashes } => hashes.duplicates(),
            })
            .sum::<Result<u64>>()?;
        let key = self.keys.map(HashRuns::duplicates).transpose()?;
        Ok(Duplicates { exact, key })
    }
}

impl Aggregator {
    /// `dedup`: drop exact duplicate rows instead of only counting them.
    /// `keys`: also count rows repeating an earlier row's key columns.
    pub fn new(dedup: bool, keys: Option<KeyColumns>) -> Self {
        Self {
            keys: keys.map(|columns| KeyHashes {
                columns,
                hashes: Mutex::new(HashRuns::new(SPILL_HASHES)),
            }),
            parts: (0..PARTS).map(|_| Mutex::new(Part::new(dedup))).collect(),
        }
    }

    /// Builds no weekly groups: the duplicates and the profile (whose days
    /// are the run's) only, for a run whose warehouse computes the aggregate
    /// from `trades` (ELT). Its `into_batches` yields no rows.
    pub fn without_groups(mut self) -> Self {
        for part in &mut self.parts {
            part.get_mut().expect("aggregator lock").groups = false;
        }
        self
    }

    /// Folds a batch of validated trades (`TRADES_SCHEMA`) into the totals.
    /// Returns the batch to load: the same one, or with duplicates removed
    /// when deduplicating. Safe to call from several threads at once.
    pub fn ingest(&self, trades: RecordBatch) -> Result<RecordBatch> {
        let col = |i: usize| trades.column(i);
        let c = Columns {
            ts: col(0).as_primitive::<TimestampNanosecondType>(),
            user: col(1).as_string::<i32>(),
            ct: col(2).as_string::<i32>(),
            symbol: col(3).as_string::<i32>(),
            side: col(4).as_string::<i32>(),
            qty: col(5).as_primitive::<Decimal128Type>(),
            price: col(6).as_primitive::<Decimal128Type>(),
            date: col(7).as_primitive::<Date32Type>(),
        };
        if let Some(keys) = &self.keys {
            let hashes = key_hashes(&c, keys.columns);
            let mut runs = keys.hashes.lock().expect("key hashes lock");
            for h in hashes {
                runs.push(h)?;
            }
        }
        let mut rows: [Vec<(u32, i32)>; PARTS] = Default::default();
        for (i, d) in c.date.values().iter().enumerate() {
            let week = week_start(*d);
            rows[(week / 7).rem_euclid(PARTS as i32) as usize].push((i as u32, week));
        }
        let mut keep = None;
        for (part, rows) in self.parts.iter().zip(&rows) {
            if !rows.is_empty() {
                part.lock()
                    .expect("aggregator lock")
                    .ingest(&c, rows, &mut keep)?;
            }
        }
        match keep {
            None => Ok(trades),
            Some(mask) => Ok(filter_record_batch(&trades, &BooleanArray::from(mask))?),
        }
    }

    /// The aggregate rows (`AGG_SCHEMA`), produced lazily in batches of at
    /// most `batch_rows`, week by week in ascending order. Groups are never
    /// copied as a whole, and each week's table is freed once it is out.
    /// Also returns the duplicate counts, still to be computed, and the
    /// profile of the valid rows.
    pub fn into_batches(self, batch_rows: usize) -> (AggBatches, DuplicateCount, Profile) {
        let mut names = Vec::with_capacity(PARTS);
        let mut weeks = Vec::new();
        let mut seen = Vec::with_capacity(PARTS);
        let mut profile = Profile::default();
        let mut remaining = 0;
        for (p, part) in self.parts.into_iter().enumerate() {
            let part = part.into_inner().expect("aggregator lock");
            seen.push(part.seen);
            for ((day, ct), t) in part.daily {
                let d = profile
                    .daily
                    .entry((day, CLIENT_TYPES[ct as usize]))
                    .or_default();
                d.trades += t.trades;
                d.volume += t.volume;
            }
            profile.newest = profile.newest.max(part.newest);
            for (week, groups) in part.tables {
                remaining += groups.len();
                weeks.push((week, p, groups));
            }
            names.push((part.users, part.symbols));
        }
        weeks.sort_unstable_by_key(|(w, _, _)| std::cmp::Reverse(*w));
        let batches = AggBatches {
            names,
            weeks,
            current: None,
            remaining,
            batch_rows: batch_rows.max(1),
        };
        let duplicates = DuplicateCount {
            seen,
            keys: self
                .keys
                .map(|k| k.hashes.into_inner().expect("key hashes lock")),
        };
        (batches, duplicates, profile)
    }
}

/// Iterator over the aggregate batches of a finished run.
pub struct AggBatches {
    /// User and symbol names of each partition.
    names: Vec<([Interner; 3], Interner)>,
    /// Weeks still to emit with their partition, the earliest last.
    weeks: Vec<(i32, usize, GroupTable)>,
    current: Option<(i32, usize, std::vec::IntoIter<Slot>)>,
    remaining: usize,
    batch_rows: usize,
}

impl AggBatches {
    fn next_group(&mut self) -> Option<(i32, usize, GroupKey, Totals)> {
        loop {
            if let Some((week, part, slots)) = &mut self.current
                && let Some(s) = slots.find(|s| s.key != EMPTY)
            {
                return Some((*week, *part, GroupKey::unpacked(s.key), s.totals));
            }
            let (week, part, groups) = self.weeks.pop()?;
            self.current = Some((week, part, groups.slots.into_iter()));
        }
    }
}

impl Iterator for AggBatches {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        let n = self.remaining.min(self.batch_rows);
        if n == 0 {
            return None;
        }
        self.remaining -= n;
        let mut week = Date32Builder::with_capacity(n);
        let mut ct = StringBuilder::with_capacity(n, n * 6);
        let mut user = StringBuilder::with_capacity(n, n * 8);
        let mut symbol = StringBuilder::with_capacity(n, n * 4);
        let mut vol = Decimal128Builder::with_capacity(n).with_data_type(VOLUME_TYPE);
        let mut pnl = Decimal128Builder::with_capacity(n).with_data_type(PNL_TYPE);
        let mut count = Int64Builder::with_capacity(n);
        for _ in 0..n {
            let (w, p, k, t) = self.next_group().expect("remaining counts the groups");
            let client_type = (k.user >> USER_BITS) as usize;
            let (users, symbols) = &self.names[p];
            week.append_value(w);
            ct.append_value(CLIENT_TYPES[client_type]);
            user.append_value(
                &users[client_type].names[(k.user & ((1 << USER_BITS) - 1)) as usize],
            );
            symbol.append_value(&symbols.names[k.symbol as usize]);
            let (v, p) = (t.volume, t.pnl);
            vol.append_value(v);
            pnl.append_value(p);
            count.append_value(i64::from(t.count));
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(week.finish()),
            Arc::new(ct.finish()),
            Arc::new(user.finish()),
            Arc::new(symbol.finish()),
            Arc::new(vol.finish()),
            Arc::new(pnl.finish()),
            Arc::new(count.finish()),
        ];
        Some(RecordBatch::try_new(AGG_SCHEMA.clone(), cols).map_err(Error::from))
    }
}
