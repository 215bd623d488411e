//! Every object key the broker writes, built in one place.
//!
//! Layout below the configured prefix:
//! ```text
//! cluster/metadata.json                         topics, ids, configs (snapshot)
//! cluster/offsets.json                          committed offsets (snapshot)
//! topics/{topic}-{topic_id}/{partition:05}/manifest.json
//! topics/{topic}-{topic_id}/{partition:05}/manifest/{base:020}-{generation:020}.json
//! topics/{topic}-{topic_id}/{partition:05}/segments/{base:020}-{next:020}.log
//! topics/{topic}-{topic_id}/{partition:05}/segments/{base:020}-{next:020}.idx
//! ```
//! The topic id in every partition key means a topic deleted and created again
//! never mixes with the old one's objects; zero-padded numbers make keys sort
//! by offset, so listing from a key finds everything after it.

use object_store::path::Path;
use uuid::Uuid;

/// Directory of all topics.
pub const TOPICS: &str = "topics";

/// `cluster/metadata.json`.
pub fn metadata_snapshot() -> Path {
    Path::from("cluster/metadata.json")
}

/// `cluster/offsets.json`.
pub fn offsets_snapshot() -> Path {
    Path::from("cluster/offsets.json")
}

/// A unique key for probing the store's behaviour.
pub fn probe() -> Path {
    Path::from(format!("cluster/probe-{}", Uuid::new_v4()))
}

/// The directory of one topic incarnation.
pub fn topic_dir(topic: &str, topic_id: Uuid) -> Path {
    Path::from(format!("{TOPICS}/{topic}-{topic_id}"))
}

/// The directory of one partition.
pub fn partition_dir(topic: &str, topic_id: Uuid, partition: i32) -> Path {
    Path::from(format!("{TOPICS}/{topic}-{topic_id}/{partition:05}"))
}

/// The partition's root manifest.
pub fn manifest(topic: &str, topic_id: Uuid, partition: i32) -> Path {
    Path::from(format!(
        "{}/manifest.json",
        partition_dir(topic, topic_id, partition)
    ))
}

/// A sealed chunk of the partition's manifest.
pub fn manifest_chunk(
    topic: &str,
    topic_id: Uuid,
    partition: i32,
    base: i64,
    generation: u64,
) -> Path {
    Path::from(format!(
        "{}/manifest/{base:020}-{generation:020}.json",
        partition_dir(topic, topic_id, partition)
    ))
}

/// The directory of the partition's segment objects.
pub fn segments_dir(topic: &str, topic_id: Uuid, partition: i32) -> Path {
    Path::from(format!(
        "{}/segments",
        partition_dir(topic, topic_id, partition)
    ))
}

/// A segment's record batches.
pub fn segment_log(topic: &str, topic_id: Uuid, partition: i32, base: i64, next: i64) -> Path {
    Path::from(format!(
        "{}/{base:020}-{next:020}.log",
        segments_dir(topic, topic_id, partition)
    ))
}

/// A segment's indexes, producer snapshot and leader epoch.
pub fn segment_index(topic: &str, topic_id: Uuid, partition: i32, base: i64, next: i64) -> Path {
    Path::from(format!(
        "{}/{base:020}-{next:020}.idx",
        segments_dir(topic, topic_id, partition)
    ))
}

/// The key from which a listing finds the segment objects at or after `offset`.
pub fn segments_from(topic: &str, topic_id: Uuid, partition: i32, offset: i64) -> Path {
    Path::from(format!(
        "{}/{offset:020}",
        segments_dir(topic, topic_id, partition)
    ))
}

/// The base offset of a segment object key.
pub fn segment_base(key: &Path) -> Option<i64> {
    let name = key.filename()?;
    name.split('-').next()?.parse().ok()
}

/// The topic (name and id) a key belongs to, for per-topic accounting.
pub fn topic_of(key: &str) -> Option<(&str, Uuid)> {
    let rest = key.split_once(&format!("{TOPICS}/"))?.1;
    let dir = rest.split('/').next()?;
    // The id is the last 36 characters: topic names may hold '-'.
    let split = dir.len().checked_sub(37)?;
    let (topic, id) = (dir.get(..split)?, dir.get(split + 1..)?);
    Some((topic, Uuid::parse_str(id).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_offset_and_carry_the_topic_id() {
        let id = Uuid::new_v4();
        let a = segment_log("orders-eu", id, 3, 99, 200).to_string();
        let b = segment_log("orders-eu", id, 3, 200, 1000).to_string();
        assert!(a < b);
        assert!(a.contains(&id.to_string()));
        assert_eq!(
            segment_base(&segment_index("t", id, 0, 12345, 12400)),
            Some(12345)
        );
        assert!(
            segments_from("t", id, 0, 200).to_string()
                <= segment_log("t", id, 0, 200, 300).to_string()
        );
    }

    #[test]
    fn topic_of_finds_names_with_dashes() {
        let id = Uuid::new_v4();
        let key = segment_log("a-b-c", id, 0, 0, 1).to_string();
        assert_eq!(topic_of(&key), Some(("a-b-c", id)));
        assert_eq!(topic_of(&format!("prefix/{key}")), Some(("a-b-c", id)));
        assert_eq!(topic_of("cluster/metadata.json"), None);
    }
}
