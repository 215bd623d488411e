//! SCRAM (RFC 5802) with SHA-256 and SHA-512 (RFC 7677), server side.
//!
//! A [`ScramCredential`] is what is stored: salt, iteration count, StoredKey
//! and ServerKey, never the password. [`ScramServer`] runs one exchange:
//! client-first → server-first, client-final → server-final. Kafka's
//! extension (`tokenauth`) is refused, since Strata has no delegation tokens.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

/// Fewest iterations accepted (Kafka's minimum).
pub const MIN_ITERATIONS: u32 = 4096;
/// Most iterations accepted (Kafka's maximum).
pub const MAX_ITERATIONS: u32 = 16384;
/// Iterations used when a credential is made from a password without a count.
pub const DEFAULT_ITERATIONS: u32 = 8192;

/// A SCRAM mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Mechanism {
    /// SCRAM-SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    Sha256,
    /// SCRAM-SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    Sha512,
}

impl Mechanism {
    /// Every mechanism, in Kafka's numbering order.
    pub const ALL: [Mechanism; 2] = [Mechanism::Sha256, Mechanism::Sha512];

    /// The SASL name.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Sha256 => "SCRAM-SHA-256",
            Mechanism::Sha512 => "SCRAM-SHA-512",
        }
    }

    /// By SASL name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Kafka's wire code (DescribeUserScramCredentials, AlterUserScramCredentials).
    pub fn code(self) -> i8 {
        match self {
            Mechanism::Sha256 => 1,
            Mechanism::Sha512 => 2,
        }
    }

    /// By wire code.
    pub fn from_code(code: i8) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.code() == code)
    }

    fn hmac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        fn run<M: Mac + KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
            let mut m = <M as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
            for p in parts {
                m.update(p);
            }
            m.finalize().into_bytes().to_vec()
        }
        match self {
            Mechanism::Sha256 => run::<Hmac<Sha256>>(key, parts),
            Mechanism::Sha512 => run::<Hmac<Sha512>>(key, parts),
        }
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            Mechanism::Sha256 => Sha256::digest(data).to_vec(),
            Mechanism::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            Mechanism::Sha256 => {
                let mut out = [0u8; 32];
                pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
                out.to_vec()
            }
            Mechanism::Sha512 => {
                let mut out = [0u8; 64];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out);
                out.to_vec()
            }
        }
    }
}

/// A stored SCRAM credential (RFC 5802 section 3): enough to check a client's
/// proof and to prove the server knows it, not enough to log in. Its Debug
/// output leaves the keys out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramCredential {
    /// Which mechanism it is for.
    pub mechanism: Mechanism,
    /// Iteration count.
    pub iterations: u32,
    /// Salt, base64.
    pub salt: String,
    /// H(ClientKey), base64.
    pub stored_key: String,
    /// HMAC(SaltedPassword, "Server Key"), base64.
    pub server_key: String,
}

impl std::fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramCredential")
            .field("mechanism", &self.mechanism)
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ScramCredential {
    /// A credential for `password` with a fresh random salt.
    pub fn new(mechanism: Mechanism, password: &str, iterations: u32) -> Self {
        let salt = crate::random_bytes::<32>();
        Self::from_salted_password(
            mechanism,
            &mechanism.salted_password(password.as_bytes(), &salt, iterations),
            &salt,
            iterations,
        )
    }

    /// A credential from the salted password a client computed
    /// (AlterUserScramCredentials carries it, never the password).
    pub fn from_salted_password(
        mechanism: Mechanism,
        salted: &[u8],
        salt: &[u8],
        iterations: u32,
    ) -> Self {
        let client_key = mechanism.hmac(salted, &[b"Client Key"]);
        Self {
            mechanism,
            iterations,
            salt: B64.encode(salt),
            stored_key: B64.encode(mechanism.hash(&client_key)),
            server_key: B64.encode(mechanism.hmac(salted, &[b"Server Key"])),
        }
    }

    /// A stand-in for a user that does not exist: a salt derived from the
    /// user name and a per-process secret (the same name gets the same salt
    /// on every attempt, as a real user would) and keys that match no
    /// password. An exchange with it fails only at its last step, after the
    /// same work as a real one, so neither the answer nor its timing says
    /// whether the user exists.
    pub fn unknown_user(mechanism: Mechanism, user: &str) -> Self {
        static SECRET: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
        let secret = SECRET.get_or_init(crate::random_bytes::<32>);
        let salt = mechanism.hmac(secret, &[user.as_bytes()]);
        let mut c = Self::from_salted_password(
            mechanism,
            &crate::random_bytes::<32>(),
            &salt[..32],
            DEFAULT_ITERATIONS,
        );
        c.stored_key = B64.encode(crate::random_bytes::<32>());
        c
    }

    /// Whether `password` is this credential's password (for PLAIN and HTTP
    /// Basic), compared in constant time.
    pub fn verify_password(&self, password: &str) -> bool {
        let Ok(salt) = B64.decode(&self.salt) else {
            return false;
        };
        let again = Self::from_salted_password(
            self.mechanism,
            &self
                .mechanism
                .salted_password(password.as_bytes(), &salt, self.iterations),
            &salt,
            self.iterations,
        );
        bool::from(
            again
                .stored_key
                .as_bytes()
                .ct_eq(self.stored_key.as_bytes()),
        )
    }
}

