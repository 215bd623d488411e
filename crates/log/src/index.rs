//! Sparse offset and time indexes of one segment: pure bookkeeping, no I/O
//! beyond encoding to and from bytes.
//!
//! Offset index entry: `(relative_offset: u32, position: u32)`, big-endian, one
//! per `index.interval.bytes` of log. Time index entry:
//! `(max_timestamp_so_far: i64, relative_offset: u32)`, added with each offset
//! index entry when the running max timestamp grew.
//!
//! Invariants (checked by [`OffsetIndex::decode`] / [`TimeIndex::decode`]):
//! offsets and positions strictly increase; timestamps strictly increase.

/// One offset index entry, in absolute terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// Base offset of a batch.
    pub offset: i64,
    /// Byte position of that batch in the segment file.
    pub position: u64,
}

/// The sparse offset → position index of one segment.
#[derive(Debug, Clone, Default)]
pub struct OffsetIndex {
    base: i64,
    entries: Vec<(u32, u32)>,
}

impl OffsetIndex {
    /// An empty index for the segment starting at `base`.
    pub fn new(base: i64) -> Self {
        Self {
            base,
            entries: Vec::new(),
        }
    }

    /// Adds an entry; ignored unless offset and position grow.
    pub fn push(&mut self, offset: i64, position: u64) {
        let rel = (offset - self.base) as u32;
        let pos = position as u32;
        if let Some(&(last_rel, last_pos)) = self.entries.last() {
            if rel <= last_rel || pos <= last_pos {
                return;
            }
        }
        self.entries.push((rel, pos));
    }

    /// The last entry at or below `offset`, or the segment start.
    pub fn lookup(&self, offset: i64) -> IndexEntry {
        let rel = offset - self.base;
        let idx = self.entries.partition_point(|&(r, _)| (r as i64) <= rel);
        match idx {
            0 => IndexEntry {
                offset: self.base,
                position: 0,
            },
            i => {
                let (r, p) = self.entries[i - 1];
                IndexEntry {
                    offset: self.base + r as i64,
                    position: p as u64,
                }
            }
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Serialized form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * 8);
        for &(r, p) in &self.entries {
            out.extend(r.to_be_bytes());
            out.extend(p.to_be_bytes());
        }
        out
    }

    /// Parses a serialized index; `None` when it is torn or not monotonic, or
    /// points past `file_size`.
    pub fn decode(base: i64, bytes: &[u8], file_size: u64) -> Option<Self> {
        if !bytes.len().is_multiple_of(8) {
            return None;
        }
        let mut index = Self::new(base);
        for chunk in bytes.chunks_exact(8) {
            let r = u32::from_be_bytes(chunk[0..4].try_into().ok()?);
            let p = u32::from_be_bytes(chunk[4..8].try_into().ok()?);
            if let Some(&(lr, lp)) = index.entries.last() {
                if r <= lr || p <= lp {
                    return None;
                }
            }
            if p as u64 >= file_size {
                return None;
            }
            index.entries.push((r, p));
        }
        Some(index)
    }
}

/// The sparse timestamp → offset index of one segment.
#[derive(Debug, Clone, Default)]
pub struct TimeIndex {
    base: i64,
    entries: Vec<(i64, u32)>,
}

impl TimeIndex {
    /// An empty index for the segment starting at `base`.
    pub fn new(base: i64) -> Self {
        Self {
            base,
            entries: Vec::new(),
        }
    }

    /// Records that every batch up to and including the one at `offset` has a
    /// max timestamp of at most `max_ts`. Ignored unless `max_ts` grew.
    pub fn push(&mut self, max_ts: i64, offset: i64) {
        if let Some(&(last_ts, last_rel)) = self.entries.last() {
            if max_ts <= last_ts || ((offset - self.base) as u32) < last_rel {
                return;
            }
        }
        self.entries.push((max_ts, (offset - self.base) as u32));
    }

