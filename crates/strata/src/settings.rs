//! Configuration layering: defaults, then the TOML file, then environment
//! variables, then command-line flags. Unknown keys are an error at every layer.
//!
//! Environment variables name keys as `STRATA_<KEY>` for top-level keys and
//! `STRATA_<SECTION>__<KEY>` for keys of a section (`STRATA_LOG__SEGMENT_BYTES`,
//! `STRATA_TIER__OBJECT_STORE`, also `STRATA_OBJECT_STORE`). A value is read as a TOML value when it parses
//! as one of the key's type (`true`, `42`) and as a string otherwise. A variable
//! with a section separator whose key does not exist is an error; other
//! `STRATA_` variables that are not keys (`STRATA_LOG`, used for the log
//! filter, or a tool's own) are left alone.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use strata_broker::BrokerConfig;
use toml::{Table, Value};

/// Values given on the command line (`None`: not given).
#[derive(Debug, Default, Clone)]
pub(crate) struct Overrides {
    pub(crate) config: Option<PathBuf>,
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) kafka_listen: Option<String>,
    pub(crate) advertised_listener: Option<String>,
    pub(crate) http_listen: Option<String>,
    pub(crate) object_store: Option<String>,
    pub(crate) broker_id: Option<i32>,
    pub(crate) etcd_endpoints: Option<String>,
}

const ENV_PREFIX: &str = "STRATA_";
/// Short names for keys of sections that have a flag of their own.
const ALIASES: &[(&str, &str)] = &[("object_store", "tier__object_store")];
const SECTION_SEPARATOR: &str = "__";

/// Builds the effective configuration from the layers and validates it.
pub(crate) fn load(
    flags: &Overrides,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<BrokerConfig> {
    let mut table = Table::new();
    if let Some(path) = &flags.config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        table = text
            .parse::<Table>()
            .with_context(|| format!("config file {} is not valid TOML", path.display()))?;
        check_known(&table).with_context(|| format!("invalid config file {}", path.display()))?;
    }
    apply_env(&mut table, env)?;
    let mut set = |path: &[&str], value: Value| {
        let (last, sections) = path.split_last().expect("non-empty key path");
        let mut t = &mut table;
        for s in sections {
            t = t
                .entry(s.to_string())
                .or_insert_with(|| Value::Table(Table::new()))
                .as_table_mut()
                .expect("section is a table");
        }
        t.insert(last.to_string(), value);
    };
    if let Some(v) = &flags.data_dir {
        set(&["data_dir"], Value::String(v.display().to_string()));
    }
    if let Some(v) = &flags.kafka_listen {
        set(&["kafka_listen"], Value::String(v.clone()));
    }
    if let Some(v) = &flags.advertised_listener {
        set(&["advertised_listener"], Value::String(v.clone()));
    }
    if let Some(v) = &flags.http_listen {
        set(&["http_listen"], Value::String(v.clone()));
    }
    if let Some(v) = &flags.object_store {
        set(&["tier", "object_store"], Value::String(v.clone()));
    }
    if let Some(v) = flags.broker_id {
        set(&["cluster", "broker_id"], Value::Integer(v.into()));
    }
    if let Some(v) = &flags.etcd_endpoints {
        set(&["cluster", "etcd_endpoints"], list(v));
    }
    let config: BrokerConfig = table.try_into().context("invalid configuration")?;
    config
        .validate()
        .map_err(anyhow::Error::msg)
        .context("invalid configuration")?;
    Ok(config)
}

/// The default configuration as a TOML table: the schema keys are checked against.
fn defaults() -> Table {
    Table::try_from(BrokerConfig::default()).expect("the default config serializes")
}

/// Rejects keys the configuration does not have, naming them.
fn check_known(table: &Table) -> Result<()> {
    let schema = defaults();
    for (key, value) in table {
        match (schema.get(key), value) {
            (None, _) => bail!("unknown key '{key}'"),
            (Some(Value::Table(section)), Value::Table(given)) => {
                for k in given.keys() {
                    if !section.contains_key(k) {
                        bail!("unknown key '{k}' in section [{key}]");
                    }
                }
            }
            (Some(Value::Table(_)), _) => bail!("'{key}' must be a section ([{key}])"),
            _ => {}
        }
    }
    Ok(())
}

