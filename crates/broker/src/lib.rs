//! The Strata broker: the Kafka listener, request handlers, the partition
//! registry and the metadata store.
//!
//! It composes `strata-wire` (the codec) and `strata-log` (the partition logs)
//! and knows nothing of the binary around it: [`Broker::open`] loads the data
//! directory, [`server::serve`] answers Kafka clients until its cancellation
//! token fires, and [`Broker::close`] flushes every log.

pub mod admin_api;
pub mod config;
pub mod error;
pub mod groups;
pub mod handlers;
pub mod lake_host;
pub mod metadata;
pub mod server;
pub mod state;
pub mod tiering;
pub mod topic_config;

pub use config::{BrokerConfig, FlushPolicy, LogDefaults};
pub use state::{Broker, Partition, PartitionLag, PartitionOffsets, Topic};
