//! Incremental weekly aggregation and duplicate detection.
//!
//! Batches of validated trades are folded into one accumulator keyed by
//! (week_start_date, client_type, user_id, symbol). User ids and symbols are
//! interned to integers, so memory grows with the number of groups and
//! distinct keys, never with the number of input rows.

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

use crate::spill::HashRuns;
use crate::timestamp::week_start;
use crate::validate::Field;

/// A group within one week: client type and interned user id, interned
/// symbol. 8 bytes: the accumulator's size is what bounds the run's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct GroupKey {
    /// Client type in the top 2 bits, interned user id below.
    user: u32,
    symbol: u32,
}

const USER_BITS: u32 = 30;

/// Packed to 36 bytes (the map entry is 44 instead of 64); fields are only
/// read and written by value.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, packed(4))]
struct Totals {
    /// Σ quantity, scaled by 10^8.
    volume: i128,
    /// Σ ±quantity·price, scaled by 10^16.
    pnl: i128,
    count: u32,
}

const CLIENT_TYPES: [&str; 3] = ["gold", "silver", "bronze"];

impl GroupKey {
    fn packed(self) -> u64 {
        u64::from(self.user) << 32 | u64::from(self.symbol)
    }

    fn unpacked(k: u64) -> Self {
        Self {
            user: (k >> 32) as u32,
            symbol: k as u32,
        }
    }
}

/// One week's groups: open addressing with linear probing over slots that
/// hold the key and the totals together, so a probe usually touches one
/// cache line, and that line can be prefetched a few rows ahead (the
/// tables are far larger than the caches: each probe is otherwise a stall).
/// hashbrown keeps its control bytes apart from the entries (two lines per
/// probe) and offers no prefetch; hence a table of our own.
struct GroupTable {
    slots: Vec<Slot>,
    len: usize,
    /// 64 − log2(capacity): a hash's top bits pick the home slot.
    shift: u32,
}

/// Packed like `Totals`: 44 bytes.
#[derive(Clone, Copy)]
#[repr(C, packed(4))]
struct Slot {
    /// `GroupKey::packed`, or `EMPTY`.
    key: u64,
    totals: Totals,
}

/// No key: a user field carries a client type of at most 2 in its top bits.
const EMPTY: u64 = u64::MAX;

const EMPTY_SLOT: Slot = Slot {
    key: EMPTY,
    totals: Totals {
        volume: 0,
        pnl: 0,
        count: 0,
    },
};

impl GroupTable {
    fn with_capacity_log2(bits: u32) -> Self {
        Self {
            slots: vec![EMPTY_SLOT; 1 << bits],
            len: 0,
            shift: 64 - bits,
        }
    }

    fn new() -> Self {
        Self::with_capacity_log2(10)
    }

    /// Fibonacci hashing: the key times 2^64/φ; the top bits are well mixed.
    fn hash(key: u64) -> u64 {
        key.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    fn home(&self, hash: u64) -> usize {
        (hash >> self.shift) as usize
    }

    /// Asks the CPU to start loading the home slot of `hash`.
    #[inline]
    fn prefetch(&self, hash: u64) {
        #[cfg(target_arch = "x86_64")]
        {
            let p = self.slots.as_ptr().wrapping_add(self.home(hash));
            // SAFETY: a prefetch is a hint; it never faults and reads nothing
            // into the program (and `p` is inside the slots anyway).
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    p as *const i8,
                )
            };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = hash;
    }

    /// The totals of `key` (zero if new), for update.
    fn totals(&mut self, key: u64, hash: u64) -> &mut Totals {
        // Grown at 3/4 full: linear probing slows down beyond that.
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(hash);
        loop {
            let k = self.slots[i].key;
            if k == key {
                break;
            }
            if k == EMPTY {
                self.slots[i].key = key;
                self.len += 1;
                break;
            }
            i = (i + 1) & mask;
        }
        &mut self.slots[i].totals
    }

