//! `[cluster]` settings: whether this broker is part of a cluster, where its
//! etcd is, and who it is.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[cluster]` settings. With no `etcd_endpoints` the broker runs alone on
/// its local file store (the embedded default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// etcd v3 endpoints (`http://host:2379`). Empty: a single broker, no etcd.
    pub etcd_endpoints: Vec<String>,
    /// etcd user, when etcd has authentication on.
    pub etcd_username: String,
    /// etcd password (set it from the environment,
    /// `STRATA_CLUSTER__ETCD_PASSWORD`, not in a file).
    pub etcd_password: String,
    /// PEM file of the CA that signed etcd's server certificate; needed for
    /// `https://` endpoints.
    pub etcd_ca_file: String,
    /// PEM client certificate for etcd (`--client-cert-auth`); with
    /// `etcd_key_file`.
    pub etcd_cert_file: String,
    /// PEM private key of `etcd_cert_file`.
    pub etcd_key_file: String,
    /// The cluster's name: its keys in etcd live under `/strata/<name>/`, so
    /// several clusters can share one etcd.
    pub name: String,
    /// This broker's id, unique in the cluster. -1: taken from the host
    /// name's ordinal suffix (`strata-2` is broker 2), as in a StatefulSet.
    pub broker_id: i32,
    /// This broker's rack (`broker.rack`), for rack-aware replica placement.
    pub rack: String,
    /// A broker that cannot renew its etcd lease for this long is out of the
    /// cluster: it stops leading, and its partitions get new leaders.
    pub session_timeout_ms: u64,
    /// Timeout of one etcd request.
    pub etcd_request_timeout_ms: u64,
    /// Replication factor of topics created without one (`default.replication.factor`).
    pub default_replication_factor: i16,
    /// How long a broker stopping on SIGTERM waits for the controller to
    /// move its leaderships away before it stops anyway.
    pub controlled_shutdown_timeout_ms: u64,
    /// A follower that has not caught up with its leader for this long leaves
    /// the ISR (`replica.lag.time.max.ms`).
    pub replica_lag_time_max_ms: u64,
    /// How long a leader holds a follower's fetch waiting for new data
    /// (`replica.fetch.wait.max.ms`).
    pub replica_fetch_wait_max_ms: u64,
    /// Bytes a follower asks for per partition and fetch (`replica.fetch.max.bytes`).
    pub replica_fetch_max_bytes: u64,
    /// Bytes a follower asks for per fetch (`replica.fetch.response.max.bytes`).
    pub replica_fetch_response_max_bytes: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            etcd_endpoints: Vec::new(),
            etcd_username: String::new(),
            etcd_password: String::new(),
            etcd_ca_file: String::new(),
            etcd_cert_file: String::new(),
            etcd_key_file: String::new(),
            name: "strata".into(),
            broker_id: -1,
            rack: String::new(),
            session_timeout_ms: 10_000,
            etcd_request_timeout_ms: 5_000,
            default_replication_factor: 1,
            controlled_shutdown_timeout_ms: 30_000,
            replica_lag_time_max_ms: 30_000,
            replica_fetch_wait_max_ms: 500,
            replica_fetch_max_bytes: 1 << 20,
            replica_fetch_response_max_bytes: 10 << 20,
        }
    }
}

impl ClusterConfig {
    /// Whether the broker runs in a cluster.
    pub fn enabled(&self) -> bool {
        !self.etcd_endpoints.is_empty()
    }

    /// The session timeout.
    pub fn session_timeout(&self) -> Duration {
        Duration::from_millis(self.session_timeout_ms)
    }

