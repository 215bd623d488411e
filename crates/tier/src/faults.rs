//! Crash points for crash-consistency tests.
//!
//! `STRATA_FAULT_POINTS=tier.after_upload@3,tier.after_commit` makes the
//! process abort (as `kill -9` would leave it) the third time it passes
//! `tier.after_upload` and the first time it passes `tier.after_commit`.
//! Unset, a point costs one relaxed load of an empty table. The points are in
//! every build so the tests exercise the binary that ships.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Between writing a segment's objects and committing the manifest.
pub const AFTER_UPLOAD: &str = "tier.after_upload";
/// Between committing the manifest and any local deletion.
pub const AFTER_COMMIT: &str = "tier.after_commit";
/// In the middle of writing a lake file (part of it sent, not completed).
pub const LAKE_MID_FILE: &str = "lake.mid_file";
/// After a segment's lake files are written, before its progress is recorded.
pub const LAKE_BEFORE_PROGRESS: &str = "lake.before_progress";

struct Point {
    abort_at: u64,
    hits: AtomicU64,
}

fn table() -> &'static HashMap<String, Point> {
    static TABLE: OnceLock<HashMap<String, Point>> = OnceLock::new();
    TABLE.get_or_init(|| {
        std::env::var("STRATA_FAULT_POINTS")
            .map(|spec| parse(&spec))
            .unwrap_or_default()
    })
}

fn parse(spec: &str) -> HashMap<String, Point> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let (name, n) = s.split_once('@').unwrap_or((s, "1"));
            (
                name.to_string(),
                Point {
                    abort_at: n.parse().unwrap_or(1).max(1),
                    hits: AtomicU64::new(0),
                },
            )
        })
        .collect()
}

/// Passes the point `name`: aborts the process if it is armed and due.
pub fn hit(name: &str) {
    let Some(p) = table().get(name) else {
        return;
    };
    let n = p.hits.fetch_add(1, Ordering::SeqCst) + 1;
    if n == p.abort_at {
        eprintln!("fault point {name} reached (hit {n}): aborting");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        let t = parse("a@3, b ,,c@x");
        assert_eq!(t["a"].abort_at, 3);
        assert_eq!(t["b"].abort_at, 1);
        assert_eq!(t["c"].abort_at, 1);
    }
}
