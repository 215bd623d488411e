//! Value schemas: how a topic's values become typed Parquet columns.
//!
//! - `bytes`: no typed columns, the raw value only.
//! - `json` with a JSON Schema (an object schema): each property becomes a
//!   column; `string` → Utf8, `integer` → Int64, `number` → Float64,
//!   `boolean` → Boolean, `array` → List of its `items`, `object` → Struct of
//!   its properties. `"type": ["T", "null"]` is a nullable T. A value that is
//!   not valid JSON, not an object, misses a `required` property or has a
//!   property of the wrong type does not match: its typed columns are null.
//! - `avro` with an Avro record schema; values are Avro binary datums. `int` →
//!   Int32, `long` → Int64, `float` → Float32, `double` → Float64, `string`
//!   and `enum` → Utf8, `boolean` → Boolean, `bytes` and `fixed` → Utf8 (hex),
//!   `array` → List, `record` → Struct, `map` and unions other than
//!   `[null, T]` → Utf8 (JSON), logical types as their underlying type. A
//!   value that does not decode does not match.
//!
//! Typed columns are named after the fields; a field named like one of the
//! fixed columns (`partition`, `offset`, ...) gets a `value_` prefix.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Fields};
use serde_json::Value;

/// The columns every lake table has, in order.
pub const BASE_COLUMNS: [&str; 7] = [
    "partition",
    "offset",
    "timestamp",
    "timestamp_type",
    "key",
    "value",
    "headers",
];

/// A JSON Schema node Strata understands.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonType {
    /// `string`.
    String,
    /// `integer`.
    Integer,
    /// `number`.
    Number,
    /// `boolean`.
    Boolean,
    /// `array` of `items`.
    Array(Box<JsonType>),
    /// `object` with properties in order and the required ones.
    Object {
        /// Properties in the order the schema lists them.
        properties: Vec<(String, JsonType)>,
        /// Properties that must be present and non-null.
        required: Vec<String>,
    },
}

/// How a topic's values are decoded.
#[derive(Debug, Clone)]
pub enum ValueFormat {
    /// Raw bytes only.
    Bytes,
    /// JSON values checked against a JSON Schema.
    Json(JsonType),
    /// Avro binary datums of a record schema.
    Avro(Box<apache_avro::Schema>),
}

impl ValueFormat {
    /// Parses `lake.value.format` with its schema text (inline JSON).
    pub fn parse(format: &str, schema: Option<&str>) -> Result<Self, String> {
        match (format, schema.map(str::trim).filter(|s| !s.is_empty())) {
            ("bytes", _) => Ok(Self::Bytes),
            ("json", None) | ("avro", None) => Err(format!(
                "lake.value.format={format} needs a schema: set lake.value.schema (inline) or lake.value.schema.file"
            )),
            ("json", Some(s)) => {
                let v: Value = serde_json::from_str(s).map_err(|e| format!("lake.value.schema is not JSON: {e}"))?;
                let t = parse_json_schema(&v)?;
                if !matches!(t, JsonType::Object { .. }) {
                    return Err("lake.value.schema must describe an object (\"type\": \"object\")".into());
                }
                Ok(Self::Json(t))
            }
            ("avro", Some(s)) => {
                let schema = apache_avro::Schema::parse_str(s).map_err(|e| format!("lake.value.schema is not an Avro schema: {e}"))?;
                if !matches!(schema, apache_avro::Schema::Record(_)) {
                    return Err("lake.value.schema must be an Avro record".into());
                }
                Ok(Self::Avro(Box::new(schema)))
            }
            (other, _) => Err(format!("lake.value.format '{other}' is not bytes, json or avro")),
        }
    }

