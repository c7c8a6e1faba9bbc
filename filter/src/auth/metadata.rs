//! The payloads Envoy's `jwt_authn` filter verified, read from the stream's dynamic metadata.
//!
//! With `payload_in_metadata: KEY`, `jwt_authn` stores a verified token's claims as a
//! `google.protobuf.Struct` under `filter_metadata["envoy.filters.http.jwt_authn"][KEY]`. The
//! host hands the whole `envoy.config.core.v3.Metadata` message over in protobuf encoding;
//! this module decodes just the parts it needs into JSON claims. Only a filter can write
//! dynamic metadata: nothing a client sends can put a payload there.

use serde_json::{Map, Number, Value};

/// The metadata namespace `jwt_authn` writes its payloads under.
pub const JWT_AUTHN_NAMESPACE: &str = "envoy.filters.http.jwt_authn";

/// Deeper claims than this are refused rather than decoded (they are not a token's claims).
const MAX_DEPTH: usize = 16;

/// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// The `jwt_authn` namespace of the metadata as `payload key → claims`; empty when the
/// namespace is absent. An undecodable message is an error: the host gave something else.
pub(crate) fn jwt_authn_payloads(metadata: &[u8]) -> Result<Map<String, Value>, &'static str> {
    let mut reader = Reader::new(metadata);
    let mut found = Map::new();
    while let Some((field, wire)) = reader.key()? {
        match (field, wire) {
            // map<string, google.protobuf.Struct> filter_metadata = 1;
            (1, LEN) => {
                let (key, value) = map_entry(reader.bytes()?)?;
                if key == JWT_AUTHN_NAMESPACE {
                    if let Some(Value::Object(namespace)) = value.map(|v| structure(v, 0)).transpose()? {
                        found.extend(namespace);
                    }
                }
            }
            _ => reader.skip(wire)?,
        }
    }
    Ok(found)
}

/// A map entry `{1: string key, 2: message value}`, the value still encoded.
fn map_entry(bytes: &[u8]) -> Result<(String, Option<&[u8]>), &'static str> {
    let mut reader = Reader::new(bytes);
    let (mut key, mut value) = (String::new(), None);
    while let Some((field, wire)) = reader.key()? {
        match (field, wire) {
            (1, LEN) => key = text(reader.bytes()?)?,
            (2, LEN) => value = Some(reader.bytes()?),
            _ => reader.skip(wire)?,
        }
    }
    Ok((key, value))
}

/// `google.protobuf.Struct { map<string, Value> fields = 1; }` as a JSON object.
fn structure(bytes: &[u8], depth: usize) -> Result<Value, &'static str> {
    if depth > MAX_DEPTH {
        return Err("metadata nested too deeply");
    }
    let mut reader = Reader::new(bytes);
    let mut object = Map::new();
    while let Some((field, wire)) = reader.key()? {
        match (field, wire) {
            (1, LEN) => {
                let (key, value) = map_entry(reader.bytes()?)?;
                let value = match value {
                    Some(encoded) => value_of(encoded, depth + 1)?,
                    None => Value::Null,
                };
                object.insert(key, value);
            }
            _ => reader.skip(wire)?,
        }
    }
    Ok(Value::Object(object))
}

/// `google.protobuf.Value`: null 1, number 2, string 3, bool 4, struct 5, list 6.
fn value_of(bytes: &[u8], depth: usize) -> Result<Value, &'static str> {
    let mut reader = Reader::new(bytes);
    let mut value = Value::Null;
    while let Some((field, wire)) = reader.key()? {
        value = match (field, wire) {
            (1, VARINT) => {
                reader.varint()?;
                Value::Null
            }
            (2, FIXED64) => number(f64::from_bits(reader.fixed64()?))?,
            (3, LEN) => Value::String(text(reader.bytes()?)?),
            (4, VARINT) => Value::Bool(reader.varint()? != 0),
            (5, LEN) => structure(reader.bytes()?, depth + 1)?,
            (6, LEN) => list(reader.bytes()?, depth + 1)?,
            _ => {
                reader.skip(wire)?;
                continue;
            }
        };
    }
    Ok(value)
}

/// `google.protobuf.ListValue { repeated Value values = 1; }`.
fn list(bytes: &[u8], depth: usize) -> Result<Value, &'static str> {
    if depth > MAX_DEPTH {
        return Err("metadata nested too deeply");
    }
    let mut reader = Reader::new(bytes);
    let mut items = Vec::new();
    while let Some((field, wire)) = reader.key()? {
        match (field, wire) {
            (1, LEN) => items.push(value_of(reader.bytes()?, depth + 1)?),
            _ => reader.skip(wire)?,
        }
    }
    Ok(Value::Array(items))
}

/// `jwt_authn` turns every JSON number into a double; an integral one becomes an integer
/// again, so `exp` and forwarded claims read as the token wrote them.
fn number(n: f64) -> Result<Value, &'static str> {
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        return Ok(Value::Number(Number::from(n as i64)));
    }
    Number::from_f64(n).map(Value::Number).ok_or("a metadata number is not finite")
}

fn text(bytes: &[u8]) -> Result<String, &'static str> {
    String::from_utf8(bytes.to_vec()).map_err(|_| "a metadata string is not UTF-8")
}

