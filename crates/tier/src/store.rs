//! Connecting to the object store named by `tier.object_store`.
//!
//! - `s3://bucket/prefix`: S3 or an S3-compatible server. Credentials come
//!   from the environment the way AWS tools read it (`AWS_ACCESS_KEY_ID`,
//!   `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, web identity tokens, ECS
//!   and EC2 instance credentials); region from `tier.region`, `AWS_REGION`
//!   or `AWS_DEFAULT_REGION`; endpoint from `tier.endpoint` or
//!   `AWS_ENDPOINT_URL`. With an endpoint, requests are path-style; plain
//!   http is allowed for loopback endpoints (and elsewhere with
//!   `tier.allow_http`). The bucket is created when missing and
//!   `tier.create_bucket` allows it (aws-sdk-s3: object_store cannot).
//! - `file:///path`: a directory (the embedded default is `{data_dir}/tier`).
//! - `memory://`: in memory, for tests; lost at exit.
//!
//! After connecting, a probe learns whether conditional puts are enforced.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};
use tracing::{info, warn};

use crate::config::TierConfig;
use crate::keys;
use crate::remote::{ConditionalPuts, Remote};
use crate::{Error, Result};

/// Where the object tier is, parsed from its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// An S3 bucket and key prefix.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix (no leading or trailing `/`), may be empty.
        prefix: String,
    },
    /// A local directory.
    File(std::path::PathBuf),
    /// Process memory.
    Memory,
}

/// Parses `tier.object_store`; an empty URL means `default_dir`.
pub fn parse_location(url: &str, default_dir: &std::path::Path) -> Result<Location> {
    let url = url.trim();
    if url.is_empty() {
        return Ok(Location::File(default_dir.to_path_buf()));
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::Config(format!(
                "'{url}' has no bucket: use s3://bucket/prefix"
            )));
        }
        return Ok(Location::S3 {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        });
    }
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(Error::Config(format!(
                "'{url}' is not an absolute file URL: use file:///absolute/path"
            )));
        }
        return Ok(Location::File(path.into()));
    }
    if url == "memory://" || url == "memory:///" {
        return Ok(Location::Memory);
    }
    Err(Error::Config(format!(
        "'{url}' is not s3://bucket/prefix, file:///path or memory://"
    )))
}

fn env_first(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
}

