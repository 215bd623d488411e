//! Snapshots: the latest value of every key as of a time, derived from the
//! log's timestamps (the Kappa architecture's batch view).
//!
//! Records are applied in log order, partition by partition; a record counts
//! when its timestamp is at or before the snapshot time; a record with a
//! null value (a tombstone) removes its key; records without a key are
//! ignored. The lake's Parquet files are read where they exist (files of
//! dates after the snapshot time are skipped), the log for the rest.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampMillisecondType};
use arrow_array::Array;
use bytes::Bytes;
use object_store::path::Path;
use object_store::ObjectStore;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use strata_tier::remote::Remote;

use crate::records::Row;
use crate::schema::ValueFormat;
use crate::table;
use crate::writer::{date_of, file_offsets};

/// The state being built: key → its latest record.
#[derive(Debug, Default)]
pub struct State {
    latest: HashMap<Bytes, Row>,
    /// Records applied.
    pub applied: u64,
}

impl State {
    /// Applies `rows` (in offset order) with timestamps at or before `as_of`.
    pub fn apply(&mut self, rows: impl IntoIterator<Item = Row>, as_of: i64) {
        for r in rows {
            if r.timestamp > as_of {
                continue;
            }
            let Some(key) = r.key.clone() else { continue };
            self.applied += 1;
            if r.value.is_none() {
                self.latest.remove(&key);
            } else {
                self.latest.insert(key, r);
            }
        }
    }

    /// The surviving records, sorted by key.
    pub fn into_rows(self) -> Vec<Row> {
        let mut rows: Vec<Row> = self.latest.into_values().collect();
        rows.sort_by(|a, b| a.key.cmp(&b.key));
        rows
    }

    /// Keys present.
    pub fn len(&self) -> usize {
        self.latest.len()
    }

    /// Whether no key is present.
    pub fn is_empty(&self) -> bool {
        self.latest.is_empty()
    }
}

/// Applies a partition's lake files (those below `lake_end`, skipping dates
/// after `as_of`) to `state`. Returns the files read.
pub async fn apply_lake_files(
    remote: &Remote,
    topic: &str,
    partition: i32,
    lake_end: i64,
    as_of: i64,
    state: &mut State,
) -> Result<usize, String> {
    let dir = Path::from(format!("lake/{topic}/partition={partition}"));
    let last_date = date_of(as_of);
    let mut files: Vec<(i64, i64, Path)> = remote
        .list(&dir, None)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter_map(|o| {
            let (first, last) = file_offsets(&o.location)?;
            let date = o
                .location
                .parts()
                .find_map(|p| p.as_ref().strip_prefix("date=").map(str::to_string))?;
            (first < lake_end && date <= last_date).then_some((first, last, o.location))
        })
        .collect();
    files.sort_by_key(|f| f.0);
    // Files of one segment (one per date) overlap in offsets: read each such
    // run together and apply it in offset order.
    let mut read = 0;
    let mut i = 0;
    while i < files.len() {
        let mut end = files[i].1;
        let mut j = i + 1;
        while j < files.len() && files[j].0 <= end {
            end = end.max(files[j].1);
            j += 1;
        }
        let mut rows = Vec::new();
        for (_, _, key) in &files[i..j] {
            let (bytes, _) = remote.get(key).await.map_err(|e| e.to_string())?;
            rows.extend(read_rows(bytes, partition).map_err(|e| format!("{key}: {e}"))?);
            read += 1;
        }
        rows.sort_by_key(|r| r.offset);
        state.apply(rows, as_of);
        i = j;
    }
    Ok(read)
}

