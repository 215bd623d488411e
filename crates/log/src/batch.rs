//! Kafka RecordBatch v2 headers: parsing, validation and the in-place patches
//! the broker makes on append (base offset; LogAppendTime).
//!
//! Layout (big-endian), 61 bytes before the records:
//! ```text
//!  0 base_offset i64      | outside the CRC
//!  8 batch_length i32     | bytes after this field
//! 12 leader_epoch i32     |
//! 16 magic i8             |
//! 17 crc u32              | CRC-32C of bytes 21..end
//! 21 attributes i16       | bits 0-2 codec, 3 timestamp type, 4 transactional, 5 control
//! 23 last_offset_delta i32
//! 27 base_timestamp i64
//! 35 max_timestamp i64
//! 43 producer_id i64
//! 51 producer_epoch i16
//! 53 base_sequence i32
//! 57 records_count i32
//! ```

use crate::{Error, Result};

/// Bytes before the records of a v2 batch.
pub const HEADER_LEN: usize = 61;
/// Bytes needed to learn a batch's total length.
pub const LOG_OVERHEAD: usize = 12;
const CRC_START: usize = 21;
const ATTR_TIMESTAMP_TYPE: i16 = 1 << 3;
/// Attribute bit of a batch that is part of a transaction.
pub const ATTR_TRANSACTIONAL: i16 = 1 << 4;
/// Attribute bit of a control batch (transaction markers).
pub const ATTR_CONTROL: i16 = 1 << 5;

/// Fields of a batch header the log and the broker need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// First offset of the batch.
    pub base_offset: i64,
    /// Whole batch size in bytes, including the offset and length fields.
    pub size: usize,
    /// Partition leader epoch stamped by the broker.
    pub leader_epoch: i32,
    /// Record format version; only 2 is accepted.
    pub magic: i8,
    /// Stored CRC-32C.
    pub crc: u32,
    /// Compression codec, timestamp type, transactional and control bits.
    pub attributes: i16,
    /// Offset of the last record relative to the base offset.
    pub last_offset_delta: i32,
    /// Timestamp of the first record.
    pub base_timestamp: i64,
    /// Largest timestamp in the batch (the broker's time under LogAppendTime).
    pub max_timestamp: i64,
    /// Idempotent producer id, or -1.
    pub producer_id: i64,
    /// Idempotent producer epoch, or -1.
    pub producer_epoch: i16,
    /// Sequence number of the first record, or -1.
    pub base_sequence: i32,
    /// Number of records.
    pub records_count: i32,
}

impl BatchHeader {
    /// Offset of the last record.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + self.last_offset_delta as i64
    }

    /// Offset after the batch.
    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }

    /// Compression codec id (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
    pub fn compression(&self) -> i16 {
        self.attributes & 0x7
    }

    /// Whether the batch carries LogAppendTime.
    pub fn log_append_time(&self) -> bool {
        self.attributes & ATTR_TIMESTAMP_TYPE != 0
    }
}

