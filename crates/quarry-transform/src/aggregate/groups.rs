//! The accumulator's building blocks: the packed group key and totals, the
//! group table that holds one week's groups, and the interner that turns
//! user ids and symbols into dense integers.

use hashbrown::HashMap;

/// A group within one week: client type and interned user id, interned
/// symbol. 8 bytes: the accumulator's size is what bounds the run's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct GroupKey {
    /// Client type in the top 2 bits, interned user id below.
    pub(super) user: u32,
    pub(super) symbol: u32,
}

pub(super) const USER_BITS: u32 = 30;

/// Packed to 36 bytes (the map entry is 44 instead of 64); fields are only
/// read and written by value.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, packed(4))]
pub(super) struct Totals {
    /// Σ quantity, scaled by 10^8.
    pub(super) volume: i128,
    /// Σ ±quantity·price, scaled by 10^16.
    pub(super) pnl: i128,
    pub(super) count: u32,
}

impl GroupKey {
    pub(super) fn packed(self) -> u64 {
        u64::from(self.user) << 32 | u64::from(self.symbol)
    }

    pub(super) fn unpacked(k: u64) -> Self {
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
pub(super) struct GroupTable {
    pub(super) slots: Vec<Slot>,
    len: usize,
    /// 64 − log2(capacity): a hash's top bits pick the home slot.
    shift: u32,
}

/// Packed like `Totals`: 44 bytes.
#[derive(Clone, Copy)]
#[repr(C, packed(4))]
pub(super) struct Slot {
    /// `GroupKey::packed`, or `EMPTY`.
    pub(super) key: u64,
    pub(super) totals: Totals,
}

/// No key: a user field carries a client type of at most 2 in its top bits.
pub(super) const EMPTY: u64 = u64::MAX;

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

    pub(super) fn new() -> Self {
        Self::with_capacity_log2(10)
    }

    /// Fibonacci hashing: the key times 2^64/φ; the top bits are well mixed.
    pub(super) fn hash(key: u64) -> u64 {
        key.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    fn home(&self, hash: u64) -> usize {
        (hash >> self.shift) as usize
    }

    /// Asks the CPU to start loading the home slot of `hash`.
    #[inline]
    pub(super) fn prefetch(&self, hash: u64) {
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
    pub(super) fn totals(&mut self, key: u64, hash: u64) -> &mut Totals {
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

    pub(super) fn len(&self) -> usize {
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
pub(super) struct Interner {
    short: HashMap<u128, u32>,
    long: HashMap<Box<str>, u32>,
    pub(super) names: Vec<Box<str>>,
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
    pub(super) fn id(&mut self, s: &str) -> u32 {
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