/// The rows of a lake file (fixed columns only; headers are not read).
pub fn read_rows(bytes: Bytes, partition: i32) -> Result<Vec<Row>, String> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| e.to_string())?;
    let schema = builder.parquet_schema();
    let wanted: Vec<usize> = ["offset", "timestamp", "timestamp_type", "key", "value"]
        .iter()
        .map(|name| {
            schema
                .columns()
                .iter()
                .position(|c| c.path().string() == *name)
                .ok_or_else(|| format!("no column {name}"))
        })
        .collect::<Result<_, _>>()?;
    let mask = ProjectionMask::leaves(schema, wanted);
    let reader = builder
        .with_projection(mask)
        .build()
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| e.to_string())?;
        let col = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| format!("no column {name}"))
        };
        let offsets = col("offset")?.as_primitive::<Int64Type>().clone();
        let ts = col("timestamp")?
            .as_primitive::<TimestampMillisecondType>()
            .clone();
        let ts_type = col("timestamp_type")?.as_string::<i32>().clone();
        let keys = col("key")?.as_binary::<i32>().clone();
        let values = col("value")?.as_binary::<i32>().clone();
        for i in 0..batch.num_rows() {
            out.push(Row {
                partition,
                offset: offsets.value(i),
                timestamp: ts.value(i),
                log_append_time: ts_type.value(i) == "LogAppendTime",
                key: keys
                    .is_valid(i)
                    .then(|| Bytes::copy_from_slice(keys.value(i))),
                value: values
                    .is_valid(i)
                    .then(|| Bytes::copy_from_slice(values.value(i))),
                headers: Vec::new(),
            });
        }
    }
    Ok(out)
}

/// Writes the snapshot as one Parquet file (the lake's columns, one row per
/// key). Returns its size.
pub async fn write(
    store: Arc<dyn ObjectStore>,
    path: &Path,
    rows: Vec<Row>,
    format: Arc<ValueFormat>,
) -> Result<u64, String> {
    let bytes = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
        let schema = table::arrow_schema(&format);
        let mut buf = Vec::new();
        let mut w =
            ArrowWriter::try_new(&mut buf, schema.clone(), None).map_err(|e| e.to_string())?;
        for chunk in rows.chunks(100_000) {
            let (batch, _) = table::record_batch(chunk, &format, &schema)?;
            w.write(&batch).map_err(|e| e.to_string())?;
        }
        if rows.is_empty() {
            let (batch, _) = table::record_batch(&[], &format, &schema)?;
            w.write(&batch).map_err(|e| e.to_string())?;
        }
        w.close().map_err(|e| e.to_string())?;
        Ok(buf)
    })
    .await
    .map_err(|e| e.to_string())??;
    let size = bytes.len() as u64;
    use object_store::ObjectStoreExt;
    store
        .put(path, Bytes::from(bytes).into())
        .await
        .map_err(|e| format!("writing the snapshot to {path}: {e}"))?;
    Ok(size)
}

/// Per-partition summary of a snapshot.
pub type Sources = BTreeMap<i32, (usize, u64)>;

#[cfg(test)]
mod tests {
    use super::*;

    fn r(offset: i64, key: &str, value: Option<&str>, ts: i64) -> Row {
        Row {
            partition: 0,
            offset,
            timestamp: ts,
            log_append_time: false,
            key: Some(Bytes::from(key.to_string())),
            value: value.map(|v| Bytes::from(v.to_string())),
            headers: Vec::new(),
        }
    }

    #[test]
    fn latest_values_as_of_a_time_with_tombstones() {
        let rows = vec![
            r(0, "a", Some("a1"), 10),
            r(1, "b", Some("b1"), 20),
            r(2, "a", Some("a2"), 30),
            r(3, "b", None, 40),
            r(4, "c", Some("c1"), 50),
            r(5, "a", None, 60),
        ];
        let at = |t: i64| {
            let mut s = State::default();
            s.apply(rows.clone(), t);
            s.into_rows()
                .into_iter()
                .map(|r| {
                    (
                        String::from_utf8(r.key.unwrap().to_vec()).unwrap(),
                        String::from_utf8(r.value.unwrap().to_vec()).unwrap(),
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(at(5), vec![]);
        assert_eq!(
            at(25),
            vec![("a".into(), "a1".into()), ("b".into(), "b1".into())]
        );
        assert_eq!(at(45), vec![("a".into(), "a2".into())]);
        assert_eq!(at(100), vec![("c".into(), "c1".into())]);
    }
}