/// Overlays `STRATA_*` environment variables onto `table`.
fn apply_env(table: &mut Table, env: impl IntoIterator<Item = (String, String)>) -> Result<()> {
    let schema = defaults();
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let rest = rest.to_ascii_lowercase();
        let rest = ALIASES
            .iter()
            .find(|(alias, _)| *alias == rest)
            .map_or(rest.clone(), |(_, full)| full.to_string());
        let (section, key) = match rest.split_once(SECTION_SEPARATOR) {
            Some((s, k)) => (Some(s.to_string()), k.to_string()),
            None => (None, rest),
        };
        let expected = match &section {
            Some(s) => match schema.get(s).and_then(Value::as_table) {
                Some(t) => match t.get(&key) {
                    Some(v) => v,
                    None => bail!("environment variable {name}: section [{s}] has no key '{key}'"),
                },
                None => bail!("environment variable {name}: there is no config section [{s}]"),
            },
            None => match schema.get(&key) {
                Some(Value::Table(_)) | None => continue,
                Some(v) => v,
            },
        };
        let value = typed_value(&raw, expected)
            .with_context(|| format!("environment variable {name}={raw}"))?;
        let target = match section {
            Some(s) => table
                .entry(s)
                .or_insert_with(|| Value::Table(Table::new()))
                .as_table_mut()
                .context("config section is not a table")?,
            None => &mut *table,
        };
        target.insert(key, value);
    }
    Ok(())
}

/// A comma-separated list (`a,b,c`) as a TOML array of strings.
fn list(raw: &str) -> Value {
    Value::Array(
        raw.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| Value::String(s.to_string()))
            .collect(),
    )
}

