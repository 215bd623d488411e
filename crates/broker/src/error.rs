//! The one place where internal errors become Kafka error codes.

use kafka_protocol::ResponseError;
use tracing::error;

/// An error to send to a client: a Kafka error code and a message saying what
/// to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The Kafka error.
    pub code: ResponseError,
    /// Human-readable detail (sent where the protocol has a message field).
    pub message: String,
}

impl ApiError {
    /// An error with a message. Every one is counted in
    /// `strata_errors_total{error}`: each is on its way to a client.
    pub fn new(code: ResponseError, message: impl Into<String>) -> Self {
        metrics::counter!("strata_errors_total", "error" => error_name(code)).increment(1);
        Self {
            code,
            message: message.into(),
        }
    }

    /// The topic does not exist.
    pub fn unknown_topic(name: &str) -> Self {
        Self::new(
            ResponseError::UnknownTopicOrPartition,
            format!("topic '{name}' does not exist"),
        )
    }

    /// A storage failure: logged here, reported as KAFKA_STORAGE_ERROR.
    pub fn storage(e: impl std::fmt::Display) -> Self {
        error!(error = %e, "storage operation failed");
        Self::new(
            ResponseError::KafkaStorageError,
            format!("storage error: {e}"),
        )
    }

    /// A bug or a panicked task: logged here, reported as UNKNOWN_SERVER_ERROR.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        error!(error = %e, "internal error");
        Self::new(
            ResponseError::UnknownServerError,
            format!("internal error: {e}"),
        )
    }

    /// The numeric code.
    pub fn code(&self) -> i16 {
        self.code.code()
    }
}

/// Kafka's name for an error code, as a metrics label.
fn error_name(code: ResponseError) -> &'static str {
    static_name(0, code.code(), || format!("{code:?}"))
}

/// A `&'static str` for a name from a small closed set (API keys, error
/// codes: `kind` tells the sets apart), made once and kept: metric labels
/// and span fields need `'static`. Lookups after the first take a read lock.
pub(crate) fn static_name(kind: u8, code: i16, make: impl FnOnce() -> String) -> &'static str {
    use std::collections::HashMap;
    use std::sync::{OnceLock, RwLock};
    static NAMES: OnceLock<RwLock<HashMap<(u8, i16), &'static str>>> = OnceLock::new();
    let names = NAMES.get_or_init(Default::default);
    if let Some(name) = names.read().expect("names lock").get(&(kind, code)) {
        return name;
    }
    names
        .write()
        .expect("names lock")
        .entry((kind, code))
        .or_insert_with(|| Box::leak(make().into_boxed_str()))
}

impl From<strata_log::Error> for ApiError {
    fn from(e: strata_log::Error) -> Self {
        use strata_log::Error as E;
        match &e {
            E::Corrupt(_) => Self::new(ResponseError::CorruptMessage, e.to_string()),
            E::InvalidRecord(_) => Self::new(ResponseError::InvalidRecord, e.to_string()),
            E::UnsupportedMagic(_) => {
                Self::new(ResponseError::UnsupportedForMessageFormat, e.to_string())
            }
            E::MessageTooLarge { .. } => Self::new(ResponseError::MessageTooLarge, e.to_string()),
            E::OffsetOutOfRange { .. } => Self::new(ResponseError::OffsetOutOfRange, e.to_string()),
            E::Sequence(strata_log::producer_state::SequenceError::OutOfOrder { .. }) => {
                Self::new(ResponseError::OutOfOrderSequenceNumber, e.to_string())
            }
            E::Sequence(strata_log::producer_state::SequenceError::InvalidEpoch { .. }) => {
                Self::new(ResponseError::InvalidProducerEpoch, e.to_string())
            }
            E::TransactionsUnsupported => Self::new(
                ResponseError::InvalidTxnState,
                "transactions are not supported by this broker; produce without a transactional.id",
            ),
            E::Io(_) => Self::storage(&e),
            _ => Self::internal(&e),
        }
    }
}

/// This broker does not lead the partition (any more).
pub(crate) fn not_leader(p: &crate::state::Partition) -> ApiError {
    ApiError::new(
        ResponseError::NotLeaderOrFollower,
        format!(
            "this broker does not lead {}-{}; refresh metadata and retry",
            p.topic, p.index
        ),
    )
}

/// A metadata store failure, as the Kafka error a client can act on.
pub(crate) fn store_error(e: strata_cluster::StoreError) -> ApiError {
    use strata_cluster::StoreError as E;
    match &e {
        E::Fenced(_) => ApiError::new(ResponseError::NotController, format!("{e}; retry")),
        E::Unavailable(_) | E::Conflict(_) => {
            ApiError::new(ResponseError::RequestTimedOut, format!("{e}; retry"))
        }
        _ => ApiError::storage(&e),
    }
}

/// A controller decision that cannot be made, as Kafka's error.
pub(crate) fn plan_error(e: strata_cluster::controller::PlanError) -> ApiError {
    use strata_cluster::controller::PlanError as E;
    let code = match &e {
        E::InvalidReplicationFactor(_) => ResponseError::InvalidReplicationFactor,
        E::InvalidReplicaAssignment(_) => ResponseError::InvalidReplicaAssignment,
        E::InvalidPartitions(_) => ResponseError::InvalidPartitions,
        E::TopicExists(_) => ResponseError::TopicAlreadyExists,
        E::UnknownTopic(_) => ResponseError::UnknownTopicOrPartition,
        E::NoReassignmentInProgress(_) => ResponseError::NoReassignmentInProgress,
        _ => ResponseError::InvalidRequest,
    };
    ApiError::new(code, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_errors_map_to_what_a_java_broker_sends() {
        let cases: [(strata_log::Error, i16); 5] = [
            (strata_log::Error::Corrupt("crc".into()), 2),
            (strata_log::Error::InvalidRecord("count".into()), 87),
            (strata_log::Error::MessageTooLarge { size: 2, max: 1 }, 10),
            (
                strata_log::Error::OffsetOutOfRange {
                    offset: 9,
                    start: 0,
                    end: 1,
                },
                1,
            ),
            (strata_log::Error::UnsupportedMagic(1), 43),
        ];
        for (e, code) in cases {
            assert_eq!(ApiError::from(e).code(), code);
        }
    }
}
