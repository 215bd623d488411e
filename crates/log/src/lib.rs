//! A partition's local log: segments of Kafka RecordBatch v2 bytes, sparse
//! offset and time indexes, crash recovery and local retention. No network.
//!
//! The broker owns one [`Log`] per partition behind a lock; see the module docs
//! of [`log`] for what is durable when and what a restart finds.

pub mod batch;
pub mod clean;
pub mod compact;
pub mod epochs;
pub mod index;
mod log;
pub mod producer_state;
mod segment;

pub use crate::epochs::{EpochCache, EpochEnd, EpochEntry};
pub use crate::log::{
    AppendInfo, Log, LogConfig, ReadPlan, RetentionLimits, SegmentInfo, TimestampType,
};

/// Errors of the log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bytes that do not form valid record batches (torn, bad CRC, bad length).
    #[error("corrupt record batch: {0}")]
    Corrupt(String),
    /// A well-formed batch whose records are inconsistent with its header.
    #[error("invalid record batch: {0}")]
    InvalidRecord(String),
    /// A record format other than v2.
    #[error("unsupported record batch magic {0}")]
    UnsupportedMagic(i8),
    /// A batch larger than `max.message.bytes`.
    #[error("batch of {size} bytes exceeds max.message.bytes {max}")]
    MessageTooLarge {
        /// Batch size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A read outside `[log start, high watermark]`.
    #[error("offset {offset} out of range [{start}, {end}]")]
    OffsetOutOfRange {
        /// Requested offset.
        offset: i64,
        /// Log start offset.
        start: i64,
        /// High watermark.
        end: i64,
    },
    /// An idempotent producer's batch out of sequence or from a fenced epoch.
    #[error(transparent)]
    Sequence(#[from] producer_state::SequenceError),
    /// A transactional or control batch: transactions are not supported.
    #[error("transactional batches are not supported")]
    TransactionsUnsupported,
    /// The disk failed us.
    #[error("log i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