/// Reads `raw` as a value of the same TOML type as `like`; a list is
/// comma-separated.
fn typed_value(raw: &str, like: &Value) -> Result<Value> {
    Ok(match like {
        // An inline TOML array (`[{ name = "secure", ... }]`, for
        // `STRATA_LISTENERS`), or a comma-separated list.
        Value::Array(_) if raw.trim_start().starts_with('[') => format!("v = {raw}")
            .parse::<Table>()
            .with_context(|| format!("'{raw}' is not a TOML array"))?
            .remove("v")
            .context("no value")?,
        Value::Array(_) => list(raw),
        Value::String(_) => Value::String(raw.to_string()),
        Value::Integer(_) => Value::Integer(
            raw.trim()
                .parse()
                .with_context(|| format!("'{raw}' is not an integer"))?,
        ),
        Value::Float(_) => Value::Float(
            raw.trim()
                .parse()
                .with_context(|| format!("'{raw}' is not a number"))?,
        ),
        Value::Boolean(_) => Value::Boolean(match raw.trim() {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => bail!("'{raw}' is not true or false"),
        }),
        other => bail!(
            "keys of type {} cannot be set from the environment",
            other.type_str()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn with_file(text: &str) -> (tempfile::TempDir, Overrides) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("strata.toml");
        std::fs::write(&file, text).unwrap();
        let flags = Overrides {
            config: Some(file),
            ..Overrides::default()
        };
        (dir, flags)
    }

    #[test]
    fn listeners_come_from_the_file_or_one_environment_variable() {
        let (_d, flags) = with_file(
            "[[listeners]]\nname = \"secure\"\nlisten = \"127.0.0.1:9093\"\nprotocol = \"SASL_PLAINTEXT\"\nsasl_mechanisms = [\"PLAIN\"]\n",
        );
        let c = load(&flags, env(&[])).unwrap();
        assert_eq!(c.listeners.len(), 1);
        let (_d, flags) = with_file("");
        let c = load(
            &flags,
            env(&[(
                "STRATA_LISTENERS",
                r#"[{ name = "secure", listen = "0.0.0.0:9093", advertised = "broker-0.strata:9093", protocol = "SASL_PLAINTEXT" }]"#,
            )]),
        )
        .unwrap();
        assert_eq!(c.listeners[0].advertised, "broker-0.strata:9093");
        // A listener key the broker does not know, or a bad protocol, is an error.
        for bad in [
            r#"[{ name = "s", listen = "0.0.0.0:1", prtocol = "SSL" }]"#,
            r#"[{ name = "s", listen = "0.0.0.0:1", protocol = "TLS" }]"#,
            r#"[{ name = "s", listen = "0.0.0.0:1", protocol = "SSL" }]"#,
        ] {
            assert!(
                load(&flags, env(&[("STRATA_LISTENERS", bad)])).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn unknown_keys_in_the_file_are_errors() {
        for text in [
            "no_such_key = 1",
            "[log]\nno_such_key = 1",
            "[nosection]\na = 1",
            "log = 5",
        ] {
            let (_d, flags) = with_file(text);
            let err = load(&flags, env(&[])).unwrap_err();
            assert!(
                format!("{err:#}").contains("unknown") || format!("{err:#}").contains("section"),
                "{text}: {err:#}"
            );
        }
        let (_d, flags) = with_file("[log]\nflush = \"sometimes\"");
        assert!(load(&flags, env(&[])).is_err());
    }

    #[test]
    fn file_env_and_flags_layer_in_that_order() {
        let (_d, mut flags) = with_file(
            "kafka_listen = \"127.0.0.1:1111\"\ndata_dir = \"/from/file\"\nauto_create_topics = false\n[log]\nsegment_bytes = 1048576",
        );
        flags.kafka_listen = Some("127.0.0.1:2222".into());
        let c = load(
            &flags,
            env(&[
                ("STRATA_KAFKA_LISTEN", "127.0.0.1:3333"),
                ("STRATA_AUTO_CREATE_TOPICS", "true"),
                ("STRATA_LOG__SEGMENT_BYTES", "2097152"),
                ("STRATA_LOG__FLUSH", "os"),
                ("STRATA_OBJECT_STORE", "memory://"),
                ("STRATA_LOG", "debug"),
                ("STRATA_BIN", "/usr/bin/strata"),
                ("OTHER", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(
            c.kafka_listen, "127.0.0.1:2222",
            "flag wins over env and file"
        );
        assert_eq!(c.data_dir, PathBuf::from("/from/file"));
        assert!(c.auto_create_topics, "env wins over file");
        assert_eq!(c.log.segment_bytes, 2_097_152);
        assert_eq!(c.log.flush, strata_broker::FlushPolicy::Os);
        assert_eq!(c.tier.object_store, "memory://");
    }

    #[test]
    fn cluster_keys_come_from_the_environment_and_flags() {
        let c = load(
            &Overrides::default(),
            env(&[
                (
                    "STRATA_CLUSTER__ETCD_ENDPOINTS",
                    "http://127.0.0.1:2379, http://127.0.0.2:2379",
                ),
                ("STRATA_CLUSTER__BROKER_ID", "2"),
                ("STRATA_CLUSTER__SESSION_TIMEOUT_MS", "6000"),
            ]),
        )
        .unwrap();
        assert_eq!(
            c.cluster.etcd_endpoints,
            vec!["http://127.0.0.1:2379", "http://127.0.0.2:2379"]
        );
        assert_eq!(
            (c.cluster.broker_id, c.cluster.session_timeout_ms),
            (2, 6000)
        );
        let flags = Overrides {
            broker_id: Some(5),
            etcd_endpoints: Some("http://10.0.0.1:2379".into()),
            ..Overrides::default()
        };
        let c = load(&flags, env(&[("STRATA_CLUSTER__BROKER_ID", "2")])).unwrap();
        assert_eq!(c.cluster.broker_id, 5, "the flag wins");
        assert_eq!(c.cluster.etcd_endpoints, vec!["http://10.0.0.1:2379"]);
    }

    #[test]
    fn bad_environment_values_name_the_variable() {
        for (k, v) in [
            ("STRATA_LOG__NO_SUCH", "1"),
            ("STRATA_NOSECTION__X", "1"),
            ("STRATA_LOG__SEGMENT_BYTES", "big"),
            ("STRATA_AUTO_CREATE_TOPICS", "yes please"),
        ] {
            let err = load(&Overrides::default(), env(&[(k, v)])).unwrap_err();
            assert!(format!("{err:#}").contains(k), "{k}: {err:#}");
        }
    }

    #[test]
    fn invalid_values_are_refused_with_the_key() {
        let (_d, flags) = with_file("[log]\nsegment_bytes = 3");
        let err = load(&flags, env(&[])).unwrap_err();
        assert!(format!("{err:#}").contains("segment.bytes"), "{err:#}");
    }
}
