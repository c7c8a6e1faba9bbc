//! The `auth` section of the plugin configuration and its validation. Every problem is
//! reported with the JSON path of the offending field (`auth.providers[0].jwks.keys[1].n`).

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;
use serde_json::Value;

use super::claims::TimeRules;
use super::jwks::{KeySet, Strictness};
use super::provider::{Provider, RemoteJwks};
use super::Authenticator;
use crate::error::ConfigError;
use crate::ratelimit::{BucketConfig, BucketTable};

const MAX_PROVIDERS: usize = 16;
const MAX_CLOCK_SKEW_S: u64 = 600;
const MAX_CACHE_ENTRIES: usize = 1_000_000;
const MAX_CACHE_TTL_S: u64 = 86_400;
const TOKEN_BYTES_RANGE: (usize, usize) = (256, 65_536);
const REFRESH_RANGE_S: (u64, u64) = (10, 86_400);
const TIMEOUT_RANGE_MS: (u64, u64) = (100, 60_000);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub providers: Vec<ProviderConfig>,
    /// Opaque API keys, known by their hashes.
    #[serde(default)]
    pub api_keys: Option<super::api_keys::ApiKeysConfig>,
    /// `authorization` (Bearer scheme), or the name of a header carrying the raw token.
    #[serde(default = "default_token_header")]
    pub token_header: String,
    #[serde(default = "default_clock_skew")]
    pub clock_skew_seconds: u64,
    /// Scopes every token must grant, from `scope` or `scp`.
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// Claim name → `x-voxgate-*` header that carries it to the sidecar.
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
    /// How long a verified token without `exp` stays cached.
    #[serde(default = "default_cache_ttl")]
    pub cache_ttl_seconds: u64,
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// Per-client-address bucket of failed authentications; `null` disables it.
    #[serde(default = "default_failed_auth")]
    pub failed_auth: Option<FailedAuthLimit>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub name: String,
    pub issuer: String,
    pub audiences: Vec<String>,
    /// Inline JWKS document (`{"keys": [...]}`).
    #[serde(default)]
    pub jwks: Option<Value>,
    #[serde(default)]
    pub remote_jwks: Option<RemoteJwksConfig>,
    /// Trust the payloads Envoy's `jwt_authn` verified instead of verifying tokens here.
    #[serde(default)]
    pub jwt_authn: Option<JwtAuthnConfig>,
    /// Refuse tokens without `exp` (default); `false` caches them for `cache_ttl_seconds`.
    #[serde(default = "default_true")]
    pub require_exp: bool,
    /// Refuse tokens valid for longer than this: `exp` less `iat` (else `nbf`, else now).
    #[serde(default)]
    pub max_lifetime_seconds: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteJwksConfig {
    /// Envoy cluster that reaches the identity provider.
    pub cluster: String,
    pub authority: String,
    pub path: String,
    #[serde(default = "default_refresh")]
    pub refresh_seconds: u64,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
}

/// Where `jwt_authn` leaves the payloads it verified for this provider.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtAuthnConfig {
    /// The `payload_in_metadata` of the `jwt_authn` provider (Istio uses the issuer).
    pub payload_in_metadata: String,
}

/// Size of the failed-authentication bucket, applied per client address by the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailedAuthLimit {
    pub capacity: u64,
    pub refill_per_second: f64,
    /// With an empty bucket, refuse an address's new tokens before any signature check. Only
    /// where every client has an address of its own: behind a shared address it would lock
    /// out every client there.
    #[serde(default)]
    pub refuse_before_verification: bool,
}

fn default_token_header() -> String {
    super::extract::AUTHORIZATION.to_string()
}
fn default_clock_skew() -> u64 {
    60
}
fn default_cache_entries() -> usize {
    4096
}
fn default_cache_ttl() -> u64 {
    300
}
fn default_max_token_bytes() -> usize {
    8192
}
fn default_failed_auth() -> Option<FailedAuthLimit> {
    Some(FailedAuthLimit { capacity: 20, refill_per_second: 1.0, refuse_before_verification: false })
}
fn default_true() -> bool {
    true
}
fn default_refresh() -> u64 {
    300
}
fn default_timeout() -> u64 {
    2000
}

