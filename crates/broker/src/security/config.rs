//! Listener and security settings: `[[listeners]]` and `[auth]`.
//!
//! `kafka_listen` and `advertised_listener` keep configuring a PLAINTEXT
//! listener named `default`; `kafka_listen = ""` turns it off. Each
//! `[[listeners]]` entry adds one, like Kafka's `listeners`,
//! `advertised.listeners` and `listener.security.protocol.map` in one place.

use serde::{Deserialize, Serialize};
use strata_auth::scram::Mechanism;

/// The name of the listener `kafka_listen` configures.
pub const DEFAULT_LISTENER: &str = "default";

/// How a listener secures its connections (Kafka's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SecurityProtocol {
    /// Neither encryption nor authentication.
    Plaintext,
    /// TLS; a client certificate, when required, names the principal.
    Ssl,
    /// SASL without encryption.
    SaslPlaintext,
    /// SASL over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    /// Kafka's name (`SASL_SSL`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Plaintext => "PLAINTEXT",
            Self::Ssl => "SSL",
            Self::SaslPlaintext => "SASL_PLAINTEXT",
            Self::SaslSsl => "SASL_SSL",
        }
    }

    /// Whether connections run TLS.
    pub fn tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    /// Whether connections must authenticate with SASL before anything else.
    pub fn sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

/// A SASL mechanism a listener offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    /// PLAIN, checked against the user's stored SCRAM credentials.
    Plain,
    /// SCRAM-SHA-256 or SCRAM-SHA-512.
    Scram(Mechanism),
}

impl SaslMechanism {
    /// By SASL name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "PLAIN" => Some(Self::Plain),
            other => Mechanism::from_name(other).map(Self::Scram),
        }
    }

    /// The SASL name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::Scram(m) => m.name(),
        }
    }
}

/// One `[[listeners]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Unique name (`inter_broker_listener_name` refers to it).
    pub name: String,
    /// Address to bind.
    pub listen: String,
    /// Address given to clients in Metadata; the bound address when empty.
    #[serde(default)]
    pub advertised: String,
    /// Security protocol.
    #[serde(default = "plaintext")]
    pub protocol: SecurityProtocol,
    /// PEM certificate chain (SSL, SASL_SSL); reloaded when the file changes.
    #[serde(default)]
    pub tls_cert_file: String,
    /// PEM private key (SSL, SASL_SSL); reloaded with the certificate.
    #[serde(default)]
    pub tls_key_file: String,
    /// PEM CA bundle: when set, clients must present a certificate it signed
    /// (`ssl.client.auth=required`).
    #[serde(default)]
    pub tls_client_ca_file: String,
    /// Mechanisms offered (SASL_PLAINTEXT, SASL_SSL).
    #[serde(default = "default_mechanisms")]
    pub sasl_mechanisms: Vec<String>,
}

fn plaintext() -> SecurityProtocol {
    SecurityProtocol::Plaintext
}

fn default_mechanisms() -> Vec<String> {
    vec!["SCRAM-SHA-512".into(), "SCRAM-SHA-256".into()]
}

impl ListenerConfig {
    /// The mechanisms offered, parsed.
    pub fn mechanisms(&self) -> Vec<SaslMechanism> {
        self.sasl_mechanisms
            .iter()
            .filter_map(|m| SaslMechanism::from_name(m))
            .collect()
    }

