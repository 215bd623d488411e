//! DescribeConfigs, AlterConfigs and IncrementalAlterConfigs.

use std::sync::Arc;

use kafka_protocol::messages::{
    describe_configs_response::{DescribeConfigsResourceResult, DescribeConfigsResult},
    AlterConfigsRequest, AlterConfigsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};
use kafka_protocol::ResponseError;

use crate::error::ApiError;
use crate::state::Broker;
use crate::topic_config::{TopicConfig, TOPIC_CONFIG_KEYS};

use super::sb;
use super::topics::config_pairs;

pub(super) const RESOURCE_TOPIC: i8 = 2;
pub(super) const RESOURCE_BROKER: i8 = 4;
pub(super) const SOURCE_DYNAMIC_TOPIC: i8 = 1;
pub(super) const SOURCE_STATIC_BROKER: i8 = 4;
pub(super) const SOURCE_DEFAULT: i8 = 5;
pub(super) const TYPE_STRING: i8 = 2;
pub(super) const TYPE_INT: i8 = 3;
pub(super) const TYPE_LONG: i8 = 5;
pub(super) const TYPE_LIST: i8 = 7;
pub(super) const TYPE_BOOLEAN: i8 = 1;
pub(super) const TYPE_DOUBLE: i8 = 6;

pub(super) fn topic_config_type(name: &str) -> i8 {
    match name {
        "cleanup.policy" => TYPE_LIST,
        "min.cleanable.dirty.ratio" => TYPE_DOUBLE,
        "compression.type"
        | "message.format.version"
        | "message.timestamp.type"
        | "lake.value.format"
        | "lake.value.schema"
        | "lake.value.schema.file" => TYPE_STRING,
        "index.interval.bytes" | "max.message.bytes" | "segment.bytes" | "min.insync.replicas" => {
            TYPE_INT
        }
        "remote.storage.enable"
        | "lake.enable"
        | "unclean.leader.election.enable"
        | "message.downconversion.enable" => TYPE_BOOLEAN,
        _ => TYPE_LONG,
    }
}

pub(super) fn broker_configs(broker: &Broker) -> Vec<(&'static str, String, i8)> {
    let c = broker.config();
    vec![
        (
            "auto.create.topics.enable",
            c.auto_create_topics.to_string(),
            TYPE_BOOLEAN,
        ),
        ("broker.id", c.node_id.to_string(), TYPE_INT),
        (
            "compression.type",
            c.log.compression_type.clone(),
            TYPE_STRING,
        ),
        (
            "log.index.interval.bytes",
            c.log.index_interval_bytes.to_string(),
            TYPE_INT,
        ),
        (
            "log.message.timestamp.type",
            c.log.message_timestamp_type.clone(),
            TYPE_STRING,
        ),
        (
            "log.retention.bytes",
            c.log.retention_bytes.to_string(),
            TYPE_LONG,
        ),
        (
            "log.retention.ms",
            c.log.retention_ms.to_string(),
            TYPE_LONG,
        ),
        ("log.roll.ms", c.log.segment_ms.to_string(), TYPE_LONG),
        (
            "log.segment.bytes",
            c.log.segment_bytes.to_string(),
            TYPE_INT,
        ),
        (
            "message.max.bytes",
            c.log.max_message_bytes.to_string(),
            TYPE_INT,
        ),
        ("num.partitions", c.default_partitions.to_string(), TYPE_INT),
        (
            "socket.request.max.bytes",
            c.socket_request_max_bytes.to_string(),
            TYPE_INT,
        ),
    ]
}

pub(super) fn describe_configs(
    broker: &Arc<Broker>,
    req: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let mut resp = DescribeConfigsResponse::default();
    for res in req.resources {
        let mut r = DescribeConfigsResult::default();
        r.resource_type = res.resource_type;
        r.resource_name = res.resource_name.clone();
        let wanted = |name: &str| {
            res.configuration_keys
                .as_ref()
                .is_none_or(|keys| keys.iter().any(|k| k.as_str() == name))
        };
        let entry =
            |name: &str, value: String, source: i8, read_only: bool, ty: i8, doc: Option<&str>| {
                let mut c = DescribeConfigsResourceResult::default();
                c.name = sb(name);
                c.value = Some(sb(value));
                c.config_source = source;
                c.read_only = read_only;
                c.config_type = ty;
                c.documentation = if req.include_documentation {
                    doc.map(sb)
                } else {
                    None
                };
                c
            };
        match res.resource_type {
            RESOURCE_TOPIC => match broker.topic(&res.resource_name) {
                Some(t) => {
                    let cfg = t.configs();
                    r.configs = TOPIC_CONFIG_KEYS
                        .iter()
                        .filter(|k| wanted(k.name))
                        .map(|k| {
                            let (value, is_default) = cfg.value_of(k.name, &broker.config().log);
                            let source = if is_default {
                                SOURCE_DEFAULT
                            } else {
                                SOURCE_DYNAMIC_TOPIC
                            };
                            entry(
                                k.name,
                                value,
                                source,
                                false,
                                topic_config_type(k.name),
                                Some(k.doc),
                            )
                        })
                        .collect();
                }
                None => {
                    r.error_code = ResponseError::UnknownTopicOrPartition.code();
                    r.error_message = Some(sb(format!(
                        "topic '{}' does not exist",
                        res.resource_name.as_str()
                    )));
                }
            },
            RESOURCE_BROKER => {
                let name = res.resource_name.as_str();
                if !name.is_empty() && name != broker.node_id().to_string() {
                    r.error_code = ResponseError::InvalidRequest.code();
                    r.error_message = Some(sb(format!(
                        "this is broker {}, not '{name}'",
                        broker.node_id()
                    )));
                } else {
                    r.configs = broker_configs(broker)
                        .into_iter()
                        .filter(|(k, _, _)| wanted(k))
                        .map(|(k, v, ty)| entry(k, v, SOURCE_STATIC_BROKER, true, ty, None))
                        .collect();
                }
            }
            other => {
                r.error_code = ResponseError::InvalidRequest.code();
                r.error_message = Some(sb(format!(
                    "resource type {other} has no configs here; use 2 (topic) or 4 (broker)"
                )));
            }
        }
        resp.results.push(r);
    }
    resp
}

