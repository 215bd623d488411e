//! Kafka wire framing and the codec glue over the `kafka-protocol` crate.
//!
//! Sans-io: this crate turns bytes into typed requests and typed responses into
//! bytes and never touches a socket. The server keeps the read buffer, calls
//! [`FrameDecoder::decode`] until a whole frame has arrived, then
//! [`parse_request`] on it.
//!
//! Invariants:
//! - A length prefix above the configured maximum is rejected before anything
//!   is allocated for it.
//! - The API key and version are checked before the header is decoded, so an
//!   unknown key or an unsupported version is reported with the correlation id
//!   the client sent (the caller decides whether it can answer).

pub mod codec;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};

/// Errors of framing and request parsing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The length prefix is larger than the configured maximum.
    #[error("frame of {size} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// Declared frame size.
        size: i64,
        /// Configured maximum.
        max: usize,
    },
    /// The length prefix is negative or too small to hold a request header.
    #[error("invalid frame length {0}")]
    InvalidLength(i32),
    /// The API key is not one Kafka defines.
    #[error("unknown api key {api_key}")]
    UnknownApiKey {
        /// Raw API key.
        api_key: i16,
        /// Correlation id from the frame.
        correlation_id: i32,
    },
    /// The API is known but this version is outside what the server supports.
    #[error("unsupported version {version} of {api_key:?}")]
    UnsupportedVersion {
        /// The API.
        api_key: ApiKey,
        /// Requested version.
        version: i16,
        /// Correlation id from the frame.
        correlation_id: i32,
    },
    /// The header or body does not decode.
    #[error("malformed {api_key:?} v{version} request: {reason}")]
    Malformed {
        /// The API.
        api_key: ApiKey,
        /// Requested version.
        version: i16,
        /// Correlation id from the frame.
        correlation_id: i32,
        /// What the decoder said.
        reason: String,
    },
    /// A response could not be encoded (a server bug, never client input).
    #[error("cannot encode {api_key:?} v{version} response: {reason}")]
    Encode {
        /// The API.
        api_key: ApiKey,
        /// Response version.
        version: i16,
        /// What the encoder said.
        reason: String,
    },
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Size of the length prefix of every Kafka frame.
pub const LENGTH_PREFIX: usize = 4;
/// Smallest request frame: api key, api version and correlation id.
const MIN_REQUEST: i32 = 8;

/// Splits a byte stream into Kafka frames (without their length prefix).
#[derive(Debug, Clone, Copy)]
pub struct FrameDecoder {
    max_frame: usize,
}

impl FrameDecoder {
    /// A decoder that refuses frames longer than `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Self { max_frame }
    }

    /// Takes one whole frame off the front of `buf`, or returns `None` when more
    /// bytes are needed. On success `buf` is advanced past the frame.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Bytes>> {
        if buf.len() < LENGTH_PREFIX {
            return Ok(None);
        }
        let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        if len < MIN_REQUEST {
            return Err(Error::InvalidLength(len));
        }
        if len as usize > self.max_frame {
            return Err(Error::FrameTooLarge {
                size: len as i64,
                max: self.max_frame,
            });
        }
        let total = LENGTH_PREFIX + len as usize;
        if buf.len() < total {
            // Reserve what the frame needs now that its size is known to be allowed.
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        buf.advance(LENGTH_PREFIX);
        Ok(Some(buf.split_to(len as usize).freeze()))
    }
}

/// A decoded request.
#[derive(Debug)]
pub struct Request {
    /// The API.
    pub api_key: ApiKey,
    /// The decoded header (version, correlation id, client id).
    pub header: RequestHeader,
    /// The decoded body.
    pub body: RequestKind,
}

impl Request {
    /// Requested version.
    pub fn version(&self) -> i16 {
        self.header.request_api_version
    }
}

/// Reads the API key, version and correlation id without decoding the rest.
pub fn peek_header(frame: &[u8]) -> Option<(i16, i16, i32)> {
    if frame.len() < MIN_REQUEST as usize {
        return None;
    }
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    Some((key, version, correlation))
}

/// Parses one frame into a request. `supported` says which versions of an API
/// the server answers; anything else is [`Error::UnsupportedVersion`].
pub fn parse_request(
    mut frame: Bytes,
    supported: impl Fn(ApiKey) -> Option<(i16, i16)>,
) -> Result<Request> {
    let (raw_key, version, correlation_id) =
        peek_header(&frame).ok_or(Error::InvalidLength(frame.len() as i32))?;
    let api_key = ApiKey::try_from(raw_key).map_err(|_| Error::UnknownApiKey {
        api_key: raw_key,
        correlation_id,
    })?;
    let unsupported = Error::UnsupportedVersion {
        api_key,
        version,
        correlation_id,
    };
    let (min, max) = supported(api_key).ok_or(Error::UnsupportedVersion {
        api_key,
        version,
        correlation_id,
    })?;
    let codec = api_key.valid_versions();
    if version < min.max(codec.min) || version > max.min(codec.max) {
        return Err(unsupported);
    }
    let malformed = |reason: String| Error::Malformed {
        api_key,
        version,
        correlation_id,
        reason,
    };
    let header_version = api_key.request_header_version(version);
    let header =
        RequestHeader::decode(&mut frame, header_version).map_err(|e| malformed(e.to_string()))?;
    let body = RequestKind::decode(api_key, &mut frame, version)
        .map_err(|e| malformed(format!("{e:#}")))?;
    Ok(Request {
        api_key,
        header,
        body,
    })
}

