//! Who may use the admin API.
//!
//! With `auth.http_require_auth`, every route but `/healthz`, `/readyz` (for
//! probes), `/metrics` (unless `auth.http_metrics_open` is off) and the
//! brokers' store probe needs credentials: a bearer token from
//! `auth.http_token_file`, or HTTP Basic with a SCRAM user's name and
//! password (meant for HTTPS). A request without valid credentials gets 401;
//! one whose principal lacks the cluster ACL gets 403: DESCRIBE for reads,
//! ALTER for changes (super users pass).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use strata_auth::acl::{Operation, ResourceType, CLUSTER_NAME};
use strata_auth::scram::{check_password, PasswordCheck};
use strata_auth::Principal;

use crate::{AdminState, ApiProblem};

/// The admin API's authentication settings.
#[derive(Default, Clone)]
pub struct HttpAuth {
    /// Whether credentials are required.
    pub require: bool,
    /// Whether `/metrics` stays open.
    pub metrics_open: bool,
    /// Bearer tokens and the principal each stands for.
    pub tokens: HashMap<String, Principal>,
}

impl std::fmt::Debug for HttpAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpAuth")
            .field("require", &self.require)
            .field("metrics_open", &self.metrics_open)
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

impl HttpAuth {
    /// From `[auth]`, reading the token file (an unreadable or malformed file
    /// is an error at start).
    pub fn from_config(auth: &strata_broker::security::AuthConfig) -> Result<Self, String> {
        let mut tokens = HashMap::new();
        if !auth.http_token_file.is_empty() {
            let text = std::fs::read_to_string(&auth.http_token_file)
                .map_err(|e| format!("auth.http_token_file '{}': {e}", auth.http_token_file))?;
            tokens = parse_tokens(&text)
                .map_err(|e| format!("auth.http_token_file '{}': {e}", auth.http_token_file))?;
        }
        Ok(Self {
            require: auth.http_require_auth,
            metrics_open: auth.http_metrics_open,
            tokens,
        })
    }
}

/// `token principal` per line; blank lines and `#` comments are skipped.
fn parse_tokens(text: &str) -> Result<HashMap<String, Principal>, String> {
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (token, principal) = line
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("line {}: expected 'token principal'", i + 1))?;
        if token.len() < 16 {
            return Err(format!(
                "line {}: a token must be at least 16 characters",
                i + 1
            ));
        }
        out.insert(token.to_string(), Principal::parse(principal.trim())?);
    }
    Ok(out)
}

/// Which routes stay open without credentials.
fn open_route(path: &str, metrics_open: bool) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/v1/cluster/store-probe")
        || (path == "/metrics" && metrics_open)
}

fn unauthorized(why: &str) -> Response {
    let mut resp = ApiProblem::new(StatusCode::UNAUTHORIZED, "unauthorized", why).into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Basic realm=\"strata\", Bearer realm=\"strata\""),
    );
    resp
}

/// The principal a request's `Authorization` header proves, if any.
async fn principal_of(state: &AdminState, value: &str) -> Result<Principal, &'static str> {
    if let Some(token) = value.strip_prefix("Bearer ") {
        return state
            .http_auth
            .tokens
            .get(token.trim())
            .cloned()
            .ok_or("unknown bearer token");
    }
    if let Some(encoded) = value.strip_prefix("Basic ") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| "malformed Basic credentials")?;
        let text = String::from_utf8(decoded).map_err(|_| "malformed Basic credentials")?;
        let (user, password) = text.split_once(':').ok_or("malformed Basic credentials")?;
        let broker = state.broker.get().ok_or("the broker is still starting")?;
        let image = broker.image();
        let (user, password) = (user.to_string(), password.to_string());
        let who = user.clone();
        // Thousands of hash rounds: off the async workers.
        let check = tokio::task::spawn_blocking(move || {
            check_password(&who, &password, |u, m| {
                image.security.credential(u, m).cloned()
            })
        })
        .await;
        return match check {
            Ok(PasswordCheck::Valid) => Ok(Principal::user(user)),
            _ => Err("wrong user name or password"),
        };
    }
    Err("use a Bearer token or Basic credentials")
}

/// The middleware: 401 without valid credentials, 403 without the ACL.
pub(crate) async fn require(
    State(state): State<Arc<AdminState>>,
    req: Request,
    next: Next,
) -> Response {
    let auth = &state.http_auth;
    if !auth.require || open_route(req.uri().path(), auth.metrics_open) {
        return next.run(req).await;
    }
    let Some(value) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
    else {
        metrics::counter!("strata_http_authentication_failures_total").increment(1);
        return unauthorized("credentials required: a Bearer token or Basic user:password");
    };
    let principal = match principal_of(&state, &value).await {
        Ok(p) => p,
        Err(why) => {
            metrics::counter!("strata_http_authentication_failures_total").increment(1);
            tracing::warn!(path = %req.uri().path(), reason = why, "admin API authentication failed");
            return unauthorized(why);
        }
    };
    let op = if req.method() == Method::GET || req.method() == Method::HEAD {
        Operation::Describe
    } else {
        Operation::Alter
    };
    if let Some(broker) = state.broker.get() {
        let who = strata_broker::security::Identity {
            principal: Arc::new(principal.clone()),
            host: std::net::IpAddr::from([0, 0, 0, 0]),
            listener: Arc::from("http"),
        };
        let allowed = broker.authorizer().allows(
            &broker.image(),
            &who,
            op,
            ResourceType::Cluster,
            CLUSTER_NAME,
        ) || broker
            .config()
            .auth
            .super_users
            .contains(&principal.to_string());
        if !allowed {
            return ApiProblem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "{principal} may not {} the cluster: grant it an ACL (operation {}, resource CLUSTER kafka-cluster)",
                    if op == Operation::Describe { "describe" } else { "alter" },
                    op.name()
                ),
            )
            .into_response();
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_parse_and_short_tokens_are_refused() {
        let t = parse_tokens("# ops\n0123456789abcdef0123 User:admin\n\n").unwrap();
        assert_eq!(t["0123456789abcdef0123"], Principal::user("admin"));
        assert!(parse_tokens("short User:admin").is_err());
        assert!(parse_tokens("0123456789abcdef0123").is_err());
        assert!(parse_tokens("0123456789abcdef0123 admin").is_err());
    }

    #[test]
    fn probes_stay_open() {
        assert!(open_route("/healthz", false));
        assert!(open_route("/readyz", false));
        assert!(open_route("/metrics", true));
        assert!(!open_route("/metrics", false));
        assert!(!open_route("/v1/topics", true));
    }
}
