//! The object tier: closed segments uploaded to object storage, a remote
//! manifest per partition, cold reads through a bounded cache, and remote
//! retention. It knows the log's segment files (through [`LocalPartition`])
//! but not the Kafka server.
//!
//! # Life of a segment
//! active → closed (the log rolled it) → uploaded (`.log` and `.idx` objects
//! written, then the segment recorded in the partition's manifest) → local copy
//! dropped (by the broker's retention, only for segments the manifest holds and
//! beyond `local.retention.*`) → expired (beyond `retention.*`: removed from the
//! manifest, then its objects deleted).
//!
//! # Consistency
//! - The manifest never names an object that was not completely written:
//!   objects are written first (a PUT or a completed multipart upload is
//!   atomic), the manifest after.
//! - A local segment is deleted only after the manifest that records it is
//!   committed ([`RemotePartition::next_offset`] is the boundary the broker's
//!   retention honours).
//! - Manifests are committed with a conditional put on the version read, so
//!   two writers cannot silently overwrite each other; a lost race re-reads and
//!   retries.
//! - Only a partition's leader writes its manifest, and it writes it with its
//!   leader epoch. Before its first upload or retention pass a new leader
//!   claims the manifest (a conditional write of its epoch), so a deposed
//!   leader's next commit meets a newer version, re-reads, finds a newer
//!   epoch and stops ([`Error::Fenced`]). Cleaning up after crashes (uploads
//!   never committed, deletions never finished) happens at the claim, by the
//!   leader only: a broker that merely reads a manifest deletes nothing
//!   another broker may be writing.
//!
//! # Crash consistency
//! - Object keys are deterministic (`{base:020}-{next:020}`), so a retried
//!   upload rewrites the same bytes at the same key.
//! - A crash between upload and manifest commit leaves objects at or beyond
//!   the manifest's end; they are deleted when the partition is next loaded.
//! - A crash between manifest commit and object deletion (retention) leaves
//!   the keys in the manifest's `pending_deletes`; the next pass deletes them.
//! - A crash between manifest commit and local deletion leaves the segment in
//!   both places; the next retention pass drops the local copy.
//!
//! # Retries and outages
//! Every object-store call has a timeout and is retried with backoff by the
//! offloader, never by a produce or a hot fetch, which do not wait on the
//! object store. A cold read that fails returns an error at once (the client
//! retries its fetch).

pub mod budget;
pub mod cache;
pub mod config;
pub mod faults;
pub mod keys;
pub mod manifest;
pub mod reader;
pub mod remote;
pub mod remote_index;
pub mod store;
pub mod tier;

pub use config::TierConfig;
pub use manifest::{PartitionManifest, RemoteSegment};
pub use tier::{
    CacheStatus, LocalPartition, LocalSegment, OffloadStatus, PartitionId, RemotePartition,
    RetentionPolicy, StoreStatus, Tier, TierHost,
};

/// Errors of the object tier.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An object-store call failed.
    #[error("object store {op} {key}: {source}")]
    ObjectStore {
        /// The operation.
        op: &'static str,
        /// The object key.
        key: String,
        /// What the store said.
        source: object_store::Error,
    },
    /// An object-store call did not answer in time.
    #[error("object store {op} {key}: no answer within {after_ms} ms")]
    Timeout {
        /// The operation.
        op: &'static str,
        /// The object key.
        key: String,
        /// The timeout.
        after_ms: u64,
    },
    /// An object holds something that does not parse.
    #[error("object {key} is corrupt: {reason}")]
    Corrupt {
        /// The object key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// Another writer committed the manifest since it was read.
    #[error("manifest {key} was changed by another writer")]
    Conflict {
        /// The manifest key.
        key: String,
    },
    /// The manifest was written by a newer leader: this broker no longer
    /// leads the partition and must not write its manifest.
    #[error("manifest {key} belongs to leader epoch {theirs}; this broker writes as epoch {ours}")]
    Fenced {
        /// The manifest key.
        key: String,
        /// The epoch this broker writes as.
        ours: i32,
        /// The epoch in the manifest.
        theirs: i32,
    },
    /// The configuration cannot work.
    #[error("object tier configuration: {0}")]
    Config(String),
    /// Local file I/O (segment files, the cache directory).
    #[error("tier i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The requested offset is not in the object tier.
    #[error("offset {offset} is not in the object tier [{start}, {end})")]
    OffsetNotRemote {
        /// Requested offset.
        offset: i64,
        /// Remote log start.
        start: i64,
        /// Remote end.
        end: i64,
    },
}

impl Error {
    /// Whether retrying the same call cannot help (bad configuration, corrupt
    /// data, missing objects), as opposed to outages and races.
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::ObjectStore { source, .. } => matches!(
                source,
                object_store::Error::NotFound { .. }
                    | object_store::Error::InvalidPath { .. }
                    | object_store::Error::NotSupported { .. }
                    | object_store::Error::NotImplemented { .. }
                    | object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
            ),
            Error::Corrupt { .. }
            | Error::Config(_)
            | Error::OffsetNotRemote { .. }
            | Error::Fenced { .. } => true,
            Error::Timeout { .. } | Error::Conflict { .. } | Error::Io(_) => false,
        }
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
