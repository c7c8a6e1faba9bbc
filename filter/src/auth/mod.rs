//! JWT authentication: JWKS keys, token verification, the verified-token cache, and the
//! payloads Envoy's `jwt_authn` verified for providers that trust it.
//!
//! `AuthConfig::compile` builds one `Authenticator` per worker. It is pure logic: the
//! pipeline hands it the request headers, the current time and fetched JWKS bodies, and
//! answers with the `Rejection`s it returns. A token is checked for size, then looked up in
//! the cache (a hit only re-checks the expiry); otherwise the cheap checks run (structure,
//! algorithm, issuer, key id, validity window, subject) before the one signature check.
//! Audience and scopes are judged on authentic tokens only, so a 403 always concerns a
//! genuine token. A `jwt_authn` provider's payload, read from the stream's metadata, meets the
//! same claim rules with no signature check; a token of its issuer that reached the filter
//! without such a payload was not verified, and is refused.

mod api_keys;
mod cache;
mod claims;
mod config;
mod es256;
mod extract;
mod forward;
mod jwks;
mod metadata;
mod provider;
mod reject;
mod remote;
mod rsa_pkcs1;
mod token;
mod verify;

#[cfg(test)]
pub(crate) mod test_keys;
#[cfg(test)]
mod tests;

use std::cell::Cell;
use std::rc::Rc;

use serde_json::{Map, Value};

use crate::error::ConfigError;
use crate::decision::{Code, Rejection};
use cache::{CachedToken, TokenCache};
use jwks::{KeyMiss, KeySet};
use provider::{KeysReplaced, Provider};

pub use api_keys::{ApiKeyConfig, ApiKeysConfig, API_KEY_ISSUER};
#[cfg(test)]
pub(crate) use api_keys::test_entries as api_key_entries;
pub use config::{token_headers, AuthConfig, AuthSection, FailedAuthLimit, JwtAuthnConfig, ProviderConfig, RemoteJwksConfig};
pub use metadata::JWT_AUTHN_NAMESPACE;
#[cfg(test)]
pub(crate) use metadata::encode as metadata_encode;
pub use forward::{FORWARDED_PREFIX, ISSUER_HEADER, SUBJECT_HEADER};
pub use jwks::MAX_JWKS_BYTES;
pub use reject::{token_missing, REALM};
pub use remote::RemoteJwksSource;

/// An authenticated request's identity.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// The `sub` claim.
    pub subject: String,
    /// The `iss` claim (the provider's configured issuer).
    pub issuer: String,
    /// The `exp` claim; `u64::MAX` for a provider with `require_exp: false` and a token without one.
    pub expires_at: u64,
    /// Every claim of the token (for an API key: `sub`, `iss`, `scope`, `plan`, `api_key_id`).
    pub claims: Map<String, Value>,
    /// An API key's plan, whatever the plan claim is named; `None` for a token.
    pub plan: Option<String>,
    /// `x-voxgate-subject`, `x-voxgate-issuer` and the configured `forward_claims` headers,
    /// for the upstream.
    pub forwarded: Vec<(String, String)>,
}

/// What the token cache knows of a token.
pub enum Cached<'t> {
    /// The token was verified before (or is too large to look up): the final answer.
    Hit(Result<Rc<Verified>, Rejection>),
    /// Not in the cache: `Authenticator::verify_uncached` decides.
    Miss(Unverified<'t>),
}

/// A token the cache did not hold, with what the lookup already computed.
pub struct Unverified<'t> {
    token: &'t str,
    now_s: u64,
    digest: cache::TokenDigest,
}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthStats {
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub cache_entries: usize,
    /// Tokens that reached a signature check.
    pub signature_checks: u64,
}

/// The validated configuration, as `AuthConfig::compile` hands it over.
pub(crate) struct Settings {
    pub providers: Vec<Provider>,
    pub api_keys: Option<api_keys::ApiKeys>,
    /// Header carrying a raw token, besides `Authorization: Bearer`.
    pub token_header: Option<String>,
    pub clock_skew_s: u64,
    pub required_scopes: Vec<String>,
    /// The required scopes as the challenge's `scope` attribute.
    pub required_scopes_text: String,
    pub forward_claims: Vec<(String, String)>,
    pub cache_entries: usize,
    pub cache_ttl_s: u64,
    pub max_token_bytes: usize,
    pub failed_auth: Option<FailedAuthLimit>,
}