    /// Checks values that types cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(format!(
                "cluster.name '{}' must be non-empty ASCII letters, digits, '-', '_' or '.'",
                self.name
            ));
        }
        if self.broker_id < -1 {
            return Err(format!(
                "cluster.broker_id must be >= 0 (or -1 for the host name's ordinal), got {}",
                self.broker_id
            ));
        }
        if self.session_timeout_ms < 2_000 {
            return Err(format!(
                "cluster.session_timeout_ms must be at least 2000 (etcd's shortest lease), got {}",
                self.session_timeout_ms
            ));
        }
        if self.etcd_request_timeout_ms == 0 {
            return Err("cluster.etcd_request_timeout_ms must be > 0".into());
        }
        if self.default_replication_factor < 1 {
            return Err(format!(
                "cluster.default_replication_factor must be >= 1, got {}",
                self.default_replication_factor
            ));
        }
        if self.replica_lag_time_max_ms < 100 || self.replica_fetch_wait_max_ms == 0 {
            return Err(
                "cluster.replica_lag_time_max_ms must be >= 100 and replica_fetch_wait_max_ms > 0"
                    .into(),
            );
        }
        if self.replica_fetch_wait_max_ms >= self.replica_lag_time_max_ms {
            return Err(format!(
                "cluster.replica_fetch_wait_max_ms ({}) must be below replica_lag_time_max_ms ({}): a follower waiting on a fetch would drop out of the ISR",
                self.replica_fetch_wait_max_ms, self.replica_lag_time_max_ms
            ));
        }
        if self.replica_fetch_max_bytes < 1024
            || self.replica_fetch_response_max_bytes < self.replica_fetch_max_bytes
            || self.replica_fetch_response_max_bytes > i32::MAX as u64
        {
            return Err("cluster: need 1024 <= replica_fetch_max_bytes <= replica_fetch_response_max_bytes < 2 GiB".into());
        }
        for e in &self.etcd_endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(format!(
                    "cluster.etcd_endpoints: '{e}' must be a URL (http://host:2379)"
                ));
            }
            if e.starts_with("https://") && self.etcd_ca_file.is_empty() {
                return Err(format!(
                    "cluster.etcd_endpoints: '{e}' is https:// but cluster.etcd_ca_file is not set: name the PEM file of the CA that signed etcd's certificate"
                ));
            }
        }
        if self.etcd_cert_file.is_empty() != self.etcd_key_file.is_empty() {
            return Err(
                "cluster.etcd_cert_file and cluster.etcd_key_file go together: set both for a client certificate, or neither".into(),
            );
        }
        let tls = self
            .etcd_endpoints
            .iter()
            .any(|e| e.starts_with("https://"));
        let tls_files = !self.etcd_ca_file.is_empty() || !self.etcd_cert_file.is_empty();
        if tls_files && !tls {
            return Err(
                "cluster.etcd_ca_file, etcd_cert_file and etcd_key_file are for https:// etcd endpoints, and every endpoint is http://".into(),
            );
        }
        Ok(())
    }

    /// The broker id to use: `broker_id`, else the ordinal at the end of
    /// `host_name` (`strata-2` → 2).
    pub fn resolve_broker_id(&self, host_name: &str) -> Result<i32, String> {
        if self.broker_id >= 0 {
            return Ok(self.broker_id);
        }
        host_name
            .rsplit_once('-')
            .and_then(|(_, n)| n.parse::<i32>().ok())
            .filter(|n| *n >= 0)
            .ok_or_else(|| {
                format!(
                    "cluster.broker_id is not set and the host name '{host_name}' does not end in -N (a StatefulSet ordinal): set cluster.broker_id"
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_id_comes_from_the_statefulset_ordinal() {
        let c = ClusterConfig::default();
        assert_eq!(c.resolve_broker_id("strata-2"), Ok(2));
        assert_eq!(c.resolve_broker_id("my-strata-cluster-10"), Ok(10));
        assert!(c
            .resolve_broker_id("laptop")
            .unwrap_err()
            .contains("set cluster.broker_id"));
        let explicit = ClusterConfig {
            broker_id: 7,
            ..ClusterConfig::default()
        };
        assert_eq!(explicit.resolve_broker_id("strata-2"), Ok(7));
    }

    #[test]
    fn bad_settings_are_refused() {
        let ok = ClusterConfig {
            etcd_endpoints: vec!["http://127.0.0.1:2379".into()],
            ..ClusterConfig::default()
        };
        ok.validate().unwrap();
        for bad in [
            ClusterConfig {
                name: "a/b".into(),
                ..ok.clone()
            },
            ClusterConfig {
                session_timeout_ms: 500,
                ..ok.clone()
            },
            ClusterConfig {
                etcd_endpoints: vec!["127.0.0.1:2379".into()],
                ..ok.clone()
            },
            ClusterConfig {
                default_replication_factor: 0,
                ..ok.clone()
            },
            // https without the CA that signed etcd's certificate
            ClusterConfig {
                etcd_endpoints: vec!["https://etcd:2379".into()],
                ..ok.clone()
            },
            // a client certificate without its key
            ClusterConfig {
                etcd_endpoints: vec!["https://etcd:2379".into()],
                etcd_ca_file: "/etc/etcd/ca.crt".into(),
                etcd_cert_file: "/etc/etcd/tls.crt".into(),
                ..ok.clone()
            },
            // TLS files for plain-text endpoints: a forgotten https://
            ClusterConfig {
                etcd_ca_file: "/etc/etcd/ca.crt".into(),
                ..ok.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        ClusterConfig {
            etcd_endpoints: vec!["https://etcd:2379".into()],
            etcd_ca_file: "/etc/etcd/ca.crt".into(),
            etcd_cert_file: "/etc/etcd/tls.crt".into(),
            etcd_key_file: "/etc/etcd/tls.key".into(),
            ..ok.clone()
        }
        .validate()
        .unwrap();
    }
}
