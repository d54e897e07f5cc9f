//! Incremental weekly aggregation and duplicate detection.
//!
//! Batches of validated trades are folded into one accumulator keyed by
//! (week_start_date, client_type, user_id, symbol). User ids and symbols are
//! interned to integers, so memory grows with the number of groups and
//! distinct keys, never with the number of input rows.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, AsArray, BooleanArray, Date32Builder, Decimal128Builder, Int64Builder, RecordBatch,
    StringBuilder,
};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{Date32Type, Decimal128Type, TimestampNanosecondType};
use hashbrown::{HashMap, HashSet};
use quarry_core::schema::{AGG_SCHEMA, PNL_TYPE, VOLUME_TYPE};
use quarry_core::{Error, Result};
use xxhash_rust::xxh3::Xxh3;

use crate::timestamp::week_start;

/// 12 bytes: the accumulator's size is what bounds the run's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct GroupKey {
    week: i32,
    /// Client type in the top 2 bits, interned user id below.
    user: u32,
    symbol: u32,
}

const USER_BITS: u32 = 30;

const SHARDS: usize = 16;

impl GroupKey {
    fn shard(&self) -> usize {
        (self.user ^ self.symbol.rotate_left(7) ^ self.week as u32).wrapping_mul(0x9E37_79B9)
            as usize
            >> 28
    }
}

/// Packed to 36 bytes (the map entry is 48 instead of 64); fields are only
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

/// Maps strings to dense ids and back.
#[derive(Default)]
struct Interner {
    ids: HashMap<Box<str>, u32>,
    names: Vec<Box<str>>,
}

impl Interner {
    fn id(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(s.into());
        self.ids.insert(s.into(), id);
        id
    }
}

pub struct Aggregator {
    /// One interner per client type: a user id can appear under several.
    users: [Interner; 3],
    symbols: Interner,
    /// Sharded so that a table resize (which briefly holds the old and the
    /// new table) costs a sixteenth of the groups, not all of them.
    groups: Vec<HashMap<GroupKey, Totals>>,
    seen: Seen,
}

/// Hashes of the normalised rows, for exact-duplicate detection.
enum Seen {
    /// Deduplicating: each row is checked as it arrives.
    Online { set: HashSet<u64>, duplicates: u64 },
    /// Only counting: hashes are appended and counted once at the end, which
    /// takes 8 bytes a row instead of a hash set's ~14 and its resize peaks.
    Deferred { hashes: Vec<u64>, sorted: bool },
}

impl Aggregator {
    /// `dedup`: drop exact duplicate rows instead of only counting them.
    pub fn new(dedup: bool) -> Self {
        Self {
            users: Default::default(),
            symbols: Interner::default(),
            groups: (0..SHARDS).map(|_| HashMap::new()).collect(),
            seen: if dedup {
                Seen::Online {
                    set: HashSet::new(),
                    duplicates: 0,
                }
            } else {
                Seen::Deferred {
                    hashes: Vec::new(),
                    sorted: true,
                }
            },
        }
    }

    /// Exact duplicate rows seen so far (dropped if deduplicating).
    pub fn duplicates(&mut self) -> u64 {
        match &mut self.seen {
            Seen::Online { duplicates, .. } => *duplicates,
            Seen::Deferred { hashes, sorted } => {
                if !*sorted {
                    hashes.sort_unstable();
                    *sorted = true;
                }
                hashes.windows(2).filter(|w| w[0] == w[1]).count() as u64
            }
        }
    }

    pub fn group_count(&self) -> usize {
        self.groups.iter().map(HashMap::len).sum()
    }

