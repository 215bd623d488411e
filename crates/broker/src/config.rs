//! Broker configuration: typed, with defaults as named values, validated once.
//!
//! The binary layers a TOML file, environment variables and CLI flags over
//! these defaults; unknown keys are an error (`deny_unknown_fields`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use strata_log::{LogConfig, TimestampType};

/// When the log is fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlushPolicy {
    /// `every-batch` alone, `os` in a cluster (Kafka's default: replication
    /// gives durability).
    Auto,
    /// Fsync before acknowledging every produce (group commit across
    /// concurrent producers). Consumers see only fsynced data.
    EveryBatch,
    /// Fsync every `flush_interval_ms`; an acknowledged produce can be lost by
    /// a power failure within that window.
    Interval,
    /// Leave it to the OS (fsync only at segment roll and shutdown).
    Os,
}

/// Broker-wide settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// This broker's id when it runs alone (in a cluster, `cluster.broker_id`).
    pub node_id: i32,
    /// Where logs and metadata live.
    pub data_dir: PathBuf,
    /// Address the Kafka listener binds.
    pub kafka_listen: String,
    /// Address given to clients in Metadata; the bound address when empty.
    pub advertised_listener: String,
    /// Address of the HTTP listener (health).
    pub http_listen: String,
    /// More Kafka listeners, each with its own security protocol.
    pub listeners: Vec<crate::security::ListenerConfig>,
    /// Authentication and authorization.
    pub auth: crate::security::AuthConfig,
    /// Create a topic when a client asks Metadata for one that is missing.
    pub auto_create_topics: bool,
    /// Partitions of auto-created topics and of CreateTopics with -1.
    pub default_partitions: i32,
    /// Largest request frame accepted (`socket.request.max.bytes`).
    pub socket_request_max_bytes: usize,
    /// Connections served at once; more wait in the accept queue.
    pub max_connections: usize,
    /// How often retention and idle segment rolls run.
    pub retention_check_interval_ms: u64,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_timeout_ms: u64,
    /// Log defaults, overridable per topic.
    pub log: LogDefaults,
    /// Consumer groups and committed offsets.
    pub groups: crate::groups::GroupConfig,
    /// The object tier.
    pub tier: strata_tier::TierConfig,
    /// The lake writer.
    pub lake: strata_lake::LakeConfig,
    /// Cluster membership (etcd); without it the broker runs alone.
    pub cluster: strata_cluster::ClusterConfig,
}

/// Broker-level defaults of the per-topic log settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogDefaults {
    /// `segment.bytes`.
    pub segment_bytes: u64,
    /// `segment.ms`.
    pub segment_ms: i64,
    /// `retention.ms` (-1: no limit).
    pub retention_ms: i64,
    /// `retention.bytes` (-1: no limit).
    pub retention_bytes: i64,
    /// `max.message.bytes`.
    pub max_message_bytes: usize,
    /// `message.timestamp.type`: `CreateTime` or `LogAppendTime`.
    pub message_timestamp_type: String,
    /// `compression.type`: `producer`, `uncompressed`, `gzip`, `snappy`,
    /// `lz4` or `zstd`.
    pub compression_type: String,
    /// `index.interval.bytes`.
    pub index_interval_bytes: u64,
    /// When to fsync.
    pub flush: FlushPolicy,
    /// Period of the `interval` flush policy.
    pub flush_interval_ms: u64,
    /// `producer.id.expiration.ms`: idempotent producer state is kept this
    /// long after a producer's last batch.
    pub producer_id_expiration_ms: i64,
    /// `remote.storage.enable` for topics that do not set it.
    pub remote_storage_enable: bool,
    /// `local.retention.ms` for topics that do not set it (-2: `retention.ms`).
    pub local_retention_ms: i64,
    /// `local.retention.bytes` for topics that do not set it (-2: `retention.bytes`).
    pub local_retention_bytes: i64,
    /// Produce is refused (retriably, KAFKA_STORAGE_ERROR) while the data
    /// directory's filesystem has less free space than this.
    pub disk_free_min_bytes: u64,
    /// `min.insync.replicas` for topics that do not set it.
    pub min_insync_replicas: i32,
    /// Produce is refused (retriably) while the partitions' local segments
    /// take more than this in all (0: no limit). With remote storage, set it
    /// above the hot windows plus room for uploads to fall behind.
    pub disk_usage_max_bytes: u64,
    /// Threads compacting logs (`log.cleaner.threads`; 0 turns the cleaner off).
    pub cleaner_threads: usize,
    /// Bytes per second the cleaner may read, all threads together
    /// (`log.cleaner.io.max.bytes.per.second`; 0: no limit).
    pub cleaner_io_max_bytes_per_second: u64,
    /// Memory for one pass's key map (`log.cleaner.dedupe.buffer.size`).
    pub cleaner_dedupe_buffer_bytes: usize,
    /// Pause between the cleaner's looks for dirty logs (`log.cleaner.backoff.ms`).
    pub cleaner_backoff_ms: u64,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            node_id: 0,
            data_dir: PathBuf::from("./data"),
            kafka_listen: "127.0.0.1:9092".into(),
            advertised_listener: String::new(),
            http_listen: "127.0.0.1:9644".into(),
            listeners: Vec::new(),
            auth: crate::security::AuthConfig::default(),
            auto_create_topics: false,
            default_partitions: 1,
            socket_request_max_bytes: 100 * 1024 * 1024,
            max_connections: 10_000,
            retention_check_interval_ms: 300_000,
            shutdown_timeout_ms: 10_000,
            log: LogDefaults::default(),
            groups: crate::groups::GroupConfig::default(),
            tier: strata_tier::TierConfig::default(),
            lake: strata_lake::LakeConfig::default(),
            cluster: strata_cluster::ClusterConfig::default(),
        }
    }
}