/// Whether an http(s) endpoint's host is a loopback address.
fn is_loopback(endpoint: &str) -> bool {
    let rest = endpoint
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    let host = rest.split(['/', '?']).next().unwrap_or("");
    let host = if let Some(v6) = host.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The S3 region and endpoint: from `[tier]`, else the AWS environment
/// variables. A plain-http endpoint must be on this machine unless
/// `allow_http` says otherwise.
fn s3_region_endpoint(config: &TierConfig) -> Result<(String, Option<String>)> {
    let region = Some(config.region.clone())
        .filter(|r| !r.is_empty())
        .or_else(|| env_first(&["AWS_REGION", "AWS_DEFAULT_REGION"]))
        .unwrap_or_else(|| "us-east-1".into());
    let endpoint = Some(config.endpoint.clone())
        .filter(|e| !e.is_empty())
        .or_else(|| env_first(&["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]));
    if let Some(e) = &endpoint {
        if e.starts_with("http://") && !config.allow_http && !is_loopback(e) {
            return Err(Error::Config(format!(
                "endpoint {e} is plain http and not on this machine: use https, or set tier.allow_http = true"
            )));
        }
    }
    Ok((region, endpoint))
}

/// Connects to the object tier: builds the store, creates the bucket if
/// allowed, checks reachability and probes conditional puts. Errors say
/// what to fix.
pub async fn connect(config: &TierConfig, default_dir: &std::path::Path) -> Result<Arc<Remote>> {
    let timeout = Duration::from_millis(config.request_timeout_ms);
    let location = parse_location(&config.object_store, default_dir)?;
    let (store, description): (Arc<dyn ObjectStore>, String) = match &location {
        Location::Memory => (Arc::new(InMemory::new()), "memory://".into()),
        Location::File(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::Config(format!(
                    "cannot create object tier directory {}: {e}",
                    dir.display()
                ))
            })?;
            let fs = LocalFileSystem::new_with_prefix(dir).map_err(|e| {
                Error::Config(format!("object tier directory {}: {e}", dir.display()))
            })?;
            (Arc::new(fs), format!("file://{}", dir.display()))
        }
        Location::S3 { bucket, prefix } => {
            let (region, endpoint) = s3_region_endpoint(config)?;
            if config.create_bucket {
                ensure_bucket(bucket, &region, endpoint.as_deref()).await?;
            }
            let mut b = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_region(&region)
                .with_retry(RetryConfig {
                    backoff: BackoffConfig::default(),
                    max_retries: 2,
                    retry_timeout: timeout,
                })
                .with_client_options(
                    ClientOptions::new()
                        .with_timeout(timeout)
                        .with_connect_timeout(Duration::from_secs(5)),
                );
            if let Some(e) = &endpoint {
                b = b
                    .with_endpoint(e)
                    .with_virtual_hosted_style_request(false)
                    .with_allow_http(e.starts_with("http://"));
            }
            let s3 = b.build().map_err(|e| {
                Error::Config(format!("cannot configure S3 for bucket {bucket}: {e}"))
            })?;
            let s3: Arc<dyn ObjectStore> = Arc::new(s3);
            let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
                s3
            } else {
                Arc::new(PrefixStore::new(s3, Path::from(prefix.as_str())))
            };
            let where_ = match &endpoint {
                Some(e) => format!("s3://{bucket}/{prefix} at {e}"),
                None => format!("s3://{bucket}/{prefix} ({region})"),
            };
            (store, where_)
        }
    };
    let remote = Arc::new(Remote::new(store, timeout, description));
    check_reachable(&remote).await?;
    let conditional = probe_conditional_puts(&remote).await?;
    remote.set_conditional_puts(conditional);
    match conditional {
        ConditionalPuts::Enforced => info!(store = remote.description(), "object tier connected; manifests are committed with conditional puts"),
        ConditionalPuts::Unavailable => warn!(
            store = remote.description(),
            "object tier connected, but it does not enforce conditional puts: manifests are overwritten, which is safe only while a single broker writes to this prefix"
        ),
    }
    Ok(remote)
}

/// A store and object path for a single-object URL such as a snapshot's
/// output: `s3://bucket/key` (with the tier's S3 settings: endpoint, region,
/// credentials) or `file:///path`.
pub fn open_url(url: &str, config: &TierConfig) -> Result<(Arc<dyn ObjectStore>, Path)> {
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(Error::Config(format!(
                "'{url}' is not an absolute file URL"
            )));
        }
        let p = std::path::Path::new(path);
        let dir = p
            .parent()
            .ok_or_else(|| Error::Config(format!("'{url}' names no file")))?;
        std::fs::create_dir_all(dir)?;
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::Config(format!("'{url}' names no file")))?;
        let fs = LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| Error::Config(format!("{}: {e}", dir.display())))?;
        return Ok((Arc::new(fs), Path::from(name)));
    }
    let Some(rest) = url.strip_prefix("s3://") else {
        return Err(Error::Config(format!(
            "'{url}' is not s3://bucket/key or file:///path"
        )));
    };
    let (bucket, key) = rest
        .split_once('/')
        .filter(|(b, k)| !b.is_empty() && !k.is_empty())
        .ok_or_else(|| Error::Config(format!("'{url}' needs a bucket and a key")))?;
    let (region, endpoint) = s3_region_endpoint(config)?;
    let mut b = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_region(&region);
    if let Some(e) = &endpoint {
        b = b
            .with_endpoint(e)
            .with_virtual_hosted_style_request(false)
            .with_allow_http(e.starts_with("http://"));
    }
    let s3 = b
        .build()
        .map_err(|e| Error::Config(format!("cannot configure S3 for bucket {bucket}: {e}")))?;
    Ok((Arc::new(s3), Path::from(key)))
}

/// Lists the root: proves the endpoint answers and accepts the credentials.
pub async fn check_reachable(remote: &Remote) -> Result<()> {
    remote
        .list_dirs(&Path::from(keys::TOPICS))
        .await
        .map(drop)
        .map_err(|e| match e {
            Error::ObjectStore { source, .. } => Error::Config(format!(
                "object tier {} is not usable: {source}",
                remote.description()
            )),
            Error::Timeout { after_ms, .. } => Error::Config(format!(
                "object tier {} did not answer within {after_ms} ms",
                remote.description()
            )),
            other => other,
        })
}

/// Whether `If-None-Match: *` and `If-Match` are enforced.
async fn probe_conditional_puts(remote: &Remote) -> Result<ConditionalPuts> {
    let key = keys::probe();
    let outcome = async {
        let v1 = match remote.put_if(&key, Bytes::from_static(b"1"), None).await {
            Ok(v) => v,
            Err(Error::ObjectStore {
                source:
                    object_store::Error::NotImplemented { .. }
                    | object_store::Error::NotSupported { .. },
                ..
            }) => return Ok(ConditionalPuts::Unavailable),
            Err(e) => return Err(e),
        };
        // A second create of the same key must lose.
        match remote.put_if(&key, Bytes::from_static(b"2"), None).await {
            Err(Error::Conflict { .. }) => {}
            Ok(_) => return Ok(ConditionalPuts::Unavailable),
            Err(e) => return Err(e),
        }
        // An update with a stale version must lose, with the right one win.
        let stale = object_store::UpdateVersion {
            e_tag: Some("\"0000\"".into()),
            version: None,
        };
        match remote
            .put_if(&key, Bytes::from_static(b"3"), Some(stale))
            .await
        {
            Err(Error::Conflict { .. }) => {}
            Ok(_) => return Ok(ConditionalPuts::Unavailable),
            Err(Error::ObjectStore {
                source:
                    object_store::Error::NotImplemented { .. }
                    | object_store::Error::NotSupported { .. },
                ..
            }) => return Ok(ConditionalPuts::Unavailable),
            Err(e) => return Err(e),
        }
        match remote.put_if(&key, Bytes::from_static(b"4"), v1).await {
            Ok(_) => Ok(ConditionalPuts::Enforced),
            Err(Error::Conflict { .. }) => Ok(ConditionalPuts::Unavailable),
            Err(e) => Err(e),
        }
    }
    .await;
    let _ = remote.delete(&[key]).await;
    outcome
}

