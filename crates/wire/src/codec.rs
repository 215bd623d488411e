//! The compression codecs of record batches, by the id a batch's attributes
//! carry (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd). In a v2 batch the codec
//! applies to the records section as a whole, so a batch changes codec by
//! decompressing and compressing that section; the records stay byte for
//! byte what they were.

use bytes::{Bytes, BytesMut};
use kafka_protocol::compression::{Compressor, Decompressor, Gzip, Lz4, Snappy, Zstd};

/// Codec id of uncompressed batches.
pub const NONE: i16 = 0;
/// Codec id of gzip.
pub const GZIP: i16 = 1;
/// Codec id of snappy.
pub const SNAPPY: i16 = 2;
/// Codec id of lz4.
pub const LZ4: i16 = 3;
/// Codec id of zstd.
pub const ZSTD: i16 = 4;

/// Decompresses a records section compressed with `codec`.
pub fn decompress(codec: i16, data: Bytes) -> Result<Bytes, String> {
    let mut data = data;
    let take = |b: &mut Bytes| Ok(std::mem::take(b));
    let out = match codec {
        NONE => return Ok(data),
        GZIP => Gzip::decompress(&mut data, take),
        SNAPPY => Snappy::decompress(&mut data, take),
        LZ4 => Lz4::decompress(&mut data, take),
        ZSTD => Zstd::decompress(&mut data, take),
        other => return Err(format!("unknown compression codec {other}")),
    };
    out.map_err(|e| format!("cannot decompress: {e:#}"))
}

/// Like [`decompress`], for bytes from a client: refuses a section that
/// would decompress to more than `limit` bytes before allocating it, so a
/// small batch of compressed zeros cannot make the broker allocate
/// gigabytes.
pub fn decompress_limited(codec: i16, data: Bytes, limit: usize) -> Result<Bytes, String> {
    use std::io::Read;
    let too_big = || format!("the batch decompresses to more than {limit} bytes");
    let bounded = |mut r: Box<dyn Read + '_>| -> Result<Bytes, String> {
        let mut out = Vec::new();
        (&mut r)
            .take(limit as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| format!("cannot decompress: {e}"))?;
        if out.len() > limit {
            return Err(too_big());
        }
        Ok(Bytes::from(out))
    };
    match codec {
        NONE => Ok(data),
        GZIP => bounded(Box::new(flate2::read::GzDecoder::new(&data[..]))),
        ZSTD => bounded(Box::new(
            zstd::stream::read::Decoder::new(&data[..])
                .map_err(|e| format!("cannot decompress: {e}"))?,
        )),
        LZ4 => bounded(Box::new(
            lz4::Decoder::new(&data[..]).map_err(|e| format!("cannot decompress: {e}"))?,
        )),
        SNAPPY => {
            // Snappy blocks state their length up front: add them up first.
            if snappy_len(&data).ok_or("cannot read the snappy lengths")? > limit {
                return Err(too_big());
            }
            decompress(codec, data)
        }
        other => Err(format!("unknown compression codec {other}")),
    }
}

/// The decompressed length of a snappy section: raw, or Kafka's (xerial)
/// framing of length-prefixed raw blocks after a 16-byte header.
fn snappy_len(data: &[u8]) -> Option<usize> {
    const XERIAL: &[u8] = b"\x82SNAPPY\x00";
    if !data.starts_with(XERIAL) {
        return snap::raw::decompress_len(data).ok();
    }
    let mut rest = data.get(16..)?;
    let mut total = 0usize;
    while !rest.is_empty() {
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let block = rest.get(4..4 + len)?;
        total = total.checked_add(snap::raw::decompress_len(block).ok()?)?;
        rest = &rest[4 + len..];
    }
    Some(total)
}

/// Compresses a records section with `codec`, appending to `out`.
pub fn compress(codec: i16, plain: &[u8], out: &mut BytesMut) -> Result<(), String> {
    let put = |b: &mut BytesMut| {
        b.extend_from_slice(plain);
        Ok(())
    };
    let r = match codec {
        NONE => {
            out.extend_from_slice(plain);
            return Ok(());
        }
        GZIP => Gzip::compress(out, put),
        SNAPPY => Snappy::compress(out, put),
        LZ4 => Lz4::compress(out, put),
        ZSTD => Zstd::compress(out, put),
        other => return Err(format!("unknown compression codec {other}")),
    };
    r.map_err(|e| format!("cannot compress: {e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_round_trips() {
        let plain: Vec<u8> = (0..50_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for codec in [NONE, GZIP, SNAPPY, LZ4, ZSTD] {
            let mut out = BytesMut::new();
            compress(codec, &plain, &mut out).unwrap();
            if codec != NONE {
                assert!(out.len() < plain.len(), "codec {codec} compresses");
            }
            assert_eq!(
                decompress(codec, out.freeze()).unwrap(),
                plain,
                "codec {codec}"
            );
        }
        assert!(decompress(9, Bytes::new()).is_err());
    }

    #[test]
    fn a_bomb_is_refused_before_it_is_inflated() {
        let zeros = vec![0u8; 8 << 20];
        for codec in [GZIP, SNAPPY, LZ4, ZSTD] {
            let mut out = BytesMut::new();
            compress(codec, &zeros, &mut out).unwrap();
            let packed = out.freeze();
            assert!(packed.len() < 1 << 20, "codec {codec} packs zeros");
            let err = decompress_limited(codec, packed.clone(), 1 << 20).unwrap_err();
            assert!(err.contains("more than"), "codec {codec}: {err}");
            assert_eq!(
                decompress_limited(codec, packed, 16 << 20).unwrap().len(),
                8 << 20
            );
        }
        assert!(decompress(ZSTD, Bytes::from_static(b"not zstd")).is_err());
    }
}
