//! One connection's authentication: the SaslHandshake and SaslAuthenticate
//! exchange (KIP-152) as a state machine, with re-authentication (KIP-368).
//!
//! The machine decides; the connection does the I/O, looks credentials up in
//! the cluster image and closes the connection when told to.

use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::{SaslAuthenticateResponse, SaslHandshakeResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use strata_auth::scram::{Mechanism, PasswordCheck, ScramCredential, ScramServer, Step};
use strata_auth::Principal;

use super::config::SaslMechanism;

/// Where a connection's authentication stands.
#[derive(Debug)]
pub struct SaslSession {
    offered: Vec<SaslMechanism>,
    /// The mechanism of the first authentication; re-authentication must use it.
    mechanism: Option<SaslMechanism>,
    exchange: Exchange,
    principal: Option<Principal>,
    expires: Option<Instant>,
    lifetime: Option<Duration>,
}

#[derive(Debug)]
enum Exchange {
    /// Nothing in progress: a SaslHandshake comes next.
    Idle,
    /// Handshake done; the mechanism's messages follow in SaslAuthenticate.
    Plain,
    Scram(ScramServer),
}

/// What the connection does after a SaslAuthenticate.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Send the response; more messages follow.
    Continue,
    /// Authenticated: send the response and serve the connection.
    Authenticated(Principal),
    /// Failed: wait the failure delay, send the response, close.
    Failed {
        /// For the log, never for the client.
        reason: String,
        /// The user the client claimed, when it got that far.
        user: Option<String>,
    },
}

/// The message clients get for any failure, as Kafka words it.
fn failure_message(mechanism: &str) -> String {
    format!("Authentication failed during authentication due to invalid credentials with SASL mechanism {mechanism}")
}

impl SaslSession {
    /// A session for a listener offering `offered`; `lifetime` is the
    /// session lifetime given to clients (`None`: no re-authentication).
    pub fn new(offered: Vec<SaslMechanism>, lifetime: Option<Duration>) -> Self {
        Self {
            offered,
            mechanism: None,
            exchange: Exchange::Idle,
            principal: None,
            expires: None,
            lifetime,
        }
    }

    /// The authenticated principal, once there is one.
    pub fn principal(&self) -> Option<&Principal> {
        self.principal.as_ref()
    }

    /// Whether the session lifetime has run out (the client should have
    /// re-authenticated; Kafka closes the connection).
    pub fn expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|e| now >= e)
    }

    /// Answers a SaslHandshake naming `mechanism`.
    pub fn handshake(&mut self, mechanism: &str) -> SaslHandshakeResponse {
        let mut resp = SaslHandshakeResponse::default();
        resp.mechanisms = self
            .offered
            .iter()
            .map(|m| StrBytes::from_static_str(m.name()))
            .collect();
        if !matches!(self.exchange, Exchange::Idle) {
            resp.error_code = ResponseError::IllegalSaslState.code();
            return resp;
        }
        let chosen = self.offered.iter().find(|m| m.name() == mechanism).copied();
        // KIP-368: re-authentication keeps the mechanism.
        if self.mechanism.is_some() && chosen != self.mechanism {
            resp.error_code = ResponseError::IllegalSaslState.code();
            return resp;
        }
        match chosen {
            Some(SaslMechanism::Plain) => self.exchange = Exchange::Plain,
            Some(SaslMechanism::Scram(m)) => self.exchange = Exchange::Scram(ScramServer::new(m)),
            None => resp.error_code = ResponseError::UnsupportedSaslMechanism.code(),
        }
        if chosen.is_some() {
            self.mechanism = chosen;
        }
        resp
    }

    /// Answers a SaslAuthenticate carrying `auth_bytes`; `lookup` finds a
    /// user's stored credential for a mechanism.
    pub fn authenticate(
        &mut self,
        auth_bytes: &[u8],
        now: Instant,
        lookup: impl Fn(&str, Mechanism) -> Option<ScramCredential>,
    ) -> (SaslAuthenticateResponse, Outcome) {
        let mut resp = SaslAuthenticateResponse::default();
        let exchange = std::mem::replace(&mut self.exchange, Exchange::Idle);
        let (result, mechanism) = match exchange {
            Exchange::Idle => {
                resp.error_code = ResponseError::IllegalSaslState.code();
                resp.error_message = Some(StrBytes::from_static_str(
                    "SaslAuthenticate without a SaslHandshake first",
                ));
                let outcome = Outcome::Failed {
                    reason: "SaslAuthenticate before SaslHandshake".into(),
                    user: None,
                };
                return (resp, outcome);
            }
            Exchange::Plain => (self.plain(auth_bytes, &lookup), "PLAIN"),
            Exchange::Scram(mut server) => {
                let name = match &server {
                    ScramServer::Start { mechanism }
                    | ScramServer::Challenged { mechanism, .. } => mechanism.name(),
                    ScramServer::Done => "SCRAM",
                };
                let m = Mechanism::from_name(name);
                let step = server.step(auth_bytes, |u| m.and_then(|m| lookup(u, m)));
                let result = match step {
                    Ok(Step::Continue(reply)) => {
                        resp.auth_bytes = Bytes::from(reply);
                        self.exchange = Exchange::Scram(server);
                        return (resp, Outcome::Continue);
                    }
                    Ok(Step::Success { user, reply }) => {
                        resp.auth_bytes = Bytes::from(reply);
                        Ok(user)
                    }
                    Err(e) => Err((e.to_string(), scram_user(&e))),
                };
                (result, name)
            }
        };
        match result {
            Ok(user) => {
                let principal = Principal::user(user);
                if let Some(before) = &self.principal {
                    if before != &principal {
                        resp.error_code = ResponseError::SaslAuthenticationFailed.code();
                        resp.error_message = Some(StrBytes::from_static_str(
                            "re-authentication cannot change the principal",
                        ));
                        resp.auth_bytes = Bytes::new();
                        let outcome = Outcome::Failed {
                            reason: format!("re-authentication as {principal} after {before}"),
                            user: Some(principal.name),
                        };
                        return (resp, outcome);
                    }
                }
                if let Some(l) = self.lifetime {
                    resp.session_lifetime_ms = l.as_millis() as i64;
                    self.expires = Some(now + l);
                }
                self.principal = Some(principal.clone());
                (resp, Outcome::Authenticated(principal))
            }
            Err((reason, user)) => {
                resp.error_code = ResponseError::SaslAuthenticationFailed.code();
                resp.error_message = Some(StrBytes::from_string(failure_message(mechanism)));
                (resp, Outcome::Failed { reason, user })
            }
        }
    }

    fn plain(
        &self,
        auth_bytes: &[u8],
        lookup: &impl Fn(&str, Mechanism) -> Option<ScramCredential>,
    ) -> Result<String, (String, Option<String>)> {
        let msg = strata_auth::plain::parse(auth_bytes).map_err(|e| (e, None))?;
        // PLAIN checks the password against whichever SCRAM credential the
        // user has, so each user has one password.
        match strata_auth::scram::check_password(&msg.user, &msg.password, lookup) {
            PasswordCheck::Valid => Ok(msg.user),
            PasswordCheck::UnknownUser => {
                Err((format!("unknown user '{}'", msg.user), Some(msg.user)))
            }
            PasswordCheck::WrongPassword => Err((
                format!("wrong password for user '{}'", msg.user),
                Some(msg.user),
            )),
        }
    }
}