/// The outcome of checking a password (PLAIN, HTTP Basic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordCheck {
    /// The user exists and the password is theirs.
    Valid,
    /// The user exists; the password is not theirs.
    WrongPassword,
    /// No such user.
    UnknownUser,
}

/// Checks `password` against `user`'s credential, whichever SCRAM mechanism
/// it is stored for (one password per user). An unknown user is hashed
/// against a stand-in credential, so the answer takes as long either way.
/// Thousands of hash rounds: call it off async workers.
pub fn check_password(
    user: &str,
    password: &str,
    lookup: impl Fn(&str, Mechanism) -> Option<ScramCredential>,
) -> PasswordCheck {
    let found = Mechanism::ALL.into_iter().find_map(|m| lookup(user, m));
    let known = found.is_some();
    let credential =
        found.unwrap_or_else(|| ScramCredential::unknown_user(Mechanism::Sha512, user));
    match (credential.verify_password(password), known) {
        (true, true) => PasswordCheck::Valid,
        (_, false) => PasswordCheck::UnknownUser,
        (false, true) => PasswordCheck::WrongPassword,
    }
}

/// Why an exchange failed. The message is for the server's log; clients get
/// one generic message so a failure does not say whether the user exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// The client's message does not follow RFC 5802.
    #[error("malformed SCRAM message: {0}")]
    Malformed(String),
    /// No credential for this user and mechanism.
    #[error("unknown user '{0}'")]
    UnknownUser(String),
    /// The proof does not match the stored credential.
    #[error("wrong password for user '{0}'")]
    BadProof(String),
    /// Something Strata does not support (channel binding, token auth).
    #[error("unsupported: {0}")]
    Unsupported(String),
}

/// One SCRAM exchange, server side.
#[derive(Debug)]
pub enum ScramServer {
    /// Waiting for client-first.
    Start {
        /// The mechanism negotiated in SaslHandshake.
        mechanism: Mechanism,
    },
    /// Server-first sent; waiting for client-final.
    Challenged {
        /// The mechanism.
        mechanism: Mechanism,
        /// The authenticating user.
        user: String,
        /// Whether the user does not exist (the exchange runs on a stand-in
        /// credential and fails at its end).
        unknown: bool,
        /// client-first-bare + "," + server-first.
        auth_prefix: String,
        /// The combined nonce.
        nonce: String,
        /// The user's credential.
        credential: ScramCredential,
    },
    /// Finished (either way); no more messages are accepted.
    Done,
}

/// The answer to a client message.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send these bytes and wait for the next client message.
    Continue(Vec<u8>),
    /// Authenticated as this user; send these bytes (server-final).
    Success {
        /// The user name.
        user: String,
        /// server-final-message.
        reply: Vec<u8>,
    },
}

impl ScramServer {
    /// A new exchange for `mechanism`.
    pub fn new(mechanism: Mechanism) -> Self {
        Self::Start { mechanism }
    }