    /// The typed columns (empty for `bytes`).
    pub fn fields(&self) -> Fields {
        let raw: Vec<Field> = match self {
            Self::Bytes => Vec::new(),
            Self::Json(JsonType::Object { properties, .. }) => properties
                .iter()
                .map(|(n, t)| Field::new(n, json_arrow(t), true))
                .collect(),
            Self::Json(_) => Vec::new(),
            Self::Avro(s) => match s.as_ref() {
                apache_avro::Schema::Record(r) => r
                    .fields
                    .iter()
                    .map(|f| Field::new(&f.name, avro_arrow(&f.schema), true))
                    .collect(),
                _ => Vec::new(),
            },
        };
        raw.into_iter()
            .map(|f| {
                if BASE_COLUMNS.contains(&f.name().as_str()) {
                    f.clone().with_name(format!("value_{}", f.name()))
                } else {
                    f
                }
            })
            .collect()
    }

    /// The value as a JSON object keyed by typed column name, or `None` when
    /// it does not match the schema.
    pub fn decode(&self, value: Option<&[u8]>) -> Option<serde_json::Map<String, Value>> {
        let bytes = value?;
        let object = match self {
            Self::Bytes => return None,
            Self::Json(t) => {
                let v: Value = serde_json::from_slice(bytes).ok()?;
                if !json_matches(t, &v) {
                    return None;
                }
                match v {
                    Value::Object(m) => m,
                    _ => return None,
                }
            }
            Self::Avro(schema) => {
                let mut reader = bytes;
                let v = apache_avro::from_avro_datum(schema, &mut reader, None).ok()?;
                if !reader.is_empty() {
                    return None;
                }
                match avro_json(&v, schema) {
                    Value::Object(m) => m,
                    _ => return None,
                }
            }
        };
        Some(
            object
                .into_iter()
                .map(|(k, v)| {
                    if BASE_COLUMNS.contains(&k.as_str()) {
                        (format!("value_{k}"), v)
                    } else {
                        (k, v)
                    }
                })
                .collect(),
        )
    }
}

