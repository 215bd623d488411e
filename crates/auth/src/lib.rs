//! Who a connection is and what it may do, as pure decisions.
//!
//! - [`scram`]: SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677): salted
//!   credentials and the server side of the exchange as a state machine.
//! - [`plain`]: the PLAIN mechanism (RFC 4616), checked against the same
//!   stored SCRAM credentials, so a user has one password whatever the
//!   mechanism.
//! - [`acl`]: Kafka's ACL model (resources, patterns, operations, allow and
//!   deny) and the authorizer's decision.
//!
//! Nothing here does I/O: the broker feeds bytes in and acts on the answers.

pub mod acl;
pub mod plain;
pub mod scram;

use std::fmt;

use serde::{Deserialize, Serialize};

/// A Kafka principal, `Type:name` (`User:alice`, `User:CN=client,O=Acme`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Principal {
    /// `User` for every principal Strata makes.
    pub kind: String,
    /// The user name or the certificate's distinguished name.
    pub name: String,
}

impl Principal {
    /// `User:name`.
    pub fn user(name: impl Into<String>) -> Self {
        Self {
            kind: "User".into(),
            name: name.into(),
        }
    }

    /// Kafka's principal for connections that did not authenticate.
    pub fn anonymous() -> Self {
        Self::user("ANONYMOUS")
    }

    /// Parses `Type:name`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            Some((kind, name)) if !kind.is_empty() && !name.is_empty() => Ok(Self {
                kind: kind.into(),
                name: name.into(),
            }),
            _ => Err(format!(
                "'{s}' is not a principal of the form Type:name (User:alice)"
            )),
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.name)
    }
}

/// Fills a buffer with random bytes from the operating system.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the operating system's random source works");
    b
}
