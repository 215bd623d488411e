//! Log compaction's pure parts (`cleanup.policy=compact`): reading the
//! records of a batch, the map of every key to its latest offset, and
//! rewriting a batch with only the records to keep.
//!
//! A rewritten batch keeps its base offset, base and max timestamps, last
//! offset delta and producer fields, so offsets never move (they may have
//! holes), readers of any version decode it, and the producer state rebuilt
//! from it is the same. Records are copied byte for byte; only the records
//! count, the length and the CRC change, and a compressed batch is
//! compressed again with its own codec.

use std::collections::HashMap;

use bytes::Bytes;

use crate::batch::{self, read_varint, BatchHeader, HEADER_LEN, LOG_OVERHEAD};

/// One record of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// Its offset.
    pub offset: i64,
    /// Its key, `None` for a null key.
    pub key: Option<&'a [u8]>,
    /// Whether its value is null.
    pub tombstone: bool,
    /// The record's bytes, length prefix included.
    pub raw: &'a [u8],
}

/// The records section of a batch, decompressed.
pub fn plain_records(b: &[u8], h: &BatchHeader) -> Result<Bytes, String> {
    let body = Bytes::copy_from_slice(&b[HEADER_LEN..h.size]);
    strata_wire::codec::decompress(h.compression(), body)
}

/// The records of a decompressed records section.
pub fn records<'a>(h: &BatchHeader, plain: &'a [u8]) -> Result<Vec<RecordView<'a>>, String> {
    let mut out = Vec::with_capacity(h.records_count.max(0) as usize);
    let mut rest = plain;
    while !rest.is_empty() {
        let (len, used) = read_varint(rest).ok_or("bad record length")?;
        let end = used + usize::try_from(len).map_err(|_| "negative record length")?;
        let raw = rest.get(..end).ok_or("record overruns its batch")?;
        let body = &raw[used..];
        let mut at = 1; // attributes
        let field = |at: &mut usize| -> Result<i64, String> {
            let (v, n) = read_varint(body.get(*at..).ok_or("truncated record")?)
                .ok_or("bad varint in record")?;
            *at += n;
            Ok(v)
        };
        field(&mut at)?; // timestamp delta
        let offset_delta = field(&mut at)?;
        let key_len = field(&mut at)?;
        let key = if key_len < 0 {
            None
        } else {
            let k = body
                .get(at..at + key_len as usize)
                .ok_or("key overruns its record")?;
            at += key_len as usize;
            Some(k)
        };
        let value_len = field(&mut at)?;
        out.push(RecordView {
            offset: h.base_offset + offset_delta,
            key,
            tombstone: value_len < 0,
            raw,
        });
        rest = &rest[end..];
    }
    Ok(out)
}

/// Every key of the dirty section and the offset of its latest record,
/// within a memory budget (`log.cleaner.dedupe.buffer.size`).
#[derive(Debug)]
pub struct KeyMap {
    latest: HashMap<Box<[u8]>, i64>,
    bytes: usize,
    limit: usize,
}

/// What one entry costs besides its key (hash table slot, box, offset).
const ENTRY_OVERHEAD: usize = 48;

impl KeyMap {
    /// An empty map that holds about `limit_bytes` of keys.
    pub fn new(limit_bytes: usize) -> Self {
        Self {
            latest: HashMap::new(),
            bytes: 0,
            limit: limit_bytes,
        }
    }

    /// Records `key` at `offset` (later offsets win). `false` when a new key
    /// does not fit: the map is full and the dirty section must end before it.
    pub fn record(&mut self, key: &[u8], offset: i64) -> bool {
        if let Some(o) = self.latest.get_mut(key) {
            *o = (*o).max(offset);
            return true;
        }
        let cost = key.len() + ENTRY_OVERHEAD;
        if self.bytes + cost > self.limit {
            return false;
        }
        self.bytes += cost;
        self.latest.insert(key.into(), offset);
        true
    }

    /// The latest offset of `key`, if the dirty section has it.
    pub fn latest(&self, key: &[u8]) -> Option<i64> {
        self.latest.get(key).copied()
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.latest.len()
    }

    /// Whether it holds no key.
    pub fn is_empty(&self) -> bool {
        self.latest.is_empty()
    }
}

/// Whether compaction keeps a record: it has a key, no later record of
/// that key is in the map, and it is not a tombstone past its retention.
/// Records without a key (written before the topic was compacted) go, as in
/// Kafka.
pub fn keep(r: &RecordView, map: &KeyMap, tombstones_expired: bool) -> bool {
    let Some(key) = r.key else {
        return false;
    };
    if map.latest(key).is_some_and(|latest| r.offset < latest) {
        return false;
    }
    !(r.tombstone && tombstones_expired)
}

/// What filtering did to a batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Filtered {
    /// Every record kept: copy the batch as it is.
    Unchanged,
    /// Some records kept: this batch replaces it.
    Rewritten(Vec<u8>),
    /// No record kept.
    Empty,
}

