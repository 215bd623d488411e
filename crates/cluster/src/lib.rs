//! Strata's cluster metadata: what brokers, topics and partitions exist and
//! who leads what.
//!
//! - [`model`]: the metadata model, one immutable [`ClusterImage`] per revision.
//! - [`store`]: the [`MetadataStore`] trait every broker reads and writes
//!   through, and the broker's [`Session`] (registration, controller role,
//!   whether it may lead).
//! - [`file`]: the embedded single broker's store (a JSON file).
//! - [`etcd`]: the cluster's store on etcd v3: registrations on leases, the
//!   controller elected by a create-only key, every write a transaction
//!   fenced by the controller's or the broker's epoch.
//! - [`controller`]: the controller's decisions as pure functions of an image.
//! - [`reassign`]: partition reassignment (KIP-455) as pure decisions.
//!
//! Consensus is etcd's: nothing here orders or elects anything by itself.

pub mod config;
pub mod controller;
pub mod etcd;
pub mod file;
pub mod model;
pub mod reassign;
pub mod store;

pub use config::ClusterConfig;
pub use model::{
    BrokerId, BrokerRegistration, ClusterImage, ControllerInfo, Expect, Fence, MetaOp,
    PartitionState, SecurityImage, TopicPartition, TopicRecord, Versioned, NO_LEADER,
};
pub use store::{MetadataStore, Result, Session, SessionState, StoreError};
