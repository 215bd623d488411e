//! TLS with rustls: server configs whose certificate is re-read when its files
//! change (cert-manager rotates them in place), client certificates checked
//! against a CA and turned into Kafka principals, and the client config
//! brokers use to reach each other.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tracing::{info, warn};

/// How often a handshake may look at the certificate files' modification times.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read certificate file '{path}': {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate file '{path}' is not PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!("certificate file '{path}' holds no certificate"));
    }
    Ok(certs)
}

fn load_key(cert: &str, key: &str) -> Result<Arc<CertifiedKey>, String> {
    let certs = read_certs(cert)?;
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read a private key from '{key}': {e}"))?;
    let signing = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| format!("private key '{key}' is not usable: {e}"))?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match()
        .map_err(|e| format!("key '{key}' does not match certificate '{cert}': {e}"))?;
    Ok(Arc::new(ck))
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// A certificate and key re-read when either file's modification time changes.
#[derive(Debug)]
struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<ReloadState>,
}

#[derive(Debug)]
struct ReloadState {
    current: Arc<CertifiedKey>,
    stamps: (Option<SystemTime>, Option<SystemTime>),
    checked: Instant,
}

impl Reloading {
    fn new(cert: &str, key: &str) -> Result<Self, String> {
        let current = load_key(cert, key)?;
        let (cert, key) = (PathBuf::from(cert), PathBuf::from(key));
        Ok(Self {
            state: Mutex::new(ReloadState {
                current,
                stamps: (modified(&cert), modified(&key)),
                checked: Instant::now(),
            }),
            cert,
            key,
        })
    }

    fn current(&self) -> Arc<CertifiedKey> {
        let mut st = self.state.lock().expect("tls reload lock");
        if st.checked.elapsed() >= RELOAD_CHECK {
            st.checked = Instant::now();
            let stamps = (modified(&self.cert), modified(&self.key));
            if stamps != st.stamps {
                match load_key(&self.cert.to_string_lossy(), &self.key.to_string_lossy()) {
                    Ok(k) => {
                        info!(cert = %self.cert.display(), "TLS certificate reloaded");
                        metrics::counter!("strata_tls_certificate_reloads_total").increment(1);
                        st.current = k;
                        st.stamps = stamps;
                    }
                    // Half-written during a rotation: keep serving the old
                    // one and look again on a later handshake.
                    Err(e) => {
                        warn!(error = %e, "TLS certificate changed but cannot be loaded; keeping the previous one")
                    }
                }
            }
        }
        st.current.clone()
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A TLS server config: certificate and key (reloaded when they change) and,
/// with `client_ca`, required client certificates signed by it.
pub fn server_config(
    cert: &str,
    key: &str,
    client_ca: &str,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if client_ca.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for c in read_certs(client_ca)? {
            roots
                .add(c)
                .map_err(|e| format!("client CA '{client_ca}': {e}"))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| format!("client CA '{client_ca}': {e}"))?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut config = builder.with_cert_resolver(Arc::new(Reloading::new(cert, key)?));
    config.alpn_protocols = Vec::new();
    Ok(Arc::new(config))
}

/// A TLS client config trusting the CA bundle at `ca`.
pub fn client_config(ca: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs(ca)? {
        roots.add(c).map_err(|e| format!("CA '{ca}': {e}"))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Kafka's principal for a client certificate: `User:` and the subject's
/// distinguished name as Java's `X500Principal.getName()` writes it (RFC
/// 2253): most specific first, `CN=app,OU=eng,O=Acme`, special characters
/// escaped. Attributes without an RFC 2253 keyword are written by OID.
pub fn certificate_principal(der: &[u8]) -> Option<strata_auth::Principal> {
    const KEYWORDS: &[(&str, &str)] = &[
        ("2.5.4.3", "CN"),
        ("2.5.4.6", "C"),
        ("2.5.4.7", "L"),
        ("2.5.4.8", "ST"),
        ("2.5.4.10", "O"),
        ("2.5.4.11", "OU"),
        ("2.5.4.9", "STREET"),
        ("0.9.2342.19200300.100.1.25", "DC"),
        ("0.9.2342.19200300.100.1.1", "UID"),
    ];
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut rdns: Vec<String> = Vec::new();
    for rdn in cert.subject().iter_rdn() {
        let parts: Vec<String> = rdn
            .iter()
            .map(|attr| {
                let oid = attr.attr_type().to_id_string();
                let key = KEYWORDS
                    .iter()
                    .find(|(o, _)| *o == oid)
                    .map_or(oid.clone(), |(_, k)| k.to_string());
                format!("{key}={}", escape_rfc2253(attr.as_str().unwrap_or("")))
            })
            .collect();
        rdns.push(parts.join("+"));
    }
    rdns.reverse();
    Some(strata_auth::Principal::user(rdns.join(",")))
}

/// RFC 2253 section 2.4: `,+"\<>;=` escaped, and a leading `#` or space and a
/// trailing space.
fn escape_rfc2253(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2253_escapes_what_would_split_a_name() {
        assert_eq!(escape_rfc2253("Acme, Inc."), "Acme\\, Inc.");
        assert_eq!(escape_rfc2253("a+b=c"), "a\\+b\\=c");
        assert_eq!(escape_rfc2253(" #x "), "\\ #x\\ ");
        assert_eq!(escape_rfc2253("plain"), "plain");
    }
}
