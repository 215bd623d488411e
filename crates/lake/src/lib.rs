//! The lake: each topic with `lake.enable` as a Parquet table in the object
//! tier, readable in place by DuckDB, Spark, Trino or pyarrow, and snapshots
//! of the latest value per key as of a time.
//!
//! # Layout
//! ```text
//! lake/{topic}/partition={p}/date={yyyy-mm-dd}/{first_offset:020}-{last_offset:020}.parquet
//! lake/{topic}/_progress/partition={p}.json
//! ```
//! below the object tier's prefix. One file per closed segment and UTC date
//! of its records' timestamps; `_progress` records the offset up to which the
//! partition's files are complete.
//!
//! # Consistency
//! - A file is written in one PUT or one multipart upload, which the store
//!   makes visible only when complete: a reader never sees half a file.
//! - A file's name follows from its segment (offsets) and date, and its
//!   content from the segment's bytes. A crash after writing files and before
//!   advancing `_progress` rewrites the same files with the same content at
//!   the same names on restart: no record appears twice.
//! - `_progress` advances only after every file of a segment is written.
//!
//! # Budget
//! One partition is processed at a time. Decoding and Parquet encoding run
//! on a thread of their own at a lower scheduling priority (nice 10), so on a
//! busy machine produce and fetch run first, and the encoder draws on
//! `lake.max_bytes_per_second` (segment bytes turned into Parquet) every
//! few thousand rows: the writer's CPU use is spread evenly at that rate
//! instead of arriving as one burst per segment.

pub mod records;
pub mod schema;
pub mod snapshot;
pub mod table;
pub mod writer;

pub use records::Row;
pub use schema::ValueFormat;
pub use writer::{Lake, LakeConfig, LakeHost, LakeSegment, LakeSource, PartitionProgress};
