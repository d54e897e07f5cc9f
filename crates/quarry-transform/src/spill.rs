//! Exact duplicate counting in bounded memory: row hashes are buffered,
//! sorted and spilled to anonymous temporary files in runs; the runs are
//! merged at the end and equal neighbours counted (an external sort).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};

use quarry_core::{Error, Result};

pub struct HashRuns {
    buffer: Vec<u64>,
    limit: usize,
    runs: Vec<File>,
}

fn io(e: std::io::Error) -> Error {
    Error::internal(format!("duplicate-detection spill file: {e}"))
}

impl HashRuns {
    /// Keeps at most `limit` hashes (8 bytes each) in memory.
    pub fn new(limit: usize) -> Self {
        Self {
            buffer: Vec::new(),
            limit: limit.max(1),
            runs: Vec::new(),
        }
    }

    pub fn push(&mut self, hash: u64) -> Result<()> {
        self.buffer.push(hash);
        if self.buffer.len() >= self.limit {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> Result<()> {
        self.buffer.sort_unstable();
        let mut f = BufWriter::with_capacity(1 << 20, tempfile::tempfile().map_err(io)?);
        for h in &self.buffer {
            f.write_all(&h.to_le_bytes()).map_err(io)?;
        }
        let mut f = f.into_inner().map_err(|e| io(e.into_error()))?;
        f.seek(SeekFrom::Start(0)).map_err(io)?;
        self.runs.push(f);
        self.buffer.clear();
        Ok(())
    }

    /// Sorted runs written to temporary files so far.
    #[cfg(test)]
    fn spilled_runs(&self) -> usize {
        self.runs.len()
    }

    /// Hashes equal to an earlier one: the exact duplicate count.
    pub fn duplicates(mut self) -> Result<u64> {
        self.buffer.sort_unstable();
        let mut readers: Vec<BufReader<File>> = self
            .runs
            .drain(..)
            .map(|f| BufReader::with_capacity(1 << 16, f))
            .collect();
        let next = |r: &mut BufReader<File>| -> Result<Option<u64>> {
            let mut b = [0u8; 8];
            match r.read_exact(&mut b) {
                Ok(()) => Ok(Some(u64::from_le_bytes(b))),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
                Err(e) => Err(io(e)),
            }
        };
        // k-way merge of the spilled runs and the in-memory rest.
        let mut heap = BinaryHeap::new();
        for (i, r) in readers.iter_mut().enumerate() {
            if let Some(h) = next(r)? {
                heap.push(Reverse((h, i)));
            }
        }
        let mut memory = self.buffer.iter().copied().peekable();
        let (mut previous, mut duplicates) = (None, 0u64);
        loop {
            let from_heap = heap.peek().map(|Reverse((h, _))| *h);
            let h = match (from_heap, memory.peek().copied()) {
                (None, None) => break,
                (Some(a), Some(b)) if b < a => memory.next().expect("peeked"),
                (None, Some(_)) => memory.next().expect("peeked"),
                _ => {
                    let Reverse((h, i)) = heap.pop().expect("peeked");
                    if let Some(n) = next(&mut readers[i])? {
                        heap.push(Reverse((n, i)));
                    }
                    h
                }
            };
            if previous == Some(h) {
                duplicates += 1;
            }
            previous = Some(h);
        }
        Ok(duplicates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_exactly_across_spilled_runs() {
        // 80 hashes: a run is spilled each time `limit` of them are held.
        for (limit, spilled) in [(1, 80), (3, 26), (7, 11), (1000, 0)] {
            let mut runs = HashRuns::new(limit);
            // 0..50 once, multiples of 5 three times more: 10 values * 3 = 30 duplicates.
            for v in (0..50u64).chain((0..50).filter(|v| v % 5 == 0).cycle().take(30)) {
                runs.push(v.wrapping_mul(0x9E37_79B9_7F4A_7C15)).unwrap();
            }
            assert_eq!(runs.spilled_runs(), spilled, "limit {limit}");
            assert!(
                runs.buffer.len() < limit,
                "limit {limit}: at most limit - 1 in memory"
            );
            assert_eq!(runs.duplicates().unwrap(), 30, "limit {limit}");
        }
        assert_eq!(HashRuns::new(4).duplicates().unwrap(), 0);
    }
}
