//! Topic-level configs under Apache Kafka's names, so existing admin tools
//! (kafka-configs, kcat, AdminClient) work unchanged.

use std::collections::BTreeMap;

use strata_log::{LogConfig, TimestampType};

use crate::config::{FlushPolicy, LogDefaults};

/// A topic config key Strata understands.
#[derive(Debug, Clone, Copy)]
pub struct ConfigKey {
    /// Kafka's name.
    pub name: &'static str,
    /// One line on what it does.
    pub doc: &'static str,
}

/// Every topic config key Strata accepts.
pub const TOPIC_CONFIG_KEYS: &[ConfigKey] = &[
    ConfigKey {
        name: "cleanup.policy",
        doc: "delete (old segments go by retention.ms/bytes), compact (the latest record of every key is kept forever), or compact,delete",
    },
    ConfigKey {
        name: "compression.type",
        doc: "producer (batches are stored as the producer compressed them), uncompressed, gzip, snappy, lz4 or zstd (batches in another codec are recompressed on append)",
    },
    ConfigKey {
        name: "delete.retention.ms",
        doc: "compacted topics: how long tombstones are kept after their segment was written",
    },
    ConfigKey {
        name: "index.interval.bytes",
        doc: "bytes of log between offset index entries",
    },
    ConfigKey {
        name: "lake.enable",
        doc: "write the topic as Parquet files in the object tier's lake/ directory",
    },
    ConfigKey {
        name: "lake.value.format",
        doc: "bytes, json or avro: how values become typed Parquet columns",
    },
    ConfigKey {
        name: "lake.value.schema",
        doc: "the value schema inline: a JSON Schema (json) or an Avro record schema (avro)",
    },
    ConfigKey {
        name: "lake.value.schema.file",
        doc: "a file on the broker holding the value schema, instead of lake.value.schema",
    },
    ConfigKey {
        name: "local.retention.bytes",
        doc: "with remote storage: per-partition local size above which uploaded segments are dropped locally (-2: retention.bytes)",
    },
    ConfigKey {
        name: "local.retention.ms",
        doc: "with remote storage: age after which uploaded segments are dropped locally (-2: retention.ms)",
    },
    ConfigKey {
        name: "max.compaction.lag.ms",
        doc: "compacted topics: a record is compacted at the latest this long after it was written, whatever the dirty ratio",
    },
    ConfigKey {
        name: "max.message.bytes",
        doc: "largest record batch accepted",
    },
    ConfigKey {
        name: "message.downconversion.enable",
        doc: "deprecated in Kafka 3.x and removed in 4.0: accepted and ignored (Strata never down-converts batches)",
    },
    ConfigKey {
        name: "message.format.version",
        doc: "deprecated in Kafka 3.0 and removed in 4.0: accepted and ignored (batches are always format v2)",
    },
    ConfigKey {
        name: "message.timestamp.difference.max.ms",
        doc: "deprecated in Kafka 3.6 and removed in 4.0: accepted and ignored (record timestamps are not checked against the broker's clock)",
    },
    ConfigKey {
        name: "message.timestamp.type",
        doc: "CreateTime or LogAppendTime",
    },
    ConfigKey {
        name: "min.cleanable.dirty.ratio",
        doc: "compacted topics: the share of not yet compacted bytes that makes the cleaner compact the log",
    },
    ConfigKey {
        name: "min.compaction.lag.ms",
        doc: "compacted topics: records younger than this are not compacted",
    },
    ConfigKey {
        name: "min.insync.replicas",
        doc: "with acks=all, the in-sync replicas a write needs (NOT_ENOUGH_REPLICAS below)",
    },
    ConfigKey {
        name: "remote.storage.enable",
        doc: "upload closed segments to the object tier and serve older offsets from it",
    },
    ConfigKey {
        name: "retention.bytes",
        doc: "per-partition size above which the oldest segments are deleted (-1: no limit)",
    },
    ConfigKey {
        name: "retention.ms",
        doc: "age after which a segment's records are deleted (-1: no limit)",
    },
    ConfigKey {
        name: "segment.bytes",
        doc: "size at which the active segment rolls",
    },
    ConfigKey {
        name: "segment.ms",
        doc: "age at which the active segment rolls",
    },
    ConfigKey {
        name: "unclean.leader.election.enable",
        doc: "elect a replica outside the ISR when no in-sync replica is left (acknowledged records may be lost)",
    },
];

/// Topic configs Kafka 3.x deprecated and still accepts: Strata accepts and
/// ignores them too (DescribeConfigs says so), so tools that set them work.
pub const DEPRECATED_TOPIC_CONFIGS: &[&str] = &[
    "message.downconversion.enable",
    "message.format.version",
    "message.timestamp.difference.max.ms",
];