fn err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::new(format!("auth.{}", field.into()), message)
}

/// The `auth` section compiled: the authenticator and what the request flow keeps around it.
pub struct AuthSection {
    pub authenticator: Authenticator,
    /// Headers that may carry the token, removed before forwarding unless `forward_token`.
    pub token_headers: Vec<String>,
    /// Failed authentications per client address, checked before any token work.
    pub failed_auth: Option<BucketTable>,
}

/// The headers a token can arrive in: `Authorization`, and the configured one if it differs.
pub fn token_headers(auth: Option<&AuthConfig>) -> Vec<String> {
    let mut headers = vec![super::extract::AUTHORIZATION.to_string()];
    if let Some(header) = auth.map(|auth| auth.token_header.to_ascii_lowercase()) {
        if !headers.contains(&header) {
            headers.push(header);
        }
    }
    headers
}

/// The JWK member naming the variable of the VM's environment that holds an `oct` key's `k`.
const SECRET_ENV_MEMBER: &str = "k_env";

impl AuthConfig {
    /// Gives every inline `oct` key written with `k_env` (the name of a variable of the VM's
    /// environment, `vm_config.environment_variables`) its `k` from that variable: HMAC secrets
    /// can then stay out of the configuration, which anyone who can read a `WasmPlugin` can
    /// read. A named variable that is unset or empty refuses the configuration.
    pub fn read_secret_keys(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        for (index, provider) in self.providers.iter_mut().enumerate() {
            let keys = provider.jwks.as_mut().and_then(|jwks| jwks.get_mut("keys")).and_then(Value::as_array_mut);
            for (key_index, jwk) in keys.into_iter().flatten().enumerate() {
                let Some(jwk) = jwk.as_object_mut() else { continue };
                let Some(name) = jwk.remove(SECRET_ENV_MEMBER) else { continue };
                let field = format!("providers[{index}].jwks.keys[{key_index}].{SECRET_ENV_MEMBER}");
                let name = name
                    .as_str()
                    .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
                    .ok_or_else(|| err(&field, "an environment variable name ([A-Za-z0-9_]+)"))?;
                if jwk.contains_key("k") {
                    return Err(err(&field, "give `k` or `k_env`, not both"));
                }
                let secret = env(name)
                    .map(|value| value.trim().to_string())
                    .filter(|value| !value.is_empty())
                    .ok_or_else(|| err(&field, format!("the VM environment has no {name} (vm_config.environment_variables)")))?;
                jwk.insert("k".to_string(), Value::String(secret));
            }
        }
        Ok(())
    }

    /// The whole section for one worker: the authenticator, the token headers and the
    /// failed-authentication bucket table with `slots` slots (`rate_limits.slots`).
    pub fn compile_section(self, slots: u32) -> Result<AuthSection, ConfigError> {
        let token_headers = token_headers(Some(&self));
        let failed_auth = self.failed_auth.as_ref().map(|limit| BucketConfig {
            capacity: limit.capacity,
            refill_per_second: limit.refill_per_second,
        });
        let authenticator = self.compile()?;
        let failed_auth = failed_auth
            .map(|bucket| BucketTable::new("failed_auth", &bucket, slots, "auth.failed_auth"))
            .transpose()?;
        Ok(AuthSection { authenticator, token_headers, failed_auth })
    }