/// Creates the bucket when it does not exist (S3 and S3-compatible servers).
async fn ensure_bucket(bucket: &str, region: &str, endpoint: Option<&str>) -> Result<()> {
    use aws_sdk_s3::config::{BehaviorVersion, Region};
    use aws_sdk_s3::error::ProvideErrorMetadata;

    let mut loader =
        aws_config::defaults(BehaviorVersion::latest()).region(Region::new(region.to_string()));
    if let Some(e) = endpoint {
        loader = loader.endpoint_url(e);
    }
    let shared = loader.load().await;
    let conf = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(endpoint.is_some())
        .build();
    let client = aws_sdk_s3::Client::from_conf(conf);
    let head = client.head_bucket().bucket(bucket).send().await;
    let err = match head {
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    let status = err.raw_response().map(|r| r.status().as_u16());
    match status {
        Some(404) => {}
        Some(403) => {
            return Err(Error::Config(format!(
                "access to bucket {bucket} denied: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the role's permissions"
            )))
        }
        Some(code) => {
            return Err(Error::Config(format!(
                "checking bucket {bucket} failed with HTTP {code}: {}",
                err.message().unwrap_or("no message")
            )))
        }
        None => {
            return Err(Error::Config(format!(
                "cannot reach the S3 endpoint{} for bucket {bucket}: {}",
                endpoint.map(|e| format!(" {e}")).unwrap_or_default(),
                aws_smithy_error_text(&err)
            )))
        }
    }
    let mut create = client.create_bucket().bucket(bucket);
    if region != "us-east-1" {
        use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
        create = create.create_bucket_configuration(
            CreateBucketConfiguration::builder()
                .location_constraint(BucketLocationConstraint::from(region))
                .build(),
        );
    }
    match create.send().await {
        Ok(_) => {
            info!(bucket, "created bucket");
            Ok(())
        }
        Err(e)
            if matches!(
                e.code(),
                Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(Error::Config(format!(
            "bucket {bucket} does not exist and cannot be created: {}",
            aws_smithy_error_text(&e)
        ))),
    }
}

fn aws_smithy_error_text<E: std::error::Error>(e: &E) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_or_say_what_is_wrong() {
        let d = std::path::Path::new("/data/tier");
        assert_eq!(parse_location("", d).unwrap(), Location::File(d.into()));
        assert_eq!(
            parse_location("s3://bucket/a/b/", d).unwrap(),
            Location::S3 {
                bucket: "bucket".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(
            parse_location("s3://bucket", d).unwrap(),
            Location::S3 {
                bucket: "bucket".into(),
                prefix: String::new()
            }
        );
        assert_eq!(
            parse_location("file:///x/y", d).unwrap(),
            Location::File("/x/y".into())
        );
        assert_eq!(parse_location("memory://", d).unwrap(), Location::Memory);
        for bad in ["s3:///p", "file://relative", "gs://b", "bucket"] {
            assert!(parse_location(bad, d).is_err(), "{bad}");
        }
    }

    #[test]
    fn loopback_endpoints_are_recognised() {
        for e in [
            "http://127.0.0.1:9000",
            "http://localhost:9000/",
            "http://[::1]:9000",
        ] {
            assert!(is_loopback(e), "{e}");
        }
        for e in [
            "http://10.0.0.5:9000",
            "http://minio.svc:9000",
            "https://s3.amazonaws.com",
        ] {
            assert!(!is_loopback(e), "{e}");
        }
    }

    #[tokio::test]
    async fn memory_and_file_stores_connect_and_report_conditional_puts() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = TierConfig {
            object_store: "memory://".into(),
            ..TierConfig::default()
        };
        let remote = connect(&config, dir.path()).await.unwrap();
        assert_eq!(remote.conditional_puts(), ConditionalPuts::Enforced);
        config.object_store = String::new();
        let remote = connect(&config, &dir.path().join("tier")).await.unwrap();
        // The local filesystem store cannot compare-and-swap.
        assert_eq!(remote.conditional_puts(), ConditionalPuts::Unavailable);
        assert!(dir.path().join("tier").is_dir());
    }
}