/// `0.10.2`, `2.8`, `3.0-IV1`: what `message.format.version` takes.
fn is_kafka_version(v: &str) -> bool {
    let (version, iv) = match v.split_once("-IV") {
        Some((version, iv)) => (version, Some(iv)),
        None => (v, None),
    };
    let parts: Vec<&str> = version.split('.').collect();
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (2..=4).contains(&parts.len()) && parts.iter().all(|p| numeric(p)) && iv.is_none_or(numeric)
}

/// The overrides a topic carries; keys absent take the broker default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicConfig(pub BTreeMap<String, String>);

fn parse_i64(name: &str, value: &str, min: i64) -> Result<i64, String> {
    let v: i64 = value
        .trim()
        .parse()
        .map_err(|_| format!("{name}: '{value}' is not a number"))?;
    if v < min {
        return Err(format!("{name}: {v} is below the minimum {min}"));
    }
    Ok(v)
}

pub(crate) fn parse_timestamp_type(value: &str) -> Result<TimestampType, String> {
    match value {
        "CreateTime" => Ok(TimestampType::CreateTime),
        "LogAppendTime" => Ok(TimestampType::LogAppendTime),
        other => Err(format!(
            "message.timestamp.type: '{other}' is not CreateTime or LogAppendTime"
        )),
    }
}

fn parse_bool(name: &str, value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("{name}: '{value}' is not true or false")),
    }
}

/// Where a partition's data lives and for how long: the tiered-storage
/// settings resolved against the broker defaults (`-2` local values taken
/// from the total ones).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StoragePolicy {
    /// `remote.storage.enable`.
    pub remote: bool,
    /// `retention.ms`, local plus remote.
    pub retention_ms: i64,
    /// `retention.bytes`, local plus remote.
    pub retention_bytes: i64,
    /// `local.retention.ms`: the hot window by age.
    pub local_retention_ms: i64,
    /// `local.retention.bytes`: the hot window by size.
    pub local_retention_bytes: i64,
    /// `compression.type`.
    pub compression: TopicCompression,
    /// `cleanup.policy` has `delete`: retention removes old segments.
    pub delete: bool,
    /// `cleanup.policy` has `compact`, with its settings.
    pub compact: Option<Compaction>,
}

/// A compacted topic's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Compaction {
    /// `delete.retention.ms`.
    pub delete_retention_ms: i64,
    /// `min.cleanable.dirty.ratio`.
    pub min_cleanable_dirty_ratio: f64,
    /// `min.compaction.lag.ms`.
    pub min_compaction_lag_ms: i64,
    /// `max.compaction.lag.ms`.
    pub max_compaction_lag_ms: i64,
}

/// `cleanup.policy`: (delete, compact).
fn parse_cleanup_policy(value: &str) -> Result<(bool, bool), String> {
    let (mut delete, mut compact) = (false, false);
    for item in value.split(',').map(str::trim) {
        match item {
            "delete" => delete = true,
            "compact" => compact = true,
            other => {
                return Err(format!(
                    "cleanup.policy: '{other}' is not delete or compact"
                ))
            }
        }
    }
    if !delete && !compact {
        return Err("cleanup.policy: give delete, compact or both".into());
    }
    Ok((delete, compact))
}

fn parse_ratio(name: &str, value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{name}: '{value}' is not a number from 0 to 1")),
    }
}

/// `compression.type`: how the log stores batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicCompression {
    /// As the producer compressed them.
    Producer,
    /// In this codec (a `strata_wire::codec` id): batches in another are
    /// recompressed on append, as Kafka does.
    Codec(i16),
}

impl TopicCompression {
    /// Parses Kafka's names.
    pub fn parse(value: &str) -> Result<Self, String> {
        use strata_wire::codec;
        Ok(match value {
            "producer" => Self::Producer,
            "uncompressed" => Self::Codec(codec::NONE),
            "gzip" => Self::Codec(codec::GZIP),
            "snappy" => Self::Codec(codec::SNAPPY),
            "lz4" => Self::Codec(codec::LZ4),
            "zstd" => Self::Codec(codec::ZSTD),
            other => {
                return Err(format!(
                    "compression.type: '{other}' is not one of producer, uncompressed, gzip, snappy, lz4, zstd"
                ))
            }
        })
    }
}

