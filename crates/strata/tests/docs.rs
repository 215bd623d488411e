//! docs/configuration.md lists every configuration key with its real
//! default, and every topic config; nothing more.

use std::collections::BTreeMap;

use strata_broker::topic_config::TOPIC_CONFIG_KEYS;
use strata_broker::BrokerConfig;
use toml::Value;

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md");
    std::fs::read_to_string(path).expect("docs/configuration.md exists")
}

/// Rows of the doc's tables: (section, key, default), where the section is
/// "" for top-level keys, the TOML table name for `[section]` headings, and
/// "topic" for topic configs.
fn documented() -> Vec<(String, String, String)> {
    let mut section: Option<String> = None;
    let mut out = Vec::new();
    for line in doc().lines() {
        if let Some(h) = line.strip_prefix("## ") {
            section = if h.starts_with("Top level") {
                Some(String::new())
            } else if let Some(rest) = h.strip_prefix("`[") {
                Some(rest.split(']').next().unwrap_or_default().to_string())
            } else if h.starts_with("Topic configs") {
                Some("topic".into())
            } else {
                None
            };
            continue;
        }
        let Some(section) = &section else { continue };
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 || !cells[1].starts_with('`') {
            continue;
        }
        let key = cells[1].trim_matches('`').to_string();
        let default = cells[2].trim_matches('`').to_string();
        out.push((section.clone(), key, default));
    }
    out
}

fn code() -> BTreeMap<(String, String), String> {
    let table = toml::Table::try_from(BrokerConfig::default()).unwrap();
    let mut out = BTreeMap::new();
    for (k, v) in table {
        match v {
            Value::Table(t) => {
                for (k2, v2) in t {
                    out.insert((k.clone(), k2), v2.to_string());
                }
            }
            other => {
                out.insert((String::new(), k), other.to_string());
            }
        }
    }
    out
}

#[test]
fn every_config_key_is_documented_with_its_default() {
    let documented: BTreeMap<(String, String), String> = documented()
        .into_iter()
        .filter(|(s, _, _)| s != "topic")
        .map(|(s, k, d)| ((s, k), d))
        .collect();
    let code = code();
    let mut problems = Vec::new();
    for (key, default) in &code {
        match documented.get(key) {
            None => problems.push(format!("{key:?} is not in docs/configuration.md")),
            Some(d) if d != default => {
                problems.push(format!("{key:?}: docs say {d}, code says {default}"))
            }
            _ => {}
        }
    }
    for key in documented.keys() {
        if !code.contains_key(key) {
            problems.push(format!("{key:?} is documented but no such key exists"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(code.len() > 40, "the walk found the keys ({})", code.len());
}

#[test]
fn every_topic_config_is_documented() {
    let documented: Vec<String> = documented()
        .into_iter()
        .filter(|(s, _, _)| s == "topic")
        .map(|(_, k, _)| k)
        .collect();
    let code: Vec<String> = TOPIC_CONFIG_KEYS
        .iter()
        .map(|k| k.name.to_string())
        .collect();
    assert_eq!(
        documented, code,
        "topic configs in docs/configuration.md (in this order)"
    );
}
