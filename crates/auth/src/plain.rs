//! SASL PLAIN (RFC 4616): `[authzid] NUL authcid NUL passwd`.

/// A parsed PLAIN message.
#[derive(PartialEq, Eq)]
pub struct PlainMessage {
    /// The user.
    pub user: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for PlainMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlainMessage")
            .field("user", &self.user)
            .field("password", &"(redacted)")
            .finish()
    }
}

/// Parses a PLAIN message. An authorization id other than the user is
/// refused, as Kafka does.
pub fn parse(message: &[u8]) -> Result<PlainMessage, String> {
    let text = std::str::from_utf8(message).map_err(|_| "PLAIN message is not UTF-8")?;
    let mut parts = text.split('\0');
    let (Some(authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("PLAIN message does not have three NUL-separated fields".into());
    };
    if user.is_empty() || password.is_empty() {
        return Err("PLAIN message has an empty user or password".into());
    }
    if !authzid.is_empty() && authzid != user {
        return Err("PLAIN authorization id differs from the user".into());
    }
    Ok(PlainMessage {
        user: user.into(),
        password: password.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_and_without_authzid() {
        let m = parse(b"\0alice\0pw").unwrap();
        assert_eq!((m.user.as_str(), m.password.as_str()), ("alice", "pw"));
        assert!(parse(b"alice\0alice\0pw").is_ok());
        assert!(parse(b"bob\0alice\0pw").is_err());
        assert!(parse(b"alice\0pw").is_err());
        assert!(parse(b"\0\0pw").is_err());
        assert!(parse(b"\0a\0b\0c").is_err());
    }
}
