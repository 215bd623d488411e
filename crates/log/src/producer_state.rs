//! Idempotent producer state of one partition: for each producer id, its
//! epoch and the sequence ranges and offsets of its last five batches.
//!
//! Pure bookkeeping: [`ProducerState::check`] decides what an incoming batch
//! is (new, a retry of one already appended, out of order, fenced) without
//! changing anything; [`ProducerState::record`] notes an appended batch. The
//! log calls both under its lock, and persists the state as a snapshot beside
//! the segments (`{offset:020}.snapshot`, the state after every batch below
//! `offset`), from which a restart replays the batches after it.
//!
//! Rules (Apache Kafka's `ProducerStateManager`):
//! - an epoch below the producer's current one is fenced;
//! - a new epoch must start at sequence 0, unless the producer is unknown;
//! - within an epoch the first sequence must follow the last one (wrapping
//!   at `i32::MAX`), unless the producer is unknown (its state may have
//!   expired or been removed with the segments);
//! - a batch whose epoch and sequence range equal one of the last five is a
//!   retry: it is not appended again and is acknowledged with its offset.

use std::collections::{BTreeMap, VecDeque};

use crate::batch::BatchHeader;

/// Batches remembered per producer for duplicate detection (Kafka's value,
/// which clients rely on: at most five requests in flight per connection).
pub const BATCHES_PER_PRODUCER: usize = 5;

const SNAPSHOT_VERSION: u16 = 1;

/// One appended batch of a producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMeta {
    /// First sequence number.
    pub first_seq: i32,
    /// Last sequence number.
    pub last_seq: i32,
    /// Offset of the first record.
    pub first_offset: i64,
    /// Offset of the last record.
    pub last_offset: i64,
    /// The batch's max timestamp (as stored).
    pub timestamp: i64,
}

/// What the log knows of one producer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerEntry {
    /// Current epoch.
    pub epoch: i16,
    /// The last batches, oldest first.
    pub batches: VecDeque<BatchMeta>,
    /// Max timestamp of the last batch: what expiration measures from.
    pub last_timestamp: i64,
}

/// How an incoming batch relates to what was appended before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// Not idempotent, or next in sequence: append it.
    Append,
    /// A retry of a batch already in the log at these offsets.
    Duplicate(BatchMeta),
}

/// Why a batch cannot be appended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SequenceError {
    /// The producer was fenced by a newer epoch.
    #[error("producer {producer_id} epoch {epoch} is older than the current epoch {current}")]
    InvalidEpoch {
        /// Producer id.
        producer_id: i64,
        /// The batch's epoch.
        epoch: i16,
        /// The current epoch.
        current: i16,
    },
    /// The sequence does not follow the last one.
    #[error("producer {producer_id}: sequence {got} does not follow {last} (epoch {epoch})")]
    OutOfOrder {
        /// Producer id.
        producer_id: i64,
        /// Epoch.
        epoch: i16,
        /// The batch's first sequence.
        got: i32,
        /// The last sequence appended (-1 for none).
        last: i32,
    },
}

/// The idempotent producer state of one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerState {
    producers: BTreeMap<i64, ProducerEntry>,
}

fn in_sequence(last: i32, next: i32) -> bool {
    next == last.wrapping_add(1) || (last == i32::MAX && next == 0)
}

fn last_seq(h: &BatchHeader) -> i32 {
    // Sequences wrap at i32::MAX like offsets deltas do not: Kafka's rule.
    let last = h.base_sequence as i64 + h.last_offset_delta as i64;
    if last > i32::MAX as i64 {
        (last - i32::MAX as i64 - 1) as i32
    } else {
        last as i32
    }
}

impl ProducerState {
    /// Decides what to do with `h` (a batch header as the client sent it).
    pub fn check(&self, h: &BatchHeader) -> Result<SequenceCheck, SequenceError> {
        if h.producer_id < 0 {
            return Ok(SequenceCheck::Append);
        }
        let Some(entry) = self.producers.get(&h.producer_id) else {
            return Ok(SequenceCheck::Append);
        };
        if h.producer_epoch < entry.epoch {
            return Err(SequenceError::InvalidEpoch {
                producer_id: h.producer_id,
                epoch: h.producer_epoch,
                current: entry.epoch,
            });
        }
        let last = last_seq(h);
        if h.producer_epoch == entry.epoch {
            if let Some(dup) = entry
                .batches
                .iter()
                .find(|b| b.first_seq == h.base_sequence && b.last_seq == last)
            {
                return Ok(SequenceCheck::Duplicate(*dup));
            }
            let current_last = entry.batches.back().map_or(-1, |b| b.last_seq);
            if entry.batches.is_empty() || in_sequence(current_last, h.base_sequence) {
                return Ok(SequenceCheck::Append);
            }
            return Err(SequenceError::OutOfOrder {
                producer_id: h.producer_id,
                epoch: h.producer_epoch,
                got: h.base_sequence,
                last: current_last,
            });
        }
        // A newer epoch starts over at sequence 0.
        if h.base_sequence != 0 {
            return Err(SequenceError::OutOfOrder {
                producer_id: h.producer_id,
                epoch: h.producer_epoch,
                got: h.base_sequence,
                last: -1,
            });
        }
        Ok(SequenceCheck::Append)
    }