    /// Feeds one client message; `lookup` finds a user's credential.
    pub fn step(
        &mut self,
        message: &[u8],
        lookup: impl FnOnce(&str) -> Option<ScramCredential>,
    ) -> Result<Step, ScramError> {
        let text =
            std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8".into()))?;
        match std::mem::replace(self, ScramServer::Done) {
            ScramServer::Start { mechanism } => {
                let first = parse_client_first(text)?;
                let found = lookup(&first.user).filter(|c| c.mechanism == mechanism);
                let unknown = found.is_none();
                let credential =
                    found.unwrap_or_else(|| ScramCredential::unknown_user(mechanism, &first.user));
                let nonce = format!("{}{}", first.nonce, B64.encode(crate::random_bytes::<18>()));
                let server_first = format!(
                    "r={nonce},s={},i={}",
                    credential.salt, credential.iterations
                );
                *self = ScramServer::Challenged {
                    mechanism,
                    user: first.user,
                    unknown,
                    auth_prefix: format!("{},{server_first}", first.bare),
                    nonce,
                    credential,
                };
                Ok(Step::Continue(server_first.into_bytes()))
            }
            ScramServer::Challenged {
                mechanism,
                user,
                unknown,
                auth_prefix,
                nonce,
                credential,
            } => {
                let fin = parse_client_final(text)?;
                // Kafka checks that the nonce *ends with* the server's:
                // librdkafka sends its client nonce once more in front.
                if !fin.nonce.ends_with(&nonce) {
                    return Err(ScramError::Malformed("the nonce does not match".into()));
                }
                if fin.channel_binding != "biws" && fin.channel_binding != "eSws" {
                    // "n,," or "y,," base64: no channel binding, no authzid.
                    return Err(ScramError::Unsupported(
                        "channel binding or authorization identity".into(),
                    ));
                }
                let auth_message = format!("{auth_prefix},{}", fin.without_proof);
                let decode = |s: &str| {
                    B64.decode(s)
                        .map_err(|_| ScramError::Malformed("bad base64".into()))
                };
                let stored_key = decode(&credential.stored_key)?;
                let server_key = decode(&credential.server_key)?;
                let proof = decode(&fin.proof)?;
                let signature = mechanism.hmac(&stored_key, &[auth_message.as_bytes()]);
                if proof.len() != signature.len() {
                    return Err(if unknown {
                        ScramError::UnknownUser(user)
                    } else {
                        ScramError::BadProof(user)
                    });
                }
                let client_key: Vec<u8> =
                    proof.iter().zip(&signature).map(|(a, b)| a ^ b).collect();
                if !bool::from(mechanism.hash(&client_key).ct_eq(&stored_key)) {
                    return Err(if unknown {
                        ScramError::UnknownUser(user)
                    } else {
                        ScramError::BadProof(user)
                    });
                }
                let server_signature = mechanism.hmac(&server_key, &[auth_message.as_bytes()]);
                Ok(Step::Success {
                    user,
                    reply: format!("v={}", B64.encode(server_signature)).into_bytes(),
                })
            }
            ScramServer::Done => Err(ScramError::Malformed(
                "a message after the exchange finished".into(),
            )),
        }
    }
}

struct ClientFirst {
    user: String,
    nonce: String,
    bare: String,
}

fn parse_client_first(text: &str) -> Result<ClientFirst, ScramError> {
    // gs2-header: "n,," | "y,," | "p=...,," with an optional "a=authzid".
    let mut parts = text.splitn(3, ',');
    let cbind = parts.next().unwrap_or("");
    let authzid = parts.next().unwrap_or("");
    let bare = parts
        .next()
        .ok_or_else(|| ScramError::Malformed("no GS2 header".into()))?;
    match cbind {
        "n" | "y" => {}
        c if c.starts_with("p=") => return Err(ScramError::Unsupported("channel binding".into())),
        _ => return Err(ScramError::Malformed("bad GS2 header".into())),
    }
    if !authzid.is_empty() && !authzid.starts_with("a=") {
        return Err(ScramError::Malformed("bad authorization identity".into()));
    }
    let mut user = None;
    let mut nonce = None;
    for attr in bare.split(',') {
        match attr.split_at_checked(2) {
            Some(("n=", v)) => user = Some(unescape_name(v)?),
            Some(("r=", v)) => nonce = Some(v.to_string()),
            Some(("m=", _)) => return Err(ScramError::Unsupported("mandatory extension".into())),
            _ if attr.starts_with("tokenauth=") => {
                return Err(ScramError::Unsupported("delegation tokens".into()))
            }
            _ => {}
        }
    }
    let user = user.ok_or_else(|| ScramError::Malformed("no user name".into()))?;
    let nonce = nonce
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic() && b != b','))
        .ok_or_else(|| ScramError::Malformed("no client nonce".into()))?;
    if let Some(a) = authzid.strip_prefix("a=") {
        if unescape_name(a)? != user {
            return Err(ScramError::Unsupported(
                "an authorization identity other than the user".into(),
            ));
        }
    }
    Ok(ClientFirst {
        user,
        nonce,
        bare: bare.to_string(),
    })
}