/// Verifies bearer tokens for one worker; holds that worker's token cache.
pub struct Authenticator {
    settings: Settings,
    cache: TokenCache,
    signature_checks: Cell<u64>,
    /// Latest time the pipeline has told us, to schedule a fetch whose dispatch was not noted.
    observed_now_s: Cell<u64>,
}

impl Authenticator {
    /// Fails only without a source of randomness for the token cache's key.
    pub(crate) fn new(settings: Settings) -> Result<Self, String> {
        Ok(Authenticator {
            cache: TokenCache::new(settings.cache_entries)?,
            settings,
            signature_checks: Cell::new(0),
            observed_now_s: Cell::new(0),
        })
    }

    /// The request's token: `Ok(None)` without one (answer with `token_missing()`), a 401 for a
    /// malformed `Authorization`, another scheme, or more than one token.
    pub fn token_from_headers(&self, headers: &[(String, String)]) -> Result<Option<String>, Rejection> {
        extract::token_from_headers(headers, self.settings.token_header.as_deref())
    }

    /// Verifies a token at `now_s` (seconds since the epoch): 401 `invalid_token` for anything
    /// wrong with the token, 403 `insufficient_scope` for an authentic token that is not
    /// allowed here (other audience, missing scope).
    pub fn verify(&self, token: &str, now_s: u64) -> Result<Rc<Verified>, Rejection> {
        match self.verify_cached(token, now_s) {
            Cached::Hit(result) => result,
            Cached::Miss(unverified) => self.verify_uncached(unverified),
        }
    }