fn scram_user(e: &strata_auth::scram::ScramError) -> Option<String> {
    match e {
        strata_auth::scram::ScramError::UnknownUser(u)
        | strata_auth::scram::ScramError::BadProof(u) => Some(u.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_auth::scram::ScramClient;

    fn users() -> impl Fn(&str, Mechanism) -> Option<ScramCredential> {
        let alice = ScramCredential::new(Mechanism::Sha512, "wonderland", 4096);
        move |u, m| (u == "alice" && m == Mechanism::Sha512).then(|| alice.clone())
    }

    fn offered() -> Vec<SaslMechanism> {
        vec![
            SaslMechanism::Scram(Mechanism::Sha512),
            SaslMechanism::Plain,
        ]
    }

    #[test]
    fn scram_then_reauthentication_as_the_same_user() {
        let now = Instant::now();
        let mut s = SaslSession::new(offered(), Some(Duration::from_secs(60)));
        for _ in 0..2 {
            assert_eq!(s.handshake("SCRAM-SHA-512").error_code, 0);
            let mut c = ScramClient::new(Mechanism::Sha512, "alice", "wonderland");
            let (r, o) = s.authenticate(&c.first(), now, users());
            assert_eq!((r.error_code, o), (0, Outcome::Continue));
            let last = c.last(&r.auth_bytes).unwrap();
            let (r, o) = s.authenticate(&last, now, users());
            assert_eq!(o, Outcome::Authenticated(Principal::user("alice")));
            assert_eq!(r.session_lifetime_ms, 60_000);
            c.verify(&r.auth_bytes).unwrap();
        }
        assert!(!s.expired(now));
        assert!(s.expired(now + Duration::from_secs(61)));
    }

    #[test]
    fn plain_wrong_passwords_and_unknown_mechanisms_fail() {
        let now = Instant::now();
        let mut s = SaslSession::new(offered(), None);
        assert_eq!(
            s.handshake("GSSAPI").error_code,
            ResponseError::UnsupportedSaslMechanism.code()
        );
        assert_eq!(s.handshake("PLAIN").error_code, 0);
        let (r, o) = s.authenticate(b"\0alice\0nope", now, users());
        assert_eq!(r.error_code, ResponseError::SaslAuthenticationFailed.code());
        assert!(matches!(o, Outcome::Failed { user: Some(u), .. } if u == "alice"));
        assert_eq!(s.handshake("PLAIN").error_code, 0);
        let (_, o) = s.authenticate(b"\0alice\0wonderland", now, users());
        assert_eq!(o, Outcome::Authenticated(Principal::user("alice")));
        let (r, _) = s.authenticate(b"\0alice\0wonderland", now, users());
        assert_eq!(r.error_code, ResponseError::IllegalSaslState.code());
    }
}