/// Validates one key and value.
pub fn validate_entry(name: &str, value: &str) -> Result<(), String> {
    match name {
        "cleanup.policy" => parse_cleanup_policy(value).map(drop),
        "delete.retention.ms" | "min.compaction.lag.ms" => parse_i64(name, value, 0).map(drop),
        "max.compaction.lag.ms" => parse_i64(name, value, 1).map(drop),
        "min.cleanable.dirty.ratio" => parse_ratio(name, value).map(drop),
        "compression.type" => TopicCompression::parse(value).map(drop),
        "index.interval.bytes" => parse_i64(name, value, 0).map(drop),
        "message.downconversion.enable" => parse_bool(name, value).map(drop),
        "message.format.version" => {
            if is_kafka_version(value) {
                Ok(())
            } else {
                Err(format!(
                    "{name}: '{value}' is not a Kafka version such as 2.8 or 3.0-IV1"
                ))
            }
        }
        "message.timestamp.difference.max.ms" => parse_i64(name, value, 0).map(drop),
        "min.insync.replicas" => parse_i64(name, value, 1).and_then(|v| {
            if v > i32::MAX as i64 {
                Err(format!("{name}: {v} is above {}", i32::MAX))
            } else {
                Ok(())
            }
        }),
        "max.message.bytes" => parse_i64(name, value, 0).and_then(|v| {
            if v > i32::MAX as i64 {
                Err(format!("{name}: {v} is above {}", i32::MAX))
            } else {
                Ok(())
            }
        }),
        "message.timestamp.type" => parse_timestamp_type(value).map(drop),
        "retention.bytes" | "retention.ms" => parse_i64(name, value, -1).map(drop),
        "local.retention.bytes" | "local.retention.ms" => parse_i64(name, value, -2).map(drop),
        "remote.storage.enable" | "lake.enable" | "unclean.leader.election.enable" => {
            parse_bool(name, value).map(drop)
        }
        "lake.value.format" => match value {
            "bytes" | "json" | "avro" => Ok(()),
            other => Err(format!(
                "lake.value.format: '{other}' is not bytes, json or avro"
            )),
        },
        "lake.value.schema" | "lake.value.schema.file" => Ok(()),
        "segment.bytes" => parse_i64(name, value, 14).and_then(|v| {
            if v > i32::MAX as i64 {
                Err(format!("{name}: {v} is above {}", i32::MAX))
            } else {
                Ok(())
            }
        }),
        "segment.ms" => parse_i64(name, value, 1).map(drop),
        _ => Err(format!("unknown topic config '{name}'")),
    }
}