impl Default for LogDefaults {
    fn default() -> Self {
        let log = LogConfig::default();
        Self {
            segment_bytes: log.segment_bytes,
            segment_ms: log.segment_ms,
            retention_ms: log.retention_ms,
            retention_bytes: log.retention_bytes,
            max_message_bytes: log.max_message_bytes,
            message_timestamp_type: "CreateTime".into(),
            compression_type: "producer".into(),
            index_interval_bytes: log.index_interval_bytes,
            flush: FlushPolicy::Auto,
            flush_interval_ms: 1000,
            producer_id_expiration_ms: log.producer_expiration_ms,
            remote_storage_enable: false,
            local_retention_ms: -2,
            local_retention_bytes: -2,
            disk_free_min_bytes: 256 << 20,
            min_insync_replicas: 1,
            disk_usage_max_bytes: 0,
            cleaner_threads: 1,
            cleaner_io_max_bytes_per_second: 32 << 20,
            cleaner_dedupe_buffer_bytes: 128 << 20,
            cleaner_backoff_ms: 15_000,
        }
    }
}

impl FlushPolicy {
    /// The policy `auto` stands for: fsync per batch alone, left to the OS
    /// in a cluster.
    pub fn resolve(self, cluster: bool) -> Self {
        match self {
            FlushPolicy::Auto if cluster => FlushPolicy::Os,
            FlushPolicy::Auto => FlushPolicy::EveryBatch,
            other => other,
        }
    }
}

impl BrokerConfig {
    /// The configuration with `auto` settings resolved for this mode.
    pub fn resolved(mut self) -> Self {
        self.log.flush = self.log.flush.resolve(self.cluster.enabled());
        self
    }

    /// Every Kafka listener: `default` from `kafka_listen`, then `[[listeners]]`.
    pub fn kafka_listeners(&self) -> Result<Vec<crate::security::ListenerConfig>, String> {
        crate::security::effective_listeners(
            &self.kafka_listen,
            &self.advertised_listener,
            &self.listeners,
            &self.auth,
        )
    }

    /// Checks values that types cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.node_id < 0 {
            return Err(format!("node_id must be >= 0, got {}", self.node_id));
        }
        if self.default_partitions < 1 {
            return Err(format!(
                "default_partitions must be >= 1, got {}",
                self.default_partitions
            ));
        }
        if self.socket_request_max_bytes < 1024 {
            return Err("socket_request_max_bytes must be at least 1024".into());
        }
        if self.max_connections == 0 {
            return Err("max_connections must be at least 1".into());
        }
        self.kafka_listeners()?;
        self.groups.validate()?;
        self.tier.validate()?;
        self.lake.validate()?;
        self.cluster.validate()?;
        if self.log.min_insync_replicas < 1 {
            return Err("log.min_insync_replicas must be >= 1".into());
        }
        if self.log.producer_id_expiration_ms < 1 {
            return Err("log.producer_id_expiration_ms must be >= 1".into());
        }
        if self.log.flush == FlushPolicy::Interval && self.log.flush_interval_ms == 0 {
            return Err("log.flush_interval_ms must be > 0 with flush = \"interval\"".into());
        }
        // The topic-level validation covers the rest of [log].
        crate::topic_config::TopicConfig::default()
            .settings(&self.log)
            .map(|_| ())
            .map_err(|e| format!("[log]: {e}"))
    }
}

impl LogDefaults {
    pub(crate) fn timestamp_type(&self) -> Result<TimestampType, String> {
        crate::topic_config::parse_timestamp_type(&self.message_timestamp_type)
    }
}