pub(super) fn broker_configs_are_static() -> ApiError {
    ApiError::new(
        ResponseError::InvalidRequest,
        "broker configs are static: set them in the config file and restart",
    )
}

pub(super) async fn alter_configs(
    broker: &Arc<Broker>,
    req: AlterConfigsRequest,
    forward: bool,
) -> AlterConfigsResponse {
    let mut resp = AlterConfigsResponse::default();
    for res in req.resources {
        let mut r =
            kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse::default(
            );
        r.resource_type = res.resource_type;
        r.resource_name = res.resource_name.clone();
        let outcome = async {
            match res.resource_type {
                RESOURCE_TOPIC => {
                    // AlterConfigs replaces the whole set: keys not given return to defaults.
                    let configs = config_pairs(
                        res.configs
                            .iter()
                            .filter(|c| c.value.is_some())
                            .map(|c| (&c.name, c.value.as_ref())),
                    )?;
                    broker
                        .set_topic_configs(&res.resource_name, configs, req.validate_only, forward)
                        .await
                }
                RESOURCE_BROKER => Err(broker_configs_are_static()),
                other => Err(ApiError::new(
                    ResponseError::InvalidRequest,
                    format!("resource type {other} has no configs"),
                )),
            }
        }
        .await;
        if let Err(e) = outcome {
            r.error_code = e.code();
            r.error_message = Some(sb(e.message));
        }
        resp.responses.push(r);
    }
    resp
}

pub(super) const OP_SET: i8 = 0;
pub(super) const OP_DELETE: i8 = 1;
pub(super) const OP_APPEND: i8 = 2;
pub(super) const OP_SUBTRACT: i8 = 3;

pub(super) async fn incremental_alter_configs(
    broker: &Arc<Broker>,
    req: IncrementalAlterConfigsRequest,
    forward: bool,
) -> IncrementalAlterConfigsResponse {
    let mut resp = IncrementalAlterConfigsResponse::default();
    for res in req.resources {
        let mut r =
            kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse::default();
        r.resource_type = res.resource_type;
        r.resource_name = res.resource_name.clone();
        let outcome = async {
            match res.resource_type {
                RESOURCE_TOPIC => {
                    let topic = broker
                        .topic(&res.resource_name)
                        .ok_or_else(|| ApiError::unknown_topic(&res.resource_name))?;
                    let mut map = topic.configs().0;
                    for c in &res.configs {
                        let name = c.name.to_string();
                        let invalid = |m: String| ApiError::new(ResponseError::InvalidConfig, m);
                        if !TOPIC_CONFIG_KEYS.iter().any(|k| k.name == name) {
                            return Err(invalid(format!("unknown topic config '{name}'")));
                        }
                        let value = c.value.as_ref().map(|v| v.to_string());
                        match c.config_operation {
                            OP_SET => {
                                let v = value.ok_or_else(|| invalid(format!("SET of '{name}' needs a value")))?;
                                map.insert(name, v);
                            }
                            OP_DELETE => {
                                map.remove(&name);
                            }
                            OP_APPEND | OP_SUBTRACT if topic_config_type(&name) == TYPE_LIST => {
                                let current = topic.configs().value_of(&name, &broker.config().log).0;
                                let mut items: Vec<String> =
                                    current.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect();
                                for v in value.unwrap_or_default().split(',').filter(|s| !s.is_empty()) {
                                    if c.config_operation == OP_APPEND {
                                        if !items.iter().any(|i| i == v) {
                                            items.push(v.to_string());
                                        }
                                    } else {
                                        items.retain(|i| i != v);
                                    }
                                }
                                map.insert(name, items.join(","));
                            }
                            OP_APPEND | OP_SUBTRACT => {
                                return Err(invalid(format!("APPEND and SUBTRACT apply to list configs; '{name}' is not one")));
                            }
                            op => return Err(ApiError::new(ResponseError::InvalidRequest, format!("unknown config operation {op}"))),
                        }
                    }
                    for c in res.configs.iter().filter(|c| c.config_operation == OP_SET) {
                        super::topics::warn_if_deprecated(c.name.as_str());
                    }
                    let configs = TopicConfig::from_pairs(map.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                        .map_err(|e| ApiError::new(ResponseError::InvalidConfig, e))?;
                    broker.set_topic_configs(&res.resource_name, configs, req.validate_only, forward).await
                }
                RESOURCE_BROKER => Err(broker_configs_are_static()),
                other => Err(ApiError::new(ResponseError::InvalidRequest, format!("resource type {other} has no configs"))),
            }
        }
        .await;
        if let Err(e) = outcome {
            r.error_code = e.code();
            r.error_message = Some(sb(e.message));
        }
        resp.responses.push(r);
    }
    resp
}