struct ClientFinal {
    channel_binding: String,
    nonce: String,
    proof: String,
    without_proof: String,
}

fn parse_client_final(text: &str) -> Result<ClientFinal, ScramError> {
    let (without_proof, proof) = text
        .rsplit_once(",p=")
        .ok_or_else(|| ScramError::Malformed("no proof".into()))?;
    let mut channel_binding = None;
    let mut nonce = None;
    for attr in without_proof.split(',') {
        if let Some(v) = attr.strip_prefix("c=") {
            channel_binding = Some(v.to_string());
        } else if let Some(v) = attr.strip_prefix("r=") {
            nonce = Some(v.to_string());
        }
    }
    Ok(ClientFinal {
        channel_binding: channel_binding
            .ok_or_else(|| ScramError::Malformed("no channel binding".into()))?,
        nonce: nonce.ok_or_else(|| ScramError::Malformed("no nonce".into()))?,
        proof: proof.to_string(),
        without_proof: without_proof.to_string(),
    })
}

/// RFC 5802 saslname: "=2C" is ',' and "=3D" is '='; any other '=' is malformed.
fn unescape_name(s: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(ScramError::Malformed("bad escape in user name".into())),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    if out.is_empty() {
        return Err(ScramError::Malformed("empty user name".into()));
    }
    Ok(out)
}

/// The client side of an exchange, for brokers that authenticate to each
/// other and for tests.
pub struct ScramClient {
    mechanism: Mechanism,
    user: String,
    password: String,
    nonce: String,
    server_signature: Option<Vec<u8>>,
}