    /// Notes an appended batch (`h` with its assigned base offset and stored
    /// max timestamp).
    pub fn record(&mut self, h: &BatchHeader) {
        if h.producer_id < 0 {
            return;
        }
        let meta = BatchMeta {
            first_seq: h.base_sequence,
            last_seq: last_seq(h),
            first_offset: h.base_offset,
            last_offset: h.last_offset(),
            timestamp: h.max_timestamp,
        };
        let entry = self
            .producers
            .entry(h.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: h.producer_epoch,
                batches: VecDeque::new(),
                last_timestamp: h.max_timestamp,
            });
        if h.producer_epoch != entry.epoch {
            entry.epoch = h.producer_epoch;
            entry.batches.clear();
        }
        if entry.batches.len() == BATCHES_PER_PRODUCER {
            entry.batches.pop_front();
        }
        entry.batches.push_back(meta);
        entry.last_timestamp = entry.last_timestamp.max(h.max_timestamp);
    }

    /// Forgets producers whose last batch is older than `expiration_ms`.
    /// Returns how many were removed.
    pub fn expire(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        let before = self.producers.len();
        self.producers
            .retain(|_, e| now_ms.saturating_sub(e.last_timestamp) < expiration_ms);
        before - self.producers.len()
    }

    /// Number of producers tracked.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    /// Whether no producer is tracked.
    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// A producer's entry.
    pub fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }

    /// Serialized form (versioned, CRC-protected).
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend((self.producers.len() as u32).to_be_bytes());
        for (id, e) in &self.producers {
            body.extend(id.to_be_bytes());
            body.extend(e.epoch.to_be_bytes());
            body.extend(e.last_timestamp.to_be_bytes());
            body.push(e.batches.len() as u8);
            for b in &e.batches {
                body.extend(b.first_seq.to_be_bytes());
                body.extend(b.last_seq.to_be_bytes());
                body.extend(b.first_offset.to_be_bytes());
                body.extend(b.last_offset.to_be_bytes());
                body.extend(b.timestamp.to_be_bytes());
            }
        }
        let mut out = Vec::with_capacity(body.len() + 6);
        out.extend(SNAPSHOT_VERSION.to_be_bytes());
        out.extend(crc32c::crc32c(&body).to_be_bytes());
        out.extend(body);
        out
    }

    /// Parses [`ProducerState::encode`]'s output; `None` if torn or corrupt.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let version = u16::from_be_bytes(bytes.get(0..2)?.try_into().ok()?);
        if version != SNAPSHOT_VERSION {
            return None;
        }
        let crc = u32::from_be_bytes(bytes.get(2..6)?.try_into().ok()?);
        let body = bytes.get(6..)?;
        if crc32c::crc32c(body) != crc {
            return None;
        }
        let mut r = Cursor(body);
        let n = r.u32()?;
        let mut producers = BTreeMap::new();
        for _ in 0..n {
            let id = r.i64()?;
            let epoch = r.i16()?;
            let last_timestamp = r.i64()?;
            let count = r.u8()?;
            let mut batches = VecDeque::with_capacity(count as usize);
            for _ in 0..count {
                batches.push_back(BatchMeta {
                    first_seq: r.i32()?,
                    last_seq: r.i32()?,
                    first_offset: r.i64()?,
                    last_offset: r.i64()?,
                    timestamp: r.i64()?,
                });
            }
            producers.insert(
                id,
                ProducerEntry {
                    epoch,
                    batches,
                    last_timestamp,
                },
            );
        }
        r.0.is_empty().then_some(Self { producers })
    }
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_at_checked(N)?;
        self.0 = rest;
        head.try_into().ok()
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|b| b[0])
    }
    fn i16(&mut self) -> Option<i16> {
        self.take().map(i16::from_be_bytes)
    }
    fn i32(&mut self) -> Option<i32> {
        self.take().map(i32::from_be_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_be_bytes)
    }
    fn i64(&mut self) -> Option<i64> {
        self.take().map(i64::from_be_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(pid: i64, epoch: i16, seq: i32, count: i32, base_offset: i64) -> BatchHeader {
        BatchHeader {
            base_offset,
            size: 100,
            leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: count - 1,
            base_timestamp: 1000,
            max_timestamp: 1000 + base_offset,
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
            records_count: count,
        }
    }

    fn append(s: &mut ProducerState, h: BatchHeader) -> Result<SequenceCheck, SequenceError> {
        let c = s.check(&h)?;
        if c == SequenceCheck::Append {
            s.record(&h);
        }
        Ok(c)
    }

    #[test]
    fn retries_of_the_last_five_batches_are_duplicates() {
        let mut s = ProducerState::default();
        for i in 0..7 {
            assert_eq!(
                append(&mut s, header(7, 0, i * 10, 10, i as i64 * 10)),
                Ok(SequenceCheck::Append)
            );
        }
        // Batches 2..=6 are remembered, with their offsets.
        for i in 2..7 {
            match append(&mut s, header(7, 0, i * 10, 10, 999)).unwrap() {
                SequenceCheck::Duplicate(b) => assert_eq!(b.first_offset, i as i64 * 10),
                other => panic!("batch {i}: {other:?}"),
            }
        }
        // Batch 1 is too old to be recognised: it is out of order now.
        assert!(matches!(
            append(&mut s, header(7, 0, 10, 10, 999)),
            Err(SequenceError::OutOfOrder { .. })
        ));
    }

    #[test]
    fn gaps_and_fenced_epochs_are_refused() {
        let mut s = ProducerState::default();
        append(&mut s, header(1, 3, 0, 5, 0)).unwrap();
        assert_eq!(
            append(&mut s, header(1, 3, 6, 1, 5)),
            Err(SequenceError::OutOfOrder {
                producer_id: 1,
                epoch: 3,
                got: 6,
                last: 4
            })
        );
        assert!(matches!(
            append(&mut s, header(1, 2, 5, 1, 5)),
            Err(SequenceError::InvalidEpoch { current: 3, .. })
        ));
        // A new epoch must start at 0, and then it resets the sequence.
        assert!(append(&mut s, header(1, 4, 5, 1, 5)).is_err());
        assert_eq!(
            append(&mut s, header(1, 4, 0, 1, 5)),
            Ok(SequenceCheck::Append)
        );
        assert_eq!(
            append(&mut s, header(1, 4, 1, 1, 6)),
            Ok(SequenceCheck::Append)
        );
        assert!(matches!(
            append(&mut s, header(1, 3, 10, 1, 7)),
            Err(SequenceError::InvalidEpoch { .. })
        ));
    }

    #[test]
    fn unknown_producers_start_anywhere_and_sequences_wrap() {
        let mut s = ProducerState::default();
        assert_eq!(
            append(&mut s, header(9, 0, i32::MAX - 1, 2, 0)),
            Ok(SequenceCheck::Append)
        );
        assert_eq!(s.get(9).unwrap().batches[0].last_seq, i32::MAX);
        assert_eq!(
            append(&mut s, header(9, 0, 0, 3, 2)),
            Ok(SequenceCheck::Append)
        );
        // Not idempotent: always appended.
        assert_eq!(
            append(&mut s, header(-1, -1, -1, 3, 5)),
            Ok(SequenceCheck::Append)
        );
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn snapshot_round_trips_and_rejects_corruption() {
        let mut s = ProducerState::default();
        for pid in 0..20 {
            for i in 0..(pid % 7) {
                append(&mut s, header(pid, 1, i as i32 * 2, 2, pid * 100 + i * 2)).unwrap();
            }
        }
        let bytes = s.encode();
        assert_eq!(ProducerState::decode(&bytes), Some(s.clone()));
        for cut in 0..bytes.len() {
            assert_eq!(ProducerState::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut bad = bytes.clone();
        bad[10] ^= 1;
        assert_eq!(ProducerState::decode(&bad), None);
    }

    #[test]
    fn expiration_forgets_idle_producers() {
        let mut s = ProducerState::default();
        append(&mut s, header(1, 0, 0, 1, 0)).unwrap(); // timestamp 1000
        append(&mut s, header(2, 0, 0, 1, 5000)).unwrap(); // timestamp 6000
        assert_eq!(s.expire(10_000, 5_000), 1);
        assert!(s.get(1).is_none() && s.get(2).is_some());
    }
}