fn parse_json_schema(v: &Value) -> Result<JsonType, String> {
    let ty = match v.get("type") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(types)) => {
            let non_null: Vec<&str> = types
                .iter()
                .filter_map(Value::as_str)
                .filter(|t| *t != "null")
                .collect();
            match non_null.as_slice() {
                [one] => one.to_string(),
                _ => return Err(format!("unsupported union type {v}: use [\"T\", \"null\"]")),
            }
        }
        _ => return Err(format!("every schema node needs a \"type\": {v}")),
    };
    Ok(match ty.as_str() {
        "string" => JsonType::String,
        "integer" => JsonType::Integer,
        "number" => JsonType::Number,
        "boolean" => JsonType::Boolean,
        "array" => JsonType::Array(Box::new(parse_json_schema(
            v.get("items").ok_or("an array schema needs \"items\"")?,
        )?)),
        "object" => {
            let mut properties = Vec::new();
            if let Some(Value::Object(props)) = v.get("properties") {
                for (name, schema) in props {
                    properties.push((name.clone(), parse_json_schema(schema)?));
                }
            }
            let required = v
                .get("required")
                .and_then(Value::as_array)
                .map(|r| {
                    r.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            JsonType::Object {
                properties,
                required,
            }
        }
        other => return Err(format!("unsupported JSON Schema type '{other}'")),
    })
}

fn json_arrow(t: &JsonType) -> DataType {
    match t {
        JsonType::String => DataType::Utf8,
        JsonType::Integer => DataType::Int64,
        JsonType::Number => DataType::Float64,
        JsonType::Boolean => DataType::Boolean,
        JsonType::Array(item) => {
            DataType::List(Arc::new(Field::new("item", json_arrow(item), true)))
        }
        JsonType::Object { properties, .. } => DataType::Struct(
            properties
                .iter()
                .map(|(n, t)| Field::new(n, json_arrow(t), true))
                .collect(),
        ),
    }
}

/// Whether `v` matches `t` (null matches anything: columns are nullable).
fn json_matches(t: &JsonType, v: &Value) -> bool {
    match (t, v) {
        (_, Value::Null) => true,
        (JsonType::String, Value::String(_)) => true,
        (JsonType::Integer, Value::Number(n)) => n.is_i64(),
        (JsonType::Number, Value::Number(_)) => true,
        (JsonType::Boolean, Value::Bool(_)) => true,
        (JsonType::Array(item), Value::Array(items)) => items.iter().all(|i| json_matches(item, i)),
        (
            JsonType::Object {
                properties,
                required,
            },
            Value::Object(m),
        ) => {
            required
                .iter()
                .all(|r| m.get(r).is_some_and(|v| !v.is_null()))
                && properties
                    .iter()
                    .all(|(name, t)| m.get(name).is_none_or(|v| json_matches(t, v)))
        }
        _ => false,
    }
}

fn nullable_inner(u: &apache_avro::schema::UnionSchema) -> Option<&apache_avro::Schema> {
    let variants = u.variants();
    match variants {
        [apache_avro::Schema::Null, t] | [t, apache_avro::Schema::Null] => Some(t),
        _ => None,
    }
}

fn avro_arrow(s: &apache_avro::Schema) -> DataType {
    use apache_avro::Schema as S;
    match s {
        S::Boolean => DataType::Boolean,
        S::Int | S::Date | S::TimeMillis => DataType::Int32,
        S::Long
        | S::TimeMicros
        | S::TimestampMillis
        | S::TimestampMicros
        | S::TimestampNanos
        | S::LocalTimestampMillis
        | S::LocalTimestampMicros
        | S::LocalTimestampNanos => DataType::Int64,
        S::Float => DataType::Float32,
        S::Double => DataType::Float64,
        S::Array(a) => DataType::List(Arc::new(Field::new("item", avro_arrow(&a.items), true))),
        S::Record(r) => DataType::Struct(
            r.fields
                .iter()
                .map(|f| Field::new(&f.name, avro_arrow(&f.schema), true))
                .collect(),
        ),
        S::Union(u) => nullable_inner(u).map_or(DataType::Utf8, avro_arrow),
        _ => DataType::Utf8,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An Avro value as JSON shaped for [`avro_arrow`]'s columns.
fn avro_json(v: &apache_avro::types::Value, s: &apache_avro::Schema) -> Value {
    use apache_avro::types::Value as V;
    use apache_avro::Schema as S;
    match (v, s) {
        (V::Null, _) => Value::Null,
        (V::Union(_, inner), S::Union(u)) => match nullable_inner(u) {
            Some(t) => avro_json(inner, t),
            None => Value::String(plain_json(inner).to_string()),
        },
        (V::Record(fields), S::Record(r)) => Value::Object(
            fields
                .iter()
                .map(|(name, fv)| {
                    let fs = r
                        .lookup
                        .get(name)
                        .map(|i| &r.fields[*i].schema)
                        .unwrap_or(&S::Null);
                    (name.clone(), avro_json(fv, fs))
                })
                .collect(),
        ),
        (V::Array(items), S::Array(a)) => {
            Value::Array(items.iter().map(|i| avro_json(i, &a.items)).collect())
        }
        (V::Map(_), _) => Value::String(plain_json(v).to_string()),
        (other, _) => plain_json(other),
    }
}

/// An Avro value as plain JSON (no schema shaping).
fn plain_json(v: &apache_avro::types::Value) -> Value {
    use apache_avro::types::Value as V;
    match v {
        V::Null => Value::Null,
        V::Boolean(b) => Value::Bool(*b),
        V::Int(i) | V::Date(i) | V::TimeMillis(i) => Value::from(*i),
        V::Long(i)
        | V::TimeMicros(i)
        | V::TimestampMillis(i)
        | V::TimestampMicros(i)
        | V::TimestampNanos(i)
        | V::LocalTimestampMillis(i)
        | V::LocalTimestampMicros(i)
        | V::LocalTimestampNanos(i) => Value::from(*i),
        V::Float(f) => Value::from(*f),
        V::Double(f) => Value::from(*f),
        V::String(s) | V::Enum(_, s) => Value::String(s.clone()),
        V::Bytes(b) | V::Fixed(_, b) => Value::String(hex(b)),
        V::Uuid(u) => Value::String(u.to_string()),
        V::Union(_, inner) => plain_json(inner),
        V::Array(items) => Value::Array(items.iter().map(plain_json).collect()),
        V::Map(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), plain_json(v))).collect()),
        V::Record(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), plain_json(v)))
                .collect(),
        ),
        other => Value::String(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDER: &str = r#"{"type": "object", "required": ["id"], "properties": {
        "id": {"type": "integer"}, "amount": {"type": "number"}, "note": {"type": ["string", "null"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "customer": {"type": "object", "properties": {"name": {"type": "string"}, "vip": {"type": "boolean"}}},
        "offset": {"type": "integer"}}}"#;

    #[test]
    fn json_schemas_map_to_typed_columns_and_check_values() {
        let f = ValueFormat::parse("json", Some(ORDER)).unwrap();
        let names: Vec<String> = f.fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(
            names,
            ["id", "amount", "note", "tags", "customer", "value_offset"]
        );
        assert_eq!(
            f.fields()[4].data_type().to_string(),
            "Struct(\"name\": Utf8, \"vip\": Boolean)"
        );
        let ok = br#"{"id": 7, "amount": 2.5, "tags": ["a"], "customer": {"name": "x", "vip": true}, "offset": 3, "extra": 1}"#;
        let decoded = f.decode(Some(ok)).unwrap();
        assert_eq!(decoded["id"], 7);
        assert_eq!(decoded["value_offset"], 3);
        for bad in [
            &br#"{"amount": 1}"#[..],     // required id missing
            br#"{"id": "seven"}"#,        // wrong type
            br#"{"id": 1.5}"#,            // not an integer
            br#"{"id": 1, "tags": [1]}"#, // wrong item type
            br#"[1, 2]"#,                 // not an object
            b"not json",
        ] {
            assert!(
                f.decode(Some(bad)).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(f.decode(None).is_none());
    }

    #[test]
    fn avro_records_decode_into_typed_columns() {
        let schema = r#"{"type": "record", "name": "Reading", "fields": [
            {"name": "sensor", "type": "string"}, {"name": "value", "type": "double"},
            {"name": "count", "type": "int"}, {"name": "unit", "type": ["null", "string"], "default": null},
            {"name": "pos", "type": {"type": "record", "name": "Pos", "fields": [{"name": "x", "type": "long"}]}}]}"#;
        let f = ValueFormat::parse("avro", Some(schema)).unwrap();
        let parsed = apache_avro::Schema::parse_str(schema).unwrap();
        let mut rec = apache_avro::types::Record::new(&parsed).unwrap();
        rec.put("sensor", "s1");
        rec.put("value", 21.5f64);
        rec.put("count", 3i32);
        rec.put(
            "unit",
            apache_avro::types::Value::Union(1, Box::new("C".into())),
        );
        rec.put(
            "pos",
            apache_avro::types::Value::Record(vec![(
                "x".into(),
                apache_avro::types::Value::Long(9),
            )]),
        );
        let bytes = apache_avro::to_avro_datum(&parsed, rec).unwrap();
        let d = f.decode(Some(&bytes)).unwrap();
        assert_eq!(d["sensor"], "s1");
        assert_eq!(
            d["value_value"], 21.5,
            "a field named like a fixed column is prefixed"
        );
        assert_eq!(d["unit"], "C");
        assert_eq!(d["pos"]["x"], 9);
        assert!(f.decode(Some(b"\x02")).is_none(), "truncated datum");
        assert!(ValueFormat::parse("avro", Some("{\"type\": \"string\"}")).is_err());
        assert!(ValueFormat::parse("json", None).is_err());
        assert!(ValueFormat::parse("xml", Some("{}")).is_err());
    }
}