fn i16_at(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn i64_at(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The total size of the batch starting at `b`, from its length field, if the
/// first 12 bytes are there and the length is plausible.
pub fn batch_size(b: &[u8]) -> Option<usize> {
    if b.len() < LOG_OVERHEAD {
        return None;
    }
    let len = i32_at(b, 8);
    if len < (HEADER_LEN - LOG_OVERHEAD) as i32 {
        return None;
    }
    Some(LOG_OVERHEAD + len as usize)
}

/// Parses the header at the front of `b` (which must hold at least
/// [`HEADER_LEN`] bytes). Checks nothing but the length field.
pub fn parse_header(b: &[u8]) -> Result<BatchHeader> {
    if b.len() < HEADER_LEN {
        return Err(Error::Corrupt(format!(
            "batch header needs {HEADER_LEN} bytes, have {}",
            b.len()
        )));
    }
    let size = batch_size(b)
        .ok_or_else(|| Error::Corrupt(format!("invalid batch length {}", i32_at(b, 8))))?;
    Ok(BatchHeader {
        base_offset: i64_at(b, 0),
        size,
        leader_epoch: i32_at(b, 12),
        magic: b[16] as i8,
        crc: u32::from_be_bytes(b[17..21].try_into().expect("4 bytes")),
        attributes: i16_at(b, 21),
        last_offset_delta: i32_at(b, 23),
        base_timestamp: i64_at(b, 27),
        max_timestamp: i64_at(b, 35),
        producer_id: i64_at(b, 43),
        producer_epoch: i16_at(b, 51),
        base_sequence: i32_at(b, 53),
        records_count: i32_at(b, 57),
    })
}

/// Fully validates one whole batch (`b` is exactly the batch): length, magic,
/// CRC-32C, offset delta against record count, and for uncompressed batches
/// that the records really number `records_count` and fill the batch.
pub fn validate(b: &[u8]) -> Result<BatchHeader> {
    let h = validate_stored(b)?;
    if h.last_offset_delta != h.records_count - 1 {
        return Err(Error::InvalidRecord(format!(
            "record count {} does not match last offset delta {}",
            h.records_count, h.last_offset_delta
        )));
    }
    Ok(h)
}

/// Like [`validate`], for batches already in a log: compaction may have
/// removed records from a batch, which keeps its last offset delta, so it
/// may hold fewer records than its offsets span (never none).
pub fn validate_stored(b: &[u8]) -> Result<BatchHeader> {
    let h = parse_header(b)?;
    if h.size != b.len() {
        return Err(Error::Corrupt(format!(
            "batch length field says {} bytes, batch has {}",
            h.size,
            b.len()
        )));
    }
    if h.magic != 2 {
        return Err(Error::UnsupportedMagic(h.magic));
    }
    let crc = crc32c::crc32c(&b[CRC_START..]);
    if crc != h.crc {
        return Err(Error::Corrupt(format!(
            "crc mismatch: stored {:#010x}, computed {crc:#010x}",
            h.crc
        )));
    }
    if h.records_count <= 0 || h.last_offset_delta < h.records_count - 1 {
        return Err(Error::InvalidRecord(format!(
            "record count {} does not fit last offset delta {}",
            h.records_count, h.last_offset_delta
        )));
    }
    if h.compression() > 4 {
        return Err(Error::InvalidRecord(format!(
            "unknown compression codec {}",
            h.compression()
        )));
    }
    if h.compression() == 0 {
        let n = count_records(&b[HEADER_LEN..])?;
        if n != h.records_count as usize {
            return Err(Error::InvalidRecord(format!(
                "batch declares {} records, holds {n}",
                h.records_count
            )));
        }
    }
    Ok(h)
}

/// Reads a zigzag varint; returns the value and its length in bytes.
pub fn read_varint(b: &[u8]) -> Option<(i64, usize)> {
    let mut value: u64 = 0;
    for (i, byte) in b.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let decoded = ((value >> 1) as i64) ^ -((value & 1) as i64);
            return Some((decoded, i + 1));
        }
    }
    None
}

/// Counts length-prefixed records and checks they fill `records` exactly.
pub(crate) fn count_records(mut records: &[u8]) -> Result<usize> {
    let mut n = 0;
    while !records.is_empty() {
        let (len, used) = read_varint(records)
            .ok_or_else(|| Error::InvalidRecord("bad record length varint".into()))?;
        if len < 0 || used + len as usize > records.len() {
            return Err(Error::InvalidRecord(format!(
                "record of {len} bytes overruns its batch"
            )));
        }
        records = &records[used + len as usize..];
        n += 1;
    }
    Ok(n)
}