    /// Validates the section and builds the per-worker authenticator.
    pub fn compile(self) -> Result<Authenticator, ConfigError> {
        if self.providers.is_empty() && self.api_keys.is_none() {
            return Err(err("providers", "at least one provider (or `api_keys`) is required"));
        }
        if self.providers.len() > MAX_PROVIDERS {
            return Err(err("providers", format!("at most {MAX_PROVIDERS} providers")));
        }
        let mut names = HashSet::new();
        let mut issuers = HashSet::new();
        let mut payload_keys = HashSet::new();
        let mut providers = Vec::with_capacity(self.providers.len());
        for (index, provider) in self.providers.into_iter().enumerate() {
            let path = format!("providers[{index}]");
            if !names.insert(provider.name.clone()) {
                return Err(err(format!("{path}.name"), "duplicate provider name"));
            }
            if !issuers.insert(provider.issuer.clone()) {
                return Err(err(format!("{path}.issuer"), "another provider has the same issuer"));
            }
            if let Some(trust) = &provider.jwt_authn {
                if !payload_keys.insert(trust.payload_in_metadata.clone()) {
                    return Err(err(
                        format!("{path}.jwt_authn.payload_in_metadata"),
                        "another provider reads the same payload",
                    ));
                }
            }
            providers.push(compile_provider(provider, &path)?);
        }

        let token_header = self.token_header.to_ascii_lowercase();
        check_header_name(&token_header, "token_header")?;
        if token_header.starts_with(super::forward::FORWARDED_PREFIX) {
            return Err(err("token_header", "x-voxgate-* headers are reserved for the filter"));
        }
        if self.clock_skew_seconds > MAX_CLOCK_SKEW_S {
            return Err(err("clock_skew_seconds", format!("at most {MAX_CLOCK_SKEW_S}")));
        }
        for (i, scope) in self.required_scopes.iter().enumerate() {
            // RFC 6750 §3 scope-token characters, since scopes are echoed in the challenge.
            let valid = !scope.is_empty() && scope.bytes().all(|b| matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E));
            if !valid {
                return Err(err(
                    format!("required_scopes[{i}]"),
                    "a scope is non-empty printable ASCII without spaces, quotes or backslashes",
                ));
            }
        }
        let mut forward_claims = Vec::with_capacity(self.forward_claims.len());
        let mut forwarded =
            HashSet::from([super::forward::SUBJECT_HEADER.to_string(), super::forward::ISSUER_HEADER.to_string()]);
        for (claim, header) in self.forward_claims {
            let field = format!("forward_claims.{claim}");
            if claim.is_empty() {
                return Err(err("forward_claims", "claim names are non-empty"));
            }
            let header = header.to_ascii_lowercase();
            check_header_name(&header, &field)?;
            if !header.starts_with(super::forward::FORWARDED_PREFIX)
                || header.len() == super::forward::FORWARDED_PREFIX.len()
            {
                return Err(err(field, "forwarded claims use x-voxgate-* headers, which clients cannot spoof"));
            }
            if !forwarded.insert(header.clone()) {
                return Err(err(field, format!("header {header} is already forwarded")));
            }
            forward_claims.push((claim, header));
        }
        if self.cache_entries == 0 || self.cache_entries > MAX_CACHE_ENTRIES {
            return Err(err("cache_entries", format!("between 1 and {MAX_CACHE_ENTRIES}")));
        }
        if self.cache_ttl_seconds == 0 || self.cache_ttl_seconds > MAX_CACHE_TTL_S {
            return Err(err("cache_ttl_seconds", format!("between 1 and {MAX_CACHE_TTL_S}")));
        }
        let (min_bytes, max_bytes) = TOKEN_BYTES_RANGE;
        if !(min_bytes..=max_bytes).contains(&self.max_token_bytes) {
            return Err(err("max_token_bytes", format!("between {min_bytes} and {max_bytes}")));
        }
        if let Some(limit) = &self.failed_auth {
            if limit.capacity == 0 {
                return Err(err("failed_auth.capacity", "must be at least 1"));
            }
            if !(limit.refill_per_second.is_finite() && limit.refill_per_second > 0.0) {
                return Err(err("failed_auth.refill_per_second", "must be a positive number"));
            }
        }

        let api_keys = self.api_keys.map(super::api_keys::ApiKeys::compile).transpose()?;
        Authenticator::new(super::Settings {
            providers,
            api_keys,
            token_header: (token_header != super::extract::AUTHORIZATION).then_some(token_header),
            clock_skew_s: self.clock_skew_seconds,
            required_scopes_text: self.required_scopes.join(" "),
            required_scopes: self.required_scopes,
            forward_claims,
            cache_entries: self.cache_entries,
            cache_ttl_s: self.cache_ttl_seconds,
            max_token_bytes: self.max_token_bytes,
            failed_auth: self.failed_auth,
        })
        .map_err(|message| err("cache_entries", &message))
    }
}

