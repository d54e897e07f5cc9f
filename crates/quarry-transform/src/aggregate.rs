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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct GroupKey {
    week: i32,
    user: u32,
    symbol: u32,
    client_type: u8,
}

#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    /// Σ quantity, scaled by 10^8.
    volume: i128,
    /// Σ ±quantity·price, scaled by 10^16.
    pnl: i128,
    count: i64,
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
    users: Interner,
    symbols: Interner,
    groups: HashMap<GroupKey, Totals>,
    /// Hashes of the normalised rows seen so far (duplicate detection).
    seen: HashSet<u64>,
    duplicates: u64,
    dedup: bool,
}

impl Aggregator {
    /// `dedup`: drop exact duplicate rows instead of only counting them.
    pub fn new(dedup: bool) -> Self {
        Self {
            users: Interner::default(),
            symbols: Interner::default(),
            groups: HashMap::new(),
            seen: HashSet::new(),
            duplicates: 0,
            dedup,
        }
    }

    /// Exact duplicate rows seen so far (dropped if `dedup`).
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    pub fn group_count(&self) -> usize {
        self.groups.len()
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
            if !self.seen.insert(h.digest()) {
                self.duplicates += 1;
                if self.dedup {
                    keep.get_or_insert_with(|| vec![true; n])[i] = false;
                    continue;
                }
            }
            let client_type = CLIENT_TYPES
                .iter()
                .position(|c| *c == ct.value(i))
                .ok_or_else(|| {
                    Error::internal(format!("unnormalised client_type {:?}", ct.value(i)))
                })? as u8;
            let key = GroupKey {
                week: week_start(date.value(i)),
                user: self.users.id(user.value(i)),
                symbol: self.symbols.id(symbol.value(i)),
                client_type,
            };
            let q = qty.value(i);
            let notional = q * price.value(i);
            let t = self.groups.entry(key).or_default();
            t.volume += q;
            t.pnl += if side.value(i) == "sell" {
                notional
            } else {
                -notional
            };
            t.count += 1;
        }
        match keep {
            None => Ok(trades),
            Some(mask) => Ok(filter_record_batch(&trades, &BooleanArray::from(mask))?),
        }
    }

    /// The aggregate rows (`AGG_SCHEMA`) in batches of at most `batch_rows`.
    pub fn finish(self, batch_rows: usize) -> Result<Vec<RecordBatch>> {
        let mut entries: Vec<(GroupKey, Totals)> = self.groups.into_iter().collect();
        // A stable order makes runs reproducible and keeps a week's rows together.
        entries.sort_unstable_by(|(a, _), (b, _)| {
            (
                a.week,
                a.client_type,
                &self.users.names[a.user as usize],
                &self.symbols.names[a.symbol as usize],
            )
                .cmp(&(
                    b.week,
                    b.client_type,
                    &self.users.names[b.user as usize],
                    &self.symbols.names[b.symbol as usize],
                ))
        });
        let mut out = Vec::with_capacity(entries.len().div_ceil(batch_rows.max(1)));
        for chunk in entries.chunks(batch_rows.max(1)) {
            let mut week = Date32Builder::with_capacity(chunk.len());
            let mut ct = StringBuilder::new();
            let mut user = StringBuilder::new();
            let mut symbol = StringBuilder::new();
            let mut vol = Decimal128Builder::with_capacity(chunk.len()).with_data_type(VOLUME_TYPE);
            let mut pnl = Decimal128Builder::with_capacity(chunk.len()).with_data_type(PNL_TYPE);
            let mut count = Int64Builder::with_capacity(chunk.len());
            for (k, t) in chunk {
                week.append_value(k.week);
                ct.append_value(CLIENT_TYPES[k.client_type as usize]);
                user.append_value(&self.users.names[k.user as usize]);
                symbol.append_value(&self.symbols.names[k.symbol as usize]);
                vol.append_value(t.volume);
                pnl.append_value(t.pnl);
                count.append_value(t.count);
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
            out.push(RecordBatch::try_new(AGG_SCHEMA.clone(), cols)?);
        }
        Ok(out)
    }
}
