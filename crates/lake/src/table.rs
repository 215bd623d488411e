//! Rows as Arrow record batches: the fixed columns every lake table has, then
//! the typed value columns of the topic's schema.

use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, Int32Builder, Int64Builder, ListBuilder, StringBuilder, StructBuilder,
};
use arrow_array::{ArrayRef, RecordBatch, TimestampMillisecondArray};
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

use crate::records::Row;
use crate::schema::ValueFormat;

fn header_fields() -> Fields {
    Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Binary, true),
    ])
}

/// The table's schema for a topic with this value format.
pub fn arrow_schema(format: &ValueFormat) -> SchemaRef {
    let mut fields = vec![
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("timestamp_type", DataType::Utf8, false),
        Field::new("key", DataType::Binary, true),
        Field::new("value", DataType::Binary, true),
        Field::new(
            "headers",
            DataType::List(Arc::new(Field::new(
                "item",
                DataType::Struct(header_fields()),
                true,
            ))),
            false,
        ),
    ];
    fields.extend(format.fields().iter().map(|f| f.as_ref().clone()));
    Arc::new(Schema::new(fields))
}

/// One record batch of `rows`. Returns it and how many values did not match
/// the schema (their typed columns are null; the raw value is kept).
pub fn record_batch(
    rows: &[Row],
    format: &ValueFormat,
    schema: &SchemaRef,
) -> Result<(RecordBatch, u64), String> {
    let mut partition = Int32Builder::with_capacity(rows.len());
    let mut offset = Int64Builder::with_capacity(rows.len());
    let mut timestamp = Vec::with_capacity(rows.len());
    let mut ts_type = StringBuilder::new();
    let mut key = BinaryBuilder::new();
    let mut value = BinaryBuilder::new();
    let mut headers = ListBuilder::new(StructBuilder::new(
        header_fields(),
        vec![
            Box::new(StringBuilder::new()),
            Box::new(BinaryBuilder::new()),
        ],
    ));
    for r in rows {
        partition.append_value(r.partition);
        offset.append_value(r.offset);
        timestamp.push(r.timestamp);
        ts_type.append_value(if r.log_append_time {
            "LogAppendTime"
        } else {
            "CreateTime"
        });
        key.append_option(r.key.as_deref());
        value.append_option(r.value.as_deref());
        let s = headers.values();
        for (k, v) in &r.headers {
            s.field_builder::<StringBuilder>(0)
                .expect("key builder")
                .append_value(k);
            s.field_builder::<BinaryBuilder>(1)
                .expect("value builder")
                .append_option(v.as_deref());
            s.append(true);
        }
        headers.append(true);
    }
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(partition.finish()),
        Arc::new(offset.finish()),
        Arc::new(TimestampMillisecondArray::from(timestamp).with_timezone("UTC")),
        Arc::new(ts_type.finish()),
        Arc::new(key.finish()),
        Arc::new(value.finish()),
        Arc::new(headers.finish()),
    ];
    let typed = format.fields();
    let mut mismatches = 0u64;
    if !typed.is_empty() {
        let decoded: Vec<serde_json::Map<String, serde_json::Value>> = rows
            .iter()
            .map(|r| match format.decode(r.value.as_deref()) {
                Some(m) => m,
                None => {
                    // Tombstones have no value to match.
                    if r.value.is_some() {
                        mismatches += 1;
                    }
                    serde_json::Map::new()
                }
            })
            .collect();
        let typed_schema = Arc::new(Schema::new(typed.clone()));
        let mut decoder = arrow_json::ReaderBuilder::new(typed_schema)
            .with_batch_size(rows.len().max(1))
            .build_decoder()
            .map_err(|e| e.to_string())?;
        decoder
            .serialize(&decoded)
            .map_err(|e| format!("typed columns: {e}"))?;
        let batch = decoder
            .flush()
            .map_err(|e| format!("typed columns: {e}"))?
            .ok_or("typed columns: no rows")?;
        columns.extend(batch.columns().iter().cloned());
    }
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|e| e.to_string())?;
    Ok((batch, mismatches))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Array;
    use bytes::Bytes;

    fn row(offset: i64, value: Option<&str>) -> Row {
        Row {
            partition: 1,
            offset,
            timestamp: 1_700_000_000_000 + offset,
            log_append_time: false,
            key: Some(Bytes::from(format!("k{offset}"))),
            value: value.map(|v| Bytes::from(v.to_string())),
            headers: vec![
                ("a".into(), Some(Bytes::from_static(b"1"))),
                ("a".into(), None),
            ],
        }
    }

    #[test]
    fn rows_become_fixed_and_typed_columns() {
        let f = ValueFormat::parse(
            "json",
            Some(r#"{"type": "object", "properties": {"n": {"type": "integer"}, "s": {"type": "string"}}}"#),
        )
        .unwrap();
        let schema = arrow_schema(&f);
        let rows = vec![
            row(0, Some(r#"{"n": 1, "s": "x"}"#)),
            row(1, Some("oops")),
            row(2, None),
        ];
        let (batch, mismatches) = record_batch(&rows, &f, &schema).unwrap();
        assert_eq!(mismatches, 1, "the tombstone is not a mismatch");
        assert_eq!(batch.num_rows(), 3);
        assert_eq!(batch.num_columns(), 9);
        let n = batch.column_by_name("n").unwrap();
        assert!(n.is_valid(0) && n.is_null(1) && n.is_null(2));
        let raw = batch.column_by_name("value").unwrap();
        assert!(
            raw.is_valid(1) && raw.is_null(2),
            "the raw value is kept, tombstones are null"
        );
        let headers = batch.column_by_name("headers").unwrap();
        let list = headers
            .as_any()
            .downcast_ref::<arrow_array::ListArray>()
            .unwrap();
        assert_eq!(list.value_length(0), 2, "duplicate header names are kept");
    }
}