fn compile_provider(config: ProviderConfig, path: &str) -> Result<Provider, ConfigError> {
    let name_ok = !config.name.is_empty()
        && config.name.len() <= 64
        && config.name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !name_ok {
        return Err(err(format!("{path}.name"), "1 to 64 characters among letters, digits, '_', '-', '.'"));
    }
    if config.issuer.is_empty() {
        return Err(err(format!("{path}.issuer"), "must not be empty"));
    }
    if super::forward::header_value(&config.issuer).as_deref() != Some(config.issuer.as_str()) {
        // Forwarded in `x-voxgate-issuer`: it must arrive as configured.
        return Err(err(
            format!("{path}.issuer"),
            "no control, line-separator, bidirectional or invisible characters, no surrounding spaces, at most 256 bytes",
        ));
    }
    if config.audiences.is_empty() {
        return Err(err(format!("{path}.audiences"), "at least one audience is required"));
    }
    if let Some(i) = config.audiences.iter().position(String::is_empty) {
        return Err(err(format!("{path}.audiences[{i}]"), "must not be empty"));
    }
    let ProviderConfig { name, issuer, audiences, jwks, remote_jwks, jwt_authn, require_exp, max_lifetime_seconds } =
        config;
    match max_lifetime_seconds {
        Some(0) => return Err(err(format!("{path}.max_lifetime_seconds"), "must be at least 1")),
        Some(_) if !require_exp => {
            return Err(err(
                format!("{path}.max_lifetime_seconds"),
                "needs `require_exp: true`: a token without `exp` has no lifetime to bound",
            ))
        }
        _ => {}
    }
    let times = TimeRules { require_exp, max_lifetime_s: max_lifetime_seconds };
    match (jwks, remote_jwks, jwt_authn) {
        (Some(document), None, None) => {
            let keys = KeySet::from_document(&document, Strictness::EveryKey)
                .map_err(|e| err(format!("{path}.jwks.{}", e.path()), e.message))?;
            Ok(Provider::inline(name, issuer, audiences, times, keys))
        }
        (None, Some(remote), None) => {
            check_remote(&remote, &format!("{path}.remote_jwks"))?;
            Ok(Provider::remote(name, issuer, audiences, times, RemoteJwks::new(remote)))
        }
        (None, None, Some(trust)) => {
            if trust.payload_in_metadata.is_empty() {
                return Err(err(format!("{path}.jwt_authn.payload_in_metadata"), "must not be empty"));
            }
            Ok(Provider::jwt_authn(name, issuer, audiences, times, trust.payload_in_metadata))
        }
        (None, None, None) => Err(err(path, "a provider needs one of `jwks`, `remote_jwks` or `jwt_authn`")),
        _ => Err(err(path, "give only one of `jwks`, `remote_jwks` and `jwt_authn`")),
    }
}

fn check_remote(remote: &RemoteJwksConfig, path: &str) -> Result<(), ConfigError> {
    if remote.cluster.is_empty() {
        return Err(err(format!("{path}.cluster"), "must name an Envoy cluster"));
    }
    if remote.authority.is_empty()
        || remote.authority.contains(|c: char| c.is_whitespace() || c.is_control() || c == '/')
    {
        return Err(err(format!("{path}.authority"), "must be a host[:port]"));
    }
    if !remote.path.starts_with('/') || remote.path.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(err(format!("{path}.path"), "must start with '/' and contain no spaces"));
    }
    let (min_refresh, max_refresh) = REFRESH_RANGE_S;
    if !(min_refresh..=max_refresh).contains(&remote.refresh_seconds) {
        return Err(err(format!("{path}.refresh_seconds"), format!("between {min_refresh} and {max_refresh}")));
    }
    let (min_timeout, max_timeout) = TIMEOUT_RANGE_MS;
    if !(min_timeout..=max_timeout).contains(&remote.timeout_ms) {
        return Err(err(format!("{path}.timeout_ms"), format!("between {min_timeout} and {max_timeout}")));
    }
    Ok(())
}

/// An HTTP field name (RFC 9110 token characters).
fn check_header_name(name: &str, field: &str) -> Result<(), ConfigError> {
    let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(err(field, "not a valid HTTP header name"))
    }
}