/// A bounds-checked protobuf reader: every read of malformed input is an error, never a panic.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

const TRUNCATED: &str = "truncated metadata";

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, at: 0 }
    }

    /// The next field number and wire type; `None` at the end.
    fn key(&mut self) -> Result<Option<(u64, u8)>, &'static str> {
        if self.at >= self.bytes.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        Ok(Some((key >> 3, (key & 7) as u8)))
    }

    fn varint(&mut self) -> Result<u64, &'static str> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.bytes.get(self.at).ok_or(TRUNCATED)?;
            self.at += 1;
            value |= u64::from(byte & 0x7F) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("a metadata varint is too long")
    }

    fn fixed64(&mut self) -> Result<u64, &'static str> {
        let raw: [u8; 8] = self.take(8)?.try_into().map_err(|_| TRUNCATED)?;
        Ok(u64::from_le_bytes(raw))
    }

    fn bytes(&mut self) -> Result<&'a [u8], &'static str> {
        let len = usize::try_from(self.varint()?).map_err(|_| TRUNCATED)?;
        self.take(len)
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], &'static str> {
        let end = self.at.checked_add(len).ok_or(TRUNCATED)?;
        let slice = self.bytes.get(self.at..end).ok_or(TRUNCATED)?;
        self.at = end;
        Ok(slice)
    }

    fn skip(&mut self, wire: u8) -> Result<(), &'static str> {
        match wire {
            VARINT => self.varint().map(drop),
            FIXED64 => self.take(8).map(drop),
            LEN => self.bytes().map(drop),
            FIXED32 => self.take(4).map(drop),
            _ => Err("unsupported metadata wire type"),
        }
    }
}

/// Protobuf encoding of metadata, for the tests of this module and of the request flow.
#[cfg(test)]
pub(crate) mod encode {
    use serde_json::Value;

    fn varint(mut n: u64, out: &mut Vec<u8>) {
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }

    fn len_field(field: u64, bytes: &[u8], out: &mut Vec<u8>) {
        varint(field << 3 | 2, out);
        varint(bytes.len() as u64, out);
        out.extend_from_slice(bytes);
    }

    fn entry(key: &str, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        len_field(1, key.as_bytes(), &mut out);
        len_field(2, value, &mut out);
        out
    }

    fn value(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        match v {
            Value::Null => out.extend_from_slice(&[8, 0]),
            Value::Number(n) => {
                out.push(2 << 3 | 1);
                out.extend_from_slice(&n.as_f64().unwrap().to_bits().to_le_bytes());
            }
            Value::String(s) => len_field(3, s.as_bytes(), &mut out),
            Value::Bool(b) => out.extend_from_slice(&[4 << 3, u8::from(*b)]),
            Value::Object(_) => len_field(5, &structure(v), &mut out),
            Value::Array(items) => {
                let mut list = Vec::new();
                for item in items {
                    len_field(1, &value(item), &mut list);
                }
                len_field(6, &list, &mut out);
            }
        }
        out
    }

    /// A JSON object as `google.protobuf.Struct`.
    pub(crate) fn structure(object: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        for (key, v) in object.as_object().unwrap() {
            len_field(1, &entry(key, &value(v)), &mut out);
        }
        out
    }

    /// `Metadata` whose `filter_metadata` maps each namespace to its JSON object.
    pub(crate) fn metadata(namespaces: &[(&str, Value)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (namespace, object) in namespaces {
            len_field(1, &entry(namespace, &structure(object)), &mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn payloads_decode_with_their_json_types() {
        let payload = json!({"iss": "https://mesh.example", "sub": "alice", "exp": 1_700_000_600,
            "aud": ["voxgate", "other"], "scope": "tts", "premium": true, "ratio": 0.5,
            "nested": {"a": [1, null]}});
        let bytes = encode::metadata(&[
            ("envoy.filters.http.rbac", json!({"shadow": "x"})),
            (JWT_AUTHN_NAMESPACE, json!({"mesh_payload": payload.clone()})),
        ]);
        let payloads = jwt_authn_payloads(&bytes).unwrap();
        assert_eq!(payloads.len(), 1);
        assert_eq!(payloads["mesh_payload"], payload);
    }

    #[test]
    fn no_namespace_means_no_payload() {
        assert!(jwt_authn_payloads(&[]).unwrap().is_empty());
        let bytes = encode::metadata(&[("istio_authn", json!({"request.auth.principal": "x"}))]);
        assert!(jwt_authn_payloads(&bytes).unwrap().is_empty());
    }

    #[test]
    fn malformed_metadata_is_an_error_not_a_panic() {
        let good = encode::metadata(&[(JWT_AUTHN_NAMESPACE, json!({"k": {"sub": "alice"}}))]);
        for end in 1..good.len() {
            let _ = jwt_authn_payloads(&good[..end]);
        }
        assert!(jwt_authn_payloads(&[0x0A, 0xFF]).is_err());
        assert!(jwt_authn_payloads(&[0x0B]).is_err(), "wire type 3 (groups) is not supported");
        let mut deep = json!("leaf");
        for _ in 0..40 {
            deep = json!({"d": deep});
        }
        let bytes = encode::metadata(&[(JWT_AUTHN_NAMESPACE, json!({"k": deep}))]);
        assert!(jwt_authn_payloads(&bytes).is_err());
    }
}
