//! The bootstrap users file: `[[user]] name, password, mechanism` entries
//! stored once, at start, as salted SCRAM credentials for users that have
//! none for that mechanism yet. The file is read, never written; the store
//! holds only salted credentials.

use serde::Deserialize;
use strata_auth::scram::{Mechanism, ScramCredential, DEFAULT_ITERATIONS};
use strata_cluster::{MetaOp, SecurityImage};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    user: Vec<UserEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    name: String,
    password: String,
    /// One mechanism or `"all"` (the default): both SCRAM mechanisms.
    #[serde(default)]
    mechanism: Option<String>,
}

/// Parses a users file into `(user, mechanism, password)` entries.
pub fn parse(text: &str) -> Result<Vec<(String, Mechanism, String)>, String> {
    // The error's message and line only: its full text quotes the file,
    // passwords included.
    let file: UsersFile = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
        match line {
            Some(l) => format!("line {l}: {}", e.message()),
            None => e.message().to_string(),
        }
    })?;
    let mut out = Vec::new();
    for u in file.user {
        if u.name.is_empty() || u.password.is_empty() {
            return Err("a user needs a name and a password".into());
        }
        let mechanisms = match u.mechanism.as_deref() {
            None | Some("all") => Mechanism::ALL.to_vec(),
            Some(m) => vec![Mechanism::from_name(m).ok_or_else(|| {
                format!(
                    "user '{}': mechanism '{m}' is not SCRAM-SHA-256, SCRAM-SHA-512 or all",
                    u.name
                )
            })?],
        };
        for m in mechanisms {
            out.push((u.name.clone(), m, u.password.clone()));
        }
    }
    Ok(out)
}

/// The ops that store the entries `security` lacks.
pub fn missing(security: &SecurityImage, entries: &[(String, Mechanism, String)]) -> Vec<MetaOp> {
    entries
        .iter()
        .filter(|(u, m, _)| security.credential(u, *m).is_none())
        .map(|(u, m, p)| MetaOp::PutScram {
            user: u.clone(),
            credential: ScramCredential::new(*m, p, DEFAULT_ITERATIONS),
        })
        .collect()
}

/// Stores the bootstrap users file's users that the metadata store lacks.
pub(crate) async fn bootstrap(broker: &crate::state::Broker) -> anyhow::Result<()> {
    let path = &broker.config().auth.bootstrap_users_file;
    if path.is_empty() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("auth.bootstrap_users_file '{path}': {e}"))?;
    let entries =
        parse(&text).map_err(|e| anyhow::anyhow!("auth.bootstrap_users_file '{path}': {e}"))?;
    let image = broker.metadata().fresh_image().await?;
    let ops = missing(&image.security, &entries);
    if ops.is_empty() {
        return Ok(());
    }
    let count = ops.len();
    let session = broker.metadata().session();
    let fence = strata_cluster::Fence::Broker(session.broker_id(), session.broker_epoch());
    broker.metadata().commit(fence, ops).await?;
    tracing::info!(
        credentials = count,
        "stored SCRAM credentials from the bootstrap users file"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expand_and_only_missing_ones_are_stored() {
        let e = parse(
            "[[user]]\nname = \"admin\"\npassword = \"a\"\n[[user]]\nname = \"app\"\npassword = \"b\"\nmechanism = \"SCRAM-SHA-256\"\n",
        )
        .unwrap();
        assert_eq!(e.len(), 3);
        let mut sec = SecurityImage::default();
        let ops = missing(&sec, &e);
        assert_eq!(ops.len(), 3);
        for op in &ops {
            sec.apply(op);
        }
        assert!(missing(&sec, &e).is_empty());
        assert!(sec
            .credential("app", Mechanism::Sha256)
            .unwrap()
            .verify_password("b"));
        assert!(parse("[[user]]\nname = \"x\"\npassword = \"y\"\nmechanism = \"MD5\"\n").is_err());
        assert!(parse("[[user]]\nname = \"x\"\n").is_err());
        // A typo next to a password does not quote the password.
        let err = parse("[[user]]\nname = \"x\"\npasswrd = \"hunter2\"\n").unwrap_err();
        assert!(!err.contains("hunter2") && err.contains("passwrd"), "{err}");
    }
}
