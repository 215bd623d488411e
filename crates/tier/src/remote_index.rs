//! The `.idx` object uploaded beside each segment: what a cold read needs to
//! find a position without reading the segment, and what a broker that lost
//! its disk needs to continue the partition.
//!
//! Format (big-endian): magic `SIDX`, version u16, base offset i64, next
//! offset i64, leader epoch i32, max timestamp i64, segment size u64, then
//! three length-prefixed (u32) sections: offset index, time index (the log's
//! own encodings), producer state snapshot; then a CRC-32C of everything
//! before it.

use bytes::{BufMut, Bytes, BytesMut};
use strata_log::index::{OffsetIndex, TimeIndex};

const MAGIC: &[u8; 4] = b"SIDX";
const VERSION: u16 = 1;

/// A segment's remote index.
#[derive(Debug, Clone)]
pub struct RemoteIndex {
    /// First offset of the segment.
    pub base_offset: i64,
    /// Offset after the segment.
    pub next_offset: i64,
    /// Leader epoch the segment was written in.
    pub leader_epoch: i32,
    /// Largest timestamp in the segment.
    pub max_timestamp: i64,
    /// Size of the `.log` object.
    pub size_bytes: u64,
    /// Sparse offset → position index.
    pub offsets: OffsetIndex,
    /// Sparse timestamp → offset index.
    pub times: TimeIndex,
    /// Idempotent producer state as of `next_offset` (the log's snapshot encoding).
    pub producer_snapshot: Bytes,
}

impl RemoteIndex {
    /// Serialized form.
    #[allow(clippy::too_many_arguments)]
    pub fn encode(
        base_offset: i64,
        next_offset: i64,
        leader_epoch: i32,
        max_timestamp: i64,
        size_bytes: u64,
        offset_index: &[u8],
        time_index: &[u8],
        producer_snapshot: &[u8],
    ) -> Bytes {
        let mut b = BytesMut::with_capacity(
            64 + offset_index.len() + time_index.len() + producer_snapshot.len(),
        );
        b.put_slice(MAGIC);
        b.put_u16(VERSION);
        b.put_i64(base_offset);
        b.put_i64(next_offset);
        b.put_i32(leader_epoch);
        b.put_i64(max_timestamp);
        b.put_u64(size_bytes);
        for section in [offset_index, time_index, producer_snapshot] {
            b.put_u32(section.len() as u32);
            b.put_slice(section);
        }
        let crc = crc32c::crc32c(&b);
        b.put_u32(crc);
        b.freeze()
    }

    /// Parses an `.idx` object; the error says what is wrong.
    pub fn decode(bytes: &Bytes) -> Result<Self, String> {
        if bytes.len() < 4 + 2 + 44 + 12 + 4 {
            return Err(format!("{} bytes is too short", bytes.len()));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32c::crc32c(body) != u32::from_be_bytes(crc.try_into().expect("4 bytes")) {
            return Err("crc mismatch".into());
        }
        if &body[..4] != MAGIC {
            return Err("bad magic".into());
        }
        let mut r = Reader { body, pos: 4 };
        let version = u16::from_be_bytes(r.take(2)?.try_into().expect("2"));
        if version != VERSION {
            return Err(format!("unknown version {version}"));
        }
        let base_offset = i64::from_be_bytes(r.take(8)?.try_into().expect("8"));
        let next_offset = i64::from_be_bytes(r.take(8)?.try_into().expect("8"));
        let leader_epoch = i32::from_be_bytes(r.take(4)?.try_into().expect("4"));
        let max_timestamp = i64::from_be_bytes(r.take(8)?.try_into().expect("8"));
        let size_bytes = u64::from_be_bytes(r.take(8)?.try_into().expect("8"));
        let mut sections = Vec::with_capacity(3);
        for _ in 0..3 {
            let len = u32::from_be_bytes(r.take(4)?.try_into().expect("4")) as usize;
            let start = r.pos;
            r.take(len)?;
            sections.push(bytes.slice(start..start + len));
        }
        let offsets = OffsetIndex::decode(base_offset, &sections[0], size_bytes.max(1))
            .ok_or("offset index does not parse")?;
        let times =
            TimeIndex::decode(base_offset, &sections[1]).ok_or("time index does not parse")?;
        Ok(Self {
            base_offset,
            next_offset,
            leader_epoch,
            max_timestamp,
            size_bytes,
            offsets,
            times,
            producer_snapshot: sections[2].clone(),
        })
    }
}

struct Reader<'a> {
    body: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let s = self.body.get(self.pos..self.pos + n).ok_or("truncated")?;
        self.pos += n;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_detects_damage() {
        let mut idx = OffsetIndex::new(100);
        idx.push(110, 4096);
        idx.push(130, 9000);
        let mut times = TimeIndex::new(100);
        times.push(5_000, 110);
        let bytes = RemoteIndex::encode(
            100,
            150,
            3,
            6_000,
            10_000,
            &idx.encode(),
            &times.encode(),
            b"snap",
        );
        let r = RemoteIndex::decode(&bytes).unwrap();
        assert_eq!(
            (
                r.base_offset,
                r.next_offset,
                r.leader_epoch,
                r.max_timestamp
            ),
            (100, 150, 3, 6_000)
        );
        assert_eq!(r.offsets.lookup(131).position, 9000);
        assert_eq!(r.times.scan_start(5_000), 100);
        assert_eq!(&r.producer_snapshot[..], b"snap");
        for cut in 0..bytes.len() {
            assert!(
                RemoteIndex::decode(&bytes.slice(..cut)).is_err(),
                "cut at {cut}"
            );
        }
        let mut bad = bytes.to_vec();
        bad[20] ^= 1;
        assert!(RemoteIndex::decode(&Bytes::from(bad)).is_err());
    }
}