    /// Folds a batch of validated trades (`TRADES_SCHEMA`) into the totals.
    /// Returns the batch to load: the same one, or with duplicates removed
    /// when deduplicating.
    pub fn ingest(&mut self, trades: RecordBatch) -> Result<RecordBatch> {
        let n = trades.num_rows();
        let col = |i: usize| trades.column(i);
        let ts = col(0).as_primitive::<TimestampNanosecondType>();
        let user = col(1).as_string::<i32>();
        let ct = col(2).as_string::<i32>();
        let symbol = col(3).as_string::<i32>();
        let side = col(4).as_string::<i32>();
        let qty = col(5).as_primitive::<Decimal128Type>();
        let price = col(6).as_primitive::<Decimal128Type>();
        let date = col(7).as_primitive::<Date32Type>();

        let mut keep: Option<Vec<bool>> = None;
        for i in 0..n {
            let mut h = Xxh3::new();
            h.update(&ts.value(i).to_le_bytes());
            for s in [user.value(i), ct.value(i), symbol.value(i), side.value(i)] {
                h.update(s.as_bytes());
                h.update(&[0xff]); // separator: no UTF-8 text contains 0xff
            }
            h.update(&qty.value(i).to_le_bytes());
            h.update(&price.value(i).to_le_bytes());
            match &mut self.seen {
                Seen::Online { set, duplicates } => {
                    if !set.insert(h.digest()) {
                        *duplicates += 1;
                        keep.get_or_insert_with(|| vec![true; n])[i] = false;
                        continue;
                    }
                }
                Seen::Deferred { hashes, sorted } => {
                    hashes.push(h.digest());
                    *sorted = false;
                }
            }
            let client_type = CLIENT_TYPES
                .iter()
                .position(|c| *c == ct.value(i))
                .ok_or_else(|| {
                    Error::internal(format!("unnormalised client_type {:?}", ct.value(i)))
                })? as u8;
            let user_id = self.users[client_type as usize].id(user.value(i));
            if user_id >= 1 << USER_BITS {
                return Err(Error::internal(
                    "more than 2^30 distinct users of one client type",
                ));
            }
            let key = GroupKey {
                week: week_start(date.value(i)),
                user: (client_type as u32) << USER_BITS | user_id,
                symbol: self.symbols.id(symbol.value(i)),
            };
            let q = qty.value(i);
            let notional = q * price.value(i);
            let t = self.groups[key.shard()].entry(key).or_default();
            t.volume += q;
            t.pnl += if side.value(i) == "sell" {
                notional
            } else {
                -notional
            };
            t.count = t
                .count
                .checked_add(1)
                .ok_or_else(|| Error::internal("more than 2^32 trades in one group"))?;
        }
        match keep {
            None => Ok(trades),
            Some(mask) => Ok(filter_record_batch(&trades, &BooleanArray::from(mask))?),
        }
    }

    /// The aggregate rows (`AGG_SCHEMA`), produced lazily in batches of at
    /// most `batch_rows`: the groups are never copied or sorted as a whole,
    /// so finishing needs no more memory than accumulating did.
    pub fn into_batches(self, batch_rows: usize) -> AggBatches {
        AggBatches {
            users: self.users,
            symbols: self.symbols,
            remaining: self.groups.iter().map(HashMap::len).sum(),
            groups: self.groups.into_iter().flatten(),
            batch_rows: batch_rows.max(1),
        }
    }
}

/// Iterator over the aggregate batches of a finished run.
pub struct AggBatches {
    users: [Interner; 3],
    symbols: Interner,
    groups: std::iter::Flatten<std::vec::IntoIter<HashMap<GroupKey, Totals>>>,
    remaining: usize,
    batch_rows: usize,
}

impl Iterator for AggBatches {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        let n = self.remaining.min(self.batch_rows);
        self.remaining -= n;
        if n == 0 {
            return None;
        }
        let mut week = Date32Builder::with_capacity(n);
        let mut ct = StringBuilder::with_capacity(n, n * 6);
        let mut user = StringBuilder::with_capacity(n, n * 8);
        let mut symbol = StringBuilder::with_capacity(n, n * 4);
        let mut vol = Decimal128Builder::with_capacity(n).with_data_type(VOLUME_TYPE);
        let mut pnl = Decimal128Builder::with_capacity(n).with_data_type(PNL_TYPE);
        let mut count = Int64Builder::with_capacity(n);
        for (k, t) in self.groups.by_ref().take(n) {
            let client_type = (k.user >> USER_BITS) as usize;
            week.append_value(k.week);
            ct.append_value(CLIENT_TYPES[client_type]);
            user.append_value(
                &self.users[client_type].names[(k.user & ((1 << USER_BITS) - 1)) as usize],
            );
            symbol.append_value(&self.symbols.names[k.symbol as usize]);
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
