//! CreateTopics, DeleteTopics and CreatePartitions.

use std::sync::Arc;

use kafka_protocol::messages::{
    create_topics_response::{CreatableTopicConfigs, CreatableTopicResult},
    delete_topics_response::DeletableTopicResult,
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use tracing::warn;
use uuid::Uuid;

use crate::cluster::TopicSpec;
use crate::error::ApiError;
use crate::state::Broker;
use crate::topic_config::{validate_entry, TopicConfig, TOPIC_CONFIG_KEYS};

use super::{sb, topic_name};

/// Kafka warns when a deprecated config is set; so does Strata.
pub(super) fn warn_if_deprecated(name: &str) {
    if crate::topic_config::DEPRECATED_TOPIC_CONFIGS.contains(&name) {
        tracing::warn!(
            config = name,
            "deprecated topic config set: accepted and ignored, as Kafka 3.x does"
        );
    }
}

pub(super) fn config_pairs<'a>(
    pairs: impl IntoIterator<Item = (&'a StrBytes, Option<&'a StrBytes>)>,
) -> Result<TopicConfig, ApiError> {
    let mut map = std::collections::BTreeMap::new();
    for (k, v) in pairs {
        let v = v.ok_or_else(|| {
            ApiError::new(
                ResponseError::InvalidConfig,
                format!("config '{}' has a null value", k.as_str()),
            )
        })?;
        validate_entry(k, v).map_err(|e| ApiError::new(ResponseError::InvalidConfig, e))?;
        warn_if_deprecated(k);
        map.insert(k.to_string(), v.to_string());
    }
    Ok(TopicConfig(map))
}

pub(super) async fn create_topics(
    broker: &Arc<Broker>,
    req: CreateTopicsRequest,
    version: i16,
    forward: bool,
) -> CreateTopicsResponse {
    let mut resp = CreateTopicsResponse::default();
    let mut seen = std::collections::HashSet::new();
    for t in req.topics {
        let name = t.name.0.to_string();
        let mut r = CreatableTopicResult::default();
        r.name = t.name.clone();
        let duplicate = !seen.insert(name.clone());
        let outcome = async {
            if duplicate {
                return Err(ApiError::new(
                    ResponseError::InvalidRequest,
                    format!("topic '{name}' appears more than once in the request"),
                ));
            }
            let assignments = (!t.assignments.is_empty()).then(|| {
                let mut a: Vec<_> = t.assignments.iter().collect();
                a.sort_by_key(|a| a.partition_index);
                a.iter()
                    .map(|a| a.broker_ids.iter().map(|b| b.0).collect())
                    .collect::<Vec<Vec<i32>>>()
            });
            let configs = config_pairs(t.configs.iter().map(|c| (&c.name, c.value.as_ref())))?;
            let spec = TopicSpec {
                name: name.clone(),
                partitions: t.num_partitions,
                replication_factor: t.replication_factor,
                assignments,
                configs,
            };
            broker.create_topic(spec, req.validate_only, forward).await
        }
        .await;
        match outcome {
            Ok(topic) => {
                r.topic_id = topic.id;
                r.num_partitions = topic.partitions;
                r.replication_factor = topic.replication_factor;
                if version >= 5 {
                    let cfg = topic.configs;
                    r.configs = Some(
                        TOPIC_CONFIG_KEYS
                            .iter()
                            .map(|k| {
                                let (value, is_default) =
                                    cfg.value_of(k.name, &broker.config().log);
                                let mut c = CreatableTopicConfigs::default();
                                c.name = sb(k.name);
                                c.value = Some(sb(value));
                                c.config_source = if is_default { 5 } else { 1 };
                                c
                            })
                            .collect(),
                    );
                }
            }
            Err(e) => {
                warn!(topic = %name, error = %e.message, "create topic refused");
                r.error_code = e.code();
                r.error_message = Some(sb(e.message));
                r.num_partitions = -1;
                r.replication_factor = -1;
            }
        }
        resp.topics.push(r);
    }
    resp
}

pub(super) async fn delete_topics(
    broker: &Arc<Broker>,
    req: DeleteTopicsRequest,
    forward: bool,
) -> DeleteTopicsResponse {
    let mut wanted: Vec<(Option<String>, Uuid)> = req
        .topic_names
        .iter()
        .map(|n| (Some(n.0.to_string()), Uuid::nil()))
        .collect();
    wanted.extend(
        req.topics
            .iter()
            .map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id)),
    );
    let mut resp = DeleteTopicsResponse::default();
    for (name, id) in wanted {
        let mut r = DeletableTopicResult::default();
        r.topic_id = id;
        let resolved = match &name {
            Some(n) => broker
                .topic(n)
                .map(|t| t.name.clone())
                .ok_or_else(|| ApiError::unknown_topic(n)),
            None => broker
                .topic_by_id(id)
                .map(|t| t.name.clone())
                .ok_or_else(|| {
                    ApiError::new(
                        ResponseError::UnknownTopicId,
                        format!("no topic has id {id}"),
                    )
                }),
        };
        r.name = name.as_deref().map(topic_name);
        match resolved {
            Ok(n) => match broker.delete_topic(&n, forward).await {
                Ok(deleted_id) => {
                    r.name = Some(topic_name(&n));
                    r.topic_id = deleted_id;
                }
                Err(e) => {
                    r.error_code = e.code();
                    r.error_message = Some(sb(e.message));
                }
            },
            Err(e) => {
                r.error_code = e.code();
                r.error_message = Some(sb(e.message));
            }
        }
        resp.responses.push(r);
    }
    resp
}

pub(super) async fn create_partitions(
    broker: &Arc<Broker>,
    req: CreatePartitionsRequest,
    forward: bool,
) -> CreatePartitionsResponse {
    let mut resp = CreatePartitionsResponse::default();
    for t in req.topics {
        let mut r = kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult::default();
        r.name = t.name.clone();
        let assignments = t.assignments.as_ref().map(|a| {
            a.iter()
                .map(|x| x.broker_ids.iter().map(|b| b.0).collect())
                .collect()
        });
        if let Err(e) = broker
            .create_partitions(&t.name.0, t.count, assignments, req.validate_only, forward)
            .await
        {
            r.error_code = e.code();
            r.error_message = Some(sb(e.message));
        }
        resp.results.push(r);
    }
    resp
}
