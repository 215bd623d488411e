//! Security on the Kafka listeners: listener settings, TLS, the SASL
//! exchange, ACL checks and the bootstrap users file.
//!
//! Decisions live in `strata_auth` (SCRAM, PLAIN, the ACL model) and in the
//! state machines here; the listener in `server` does the I/O.

pub mod config;
pub mod sasl;
pub mod tls;
pub mod users;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use strata_auth::acl::{authorize, AuthorizerPolicy, Operation, ResourceType};
use strata_auth::Principal;

pub use config::{
    effective_listeners, AuthConfig, ListenerConfig, SaslMechanism, SecurityProtocol,
    DEFAULT_LISTENER,
};

/// A listener as connections see it: its name, protocol and what it offers.
pub struct Listener {
    /// Its settings.
    pub config: ListenerConfig,
    /// TLS, for SSL and SASL_SSL.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Mechanisms offered, for SASL protocols.
    pub mechanisms: Vec<SaslMechanism>,
    /// Session lifetime given to SASL clients.
    pub reauth: Option<Duration>,
    /// Largest frame before authentication.
    pub unauthenticated_max_bytes: usize,
    /// How long a connection stays open, unread, after a failed authentication.
    pub failure_delay: Duration,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("name", &self.config.name)
            .field("protocol", &self.config.protocol)
            .finish()
    }
}

impl Listener {
    /// Builds a listener's runtime from its settings, reading its TLS files.
    pub fn new(config: ListenerConfig, auth: &AuthConfig) -> Result<Self, String> {
        let tls = if config.protocol.tls() {
            let sc = tls::server_config(
                &config.tls_cert_file,
                &config.tls_key_file,
                &config.tls_client_ca_file,
            )
            .map_err(|e| format!("listener '{}': {e}", config.name))?;
            Some(tokio_rustls::TlsAcceptor::from(sc))
        } else {
            None
        };
        Ok(Self {
            mechanisms: config.mechanisms(),
            tls,
            reauth: (auth.connections_max_reauth_ms > 0)
                .then(|| Duration::from_millis(auth.connections_max_reauth_ms as u64)),
            unauthenticated_max_bytes: auth.sasl_max_receive_bytes,
            failure_delay: Duration::from_millis(auth.failed_authentication_delay_ms),
            config,
        })
    }
}

/// Opens every file the security settings name (certificates, keys, CA
/// bundles, the bootstrap users file, the inter-broker password), so that a
/// missing or malformed one is an error before the broker serves.
pub fn check_files(config: &crate::BrokerConfig) -> Result<(), String> {
    for l in config.kafka_listeners()? {
        Listener::new(l, &config.auth)?;
    }
    let auth = &config.auth;
    if !auth.bootstrap_users_file.is_empty() {
        let text = std::fs::read_to_string(&auth.bootstrap_users_file).map_err(|e| {
            format!(
                "auth.bootstrap_users_file '{}': {e}",
                auth.bootstrap_users_file
            )
        })?;
        users::parse(&text).map_err(|e| {
            format!(
                "auth.bootstrap_users_file '{}': {e}",
                auth.bootstrap_users_file
            )
        })?;
    }
    crate::peer::PeerSecurity::from_config(config)?;
    if !auth.http_tls_cert_file.is_empty() {
        tls::server_config(&auth.http_tls_cert_file, &auth.http_tls_key_file, "")
            .map_err(|e| format!("admin API TLS: {e}"))?;
    }
    Ok(())
}

/// Who sent a request, for ACL checks.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The principal (`User:ANONYMOUS` when the listener does not authenticate).
    pub principal: Arc<Principal>,
    /// The client's address.
    pub host: IpAddr,
    /// The listener the request came in on.
    pub listener: Arc<str>,
}

/// The authorizer: on or off, and its policy.
#[derive(Debug, Clone)]
pub struct Authorizer {
    enabled: bool,
    policy: AuthorizerPolicy,
}

impl Authorizer {
    /// From `[auth]`.
    pub fn new(auth: &AuthConfig) -> Self {
        Self {
            enabled: auth.authorizer,
            policy: AuthorizerPolicy {
                super_users: auth.super_users.clone(),
                allow_if_no_acl: auth.allow_everyone_if_no_acl_found,
            },
        }
    }

    /// Whether ACLs are enforced.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether `who` may do `op` on `(resource_type, name)` under the ACLs of `image`.
    pub fn allows(
        &self,
        image: &strata_cluster::ClusterImage,
        who: &Identity,
        op: Operation,
        resource_type: ResourceType,
        name: &str,
    ) -> bool {
        if !self.enabled {
            return true;
        }
        let ok = authorize(
            &self.policy,
            image.security.acls.values(),
            &who.principal,
            who.host,
            op,
            resource_type,
            name,
        );
        if !ok {
            metrics::counter!("strata_authorization_denied_total", "resource" => resource_type.name(), "operation" => op.name())
                .increment(1);
            tracing::debug!(principal = %who.principal, host = %who.host, operation = op.name(), resource = resource_type.name(), name, "denied");
        }
        ok
    }
}
