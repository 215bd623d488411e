//! The Strata broker: the Kafka listener, request handlers, the partition
//! registry, and the broker's part in its cluster (metadata from
//! `strata-cluster`, the controller's reconciliation, forwarding).
//!
//! It composes `strata-wire` (the codec) and `strata-log` (the partition logs)
//! and knows nothing of the binary around it: [`Broker::open`] loads the data
//! directory, [`server::serve`] answers Kafka clients until its cancellation
//! token fires, and [`Broker::close`] flushes every log.

pub mod admin_api;
mod appender;
pub mod cleaner;
pub mod cluster;
pub mod config;
pub mod error;
mod fetcher;
pub mod groups;
pub mod handlers;
mod isr;
pub mod lake_host;
mod offsets_log;
pub mod peer;
mod recompress;
mod replicas;
pub mod replication;
pub mod security;
pub mod server;
pub mod state;
pub mod tiering;
pub mod topic_config;

pub use cluster::{CreatedTopic, TopicSpec};
pub use config::{BrokerConfig, FlushPolicy, LogDefaults};
pub use state::{Broker, Endpoints, Partition, PartitionLag, PartitionOffsets, Topic};
