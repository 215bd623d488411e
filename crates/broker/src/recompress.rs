//! Topic `compression.type` other than `producer`: a batch whose codec
//! differs from the topic's is recompressed before it is appended, as Kafka
//! does. In a v2 batch the codec covers the records section alone, so the
//! records stay byte for byte what the producer sent (offsets, timestamps,
//! keys, headers, producer ids and sequences); the header changes only in
//! its codec bits, length and CRC.
//!
//! It runs on the append queue's blocking thread, not on the async workers.

use bytes::{Bytes, BytesMut};
use strata_log::batch::{self, HEADER_LEN, LOG_OVERHEAD};
use strata_wire::codec;

/// The most a client's batch may decompress to (Kafka's largest default
/// `max.message.bytes` is 1 MiB compressed; this allows for ratios far
/// beyond real data) before it is refused as corrupt.
pub(crate) const MAX_DECOMPRESSED: usize = 256 << 20;

/// Bits of a batch's attributes holding its codec.
const CODEC_MASK: i16 = 0x7;
/// Where a v2 batch's fields are.
const LENGTH_AT: usize = 8;
const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;

/// `records` with every batch in `target`'s codec, or `None` when they all
/// are already (nothing to copy). Control batches are left as they are.
/// Bytes that do not form valid batches are left for the log to refuse, so
/// the producer gets the log's error.
pub(crate) fn to_codec(records: &[u8], target: i16) -> Result<Option<BytesMut>, String> {
    let mut batches = Vec::new();
    let mut pos = 0;
    while pos < records.len() {
        let Some(size) = batch::batch_size(&records[pos..]) else {
            return Ok(None);
        };
        let Some(b) = records.get(pos..pos + size) else {
            return Ok(None);
        };
        let Ok(h) = batch::validate(b) else {
            return Ok(None);
        };
        let convert = h.compression() != target && h.attributes & batch::ATTR_CONTROL == 0;
        batches.push((b, h, convert));
        pos += size;
    }
    if !batches.iter().any(|(_, _, convert)| *convert) {
        return Ok(None);
    }
    let mut out = BytesMut::with_capacity(records.len());
    for (b, h, convert) in batches {
        if !convert {
            out.extend_from_slice(b);
            continue;
        }
        let plain = codec::decompress_limited(
            h.compression(),
            Bytes::copy_from_slice(&b[HEADER_LEN..]),
            MAX_DECOMPRESSED,
        )
        .map_err(|e| format!("batch of {} records: {e}", h.records_count))?;
        let start = out.len();
        out.extend_from_slice(&b[..HEADER_LEN]);
        codec::compress(target, &plain, &mut out)?;
        let new = &mut out[start..];
        let length = i32::try_from(new.len() - LOG_OVERHEAD)
            .map_err(|_| "recompressed batch too large".to_string())?;
        new[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&length.to_be_bytes());
        let attributes = (h.attributes & !CODEC_MASK) | target;
        new[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
        let crc = crc32c::crc32c(&new[ATTRIBUTES_AT..]);
        new[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
        TimestampType,
    };

    fn records(n: i64, pid: i64) -> Vec<Record> {
        (0..n)
            .map(|i| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: pid,
                producer_epoch: 3,
                timestamp_type: TimestampType::Creation,
                offset: i,
                sequence: if pid >= 0 { 40 + i as i32 } else { -1 },
                timestamp: 1_700_000_000_000 + i * 7,
                key: Some(Bytes::from(format!("key-{i}"))),
                value: (i % 5 != 0).then(|| Bytes::from(vec![b'v'; 100 + i as usize])),
                headers: [(
                    kafka_protocol::protocol::StrBytes::from_static_str("h"),
                    Some(Bytes::from_static(b"x")),
                )]
                .into_iter()
                .collect(),
            })
            .collect()
    }

    fn encode(rs: &[Record], compression: Compression) -> BytesMut {
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression,
        };
        RecordBatchEncoder::encode(&mut buf, rs.iter(), &options).unwrap();
        buf
    }

    #[test]
    fn batches_change_codec_and_keep_every_record_field() {
        let rs = records(50, 9);
        let codecs = [
            (Compression::None, codec::NONE),
            (Compression::Gzip, codec::GZIP),
            (Compression::Snappy, codec::SNAPPY),
            (Compression::Lz4, codec::LZ4),
            (Compression::Zstd, codec::ZSTD),
        ];
        for (from, _) in codecs {
            // Two batches in one request, the second in the target codec.
            for (to_c, to) in codecs {
                let mut input = encode(&rs, from);
                input.extend_from_slice(&encode(&records(3, -1), to_c));
                let out = match to_codec(&input, to).unwrap() {
                    Some(out) => out,
                    None => {
                        assert_eq!(from, to_c, "only a request already in {to} is left alone");
                        continue;
                    }
                };
                let mut hs = batch::headers(&out);
                let (first, h) = hs.next().unwrap();
                let (_, h2) = hs.next().unwrap();
                assert_eq!((h.compression(), h2.compression()), (to, to));
                batch::validate(&out[first..first + h.size]).unwrap();
                let mut buf = out.clone().freeze();
                let decoded = RecordBatchDecoder::decode(&mut buf).unwrap();
                assert_eq!(decoded.records.len(), 50);
                for (a, b) in decoded.records.iter().zip(&rs) {
                    assert_eq!(
                        (a.offset, a.timestamp, &a.key, &a.value, &a.headers),
                        (b.offset, b.timestamp, &b.key, &b.value, &b.headers)
                    );
                    assert_eq!(
                        (a.producer_id, a.producer_epoch, a.sequence),
                        (9, 3, b.sequence)
                    );
                }
            }
        }
    }

    #[test]
    fn invalid_bytes_are_left_for_the_log_to_refuse() {
        let mut b = encode(&records(5, -1), Compression::Gzip);
        let last = b.len() - 1;
        b[last] ^= 0xff; // CRC no longer matches
        assert!(to_codec(&b, codec::ZSTD).unwrap().is_none());
        assert!(to_codec(&b[..20], codec::ZSTD).unwrap().is_none());
    }
}