    fn grow(&mut self) {
        let bits = 64 - self.shift + 1;
        let old = std::mem::replace(self, Self::with_capacity_log2(bits));
        self.len = old.len;
        let mask = self.slots.len() - 1;
        for slot in old.slots {
            let key = slot.key;
            if key == EMPTY {
                continue;
            }
            let mut i = self.home(Self::hash(key));
            while self.slots[i].key != EMPTY {
                i = (i + 1) & mask;
            }
            self.slots[i] = slot;
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    fn into_groups(self) -> impl Iterator<Item = (GroupKey, Totals)> {
        self.slots
            .into_iter()
            .filter(|s| s.key != EMPTY)
            .map(|s| (GroupKey::unpacked(s.key), s.totals))
    }
}

/// Maps strings to dense ids and back. Strings of up to 15 bytes — nearly
/// every user id and symbol — are looked up by value, packed with their
/// length into one integer: a probe compares two integers instead of
/// following a pointer to compare bytes (that was a tenth of the input
/// phase). Longer ones go through a map of their own.
#[derive(Default)]
struct Interner {
    short: HashMap<u128, u32>,
    long: HashMap<Box<str>, u32>,
    names: Vec<Box<str>>,
}

/// `s` and its length in one integer, if it fits.
fn packed(s: &[u8]) -> Option<u128> {
    if s.len() > 15 {
        return None;
    }
    let mut b = [0u8; 16];
    b[..s.len()].copy_from_slice(s);
    b[15] = s.len() as u8;
    Some(u128::from_le_bytes(b))
}

impl Interner {
    fn id(&mut self, s: &str) -> u32 {
        let next = self.names.len() as u32;
        let id = match packed(s.as_bytes()) {
            Some(key) => *self.short.entry(key).or_insert(next),
            None => match self.long.get(s) {
                Some(&id) => id,
                None => {
                    self.long.insert(s.into(), next);
                    next
                }
            },
        };
        if id == next {
            self.names.push(s.into());
        }
        id
    }
}

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
            let day = self
                .daily
                .entry((c.date.value(i), client_type))
                .or_default();
            day.trades += 1;
            day.volume += q;
            let ts = c.ts.value(i);
            self.newest = Some(self.newest.map_or(ts, |n| n.max(ts)));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_table_matches_a_map() {
        let mut table = GroupTable::new();
        let mut expected: HashMap<u64, (i128, i128, u32)> = HashMap::new();
        // Keys clustered like real ones (few symbols, many users, all three
        // client types), repeated, through several growths.
        let mut x: u64 = 1;
        for i in 0..200_000i128 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let key = GroupKey {
                user: (((x >> 62) as u32 % 3) << USER_BITS) | ((x >> 40) as u32 % 20_000),
                symbol: (x >> 20) as u32 % 50,
            };
            let k = key.packed();
            assert_eq!(GroupKey::unpacked(k), key);
            let t = table.totals(k, GroupTable::hash(k));
            let (v, p, c) = (t.volume, t.pnl, t.count);
            t.volume = v + i;
            t.pnl = p - 2 * i;
            t.count = c + 1;
            let e = expected.entry(k).or_default();
            e.0 += i;
            e.1 -= 2 * i;
            e.2 += 1;
        }
        assert_eq!(table.len(), expected.len());
        assert!(table.slots.len() * 3 >= table.len() * 4);
        let got: HashMap<u64, (i128, i128, u32)> = table
            .into_groups()
            .map(|(k, t)| (k.packed(), (t.volume, t.pnl, t.count)))
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn interner_tells_every_string_apart() {
        let mut i = Interner::default();
        let words = [
            "",
            "a",
            "a\0",
            "\0",
            "fifteen-bytes-x",
            "sixteen-bytes-xy",
            "sixteen-bytes-xz",
            "a much longer user id than sixteen bytes",
            "ü",
        ];
        let ids: Vec<u32> = words.iter().map(|w| i.id(w)).collect();
        assert_eq!(ids, (0..words.len() as u32).collect::<Vec<_>>());
        // Asked again, in another order: the same ids.
        for (w, id) in words.iter().zip(&ids).rev() {
            assert_eq!(i.id(w), *id);
        }
        let names: Vec<&str> = i.names.iter().map(|n| &**n).collect();
        assert_eq!(names, words);
    }
}