impl std::fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramClient")
            .field("mechanism", &self.mechanism)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl ScramClient {
    /// A client for `user` and `password`.
    pub fn new(mechanism: Mechanism, user: &str, password: &str) -> Self {
        Self {
            mechanism,
            user: user.replace('=', "=3D").replace(',', "=2C"),
            password: password.to_string(),
            nonce: B64.encode(crate::random_bytes::<18>()),
            server_signature: None,
        }
    }

    /// client-first-message.
    pub fn first(&self) -> Vec<u8> {
        format!("n,,n={},r={}", self.user, self.nonce).into_bytes()
    }

    /// client-final-message for the server's server-first-message.
    pub fn last(&mut self, server_first: &[u8]) -> Result<Vec<u8>, ScramError> {
        let text = std::str::from_utf8(server_first)
            .map_err(|_| ScramError::Malformed("not UTF-8".into()))?;
        let (mut nonce, mut salt, mut iterations) = (None, None, None);
        for attr in text.split(',') {
            match attr.split_at_checked(2) {
                Some(("r=", v)) => nonce = Some(v),
                Some(("s=", v)) => salt = B64.decode(v).ok(),
                Some(("i=", v)) => iterations = v.parse::<u32>().ok(),
                _ => {}
            }
        }
        let (Some(nonce), Some(salt), Some(iterations)) = (nonce, salt, iterations) else {
            return Err(ScramError::Malformed("bad server-first message".into()));
        };
        if !nonce.starts_with(&self.nonce)
            || !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations)
        {
            return Err(ScramError::Malformed(
                "bad server nonce or iteration count".into(),
            ));
        }
        let m = self.mechanism;
        let salted = m.salted_password(self.password.as_bytes(), &salt, iterations);
        let client_key = m.hmac(&salted, &[b"Client Key"]);
        let stored_key = m.hash(&client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("n={},r={},{text},{without_proof}", self.user, self.nonce);
        let signature = m.hmac(&stored_key, &[auth_message.as_bytes()]);
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = m.hmac(&salted, &[b"Server Key"]);
        self.server_signature = Some(m.hmac(&server_key, &[auth_message.as_bytes()]));
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Checks server-final-message: the server knew the credential.
    pub fn verify(&self, server_final: &[u8]) -> Result<(), ScramError> {
        let expected = self
            .server_signature
            .as_ref()
            .ok_or_else(|| ScramError::Malformed("no exchange in progress".into()))?;
        let got = std::str::from_utf8(server_final)
            .ok()
            .and_then(|t| t.strip_prefix("v="))
            .and_then(|v| B64.decode(v).ok())
            .ok_or_else(|| ScramError::Malformed("bad server-final message".into()))?;
        if bool::from(got.ct_eq(expected)) {
            Ok(())
        } else {
            Err(ScramError::BadProof("server".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 section 3's example: user "user", password "pencil".
    #[test]
    fn rfc7677_sha256_example() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let salted = Mechanism::Sha256.salted_password(b"pencil", &salt, 4096);
        let cred = ScramCredential::from_salted_password(Mechanism::Sha256, &salted, &salt, 4096);
        let mut server = ScramServer::Challenged {
            mechanism: Mechanism::Sha256,
            user: "user".into(),
            unknown: false,
            auth_prefix: "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096".into(),
            nonce: "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into(),
            credential: cred,
        };
        let step = server
            .step(
                b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
                |_| None,
            )
            .unwrap();
        assert_eq!(
            step,
            Step::Success {
                user: "user".into(),
                reply: b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=".to_vec()
            }
        );
    }

    fn exchange(m: Mechanism, stored: &str, given: &str) -> Result<String, ScramError> {
        let cred = ScramCredential::new(m, stored, 4096);
        let mut client = ScramClient::new(m, "al,i=ce", given);
        let mut server = ScramServer::new(m);
        let Step::Continue(first) = server.step(&client.first(), |u| {
            assert_eq!(u, "al,i=ce");
            Some(cred.clone())
        })?
        else {
            panic!("first step finished the exchange");
        };
        let last = client.last(&first)?;
        match server.step(&last, |_| None)? {
            Step::Success { user, reply } => {
                client.verify(&reply)?;
                Ok(user)
            }
            Step::Continue(_) => panic!("no success after client-final"),
        }
    }

    #[test]
    fn both_mechanisms_accept_the_password_and_refuse_another() {
        for m in Mechanism::ALL {
            assert_eq!(exchange(m, "s3cret", "s3cret").unwrap(), "al,i=ce");
            assert!(matches!(
                exchange(m, "s3cret", "guess"),
                Err(ScramError::BadProof(_))
            ));
        }
    }

    #[test]
    fn unknown_users_wrong_mechanisms_and_garbage_are_refused() {
        // An unknown user gets a challenge like anyone (the same salt each
        // time) and fails only at the end.
        let salt_of = |text: &[u8]| {
            let s = String::from_utf8(text.to_vec()).unwrap();
            s.split(',')
                .find(|a| a.starts_with("s="))
                .unwrap()
                .to_string()
        };
        let mut c = ScramClient::new(Mechanism::Sha512, "bob", "pw");
        let mut s = ScramServer::new(Mechanism::Sha512);
        let Ok(Step::Continue(first)) = s.step(&c.first(), |_| None) else {
            panic!("no challenge for an unknown user");
        };
        let mut s2 = ScramServer::new(Mechanism::Sha512);
        let Ok(Step::Continue(again)) = s2.step(&c.first(), |_| None) else {
            panic!("no challenge");
        };
        assert_eq!(salt_of(&first), salt_of(&again));
        let last = c.last(&first).unwrap();
        assert!(matches!(
            s.step(&last, |_| None),
            Err(ScramError::UnknownUser(_))
        ));
        // A credential for another mechanism is no credential: a challenge
        // like any, failing at the end.
        let cred = ScramCredential::new(Mechanism::Sha256, "pw", 4096);
        let mut s = ScramServer::new(Mechanism::Sha512);
        assert!(matches!(
            s.step(b"n,,n=bob,r=abc", |_| Some(cred.clone())),
            Ok(Step::Continue(_))
        ));
        for garbage in [
            &b"\xff\xfe"[..],
            b"",
            b"n,,",
            b"x,,n=a,r=b",
            b"n,,n=a=b,r=c",
            b"n,,n=a",
        ] {
            assert!(ScramServer::new(Mechanism::Sha256)
                .step(garbage, |_| Some(cred.clone()))
                .is_err());
        }
    }

    #[test]
    fn password_checks_tell_the_three_cases_apart() {
        let c = ScramCredential::new(Mechanism::Sha256, "pw", 4096);
        let lookup = |u: &str, m| (u == "al" && m == Mechanism::Sha256).then(|| c.clone());
        assert_eq!(check_password("al", "pw", lookup), PasswordCheck::Valid);
        assert_eq!(
            check_password("al", "no", lookup),
            PasswordCheck::WrongPassword
        );
        assert_eq!(
            check_password("bo", "pw", lookup),
            PasswordCheck::UnknownUser
        );
    }

    #[test]
    fn a_credential_verifies_its_password_only() {
        let c = ScramCredential::new(Mechanism::Sha512, "pw", 4096);
        assert!(c.verify_password("pw"));
        assert!(!c.verify_password("pW"));
    }
}