    /// An offset from which to scan for the first batch whose max timestamp is
    /// at least `ts`: every batch before it has a smaller max timestamp.
    pub fn scan_start(&self, ts: i64) -> i64 {
        let idx = self.entries.partition_point(|&(t, _)| t < ts);
        match idx {
            0 => self.base,
            i => self.base + self.entries[i - 1].1 as i64,
        }
    }

    /// Largest timestamp recorded, if any.
    pub fn max_timestamp(&self) -> Option<i64> {
        self.entries.last().map(|&(t, _)| t)
    }

    /// Serialized form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * 12);
        for &(t, r) in &self.entries {
            out.extend(t.to_be_bytes());
            out.extend(r.to_be_bytes());
        }
        out
    }

    /// Parses a serialized index; `None` when torn or not monotonic.
    pub fn decode(base: i64, bytes: &[u8]) -> Option<Self> {
        if !bytes.len().is_multiple_of(12) {
            return None;
        }
        let mut index = Self::new(base);
        for chunk in bytes.chunks_exact(12) {
            let t = i64::from_be_bytes(chunk[0..8].try_into().ok()?);
            let r = u32::from_be_bytes(chunk[8..12].try_into().ok()?);
            if let Some(&(lt, lr)) = index.entries.last() {
                if t <= lt || r < lr {
                    return None;
                }
            }
            index.entries.push((t, r));
        }
        Some(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lookup_below_first_entry_is_segment_start() {
        let mut idx = OffsetIndex::new(100);
        idx.push(110, 4096);
        assert_eq!(
            idx.lookup(105),
            IndexEntry {
                offset: 100,
                position: 0
            }
        );
        assert_eq!(idx.lookup(110).position, 4096);
        assert_eq!(idx.lookup(1_000_000).offset, 110);
    }

    #[test]
    fn torn_or_unordered_index_is_rejected() {
        let mut idx = OffsetIndex::new(0);
        idx.push(10, 100);
        idx.push(20, 200);
        let bytes = idx.encode();
        assert!(OffsetIndex::decode(0, &bytes, 1000).is_some());
        assert!(OffsetIndex::decode(0, &bytes[..12], 1000).is_none());
        assert!(OffsetIndex::decode(0, &bytes, 150).is_none());
        let mut swapped = bytes[8..].to_vec();
        swapped.extend(&bytes[..8]);
        assert!(OffsetIndex::decode(0, &swapped, 1000).is_none());
    }

    proptest! {
        /// The lookup returns the greatest entry not above the target, exactly
        /// as a linear scan would.
        #[test]
        fn offset_lookup_matches_linear_scan(
            gaps in proptest::collection::vec((1u32..50, 1u32..5000), 0..200),
            target in 0i64..20_000,
        ) {
            let base = 1000;
            let mut idx = OffsetIndex::new(base);
            let (mut off, mut pos) = (base, 0u64);
            let mut all = vec![];
            for (g, p) in gaps {
                off += g as i64;
                pos += p as u64;
                idx.push(off, pos);
                all.push((off, pos));
            }
            let t = base + target;
            let expect = all.iter().rev().find(|&&(o, _)| o <= t).copied().unwrap_or((base, 0));
            let got = idx.lookup(t);
            prop_assert_eq!((got.offset, got.position), expect);
            let round = OffsetIndex::decode(base, &idx.encode(), pos + 1).unwrap();
            prop_assert_eq!(round.lookup(t), got);
        }

        /// Every batch before the scan start has a max timestamp below the target.
        #[test]
        fn time_scan_start_never_skips_a_match(
            batches in proptest::collection::vec(0i64..10_000, 1..200),
            target in 0i64..10_000,
        ) {
            let mut idx = TimeIndex::new(0);
            let mut max = i64::MIN;
            for (i, ts) in batches.iter().enumerate() {
                max = max.max(*ts);
                if i % 3 == 0 { idx.push(max, i as i64); }
            }
            let start = idx.scan_start(target);
            for ts in &batches[..start as usize] {
                prop_assert!(*ts < target);
            }
            let round = TimeIndex::decode(0, &idx.encode()).unwrap();
            prop_assert_eq!(round.scan_start(target), start);
        }
    }
}
