//! The `api_keys` provider: opaque keys (`Authorization: Bearer sk-…`) known only by their
//! salted, peppered hashes, each with its subject, plan and scopes.
//!
//! A key's hash is `HMAC-SHA256(pepper, salt ‖ key)`, base64url. The pepper is a secret of
//! the deployment read from the VM's environment at configure time (never from the plugin
//! configuration, which anyone who reads the WasmPlugin can read); without `pepper_env` it is
//! empty and the hashes are only salted. A presented key is hashed with every entry's salt and
//! compared with every entry, each comparison in constant time and none cut short, so the time
//! of a lookup tells nothing about which entry (if any) matched or how much of a hash did.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::claims;
use super::jwks::decode_base64url;
use super::reject;
use crate::error::ConfigError;
use crate::decision::{Code, Rejection};

/// The issuer named for API-key identities (`x-voxgate-issuer`).
pub const API_KEY_ISSUER: &str = "voxgate:api_keys";

/// Each lookup hashes the key once per entry: this bounds its cost.
const MAX_KEYS: usize = 1024;
const MIN_SALT_BYTES: usize = 16;
const HASH_BYTES: usize = 32;
const MAX_KEY_BYTES: usize = 512;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeysConfig {
    /// Environment variable of the VM (`vm_config.environment_variables`) holding the pepper.
    #[serde(default)]
    pub pepper_env: Option<String>,
    pub keys: Vec<ApiKeyConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Names the key in logs and configuration errors; never a secret.
    pub id: String,
    /// base64url, at least 16 bytes.
    pub salt: String,
    /// base64url of `HMAC-SHA256(pepper, salt ‖ key)`.
    pub hash: String,
    pub subject: String,
    #[serde(default)]
    pub plan: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// A revoked key is refused (`api_key_revoked`) rather than unknown, so its holder's
    /// requests are recognisable in logs and metrics.
    #[serde(default)]
    pub revoked: bool,
}

struct Entry {
    salt: Vec<u8>,
    hash: [u8; HASH_BYTES],
    revoked: bool,
    subject: String,
    plan: Option<String>,
    /// The claims an API key stands for: `sub`, `iss`, `scope`, `plan`, `api_key_id`.
    claims: Map<String, Value>,
}

/// The compiled key table.
pub(crate) struct ApiKeys {
    pepper_env: Option<String>,
    pepper: Vec<u8>,
    entries: Vec<Entry>,
}

/// What a key stands for, once recognised.
pub(crate) struct KeyIdentity<'a> {
    pub subject: &'a str,
    pub plan: Option<&'a str>,
    pub claims: &'a Map<String, Value>,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::new(format!("auth.api_keys.{}", field.into()), message)
}

