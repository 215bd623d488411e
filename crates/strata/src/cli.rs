//! `strata topic|group|tier ...`: daily operations through a running
//! broker's HTTP admin API (the same routes as docs/admin-api.md).

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// Where the broker's HTTP API is, and how to print answers.
#[derive(Args, Debug, Clone)]
pub(crate) struct Target {
    /// The broker's HTTP address.
    #[arg(
        long,
        global = true,
        env = "STRATA_ADMIN_URL",
        default_value = "http://127.0.0.1:9644"
    )]
    admin_url: String,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand, Debug)]
pub(crate) enum TopicCommand {
    /// List topics.
    List,
    /// Create a topic.
    Create {
        /// Topic name.
        name: String,
        /// Partitions [default: the broker's default_partitions].
        #[arg(long, short)]
        partitions: Option<i32>,
        /// A topic config, `name=value` (repeatable), e.g. remote.storage.enable=true.
        #[arg(long = "config", short = 'c', value_parser = parse_pair)]
        configs: Vec<(String, String)>,
    },
    /// Partitions with their hot and cold ranges, and the topic's configs.
    Describe {
        /// Topic name.
        name: String,
    },
    /// Delete a topic and its data (local and in the object tier).
    Delete {
        /// Topic name.
        name: String,
    },
    /// Change topic configs, or add partitions.
    Alter {
        /// Topic name.
        name: String,
        /// Set a config, `name=value` (repeatable).
        #[arg(long = "set", value_parser = parse_pair)]
        set: Vec<(String, String)>,
        /// Return a config to the broker default (repeatable).
        #[arg(long = "delete")]
        delete: Vec<String>,
        /// Raise the partition count to this.
        #[arg(long)]
        partitions: Option<i32>,
    },
    /// Delete the records below an offset (the log start moves there), like
    /// kafka-delete-records.
    DeleteRecords {
        /// kafka-delete-records' file: {"partitions": [{"topic", "partition", "offset"}], "version": 1}.
        #[arg(long, conflicts_with_all = ["topic", "partition", "offset"])]
        offset_json_file: Option<std::path::PathBuf>,
        /// Topic name (with --partition and --offset).
        #[arg(long, requires_all = ["partition", "offset"])]
        topic: Option<String>,
        /// Partition index.
        #[arg(long)]
        partition: Option<i32>,
        /// Records below this offset go; -1: everything below the high watermark.
        #[arg(long, allow_hyphen_values = true)]
        offset: Option<i64>,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum GroupCommand {
    /// List consumer groups with their state and lag.
    List,
    /// Members, assignments, committed offsets and lag.
    Describe {
        /// Group id.
        group: String,
    },
    /// Move an empty group's committed offsets.
    Reset {
        /// Group id.
        group: String,
        /// Only this topic (all its partitions) [default: every partition the group committed].
        #[arg(long)]
        topic: Option<String>,
        /// To the log start.
        #[arg(long, group = "to")]
        to_earliest: bool,
        /// To the log end.
        #[arg(long, group = "to")]
        to_latest: bool,
        /// To the first offset at or after this time (ms since the epoch).
        #[arg(long, group = "to")]
        to_timestamp: Option<i64>,
        /// To this offset.
        #[arg(long, group = "to")]
        to_offset: Option<i64>,
    },
    /// Delete an empty group and its committed offsets.
    Delete {
        /// Group id.
        group: String,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum ClusterCommand {
    /// Brokers, the controller, and each partition's leader, replicas and ISR.
    Status,
}

#[derive(Subcommand, Debug)]
pub(crate) enum TierCommand {
    /// The object store, the cold cache and every tiered partition.
    Status,
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .ok_or_else(|| format!("'{s}' is not name=value"))
}

struct Client {
    base: String,
    http: reqwest::Client,
    auth: Option<String>,
}

/// Reads a secret from `$NAME`, or from the file `$NAME_FILE` names; never
/// from the command line, where `ps` would show it.
fn secret(name: &str) -> Result<Option<String>> {
    if let Ok(v) = std::env::var(name) {
        return Ok(Some(v));
    }
    match std::env::var(format!("{name}_FILE")) {
        Ok(path) => Ok(Some(
            std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {name}_FILE {path}"))?
                .trim_end_matches(['\r', '\n'])
                .to_string(),
        )),
        Err(_) => Ok(None),
    }
}

/// The `Authorization` header from the environment: `STRATA_ADMIN_TOKEN`
/// (bearer), or `STRATA_ADMIN_USER` with `STRATA_ADMIN_PASSWORD` (Basic);
/// each secret may come from a `_FILE` instead.
fn credentials() -> Result<Option<String>> {
    if let Some(token) = secret("STRATA_ADMIN_TOKEN")? {
        return Ok(Some(format!("Bearer {token}")));
    }
    match (
        std::env::var("STRATA_ADMIN_USER").ok(),
        secret("STRATA_ADMIN_PASSWORD")?,
    ) {
        (Some(user), Some(password)) => {
            use base64::Engine;
            let pair =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            Ok(Some(format!("Basic {pair}")))
        }
        (Some(_), None) => bail!("STRATA_ADMIN_USER is set without STRATA_ADMIN_PASSWORD(_FILE)"),
        _ => Ok(None),
    }
}

/// The HTTP client: for `https://`, the CA in `STRATA_ADMIN_CA_FILE` when
/// set (a private CA, as deploy/minio's), else the system's roots.
fn http_client() -> Result<reqwest::Client> {
    // One process-wide rustls provider: ring, as the broker uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let builder = reqwest::Client::builder();
    let builder = match std::env::var("STRATA_ADMIN_CA_FILE") {
        Ok(ca) => {
            let config = strata_broker::security::tls::client_config(&ca)
                .map_err(anyhow::Error::msg)
                .context("STRATA_ADMIN_CA_FILE")?;
            builder.use_preconfigured_tls((*config).clone())
        }
        Err(_) => builder,
    };
    builder.build().context("cannot set up the HTTP client")
}

impl Client {
    fn new(t: &Target) -> Self {
        let setup = credentials().and_then(|auth| Ok((auth, http_client()?)));
        let (auth, http) = match setup {
            Ok(a) => a,
            Err(e) => {
                eprintln!("error: {e:#}");
                std::process::exit(2);
            }
        };
        Self {
            base: t.admin_url.trim_end_matches('/').to_string(),
            http,
            auth,
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let url = format!("{}/v1{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(a) = &self.auth {
            req = req.header(reqwest::header::AUTHORIZATION, a);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the broker's admin API at {}", self.base))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if !status.is_success() {
            let msg = value["error"]["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| value.to_string());
            bail!("{msg} (HTTP {})", status.as_u16());
        }
        Ok(value)
    }
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

pub(crate) fn topic(t: &Target, cmd: TopicCommand) -> Result<()> {
    runtime()?.block_on(async {
        let c = Client::new(t);
        let v = match cmd {
            TopicCommand::List => c.call(reqwest::Method::GET, "/topics", None).await?,
            TopicCommand::Create { name, partitions, configs } => {
                let configs: serde_json::Map<String, Value> =
                    configs.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
                c.call(
                    reqwest::Method::POST,
                    "/topics",
                    Some(json!({"name": name, "partitions": partitions.unwrap_or(-1), "configs": configs})),
                )
                .await?
            }
            TopicCommand::Describe { name } => c.call(reqwest::Method::GET, &format!("/topics/{name}"), None).await?,
            TopicCommand::Delete { name } => {
                c.call(reqwest::Method::DELETE, &format!("/topics/{name}"), None).await?;
                println!("deleted topic {name}");
                return Ok(());
            }
            TopicCommand::Alter { name, set, delete, partitions } => {
                let mut last = Value::Null;
                if !set.is_empty() || !delete.is_empty() {
                    let set: serde_json::Map<String, Value> =
                        set.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
                    last = c
                        .call(reqwest::Method::PATCH, &format!("/topics/{name}/configs"), Some(json!({"set": set, "delete": delete})))
                        .await?;
                }
                if let Some(n) = partitions {
                    last = c
                        .call(reqwest::Method::POST, &format!("/topics/{name}/partitions"), Some(json!({"count": n})))
                        .await?;
                }
                if last.is_null() {
                    bail!("nothing to change: give --set, --delete or --partitions");
                }
                last
            }
            TopicCommand::DeleteRecords { offset_json_file, topic, partition, offset } => {
                let body: Value = match (offset_json_file, topic, partition, offset) {
                    (Some(f), ..) => {
                        let text = std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
                        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", f.display()))?
                    }
                    (None, Some(t), Some(p), Some(o)) => json!({"partitions": [{"topic": t, "partition": p, "offset": o}], "version": 1}),
                    _ => bail!("give --offset-json-file, or --topic, --partition and --offset"),
                };
                let v = c.call(reqwest::Method::POST, "/delete-records", Some(body)).await?;
                let parts = v["partitions"].as_array().cloned().unwrap_or_default();
                if t.json {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    table(
                        &["TOPIC", "PARTITION", "LOW WATERMARK", "ERROR"],
                        parts
                            .iter()
                            .map(|p| vec![s(&p["topic"]), s(&p["partition"]), s(&p["low_watermark"]), s(&p["error"]["message"])])
                            .collect(),
                    );
                }
                let failed = parts.iter().filter(|p| !p["error"].is_null()).count();
                if failed > 0 {
                    bail!("{failed} of {} partitions were not changed", parts.len());
                }
                return Ok(());
            }
        };
        if t.json {
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else if let Some(topics) = v["topics"].as_array() {
            table(
                &["TOPIC", "PARTITIONS", "TIERED", "ID"],
                topics.iter().map(|t| vec![s(&t["name"]), s(&t["partitions"]), s(&t["remote_storage_enable"]), s(&t["id"])]).collect(),
            );
        } else {
            print_topic(&v);
        }
        Ok(())
    })
}

/// A partition's object-tier range, `-` when it has none.
fn remote_range(remote: &Value) -> String {
    if remote.is_null() {
        "-".into()
    } else {
        format!("[{}, {})", s(&remote["start"]), s(&remote["end"]))
    }
}

/// A field of a partition's object-tier status, `-` when it has none.
fn or_dash(remote: &Value, field: &str) -> String {
    if remote.is_null() {
        "-".into()
    } else {
        s(&remote[field])
    }
}

fn print_topic(v: &Value) {
    println!("topic {} (id {})", s(&v["name"]), s(&v["id"]));
    let rows = v["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let r = &p["remote"];
            vec![
                s(&p["partition"]),
                s(&p["log_start"]),
                s(&p["local_start"]),
                s(&p["log_end"]),
                s(&p["local_bytes"]),
                remote_range(r),
                or_dash(r, "bytes"),
                s(&p["offload_lag_bytes"]),
            ]
        })
        .collect();
    table(
        &[
            "PARTITION",
            "LOG START",
            "LOCAL START",
            "END",
            "LOCAL BYTES",
            "REMOTE RANGE",
            "REMOTE BYTES",
            "OFFLOAD LAG",
        ],
        rows,
    );
    let compacted: Vec<Vec<String>> = v["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["compaction"].is_object())
        .map(|p| {
            let c = &p["compaction"];
            let ratio = c["dirty_ratio"].as_f64().unwrap_or(0.0);
            vec![
                s(&p["partition"]),
                format!("{ratio:.2}"),
                s(&c["cleaned_to"]),
                s(&c["passes"]),
                s(&c["records_removed"]),
                s(&c["bytes_reclaimed"]),
            ]
        })
        .collect();
    if !compacted.is_empty() {
        println!();
        table(
            &[
                "PARTITION",
                "DIRTY RATIO",
                "CLEANED TO",
                "PASSES",
                "RECORDS REMOVED",
                "BYTES RECLAIMED",
            ],
            compacted,
        );
    }
    println!();
    let rows = v["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| vec![s(&c["name"]), s(&c["value"]), s(&c["source"])])
        .collect();
    table(&["CONFIG", "VALUE", "SOURCE"], rows);
}

pub(crate) fn group(t: &Target, cmd: GroupCommand) -> Result<()> {
    runtime()?.block_on(async {
        let c = Client::new(t);
        let v = match cmd {
            GroupCommand::List => c.call(reqwest::Method::GET, "/groups", None).await?,
            GroupCommand::Describe { group } => c.call(reqwest::Method::GET, &format!("/groups/{group}"), None).await?,
            GroupCommand::Delete { group } => {
                c.call(reqwest::Method::DELETE, &format!("/groups/{group}"), None).await?;
                println!("deleted group {group}");
                return Ok(());
            }
            GroupCommand::Reset { group, topic, to_earliest, to_latest, to_timestamp, to_offset } => {
                let to = match (to_earliest, to_latest, to_timestamp, to_offset) {
                    (true, _, _, _) => json!("earliest"),
                    (_, true, _, _) => json!("latest"),
                    (_, _, Some(ts), _) => json!({"timestamp": ts}),
                    (_, _, _, Some(o)) => json!({"offset": o}),
                    _ => bail!("say where to: --to-earliest, --to-latest, --to-timestamp MS or --to-offset N"),
                };
                c.call(reqwest::Method::POST, &format!("/groups/{group}/reset-offsets"), Some(json!({"topic": topic, "to": to})))
                    .await?
            }
        };
        if t.json {
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else if let Some(groups) = v["groups"].as_array() {
            table(
                &["GROUP", "STATE", "MEMBERS", "LAG"],
                groups.iter().map(|g| vec![s(&g["group"]), s(&g["state"]), s(&g["members"]), s(&g["lag"])]).collect(),
            );
        } else if v.get("state").is_some() {
            println!("group {} ({}, generation {}, protocol {})", s(&v["group"]), s(&v["state"]), s(&v["generation"]), s(&v["protocol"]));
            for m in v["members"].as_array().into_iter().flatten() {
                println!("  member {} client {} at {}: {}", s(&m["member_id"]), s(&m["client_id"]), s(&m["client_host"]), m["assignment"]);
            }
            table(
                &["TOPIC", "PARTITION", "COMMITTED", "LOG END", "LAG"],
                v["offsets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|o| vec![s(&o["topic"]), s(&o["partition"]), s(&o["committed"]), s(&o["log_end"]), s(&o["lag"])])
                    .collect(),
            );
            println!("total lag {}", s(&v["lag"]));
        } else {
            table(
                &["TOPIC", "PARTITION", "NEW OFFSET"],
                v["offsets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|o| vec![s(&o["topic"]), s(&o["partition"]), s(&o["offset"])])
                    .collect(),
            );
        }
        Ok(())
    })
}

fn ids(v: &Value) -> String {
    let list: Vec<String> = v.as_array().into_iter().flatten().map(s).collect();
    list.join(",")
}

/// A reassignment under way as `+added -removed`, or nothing.
fn reassigning(adding: &Value, removing: &Value) -> String {
    let (a, r) = (ids(adding), ids(removing));
    let mut parts = Vec::new();
    if !a.is_empty() {
        parts.push(format!("+{a}"));
    }
    if !r.is_empty() {
        parts.push(format!("-{r}"));
    }
    parts.join(" ")
}

pub(crate) fn cluster(t: &Target, cmd: ClusterCommand) -> Result<()> {
    runtime()?.block_on(async {
        let c = Client::new(t);
        let ClusterCommand::Status = cmd;
        let v = c.call(reqwest::Method::GET, "/cluster", None).await?;
        if t.json {
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        println!(
            "cluster {} ({}), metadata in {}; controller: broker {}; asked broker {}",
            s(&v["cluster_id"]),
            s(&v["mode"]),
            s(&v["metadata"]),
            s(&v["controller"]),
            s(&v["this_broker"])
        );
        let controller = v["controller"].clone();
        table(
            &["BROKER", "HOST", "PORT", "RACK", "EPOCH", "STATE"],
            v["brokers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|b| {
                    let state = if b["shutting_down"].as_bool() == Some(true) {
                        "shutting down"
                    } else if b["id"] == controller {
                        "controller"
                    } else {
                        "up"
                    };
                    vec![
                        s(&b["id"]),
                        s(&b["host"]),
                        s(&b["port"]),
                        s(&b["rack"]),
                        s(&b["epoch"]),
                        state.to_string(),
                    ]
                })
                .collect(),
        );
        println!();
        let mut rows = Vec::new();
        for topic in v["topics"].as_array().into_iter().flatten() {
            for p in topic["partitions"].as_array().into_iter().flatten() {
                let leader = match p["leader"].as_i64() {
                    Some(-1) | None => "none (offline)".to_string(),
                    Some(l) => l.to_string(),
                };
                rows.push(vec![
                    s(&topic["name"]),
                    s(&p["partition"]),
                    leader,
                    s(&p["leader_epoch"]),
                    ids(&p["replicas"]),
                    ids(&p["isr"]),
                    ids(&p["offline_replicas"]),
                    reassigning(&p["adding_replicas"], &p["removing_replicas"]),
                ]);
            }
        }
        table(
            &[
                "TOPIC",
                "PARTITION",
                "LEADER",
                "EPOCH",
                "REPLICAS",
                "ISR",
                "OFFLINE",
                "REASSIGNING",
            ],
            rows,
        );
        Ok(())
    })
}

pub(crate) fn tier(t: &Target, cmd: TierCommand) -> Result<()> {
    runtime()?.block_on(async {
        let c = Client::new(t);
        let TierCommand::Status = cmd;
        let v = c.call(reqwest::Method::GET, "/tier", None).await?;
        if t.json {
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        let st = &v["store"];
        println!(
            "object store {}: {}, conditional puts {}",
            s(&st["location"]),
            if st["reachable"].as_bool() == Some(true) { "reachable" } else { "UNREACHABLE" },
            if st["conditional_puts"].as_bool() == Some(true) { "enforced" } else { "not enforced" }
        );
        let ca = &v["cache"];
        println!(
            "cold cache: memory {}/{} bytes, disk {}/{} bytes; hits {} (memory) {} (disk), misses {}",
            s(&ca["memory_bytes"]),
            s(&ca["memory_budget_bytes"]),
            s(&ca["disk_bytes"]),
            s(&ca["disk_budget_bytes"]),
            s(&ca["hits_memory"]),
            s(&ca["hits_disk"]),
            s(&ca["misses"])
        );
        table(
            &["TOPIC", "PARTITION", "LOCAL START", "REMOTE RANGE", "REMOTE BYTES", "OFFLOAD LAG", "FAILURES"],
            v["partitions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    let r = &p["remote"];
                    vec![
                        s(&p["topic"]),
                        s(&p["partition"]),
                        s(&p["local_start"]),
                        remote_range(r),
                        or_dash(r, "bytes"),
                        s(&p["offload_lag_bytes"]),
                        or_dash(r, "consecutive_failures"),
                    ]
                })
                .collect(),
        );
        Ok(())
    })
}

#[derive(Subcommand, Debug)]
pub(crate) enum LakeCommand {
    /// Progress of every lake-enabled partition.
    Status,
    /// Write the latest value of every key as of a time, as Parquet.
    Snapshot {
        /// Topic.
        #[arg(long)]
        topic: String,
        /// The time: milliseconds since the epoch, or RFC 3339 (2026-11-22T10:00:00Z).
        #[arg(long)]
        as_of: String,
        /// Where to write: s3://bucket/key.parquet or file:///path/key.parquet.
        #[arg(long)]
        output: String,
    },
}

fn parse_time(s: &str) -> Result<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .with_context(|| {
            format!("'{s}' is neither milliseconds since the epoch nor an RFC 3339 time")
        })
}

pub(crate) fn lake(t: &Target, cmd: LakeCommand) -> Result<()> {
    runtime()?.block_on(async {
        let c = Client::new(t);
        let v = match cmd {
            LakeCommand::Status => c.call(reqwest::Method::GET, "/lake", None).await?,
            LakeCommand::Snapshot { topic, as_of, output } => {
                let as_of = parse_time(&as_of)?;
                c.call(reqwest::Method::POST, "/lake/snapshot", Some(json!({"topic": topic, "as_of": as_of, "output": output})))
                    .await?
            }
        };
        if t.json {
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else if let Some(parts) = v["partitions"].as_array() {
            table(
                &["TOPIC", "PARTITION", "NEXT OFFSET", "LAG", "FILES", "ROWS", "MISMATCHES", "ERROR"],
                parts
                    .iter()
                    .map(|p| {
                        vec![
                            s(&p["topic"]),
                            s(&p["partition"]),
                            s(&p["next_offset"]),
                            s(&p["lag"]),
                            s(&p["files"]),
                            s(&p["rows"]),
                            s(&p["schema_mismatches"]),
                            s(&p["last_error"]),
                        ]
                    })
                    .collect(),
            );
        } else {
            println!(
                "wrote {} keys of {} as of {} to {} ({} bytes; {} lake files and {} log records read)",
                s(&v["keys"]),
                s(&v["topic"]),
                s(&v["as_of"]),
                s(&v["output"]),
                s(&v["bytes"]),
                s(&v["lake_files"]),
                s(&v["log_records"])
            );
        }
        Ok(())
    })
}