    fn validate(&self) -> Result<(), String> {
        let at = format!("listener '{}'", self.name);
        if self.name.is_empty()
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(format!("{at}: a name is letters, digits, '_' and '-'"));
        }
        if self.listen.is_empty() {
            return Err(format!("{at}: listen is empty"));
        }
        if self.protocol.tls() && (self.tls_cert_file.is_empty() || self.tls_key_file.is_empty()) {
            return Err(format!(
                "{at}: protocol {:?} needs tls_cert_file and tls_key_file",
                self.protocol
            ));
        }
        if !self.protocol.tls() && !self.tls_client_ca_file.is_empty() {
            return Err(format!(
                "{at}: tls_client_ca_file needs protocol SSL or SASL_SSL"
            ));
        }
        if self.protocol.sasl() {
            if self.sasl_mechanisms.is_empty() {
                return Err(format!("{at}: sasl_mechanisms is empty"));
            }
            for m in &self.sasl_mechanisms {
                if SaslMechanism::from_name(m).is_none() {
                    return Err(format!(
                        "{at}: unknown SASL mechanism '{m}' (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `[auth]`: authentication and authorization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Enforce ACLs (Kafka's `authorizer.class.name` set).
    pub authorizer: bool,
    /// Principals allowed everything (`super.users`).
    pub super_users: Vec<String>,
    /// Allow when no ACL matches a resource (`allow.everyone.if.no.acl.found`).
    pub allow_everyone_if_no_acl_found: bool,
    /// TOML file of `[[user]] name, password, mechanism` stored once, at start,
    /// as salted SCRAM credentials for users that have none yet.
    pub bootstrap_users_file: String,
    /// The listener brokers use among themselves (`inter.broker.listener.name`);
    /// empty: the default listener.
    pub inter_broker_listener_name: String,
    /// The user brokers authenticate as on a SASL inter-broker listener.
    pub inter_broker_user: String,
    /// File holding that user's password.
    pub inter_broker_password_file: String,
    /// Mechanism brokers use among themselves.
    pub inter_broker_sasl_mechanism: String,
    /// PEM CA bundle brokers trust on a TLS inter-broker listener.
    pub inter_broker_tls_ca_file: String,
    /// Largest request accepted before a connection authenticates
    /// (`sasl.server.max.receive.size`).
    pub sasl_max_receive_bytes: usize,
    /// How long after answering a failed authentication the connection is
    /// closed, reading nothing meanwhile (`connection.failed.authentication.delay.ms`).
    pub failed_authentication_delay_ms: u64,
    /// Session lifetime given to SASL clients, which re-authenticate before
    /// it ends (`connections.max.reauth.ms`, KIP-368; 0: none).
    pub connections_max_reauth_ms: i64,
    /// File of bearer tokens for the admin API, one `token principal` per
    /// line (`s3cr3t User:admin`); empty: no tokens.
    pub http_token_file: String,
    /// Require credentials on the admin API (a bearer token or HTTP Basic
    /// with a SCRAM user); `/healthz` and `/readyz` stay open.
    pub http_require_auth: bool,
    /// Whether `/metrics` stays open when the admin API requires credentials.
    pub http_metrics_open: bool,
    /// PEM certificate for HTTPS on the admin API (empty: plain HTTP).
    pub http_tls_cert_file: String,
    /// PEM key for HTTPS on the admin API.
    pub http_tls_key_file: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            authorizer: false,
            super_users: Vec::new(),
            allow_everyone_if_no_acl_found: false,
            bootstrap_users_file: String::new(),
            inter_broker_listener_name: String::new(),
            inter_broker_user: String::new(),
            inter_broker_password_file: String::new(),
            inter_broker_sasl_mechanism: "SCRAM-SHA-512".into(),
            inter_broker_tls_ca_file: String::new(),
            sasl_max_receive_bytes: 524_288,
            failed_authentication_delay_ms: 100,
            connections_max_reauth_ms: 0,
            http_token_file: String::new(),
            http_require_auth: false,
            http_metrics_open: true,
            http_tls_cert_file: String::new(),
            http_tls_key_file: String::new(),
        }
    }
}

/// The listeners a configuration asks for: `default` from `kafka_listen`
/// (unless empty), then every `[[listeners]]` entry, validated together.
pub fn effective_listeners(
    kafka_listen: &str,
    advertised_listener: &str,
    extra: &[ListenerConfig],
    auth: &AuthConfig,
) -> Result<Vec<ListenerConfig>, String> {
    let mut all = Vec::new();
    if !kafka_listen.is_empty() && !extra.iter().any(|l| l.name == DEFAULT_LISTENER) {
        all.push(ListenerConfig {
            name: DEFAULT_LISTENER.into(),
            listen: kafka_listen.into(),
            advertised: advertised_listener.into(),
            protocol: SecurityProtocol::Plaintext,
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            tls_client_ca_file: String::new(),
            sasl_mechanisms: default_mechanisms(),
        });
    }
    all.extend(extra.iter().cloned());
    if all.is_empty() {
        return Err("no Kafka listener: set kafka_listen or add a [[listeners]] entry".into());
    }
    for (i, l) in all.iter().enumerate() {
        l.validate()?;
        if all[..i].iter().any(|o| o.name == l.name) {
            return Err(format!("two listeners are named '{}'", l.name));
        }
    }
    if auth.inter_broker_listener_name.is_empty() {
        // Brokers dial each other on the default listener, or the first one.
        let l = all
            .iter()
            .find(|l| l.name == DEFAULT_LISTENER)
            .unwrap_or(&all[0]);
        if l.protocol != SecurityProtocol::Plaintext {
            return Err(format!(
                "brokers would reach each other on listener '{}' ({}): set auth.inter_broker_listener_name and its credentials",
                l.name,
                l.protocol.name()
            ));
        }
    } else {
        let Some(l) = all
            .iter()
            .find(|l| l.name == auth.inter_broker_listener_name)
        else {
            return Err(format!(
                "auth.inter_broker_listener_name '{}' names no listener",
                auth.inter_broker_listener_name
            ));
        };
        if l.protocol.sasl() {
            if auth.inter_broker_user.is_empty() || auth.inter_broker_password_file.is_empty() {
                return Err(format!(
                    "inter-broker listener '{}' uses SASL: set auth.inter_broker_user and auth.inter_broker_password_file",
                    l.name
                ));
            }
            let m = SaslMechanism::from_name(&auth.inter_broker_sasl_mechanism).ok_or_else(|| {
                format!(
                    "auth.inter_broker_sasl_mechanism '{}' is not PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
                    auth.inter_broker_sasl_mechanism
                )
            })?;
            if !l.mechanisms().contains(&m) {
                return Err(format!(
                    "inter-broker listener '{}' does not offer {}",
                    l.name,
                    m.name()
                ));
            }
        }
        if l.protocol.tls() && auth.inter_broker_tls_ca_file.is_empty() {
            return Err(format!(
                "inter-broker listener '{}' uses TLS: set auth.inter_broker_tls_ca_file",
                l.name
            ));
        }
    }
    for s in &auth.super_users {
        strata_auth::Principal::parse(s).map_err(|e| format!("auth.super_users: {e}"))?;
    }
    if auth.sasl_max_receive_bytes < 1024 {
        return Err("auth.sasl_max_receive_bytes must be at least 1024".into());
    }
    if auth.http_tls_cert_file.is_empty() != auth.http_tls_key_file.is_empty() {
        return Err("auth.http_tls_cert_file and auth.http_tls_key_file go together".into());
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(name: &str, protocol: SecurityProtocol) -> ListenerConfig {
        ListenerConfig {
            name: name.into(),
            listen: "127.0.0.1:0".into(),
            advertised: String::new(),
            protocol,
            tls_cert_file: "c.pem".into(),
            tls_key_file: "k.pem".into(),
            tls_client_ca_file: String::new(),
            sasl_mechanisms: vec!["PLAIN".into()],
        }
    }

    #[test]
    fn default_listener_stays_unless_removed_and_names_are_unique() {
        let auth = AuthConfig::default();
        let extra = [listener("secure", SecurityProtocol::SaslSsl)];
        let all = effective_listeners("127.0.0.1:9092", "", &extra, &auth).unwrap();
        assert_eq!(
            all.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
            ["default", "secure"]
        );
        let internal = [listener("internal", SecurityProtocol::Plaintext)];
        assert_eq!(
            effective_listeners("", "", &internal, &auth).unwrap().len(),
            1
        );
        assert!(effective_listeners("", "", &[], &auth).is_err());
        let twice = [extra[0].clone(), extra[0].clone()];
        assert!(effective_listeners("", "", &twice, &auth).is_err());
    }

    #[test]
    fn bad_listeners_are_errors_at_start() {
        let auth = AuthConfig::default();
        let mut l = listener("s", SecurityProtocol::Ssl);
        l.tls_key_file.clear();
        assert!(effective_listeners("", "", &[l], &auth).is_err());
        let mut l = listener("s", SecurityProtocol::SaslPlaintext);
        l.sasl_mechanisms = vec!["GSSAPI".into()];
        assert!(effective_listeners("", "", &[l], &auth).is_err());
        let auth = AuthConfig {
            inter_broker_listener_name: "nope".into(),
            ..AuthConfig::default()
        };
        assert!(effective_listeners("127.0.0.1:1", "", &[], &auth).is_err());
        // Without a default listener the first one is the inter-broker one:
        // it must then be plaintext, or named with credentials.
        let only_secure = [listener("s", SecurityProtocol::SaslPlaintext)];
        assert!(effective_listeners("", "", &only_secure, &AuthConfig::default()).is_err());
    }
}