/// Filters the records of the whole batch `b` with `keep`.
pub fn filter_batch(b: &[u8], keep: impl Fn(&RecordView) -> bool) -> Result<Filtered, String> {
    let h = batch::validate_stored(b).map_err(|e| e.to_string())?;
    if h.attributes & batch::ATTR_CONTROL != 0 {
        return Ok(Filtered::Unchanged);
    }
    let plain = plain_records(b, &h)?;
    let all = records(&h, &plain)?;
    let kept: Vec<&RecordView> = all.iter().filter(|r| keep(r)).collect();
    if kept.len() == all.len() {
        return Ok(Filtered::Unchanged);
    }
    if kept.is_empty() {
        return Ok(Filtered::Empty);
    }
    let section: Vec<u8> = kept.iter().flat_map(|r| r.raw.iter().copied()).collect();
    let mut out = bytes::BytesMut::with_capacity(HEADER_LEN + section.len());
    out.extend_from_slice(&b[..HEADER_LEN]);
    strata_wire::codec::compress(h.compression(), &section, &mut out)?;
    let len = (out.len() - LOG_OVERHEAD) as i32;
    out[8..12].copy_from_slice(&len.to_be_bytes());
    out[57..61].copy_from_slice(&(kept.len() as i32).to_be_bytes());
    let crc = crc32c::crc32c(&out[21..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    Ok(Filtered::Rewritten(out.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::testing::keyed_batch;

    fn at(mut b: Vec<u8>, base: i64) -> Vec<u8> {
        batch::set_base_offset(&mut b, base);
        b
    }

    #[test]
    fn the_latest_record_of_each_key_survives_and_batches_stay_valid() {
        let first = at(
            keyed_batch(
                &[
                    (Some(b"a"), Some(b"1")),
                    (Some(b"b"), Some(b"1")),
                    (None, Some(b"x")),
                ],
                100,
            ),
            0,
        );
        let second = at(
            keyed_batch(&[(Some(b"a"), Some(b"2")), (Some(b"c"), None)], 200),
            3,
        );
        let mut map = KeyMap::new(1 << 20);
        for b in [&first, &second] {
            let h = batch::parse_header(b).unwrap();
            let plain = plain_records(b, &h).unwrap();
            for r in records(&h, &plain).unwrap() {
                if let Some(k) = r.key {
                    assert!(map.record(k, r.offset));
                }
            }
        }
        assert_eq!((map.len(), map.latest(b"a")), (3, Some(3)));
        let out = match filter_batch(&first, |r| keep(r, &map, false)).unwrap() {
            Filtered::Rewritten(b) => b,
            other => panic!("{other:?}"),
        };
        let h = batch::validate_stored(&out).unwrap();
        assert_eq!(
            (h.base_offset, h.last_offset_delta, h.records_count),
            (0, 2, 1)
        );
        assert!(
            batch::validate(&out).is_err(),
            "a produced batch must be whole"
        );
        let plain = plain_records(&out, &h).unwrap();
        let kept = records(&h, &plain).unwrap();
        assert_eq!((kept[0].offset, kept[0].key), (1, Some(&b"b"[..])));
        assert_eq!(
            filter_batch(&second, |r| keep(r, &map, false)).unwrap(),
            Filtered::Unchanged
        );
        // Once tombstones expire, c's goes; a's latest stays.
        match filter_batch(&second, |r| keep(r, &map, true)).unwrap() {
            Filtered::Rewritten(b) => {
                assert_eq!(batch::validate_stored(&b).unwrap().records_count, 1)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn compressed_batches_are_filtered_in_their_codec() {
        let plain_batch = keyed_batch(&[(Some(b"k"), Some(b"old")), (Some(b"k"), Some(b"new"))], 0);
        let h = batch::parse_header(&plain_batch).unwrap();
        // Recompress the records section with zstd.
        let mut zstd = plain_batch[..HEADER_LEN].to_vec();
        let mut body = bytes::BytesMut::new();
        strata_wire::codec::compress(
            strata_wire::codec::ZSTD,
            &plain_batch[HEADER_LEN..],
            &mut body,
        )
        .unwrap();
        zstd.extend_from_slice(&body);
        let len = (zstd.len() - LOG_OVERHEAD) as i32;
        zstd[8..12].copy_from_slice(&len.to_be_bytes());
        zstd[21..23].copy_from_slice(&(h.attributes | 4).to_be_bytes());
        let crc = crc32c::crc32c(&zstd[21..]);
        zstd[17..21].copy_from_slice(&crc.to_be_bytes());

        let mut map = KeyMap::new(1 << 20);
        map.record(b"k", 1);
        let Filtered::Rewritten(out) = filter_batch(&zstd, |r| keep(r, &map, false)).unwrap()
        else {
            panic!("one record goes");
        };
        let h = batch::validate_stored(&out).unwrap();
        assert_eq!((h.compression(), h.records_count), (4, 1));
        let plain = plain_records(&out, &h).unwrap();
        let r = records(&h, &plain).unwrap();
        assert_eq!(r[0].offset, 1);
        assert!(r[0].raw.ends_with(b"new\0"));
    }

    #[test]
    fn a_full_map_refuses_new_keys_but_updates_known_ones() {
        let mut map = KeyMap::new(2 * (ENTRY_OVERHEAD + 1));
        assert!(map.record(b"a", 1) && map.record(b"b", 2));
        assert!(!map.record(b"c", 3));
        assert!(map.record(b"a", 9));
        assert_eq!(map.latest(b"a"), Some(9));
    }
}