impl ApiKeys {
    pub(crate) fn compile(config: ApiKeysConfig) -> Result<ApiKeys, ConfigError> {
        if config.keys.is_empty() || config.keys.len() > MAX_KEYS {
            return Err(err("keys", format!("between 1 and {MAX_KEYS} keys")));
        }
        if let Some(name) = &config.pepper_env {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(err("pepper_env", "an environment variable name ([A-Za-z0-9_]+)"));
            }
        }
        let mut ids = std::collections::HashSet::new();
        let mut entries = Vec::with_capacity(config.keys.len());
        for (index, key) in config.keys.into_iter().enumerate() {
            let path = format!("keys[{index}]");
            if key.id.is_empty() || key.id.len() > 64 || !key.id.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(err(format!("{path}.id"), "1 to 64 printable ASCII characters"));
            }
            if !ids.insert(key.id.clone()) {
                return Err(err(format!("{path}.id"), "duplicate key id"));
            }
            let salt = decode_base64url(&key.salt)
                .filter(|s| s.len() >= MIN_SALT_BYTES)
                .ok_or_else(|| err(format!("{path}.salt"), format!("base64url of at least {MIN_SALT_BYTES} bytes")))?;
            let hash: [u8; HASH_BYTES] = decode_base64url(&key.hash)
                .and_then(|h| h.try_into().ok())
                .ok_or_else(|| err(format!("{path}.hash"), "base64url of the 32-byte HMAC-SHA256"))?;
            claims::check_subject(&key.subject)
                .map_err(|_| err(format!("{path}.subject"), "a subject that can be logged and forwarded as it is"))?;
            if let Some(i) = key.scopes.iter().position(|s| s.is_empty() || s.contains(char::is_whitespace)) {
                return Err(err(format!("{path}.scopes[{i}]"), "a scope is non-empty and has no spaces"));
            }
            let mut claims = Map::new();
            claims.insert("sub".into(), Value::String(key.subject.clone()));
            claims.insert("iss".into(), Value::String(API_KEY_ISSUER.into()));
            claims.insert("scope".into(), Value::String(key.scopes.join(" ")));
            claims.insert("api_key_id".into(), Value::String(key.id.clone()));
            if let Some(plan) = &key.plan {
                claims.insert("plan".into(), Value::String(plan.clone()));
            }
            entries.push(Entry { salt, hash, revoked: key.revoked, subject: key.subject, plan: key.plan, claims });
        }
        Ok(ApiKeys { pepper_env: config.pepper_env, pepper: Vec::new(), entries })
    }

    /// Reads the pepper from the VM's environment through `env`; fails when it is named but
    /// not set, so a deployment missing its secret refuses the configuration.
    pub(crate) fn load_pepper(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let Some(name) = &self.pepper_env else { return Ok(()) };
        match env(name) {
            Some(value) if !value.is_empty() => {
                self.pepper = value.into_bytes();
                Ok(())
            }
            _ => Err(err("pepper_env", format!("the VM environment has no {name} (vm_config.environment_variables)"))),
        }
    }

    /// The identity of `key`: 401 `api_key_unknown` or `api_key_revoked` otherwise.
    pub(crate) fn lookup(&self, key: &str) -> Result<KeyIdentity<'_>, Rejection> {
        if key.len() > MAX_KEY_BYTES {
            return Err(reject::invalid_token(Code::ApiKeyUnknown, "the API key is not known"));
        }
        let mut found = None;
        for (index, entry) in self.entries.iter().enumerate() {
            let mut message = Vec::with_capacity(entry.salt.len() + key.len());
            message.extend_from_slice(&entry.salt);
            message.extend_from_slice(key.as_bytes());
            let hash = hmac_sha256::HMAC::mac(&message, &self.pepper);
            if constant_time_eq(&hash, &entry.hash) {
                found = Some(index);
            }
        }
        let entry = found
            .map(|index| &self.entries[index])
            .ok_or_else(|| reject::invalid_token(Code::ApiKeyUnknown, "the API key is not known"))?;
        if entry.revoked {
            return Err(reject::invalid_token(Code::ApiKeyRevoked, "the API key has been revoked"));
        }
        Ok(KeyIdentity { subject: &entry.subject, plan: entry.plan.as_deref(), claims: &entry.claims })
    }
}

/// Equality whose time does not depend on where two hashes differ.
fn constant_time_eq(a: &[u8; HASH_BYTES], b: &[u8; HASH_BYTES]) -> bool {
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

/// Whether a presented credential is shaped like a JWT (three base64url segments) rather than
/// an opaque key: JWTs go to the token providers, the rest to the key table.
pub(crate) fn is_jwt_shaped(credential: &str) -> bool {
    let mut segments = 0;
    for segment in credential.split('.') {
        segments += 1;
        if segment.is_empty() || !segment.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return false;
        }
    }
    segments == 3
}

#[cfg(test)]
pub(crate) mod test_entries {
    //! Hash entries as `tools/apikey.py` writes them.
    use serde_json::{json, Value};

    use crate::auth::test_keys::b64;

