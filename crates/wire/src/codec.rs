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
        assert!(decompress(ZSTD, Bytes::from_static(b"not zstd")).is_err());
    }
}
