//! Records out of stored RecordBatch v2 bytes (a segment, or part of one),
//! decompressed, with every header kept (duplicate names included, which
//! the Kafka client libraries' maps would collapse).

use bytes::{Buf, Bytes};
use strata_log::batch::{self, HEADER_LEN};

/// One record as the lake stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Timestamp (ms since the epoch).
    pub timestamp: i64,
    /// Whether the timestamp is the broker's (LogAppendTime).
    pub log_append_time: bool,
    /// Key, if any.
    pub key: Option<Bytes>,
    /// Value; `None` is a tombstone.
    pub value: Option<Bytes>,
    /// Headers in order.
    pub headers: Vec<(String, Option<Bytes>)>,
}

fn varint(b: &mut Bytes) -> Result<i64, String> {
    let (v, n) = batch::read_varint(b).ok_or("bad varint")?;
    b.advance(n);
    Ok(v)
}

fn take(b: &mut Bytes, len: i64) -> Result<Option<Bytes>, String> {
    if len < 0 {
        return Ok(None);
    }
    let len = len as usize;
    if b.len() < len {
        return Err("field runs past the record".into());
    }
    Ok(Some(b.split_to(len)))
}

/// Every record of the whole batches in `bytes`, in offset order. Control
/// batches are skipped. An error names the offset of the batch that does
/// not decode.
pub fn decode(bytes: &Bytes, partition: i32) -> Result<Vec<Row>, String> {
    let mut out = Vec::new();
    for (at, h) in batch::headers(bytes) {
        if h.attributes & batch::ATTR_CONTROL != 0 {
            continue;
        }
        let body = bytes.slice(at + HEADER_LEN..at + h.size);
        let mut records = strata_wire::codec::decompress(h.compression(), body)
            .map_err(|e| format!("batch at offset {}: {e}", h.base_offset))?;
        for _ in 0..h.records_count {
            let row = (|| -> Result<Row, String> {
                let len = varint(&mut records)?;
                let mut r = take(&mut records, len)?.ok_or("negative record length")?;
                r.advance(1); // attributes
                let ts_delta = varint(&mut r)?;
                let offset_delta = varint(&mut r)?;
                let key_len = varint(&mut r)?;
                let key = take(&mut r, key_len)?;
                let value_len = varint(&mut r)?;
                let value = take(&mut r, value_len)?;
                let n = varint(&mut r)?;
                let mut headers = Vec::with_capacity(n.max(0) as usize);
                for _ in 0..n {
                    let k_len = varint(&mut r)?;
                    let k = take(&mut r, k_len)?.unwrap_or_default();
                    let v_len = varint(&mut r)?;
                    let v = take(&mut r, v_len)?;
                    headers.push((String::from_utf8_lossy(&k).into_owned(), v));
                }
                Ok(Row {
                    partition,
                    offset: h.base_offset + offset_delta,
                    timestamp: if h.log_append_time() {
                        h.max_timestamp
                    } else {
                        h.base_timestamp + ts_delta
                    },
                    log_append_time: h.log_append_time(),
                    key,
                    value,
                    headers,
                })
            })()
            .map_err(|e| format!("batch at offset {}: {e}", h.base_offset))?;
            out.push(row);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_log::batch::testing::batch;

    #[test]
    fn uncompressed_batches_decode_with_offsets_and_timestamps() {
        let mut bytes = batch(3, 4, 1000);
        bytes[0..8].copy_from_slice(&40i64.to_be_bytes());
        let mut second = batch(2, 1, 5000);
        second[0..8].copy_from_slice(&43i64.to_be_bytes());
        bytes.extend(second);
        let rows = decode(&Bytes::from(bytes), 7).unwrap();
        assert_eq!(
            rows.iter().map(|r| r.offset).collect::<Vec<_>>(),
            [40, 41, 42, 43, 44]
        );
        assert_eq!(
            rows.iter().map(|r| r.timestamp).collect::<Vec<_>>(),
            [1000, 1001, 1002, 5000, 5001]
        );
        assert_eq!(rows[0].value.as_deref(), Some(&b"vvvv"[..]));
        assert!(rows[0].key.is_none() && rows.iter().all(|r| r.partition == 7));
    }

    #[test]
    fn compressed_batches_decode_with_every_header() {
        use indexmap::IndexMap;
        use kafka_protocol::records::{
            Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
        };
        let records: Vec<Record> = (0..5)
            .map(|i| Record {
                transactional: false,
                control: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i,
                sequence: i as i32,
                timestamp: 100 + i,
                key: Some(Bytes::from(format!("k{i}"))),
                value: (i != 3).then(|| Bytes::from(format!("v{i}"))),
                headers: IndexMap::from([
                    ("h".into(), Some(Bytes::from_static(b"x"))),
                    ("n".into(), None),
                ]),
                delete_horizon: false,
            })
            .collect();
        for compression in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let mut buf = bytes::BytesMut::new();
            let options = RecordEncodeOptions {
                version: 2,
                compression,
            };
            RecordBatchEncoder::encode(&mut buf, records.iter(), &options).unwrap();
            let rows = decode(&buf.freeze(), 0).unwrap();
            assert_eq!(rows.len(), 5, "{compression:?}");
            assert_eq!(rows[2].key.as_deref(), Some(&b"k2"[..]));
            assert!(rows[3].value.is_none(), "tombstone");
            assert_eq!(rows[4].timestamp, 104);
            assert_eq!(
                rows[1].headers,
                vec![
                    ("h".into(), Some(Bytes::from_static(b"x"))),
                    ("n".into(), None)
                ]
            );
        }
    }
}