    pub(crate) fn entry(id: &str, key: &str, pepper: &[u8], subject: &str, changes: Value) -> Value {
        let salt = format!("salt-of-{id:>8}").into_bytes();
        let mut message = salt.clone();
        message.extend_from_slice(key.as_bytes());
        let mut entry = json!({"id": id, "salt": b64(&salt), "hash": b64(&hmac_sha256::HMAC::mac(&message, pepper)),
                               "subject": subject, "scopes": ["tts"]});
        for (name, value) in changes.as_object().unwrap() {
            entry[name] = value.clone();
        }
        entry
    }
}

#[cfg(test)]
mod tests {
    use super::test_entries::entry;
    use super::*;
    use serde_json::json;

    fn keys(config: Value) -> Result<ApiKeys, ConfigError> {
        ApiKeys::compile(serde_json::from_value(config).unwrap())
    }

    #[test]
    fn a_key_is_found_by_its_hash_alone() {
        let table = keys(json!({"keys": [
            entry("a", "sk-alpha", b"", "alice", json!({"plan": "pro"})),
            entry("b", "sk-bravo", b"", "bob", json!({"revoked": true})),
        ]}))
        .unwrap();
        let alice = table.lookup("sk-alpha").unwrap();
        assert_eq!((alice.subject, alice.plan), ("alice", Some("pro")));
        assert_eq!(alice.claims["api_key_id"], "a");
        assert_eq!(table.lookup("sk-bravo").err().unwrap().code.as_str(), "api_key_revoked");
        for unknown in ["sk-alph", "sk-alphaa", "", "salt-of-       ask-alpha"] {
            assert_eq!(table.lookup(unknown).err().unwrap().code.as_str(), "api_key_unknown", "{unknown:?}");
        }
    }

    #[test]
    fn the_pepper_comes_from_the_environment_and_changes_every_hash() {
        let config = json!({"pepper_env": "VOXGATE_API_KEY_PEPPER",
                            "keys": [entry("a", "sk-alpha", b"pepper!", "alice", json!({}))]});
        let mut table = keys(config.clone()).unwrap();
        let missing = table.load_pepper(&|_| None).unwrap_err();
        assert_eq!(missing.field, "auth.api_keys.pepper_env");
        table.load_pepper(&|name| (name == "VOXGATE_API_KEY_PEPPER").then(|| "pepper!".to_string())).unwrap();
        assert!(table.lookup("sk-alpha").is_ok());
        let mut wrong = keys(config).unwrap();
        wrong.load_pepper(&|_| Some("another".to_string())).unwrap();
        assert_eq!(wrong.lookup("sk-alpha").err().unwrap().code.as_str(), "api_key_unknown");
    }

    #[test]
    fn configuration_problems_name_the_field() {
        let good = entry("a", "sk-alpha", b"", "alice", json!({}));
        let with = |changes: Value| {
            let mut e = good.clone();
            for (name, value) in changes.as_object().unwrap() {
                e[name] = value.clone();
            }
            json!({"keys": [e]})
        };
        let cases = [
            (json!({"keys": []}), "auth.api_keys.keys"),
            (json!({"keys": [good.clone(), good.clone()]}), "auth.api_keys.keys[1].id"),
            (with(json!({"salt": "c2hvcnQ"})), "auth.api_keys.keys[0].salt"),
            (with(json!({"hash": "AAAA"})), "auth.api_keys.keys[0].hash"),
            (with(json!({"subject": "ali\u{202E}ce"})), "auth.api_keys.keys[0].subject"),
            (with(json!({"scopes": ["two words"]})), "auth.api_keys.keys[0].scopes[0]"),
            (json!({"pepper_env": "NOT VALID", "keys": [good.clone()]}), "auth.api_keys.pepper_env"),
        ];
        for (config, field) in cases {
            assert_eq!(keys(config).err().expect("invalid").field, field);
        }
    }

    #[test]
    fn jwts_and_opaque_keys_are_told_apart() {
        assert!(is_jwt_shaped("eyJhbGciOi.eyJzdWIi.c2ln"));
        for key in ["sk-abc123", "sk.live.", "a.b", "a.b.c.d", "sk-a.b!.c"] {
            assert!(!is_jwt_shaped(key), "{key}");
        }
    }
}