    /// The cache alone: a token verified before needs no signature check, so the request flow
    /// asks this first and guards only a miss (`verify_uncached`) with the failed-auth bucket.
    pub fn verify_cached<'t>(&self, token: &'t str, now_s: u64) -> Cached<'t> {
        self.observe(now_s);
        if token.len() > self.settings.max_token_bytes {
            return Cached::Hit(Err(reject::invalid_token(
                Code::TokenTooLarge,
                "the token is larger than allowed",
            )));
        }
        if let Some(keys) = &self.settings.api_keys {
            if !api_keys::is_jwt_shaped(token) {
                // A hash lookup, no signature: as cheap as a cache hit, so not guarded by the
                // failed-auth bucket (a refused key still costs the address a failure).
                return Cached::Hit(self.verify_api_key(keys, token));
            }
        }
        let digest = self.cache.digest(token);
        match self.cache.get(&digest, now_s) {
            Some(cached) => Cached::Hit(self.authorize(cached.provider, cached.verified)),
            None => Cached::Miss(Unverified { token, now_s, digest }),
        }
    }

    /// Verifies a token the cache did not hold: the cheap checks, then the signature.
    pub fn verify_uncached(&self, unverified: Unverified) -> Result<Rc<Verified>, Rejection> {
        let Unverified { token, now_s, digest } = unverified;
        let settings = &self.settings;
        let parsed = token::parse(token)?;
        let issuer = claims::issuer(&parsed.claims)?;
        let provider_index = settings
            .providers
            .iter()
            .position(|p| p.issuer == issuer)
            .ok_or_else(|| reject::invalid_token(Code::WrongIssuer, "the token's issuer is not trusted"))?;
        let provider = &settings.providers[provider_index];
        if provider.payload_key.is_some() {
            return Err(reject::invalid_token(Code::TokenUnverified, "the token was not verified by the gateway"));
        }
        let keys = provider.keys().ok_or_else(|| {
            reject::invalid_token(Code::KeysUnavailable, "the issuer's signing keys are not available yet")
        })?;
        let candidates = keys.candidates(parsed.kid.as_deref(), parsed.alg).map_err(|miss| match miss {
            KeyMiss::UnknownKid => {
                provider.request_early_refresh(now_s);
                reject::invalid_token(Code::UnknownKey, "the token's key id is not known")
            }
            KeyMiss::AlgorithmNotAllowed => {
                reject::invalid_token(Code::AlgorithmNotAllowed, "the token's algorithm is not accepted for its key")
            }
        })?;
        let expires_at = claims::check_times(&parsed.claims, now_s, settings.clock_skew_s, provider.times)?;
        let subject = claims::subject(&parsed.claims)?.to_string();

        self.signature_checks.set(self.signature_checks.get() + 1);
        verify::check_signature(&candidates, token, now_s, settings.clock_skew_s, settings.max_token_bytes)?;

        let verified = self.identity(provider, subject, parsed.claims, expires_at);
        let valid_until_s = match expires_at {
            Some(exp) => exp.saturating_add(settings.clock_skew_s),
            None => now_s.saturating_add(settings.cache_ttl_s),
        };
        self.cache.insert(digest, valid_until_s, CachedToken { provider: provider_index, verified: Rc::clone(&verified) });
        self.authorize(provider_index, verified)
    }

    fn verify_api_key(&self, keys: &api_keys::ApiKeys, key: &str) -> Result<Rc<Verified>, Rejection> {
        let identity = keys.lookup(key)?;
        claims::check_scopes(identity.claims, &self.settings.required_scopes, &self.settings.required_scopes_text)?;
        let forwarded = forward::forwarded_headers(identity.subject, API_KEY_ISSUER, identity.claims, &self.settings.forward_claims);
        Ok(Rc::new(Verified {
            subject: identity.subject.to_string(),
            issuer: API_KEY_ISSUER.to_string(),
            expires_at: u64::MAX,
            claims: identity.claims.clone(),
            plan: identity.plan.map(str::to_string),
            forwarded,
        }))
    }

    /// Reads the secrets the configuration names from the VM's environment (`env`): the API
    /// keys' pepper. Called once at configure time.
    pub fn load_secrets(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        match &mut self.settings.api_keys {
            Some(keys) => keys.load_pepper(env),
            None => Ok(()),
        }
    }

    /// Whether a provider trusts `jwt_authn`: only then is the stream's metadata worth reading.
    pub fn trusts_jwt_authn(&self) -> bool {
        self.settings.providers.iter().any(|p| p.payload_key.is_some())
    }

    /// The identity of a payload `jwt_authn` verified, found in the stream's `metadata`
    /// (protobuf-encoded): `Ok(None)` when no trusting provider's payload is there (the
    /// request's token, if any, is then judged by `verify`). The payload meets the provider's
    /// issuer, lifetime, subject, audience and scope rules, with no signature check: Envoy
    /// made it. `Err` for metadata that does not decode.
    pub fn verify_jwt_authn_payload(&self, metadata: &[u8], now_s: u64) -> Result<Option<Result<Rc<Verified>, Rejection>>, String> {
        self.observe(now_s);
        let mut payloads = metadata::jwt_authn_payloads(metadata).map_err(|e| format!("stream metadata: {e}"))?;
        for (index, provider) in self.settings.providers.iter().enumerate() {
            let Some(key) = &provider.payload_key else { continue };
            if let Some(payload) = payloads.remove(key) {
                return Ok(Some(self.accept_payload(index, payload, now_s)));
            }
        }
        Ok(None)
    }

    fn accept_payload(&self, index: usize, payload: Value, now_s: u64) -> Result<Rc<Verified>, Rejection> {
        let provider = &self.settings.providers[index];
        let Value::Object(claims) = payload else {
            return Err(reject::invalid_token(Code::TokenMalformed, "the verified payload is not an object"));
        };
        // `jwt_authn` may trust several issuers: this provider's rules bind only its own.
        if claims::issuer(&claims)? != provider.issuer {
            return Err(reject::invalid_token(Code::WrongIssuer, "the token's issuer is not trusted"));
        }
        let expires_at = claims::check_times(&claims, now_s, self.settings.clock_skew_s, provider.times)?;
        let subject = claims::subject(&claims)?.to_string();
        self.authorize(index, self.identity(provider, subject, claims, expires_at))
    }

    fn identity(&self, provider: &Provider, subject: String, claims: Map<String, Value>, expires_at: Option<u64>) -> Rc<Verified> {
        let forwarded = forward::forwarded_headers(&subject, &provider.issuer, &claims, &self.settings.forward_claims);
        Rc::new(Verified {
            subject,
            issuer: provider.issuer.clone(),
            expires_at: expires_at.unwrap_or(u64::MAX),
            claims,
            plan: None,
            forwarded,
        })
    }

    /// Audience and scopes, judged on every use of an authentic token (cached or not).
    fn authorize(&self, provider: usize, verified: Rc<Verified>) -> Result<Rc<Verified>, Rejection> {
        claims::check_audience(&verified.claims, &self.settings.providers[provider].audiences)?;
        claims::check_scopes(&verified.claims, &self.settings.required_scopes, &self.settings.required_scopes_text)?;
        Ok(verified)
    }

    /// Every remote JWKS and when it is next due.
    pub fn remote_jwks(&self) -> Vec<RemoteJwksSource> {
        self.settings.providers.iter().filter_map(Provider::source).collect()
    }

    /// The remote JWKS to fetch now, each marked in flight so the next tick does not fetch it
    /// again; answer each with `update_jwks` or `note_fetch_failed`. A fetch left unanswered
    /// past its timeout becomes due again.
    pub fn due_jwks_fetches(&self, now_s: u64) -> Vec<RemoteJwksSource> {
        self.observe(now_s);
        let mut due = Vec::new();
        for provider in self.settings.providers.iter().filter(|p| p.is_fetch_due(now_s)) {
            provider.fetch_started(now_s);
            due.extend(provider.source());
        }
        due
    }

    /// Installs a fetched JWKS body for a remote provider and returns its number of usable
    /// keys. A body that does not parse or holds no usable key is refused, the last good set
    /// stays in use, and the next attempt is scheduled with backoff.
    pub fn update_jwks(&self, provider: &str, body: &[u8]) -> Result<usize, String> {
        let now_s = self.observed_now_s.get();
        let (index, provider) = self.remote_provider(provider)?;
        let keys = match KeySet::from_fetched(body) {
            Ok(keys) => keys,
            Err(message) => {
                provider.fetch_failed(now_s);
                return Err(message);
            }
        };
        let count = keys.len();
        if provider.replace_keys(keys, now_s) == KeysReplaced::Changed {
            // A key withdrawn by the provider must stop vouching for cached tokens at once.
            self.cache.forget_provider(index);
        }
        Ok(count)
    }

    /// A fetch failed before a body arrived (HTTP error, timeout, dispatch failure).
    pub fn note_fetch_failed(&self, provider: &str, now_s: u64) {
        self.observe(now_s);
        if let Ok((_, provider)) = self.remote_provider(provider) {
            provider.fetch_failed(now_s);
        }
    }

    /// Size of the per-client-address bucket charged for each failed authentication.
    pub fn failed_auth_limit(&self) -> Option<FailedAuthLimit> {
        self.settings.failed_auth
    }

    /// Whether an address with an empty failed-auth bucket is refused before verification.
    pub fn failed_auth_refuses_before_verification(&self) -> bool {
        self.settings.failed_auth.is_some_and(|limit| limit.refuse_before_verification)
    }

    /// (hits, misses) of the verified-token cache.
    pub fn cache_stats(&self) -> (u64, u64) {
        (self.cache.hits(), self.cache.misses())
    }

    pub fn stats(&self) -> AuthStats {
        AuthStats {
            cache_hits: self.cache.hits(),
            cache_misses: self.cache.misses(),
            cache_entries: self.cache.len(),
            signature_checks: self.signature_checks.get(),
        }
    }

    fn remote_provider(&self, name: &str) -> Result<(usize, &Provider), String> {
        self.settings
            .providers
            .iter()
            .enumerate()
            .find(|(_, p)| p.name == name && p.is_remote())
            .ok_or_else(|| format!("no provider named {name} has a remote JWKS"))
    }

    fn observe(&self, now_s: u64) {
        if now_s > self.observed_now_s.get() {
            self.observed_now_s.set(now_s);
        }
    }
}