/// Encodes a response with its header and length prefix, ready to write.
pub fn encode_response(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &ResponseKind,
) -> Result<Bytes> {
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let encode_err = |reason: String| Error::Encode {
        api_key,
        version,
        reason,
    };
    header
        .encode(&mut buf, api_key.response_header_version(version))
        .map_err(|e| encode_err(e.to_string()))?;
    body.encode(&mut buf, version)
        .map_err(|e| encode_err(format!("{e:#}")))?;
    let len = (buf.len() - LENGTH_PREFIX) as i32;
    buf[..LENGTH_PREFIX].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

/// Encodes a request with its header and length prefix, ready to write (a
/// broker talking to another broker: forwarded admin requests, replication).
pub fn encode_request(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    client_id: &str,
    body: &RequestKind,
) -> Result<Bytes> {
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0);
    let header = RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(kafka_protocol::protocol::StrBytes::from_string(
            client_id.to_string(),
        )));
    let encode_err = |reason: String| Error::Encode {
        api_key,
        version,
        reason,
    };
    header
        .encode(&mut buf, api_key.request_header_version(version))
        .map_err(|e| encode_err(e.to_string()))?;
    body.encode(&mut buf, version)
        .map_err(|e| encode_err(format!("{e:#}")))?;
    let len = (buf.len() - LENGTH_PREFIX) as i32;
    buf[..LENGTH_PREFIX].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

/// Parses a response frame (without its length prefix) to a request of
/// `api_key` at `version`: the correlation id and the body.
pub fn parse_response(
    api_key: ApiKey,
    version: i16,
    mut frame: Bytes,
) -> Result<(i32, ResponseKind)> {
    let malformed = |correlation_id: i32, reason: String| Error::Malformed {
        api_key,
        version,
        correlation_id,
        reason,
    };
    let header = ResponseHeader::decode(&mut frame, api_key.response_header_version(version))
        .map_err(|e| malformed(-1, e.to_string()))?;
    let body = ResponseKind::decode(api_key, &mut frame, version)
        .map_err(|e| malformed(header.correlation_id, format!("{e:#}")))?;
    Ok((header.correlation_id, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, MetadataRequest};
    use proptest::prelude::*;

    fn frame(header: &RequestHeader, body: &impl Encodable, version: i16, key: ApiKey) -> BytesMut {
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        header
            .encode(&mut buf, key.request_header_version(version))
            .unwrap();
        body.encode(&mut buf, version).unwrap();
        let len = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        buf
    }

    fn all(_: ApiKey) -> Option<(i16, i16)> {
        Some((0, i16::MAX))
    }

    #[test]
    fn whole_frame_round_trips() {
        let header = RequestHeader::default()
            .with_request_api_key(ApiKey::Metadata as i16)
            .with_request_api_version(9)
            .with_correlation_id(42);
        let mut buf = frame(&header, &MetadataRequest::default(), 9, ApiKey::Metadata);
        let dec = FrameDecoder::new(1 << 20);
        let f = dec.decode(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty());
        let req = parse_request(f, all).unwrap();
        assert_eq!(req.api_key, ApiKey::Metadata);
        assert_eq!(req.header.correlation_id, 42);
        assert!(matches!(req.body, RequestKind::Metadata(_)));
    }

    #[test]
    fn partial_frame_waits_for_more() {
        let header = RequestHeader::default()
            .with_request_api_key(ApiKey::ApiVersions as i16)
            .with_request_api_version(3)
            .with_correlation_id(1);
        let full = frame(
            &header,
            &ApiVersionsRequest::default(),
            3,
            ApiKey::ApiVersions,
        );
        let dec = FrameDecoder::new(1 << 20);
        for cut in 0..full.len() {
            let mut part = BytesMut::from(&full[..cut]);
            assert!(dec.decode(&mut part).unwrap().is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn oversized_length_is_refused_before_allocation() {
        let mut buf = BytesMut::from(&i32::MAX.to_be_bytes()[..]);
        let err = FrameDecoder::new(1024).decode(&mut buf).unwrap_err();
        assert!(matches!(err, Error::FrameTooLarge { .. }));
        assert!(buf.capacity() < 1024);
    }

    #[test]
    fn negative_length_is_refused() {
        let mut buf = BytesMut::from(&(-5i32).to_be_bytes()[..]);
        assert!(matches!(
            FrameDecoder::new(1024).decode(&mut buf),
            Err(Error::InvalidLength(-5))
        ));
    }

    #[test]
    fn unknown_key_and_version_carry_the_correlation_id() {
        let mut raw = BytesMut::new();
        raw.put_i16(999);
        raw.put_i16(0);
        raw.put_i32(7);
        match parse_request(raw.freeze(), all) {
            Err(Error::UnknownApiKey {
                api_key: 999,
                correlation_id: 7,
            }) => {}
            other => panic!("{other:?}"),
        }
        let mut raw = BytesMut::new();
        raw.put_i16(ApiKey::Metadata as i16);
        raw.put_i16(99);
        raw.put_i32(8);
        match parse_request(raw.freeze(), all) {
            Err(Error::UnsupportedVersion {
                correlation_id: 8, ..
            }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn truncated_body_is_malformed() {
        let header = RequestHeader::default()
            .with_request_api_key(ApiKey::Metadata as i16)
            .with_request_api_version(12)
            .with_correlation_id(3);
        let mut req = MetadataRequest::default();
        req.topics = Some(vec![]);
        let full = frame(&header, &req, 12, ApiKey::Metadata);
        let body = Bytes::copy_from_slice(&full[4..full.len() - 1]);
        assert!(matches!(
            parse_request(body, all),
            Err(Error::Malformed { .. })
        ));
    }

    proptest! {
        // Arbitrary bytes never panic the decoder or the parser.
        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = BytesMut::from(&data[..]);
            let dec = FrameDecoder::new(4096);
            while let Ok(Some(f)) = dec.decode(&mut buf) {
                let _ = parse_request(f, all);
            }
            let _ = parse_request(Bytes::from(data), all);
        }
    }
}
