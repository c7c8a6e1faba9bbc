//! Reading a compact JWS before any cryptography: three base64url segments, a JSON header
//! naming a supported algorithm, and a JSON claims object. Everything here is cheap and
//! untrusted; it only decides whether a signature check is worth doing at all.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};

use super::jwks::{decode_base64url, Alg};
use super::reject;
use crate::decision::{Code, Rejection};

/// A token that is well formed, with a supported algorithm, but not yet verified.
pub(crate) struct UnverifiedToken {
    pub alg: Alg,
    pub kid: Option<String>,
    pub claims: Map<String, Value>,
}

/// Splits and decodes the token; any structural problem is a 401 before any key is touched.
pub(crate) fn parse(token: &str) -> Result<UnverifiedToken, Rejection> {
    let mut segments = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (segments.next(), segments.next(), segments.next(), segments.next())
    else {
        return Err(malformed("a JWT has exactly three dot-separated segments"));
    };
    if [header, payload, signature].iter().any(|s| s.is_empty() || !is_base64url(s)) {
        return Err(malformed("a JWT segment is empty or not base64url"));
    }
    let header = decode_object(header).ok_or_else(|| malformed("the JWT header is not a JSON object"))?;
    let alg = match header.get("alg") {
        Some(Value::String(name)) => Alg::from_name(name)
            .ok_or_else(|| reject::invalid_token(Code::AlgorithmNotAllowed, "the token's algorithm is not accepted"))?,
        _ => return Err(malformed("the JWT header has no algorithm")),
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(malformed("the JWT key id is not a string")),
    };
    if header.get("crit").is_some_and(|crit| crit != &Value::Array(Vec::new())) {
        return Err(malformed("the JWT header has critical extensions this filter does not support"));
    }
    if let Some(typ) = header.get("typ") {
        let is_jwt = typ.as_str().is_some_and(|t| {
            let t = t.to_ascii_uppercase();
            t == "JWT" || t.ends_with("+JWT")
        });
        if !is_jwt {
            return Err(malformed("the token type is not JWT"));
        }
    }
    let claims = decode_object(payload).ok_or_else(|| malformed("the JWT claims are not a JSON object"))?;
    Ok(UnverifiedToken { alg, kid, claims })
}

fn malformed(description: &'static str) -> Rejection {
    reject::invalid_token(Code::TokenMalformed, description)
}

fn is_base64url(segment: &str) -> bool {
    segment.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn decode_object(segment: &str) -> Option<Map<String, Value>> {
    let bytes = decode_base64url(segment)?;
    serde_json::from_slice::<UniqueMembers>(&bytes).ok().map(|o| o.0)
}

/// A JSON object whose members are unique: with duplicates, two parsers could read two
/// different `sub` or `exp` values from the same signed bytes, so such tokens are refused.
struct UniqueMembers(Map<String, Value>);

impl<'de> Deserialize<'de> for UniqueMembers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(UniqueMembersVisitor)
    }
}

struct UniqueMembersVisitor;

impl<'de> Visitor<'de> for UniqueMembersVisitor {
    type Value = UniqueMembers;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object without duplicate members")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<UniqueMembers, A::Error> {
        let mut members = Map::new();
        while let Some(name) = access.next_key::<String>()? {
            let value: Value = access.next_value()?;
            if members.insert(name, value).is_some() {
                return Err(serde::de::Error::custom("duplicate member"));
            }
        }
        Ok(UniqueMembers(members))
    }
}