impl TopicConfig {
    /// Builds overrides from key/value pairs, validating each.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, String> {
        let mut map = BTreeMap::new();
        for (k, v) in pairs {
            validate_entry(k, v)?;
            map.insert(k.to_string(), v.to_string());
        }
        Ok(Self(map))
    }

    /// The effective value of a key and whether it is the broker default.
    pub fn value_of(&self, name: &str, defaults: &LogDefaults) -> (String, bool) {
        if let Some(v) = self.0.get(name) {
            return (v.clone(), false);
        }
        let d = match name {
            "cleanup.policy" => "delete".to_string(),
            "delete.retention.ms" => "86400000".to_string(),
            "min.cleanable.dirty.ratio" => "0.5".to_string(),
            "min.compaction.lag.ms" => "0".to_string(),
            "max.compaction.lag.ms" => i64::MAX.to_string(),
            "compression.type" => defaults.compression_type.clone(),
            "index.interval.bytes" => defaults.index_interval_bytes.to_string(),
            "max.message.bytes" => defaults.max_message_bytes.to_string(),
            "min.insync.replicas" => defaults.min_insync_replicas.to_string(),
            "message.timestamp.type" => defaults.message_timestamp_type.clone(),
            "retention.bytes" => defaults.retention_bytes.to_string(),
            "local.retention.bytes" => defaults.local_retention_bytes.to_string(),
            "local.retention.ms" => defaults.local_retention_ms.to_string(),
            "remote.storage.enable" => defaults.remote_storage_enable.to_string(),
            "lake.enable" | "unclean.leader.election.enable" => "false".to_string(),
            // Kafka 3.x's defaults for the deprecated configs.
            "message.downconversion.enable" => "true".to_string(),
            "message.format.version" => "3.0-IV1".to_string(),
            "message.timestamp.difference.max.ms" => i64::MAX.to_string(),
            "lake.value.format" => "bytes".to_string(),
            "lake.value.schema" | "lake.value.schema.file" => String::new(),
            "retention.ms" => defaults.retention_ms.to_string(),
            "segment.bytes" => defaults.segment_bytes.to_string(),
            "segment.ms" => defaults.segment_ms.to_string(),
            _ => String::new(),
        };
        (d, true)
    }

    /// The tiered-storage settings this topic runs with. Like Kafka, a local
    /// retention larger than the total one is refused.
    pub fn storage_policy(&self, defaults: &LogDefaults) -> Result<StoragePolicy, String> {
        let get = |name: &str| self.value_of(name, defaults).0;
        let retention_ms = parse_i64("retention.ms", &get("retention.ms"), -1)?;
        let retention_bytes = parse_i64("retention.bytes", &get("retention.bytes"), -1)?;
        let local = |name: &str, total: i64| -> Result<i64, String> {
            match parse_i64(name, &get(name), -2)? {
                -2 => Ok(total),
                v if total >= 0 && (v == -1 || v > total) => Err(format!(
                    "{name} ({v}) cannot be more than the total retention ({total})"
                )),
                v => Ok(v),
            }
        };
        let (delete, compact) = parse_cleanup_policy(&get("cleanup.policy"))?;
        let remote = parse_bool("remote.storage.enable", &get("remote.storage.enable"))?;
        if compact && remote {
            return Err(
                "cleanup.policy=compact with remote.storage.enable=true is not supported yet: compaction of the object tier is not built"
                    .into(),
            );
        }
        Ok(StoragePolicy {
            remote,
            local_retention_ms: local("local.retention.ms", retention_ms)?,
            local_retention_bytes: local("local.retention.bytes", retention_bytes)?,
            retention_ms,
            retention_bytes,
            compression: TopicCompression::parse(&get("compression.type"))?,
            delete,
            compact: compact.then_some(Compaction {
                delete_retention_ms: parse_i64(
                    "delete.retention.ms",
                    &get("delete.retention.ms"),
                    0,
                )?,
                min_cleanable_dirty_ratio: parse_ratio(
                    "min.cleanable.dirty.ratio",
                    &get("min.cleanable.dirty.ratio"),
                )?,
                min_compaction_lag_ms: parse_i64(
                    "min.compaction.lag.ms",
                    &get("min.compaction.lag.ms"),
                    0,
                )?,
                max_compaction_lag_ms: parse_i64(
                    "max.compaction.lag.ms",
                    &get("max.compaction.lag.ms"),
                    1,
                )?,
            }),
        })
    }

    /// Both the log settings and the storage policy, validated together
    /// (with the lake settings).
    pub fn settings(&self, defaults: &LogDefaults) -> Result<(LogConfig, StoragePolicy), String> {
        self.lake(defaults)?;
        self.min_insync_replicas(defaults)?;
        Ok((self.resolve(defaults)?, self.storage_policy(defaults)?))
    }

    /// The lake settings: `None` unless `lake.enable`, else how values are typed.
    pub fn lake(&self, defaults: &LogDefaults) -> Result<Option<strata_lake::ValueFormat>, String> {
        let get = |name: &str| self.value_of(name, defaults).0;
        if !parse_bool("lake.enable", &get("lake.enable"))? {
            return Ok(None);
        }
        let file = get("lake.value.schema.file");
        let schema = if file.is_empty() {
            get("lake.value.schema")
        } else {
            std::fs::read_to_string(&file)
                .map_err(|e| format!("lake.value.schema.file: cannot read {file}: {e}"))?
        };
        strata_lake::ValueFormat::parse(&get("lake.value.format"), Some(&schema)).map(Some)
    }

    /// `min.insync.replicas` of this topic.
    pub fn min_insync_replicas(&self, defaults: &LogDefaults) -> Result<i32, String> {
        parse_i64(
            "min.insync.replicas",
            &self.value_of("min.insync.replicas", defaults).0,
            1,
        )
        .map(|v| v as i32)
    }

    /// The log settings this topic runs with.
    pub fn resolve(&self, defaults: &LogDefaults) -> Result<LogConfig, String> {
        let get = |name: &str| self.value_of(name, defaults).0;
        let num = |name: &str, min: i64| parse_i64(name, &get(name), min);
        Ok(LogConfig {
            segment_bytes: num("segment.bytes", 14)? as u64,
            segment_ms: num("segment.ms", 1)?,
            retention_ms: num("retention.ms", -1)?,
            retention_bytes: num("retention.bytes", -1)?,
            max_message_bytes: num("max.message.bytes", 0)? as usize,
            timestamp_type: parse_timestamp_type(&get("message.timestamp.type"))
                .or_else(|_| defaults.timestamp_type())?,
            index_interval_bytes: num("index.interval.bytes", 0)? as u64,
            read_only_flushed: defaults.flush == FlushPolicy::EveryBatch,
            producer_expiration_ms: defaults.producer_id_expiration_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_win_over_defaults() {
        let d = LogDefaults::default();
        let t = TopicConfig::from_pairs([("retention.bytes", "1000"), ("segment.bytes", "4096")])
            .unwrap();
        let c = t.resolve(&d).unwrap();
        assert_eq!(c.retention_bytes, 1000);
        assert_eq!(c.segment_bytes, 4096);
        assert_eq!(c.retention_ms, d.retention_ms);
        assert_eq!(t.value_of("retention.bytes", &d), ("1000".into(), false));
        assert_eq!(t.value_of("cleanup.policy", &d), ("delete".into(), true));
    }

    #[test]
    fn bad_values_and_unknown_keys_are_refused() {
        for (k, v) in [
            ("retention.ms", "soon"),
            ("retention.bytes", "-2"),
            ("segment.bytes", "10"),
            ("cleanup.policy", "compress"),
            ("min.cleanable.dirty.ratio", "1.5"),
            ("message.timestamp.type", "Now"),
            ("compression.type", "brotli"),
            ("remote.storage.enable", "yes"),
            ("local.retention.ms", "-3"),
            ("no.such.key", "1"),
        ] {
            assert!(validate_entry(k, v).is_err(), "{k}={v}");
        }
    }

    #[test]
    fn compression_type_takes_kafkas_codecs_and_the_broker_default() {
        let mut d = LogDefaults::default();
        let policy = |pairs: &[(&str, &str)], d: &LogDefaults| {
            TopicConfig::from_pairs(pairs.iter().copied())
                .unwrap()
                .storage_policy(d)
                .unwrap()
                .compression
        };
        assert_eq!(policy(&[], &d), TopicCompression::Producer);
        assert_eq!(
            policy(&[("compression.type", "zstd")], &d),
            TopicCompression::Codec(strata_wire::codec::ZSTD)
        );
        assert_eq!(
            policy(&[("compression.type", "uncompressed")], &d),
            TopicCompression::Codec(strata_wire::codec::NONE)
        );
        d.compression_type = "lz4".into();
        assert_eq!(
            policy(&[], &d),
            TopicCompression::Codec(strata_wire::codec::LZ4)
        );
        assert_eq!(
            policy(&[("compression.type", "producer")], &d),
            TopicCompression::Producer
        );
        d.compression_type = "lzma".into();
        assert!(TopicConfig::default().settings(&d).is_err());
    }

    #[test]
    fn deprecated_kafka_configs_are_accepted() {
        for (k, v) in [
            ("message.format.version", "0.10.2"),
            ("message.format.version", "2.8"),
            ("message.format.version", "3.0-IV1"),
            ("message.timestamp.difference.max.ms", "3600000"),
            ("message.downconversion.enable", "false"),
        ] {
            validate_entry(k, v).unwrap();
        }
        for (k, v) in [
            ("message.format.version", "latest"),
            ("message.format.version", "3"),
            ("message.format.version", "3.0-IV"),
            ("message.timestamp.difference.max.ms", "-1"),
            ("message.downconversion.enable", "maybe"),
        ] {
            assert!(validate_entry(k, v).is_err(), "{k}={v}");
        }
        for k in DEPRECATED_TOPIC_CONFIGS {
            assert!(TOPIC_CONFIG_KEYS
                .iter()
                .any(|c| c.name == *k && c.doc.contains("deprecated")));
        }
    }

    #[test]
    fn every_documented_key_has_a_default() {
        let d = LogDefaults::default();
        for key in TOPIC_CONFIG_KEYS {
            let (v, is_default) = TopicConfig::default().value_of(key.name, &d);
            assert!(is_default);
            validate_entry(key.name, &v).unwrap();
        }
    }

    #[test]
    fn local_retention_defaults_to_the_total_and_cannot_exceed_it() {
        let d = LogDefaults::default();
        let t = TopicConfig::from_pairs([
            ("remote.storage.enable", "true"),
            ("retention.bytes", "1000"),
        ])
        .unwrap();
        let p = t.storage_policy(&d).unwrap();
        assert!(p.remote);
        assert_eq!((p.retention_bytes, p.local_retention_bytes), (1000, 1000));
        assert_eq!(p.local_retention_ms, d.retention_ms);
        let t = TopicConfig::from_pairs([
            ("retention.bytes", "1000"),
            ("local.retention.bytes", "2000"),
        ])
        .unwrap();
        assert!(t
            .storage_policy(&d)
            .unwrap_err()
            .contains("local.retention.bytes"));
        let t =
            TopicConfig::from_pairs([("retention.bytes", "-1"), ("local.retention.bytes", "2000")])
                .unwrap();
        assert_eq!(t.storage_policy(&d).unwrap().local_retention_bytes, 2000);
    }
}