/// Timestamps of every record of an uncompressed batch, in order
/// (`base_timestamp + timestamp_delta`). `None` for compressed batches.
pub fn record_timestamps(b: &[u8]) -> Option<Vec<i64>> {
    let h = parse_header(b).ok()?;
    if h.compression() != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(h.records_count.max(0) as usize);
    let mut rest = &b[HEADER_LEN..h.size.min(b.len())];
    while !rest.is_empty() {
        let (len, used) = read_varint(rest)?;
        let body = rest.get(used..used + len as usize)?;
        // attributes i8, then the timestamp delta varint.
        let (delta, _) = read_varint(body.get(1..)?)?;
        out.push(if h.log_append_time() {
            h.max_timestamp
        } else {
            h.base_timestamp + delta
        });
        rest = &rest[used + len as usize..];
    }
    Some(out)
}

/// Sets the base offset (outside the CRC, so nothing else changes).
pub fn set_base_offset(b: &mut [u8], base_offset: i64) {
    b[0..8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Sets the partition leader epoch (outside the CRC).
pub fn set_leader_epoch(b: &mut [u8], epoch: i32) {
    b[12..16].copy_from_slice(&epoch.to_be_bytes());
}

/// Marks the batch LogAppendTime with `now_ms` as its max timestamp and
/// recomputes the CRC. The records are not touched: consumers take the
/// batch's max timestamp for every record of a LogAppendTime batch.
pub fn set_log_append_time(b: &mut [u8], now_ms: i64) {
    let attrs = i16_at(b, 21) | ATTR_TIMESTAMP_TYPE;
    b[21..23].copy_from_slice(&attrs.to_be_bytes());
    b[35..43].copy_from_slice(&now_ms.to_be_bytes());
    let crc = crc32c::crc32c(&b[CRC_START..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// Iterates the headers of the whole batches at the front of `b`, stopping at
/// the first incomplete one. Yields `(position, header)`.
pub fn headers(b: &[u8]) -> impl Iterator<Item = (usize, BatchHeader)> + '_ {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        let rest = b.get(pos..)?;
        let size = batch_size(rest)?;
        if rest.len() < size || size < HEADER_LEN {
            return None;
        }
        let h = parse_header(rest).ok()?;
        let at = pos;
        pos += size;
        Some((at, h))
    })
}

#[cfg(any(test, feature = "testing"))]
pub mod testing {
    //! Builds valid uncompressed batches for tests (also for other crates'
    //! tests, with the `testing` feature).

    fn put_varint(out: &mut Vec<u8>, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        loop {
            let byte = (z & 0x7f) as u8;
            z >>= 7;
            if z == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    /// A valid batch of `n` records with values of `value_len` bytes and
    /// timestamps `ts, ts+1, …`.
    pub fn batch(n: i32, value_len: usize, ts: i64) -> Vec<u8> {
        idempotent_batch(n, value_len, ts, -1, -1, -1)
    }

    /// A batch header (base offset 0, uncompressed, CreateTime, timestamps
    /// `ts, ts+1, …`) over `n` encoded records, with its CRC.
    fn assemble(n: i32, ts: i64, producer: (i64, i16, i32), records: Vec<u8>) -> Vec<u8> {
        let (producer_id, epoch, base_sequence) = producer;
        let mut b = Vec::new();
        b.extend(0i64.to_be_bytes());
        b.extend(((super::HEADER_LEN - 12 + records.len()) as i32).to_be_bytes());
        b.extend(0i32.to_be_bytes());
        b.push(2);
        b.extend(0u32.to_be_bytes());
        b.extend(0i16.to_be_bytes());
        b.extend((n - 1).to_be_bytes());
        b.extend(ts.to_be_bytes());
        b.extend((ts + n as i64 - 1).to_be_bytes());
        b.extend(producer_id.to_be_bytes());
        b.extend(epoch.to_be_bytes());
        b.extend(base_sequence.to_be_bytes());
        b.extend(n.to_be_bytes());
        b.extend(records);
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// A record's key and value (`None`: null; a null value is a tombstone).
    pub type KeyValue<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

    /// A batch of keyed records, timestamps `ts, ts+1, …`.
    pub fn keyed_batch(records: &[KeyValue], ts: i64) -> Vec<u8> {
        let mut body = Vec::new();
        for (i, (key, value)) in records.iter().enumerate() {
            let mut r = Vec::new();
            r.push(0u8);
            put_varint(&mut r, i as i64);
            put_varint(&mut r, i as i64);
            for field in [key, value] {
                match field {
                    Some(v) => {
                        put_varint(&mut r, v.len() as i64);
                        r.extend_from_slice(v);
                    }
                    None => put_varint(&mut r, -1),
                }
            }
            put_varint(&mut r, 0);
            put_varint(&mut body, r.len() as i64);
            body.extend(r);
        }
        assemble(records.len() as i32, ts, (-1, -1, -1), body)
    }

    /// Like [`batch`], from an idempotent producer.
    pub fn idempotent_batch(
        n: i32,
        value_len: usize,
        ts: i64,
        producer_id: i64,
        epoch: i16,
        base_sequence: i32,
    ) -> Vec<u8> {
        let mut records = Vec::new();
        for i in 0..n {
            let mut r = Vec::new();
            r.push(0u8); // attributes
            put_varint(&mut r, i as i64); // timestamp delta
            put_varint(&mut r, i as i64); // offset delta
            put_varint(&mut r, -1); // null key
            put_varint(&mut r, value_len as i64);
            r.extend(std::iter::repeat_n(b'v', value_len));
            put_varint(&mut r, 0); // headers
            put_varint(&mut records, r.len() as i64);
            records.extend(r);
        }
        assemble(n, ts, (producer_id, epoch, base_sequence), records)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::batch;
    use super::*;

    #[test]
    fn valid_batch_passes() {
        let b = batch(5, 10, 1000);
        let h = validate(&b).unwrap();
        assert_eq!(h.records_count, 5);
        assert_eq!(h.max_timestamp, 1004);
        assert_eq!(
            record_timestamps(&b).unwrap(),
            vec![1000, 1001, 1002, 1003, 1004]
        );
    }

    #[test]
    fn flipped_bit_fails_crc() {
        let b = batch(3, 10, 0);
        for at in CRC_START..b.len() {
            let mut c = b.clone();
            c[at] ^= 0x01;
            assert!(validate(&c).is_err(), "flip at {at}");
        }
    }

    #[test]
    fn base_offset_patch_keeps_crc() {
        let mut b = batch(3, 10, 0);
        set_base_offset(&mut b, 12345);
        set_leader_epoch(&mut b, 7);
        let h = validate(&b).unwrap();
        assert_eq!(h.base_offset, 12345);
        assert_eq!(h.last_offset(), 12347);
    }

    #[test]
    fn log_append_time_patch_is_valid() {
        let mut b = batch(3, 10, 0);
        set_log_append_time(&mut b, 99_000);
        let h = validate(&b).unwrap();
        assert!(h.log_append_time());
        assert_eq!(h.max_timestamp, 99_000);
        assert_eq!(record_timestamps(&b).unwrap(), vec![99_000; 3]);
    }

    #[test]
    fn record_count_mismatch_is_invalid() {
        let mut b = batch(3, 10, 0);
        b[57..61].copy_from_slice(&4i32.to_be_bytes());
        b[23..27].copy_from_slice(&3i32.to_be_bytes());
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(validate(&b), Err(Error::InvalidRecord(_))));
    }

    #[test]
    fn old_magic_is_unsupported() {
        let mut b = batch(1, 1, 0);
        b[16] = 1;
        assert!(matches!(validate(&b), Err(Error::UnsupportedMagic(1))));
    }

    #[test]
    fn headers_stop_at_partial_batch() {
        let mut all = batch(2, 5, 0);
        let second = batch(3, 5, 0);
        all.extend(&second);
        assert_eq!(headers(&all).count(), 2);
        assert_eq!(headers(&all[..all.len() - 1]).count(), 1);
    }
}
