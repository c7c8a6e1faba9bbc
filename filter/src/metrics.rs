//! The filter's counters, defined once per VM through `define_metric` and kept by id.
//!
//! The proxy-wasm ABI has no labels, so each label value is the last segment(s) of the
//! metric name, and Envoy's `stats_tags` turn them into real Prometheus labels. Envoy files
//! wasm metrics under the `wasmcustom.` namespace, which the regexes must include and which
//! `/stats/prometheus` strips again:
//!
//! | metric name                               | Prometheus                                        |
//! |-------------------------------------------|---------------------------------------------------|
//! | `voxgate.decision.<reason>`               | `voxgate_decision{reason="…"}`                    |
//! | `voxgate.rate_limited.<bucket>`           | `voxgate_rate_limited{bucket="…"}`                |
//! | `voxgate.shadow_refused.<bucket>`         | `voxgate_shadow_refused{bucket="…"}`              |
//! | `voxgate.plan_decision.<plan>.<decision>` | `voxgate_plan_decision{plan="…",decision="allowed"\|"rate_limited"}` |
//! | `voxgate.token_cache.<result>`            | `voxgate_token_cache{result="hit"\|"miss"}`       |
//! | `voxgate.jwks_fetch.<provider>.<result>`  | `voxgate_jwks_fetch{provider="…",result="ok"\|"failed"}` |
//! | `voxgate.characters_admitted`             | `voxgate_characters_admitted`                     |
//! | `voxgate.audio_milliseconds_charged`      | `voxgate_audio_milliseconds_charged`              |
//! | `voxgate.plan_audio_milliseconds.<plan>`  | `voxgate_plan_audio_milliseconds{plan="…"}`       |
//! | `voxgate.cas_retries`                     | `voxgate_cas_retries`                             |
//! | `voxgate.cluster.<result>`                | `voxgate_cluster{result="allowed"\|"over_limit"\|"failed"}` |
//!
//! The `stats_tags` that do this live in the Envoy bootstrap, `envoy/envoy.yaml.in`, where
//! `filter/tests/stats_tags.rs` checks them against these names. Envoy applies every extractor
//! to the full name and removes each first capture group, so
//! `wasmcustom.voxgate.jwks_fetch.corp.ok` becomes `voxgate_jwks_fetch` with both labels.

use std::cell::RefCell;
use std::collections::HashMap;

use proxy_wasm::types::LogLevel;

use crate::host::Host;
use crate::ratelimit::cluster::Answer;

/// The counter of requests the filter let through: `voxgate.decision` with the reason
/// `allowed`, spelled out because it is counted on every request.
const ALLOWED: &str = "voxgate.decision.allowed";

/// Counter ids of one VM, defined on first use (label values are open-ended: reason codes
/// come from every step, provider names from the configuration).
#[derive(Default)]
pub struct Metrics {
    ids: RefCell<HashMap<String, u32>>,
    token_cache_seen: RefCell<(u64, u64)>,
}

impl Metrics {
    pub fn new() -> Self {
        Metrics::default()
    }

    /// Defines the counters every deployment has, so they are exported (at zero) before the
    /// first request; `providers` are the remote JWKS providers.
    pub fn define_common(&self, host: &dyn Host, providers: &[String]) {
        self.add(host, ALLOWED, 0);
        self.add(host, "voxgate.characters_admitted", 0);
        self.add(host, "voxgate.audio_milliseconds_charged", 0);
        self.add(host, "voxgate.cas_retries", 0);
        self.add(host, "voxgate.token_cache.hit", 0);
        self.add(host, "voxgate.token_cache.miss", 0);
        for provider in providers {
            self.add(host, &jwks_name(provider, true), 0);
            self.add(host, &jwks_name(provider, false), 0);
        }
    }

    pub fn allowed(&self, host: &dyn Host) {
        self.add(host, ALLOWED, 1);
    }

    pub fn decision(&self, host: &dyn Host, reason: &str) {
        self.add(host, &decision_name(reason), 1);
    }

    pub fn rate_limited(&self, host: &dyn Host, bucket: &str) {
        self.add(host, &format!("voxgate.rate_limited.{}", label(bucket)), 1);
    }

    /// A subject's request that the rate limits let through (`limited` false) or refused with
    /// a 429, counted by its plan: the denominator and numerator of a plan's refusal ratio.
    pub fn plan_decision(&self, host: &dyn Host, plan: &str, limited: bool) {
        let decision = if limited { "rate_limited" } else { "allowed" };
        self.add(host, &format!("voxgate.plan_decision.{}.{decision}", label(plan)), 1);
    }

    /// How the cluster's rate-limit service answered: `allowed`, `over_limit` or `failed`.
    pub fn cluster_answer(&self, host: &dyn Host, answer: &Answer) {
        let result = match answer {
            Answer::Allowed { .. } => "allowed",
            Answer::OverLimit { .. } => "over_limit",
            Answer::Failed(_) => "failed",
        };
        self.add(host, &format!("voxgate.cluster.{result}"), 1);
    }

    /// A request this Envoy's reservations admitted without a call.
    pub fn cluster_reserved(&self, host: &dyn Host) {
        self.add(host, "voxgate.cluster.reserved", 1);
    }

    /// A request refused without a call: the service had said its holder's budget is spent.
    pub fn cluster_known_spent(&self, host: &dyn Host) {
        self.add(host, "voxgate.cluster.spent", 1);
    }

    pub fn shadow_refused(&self, host: &dyn Host, bucket: &str) {
        self.add(host, &format!("voxgate.shadow_refused.{}", label(bucket)), 1);
    }

    pub fn characters_admitted(&self, host: &dyn Host, chars: u64) {
        if chars > 0 {
            self.add(host, "voxgate.characters_admitted", chars);
        }
    }

    /// Audio the sidecar reported and the filter charged, in milliseconds, in all and for the
    /// caller's plan.
    pub fn audio_charged(&self, host: &dyn Host, plan: Option<&str>, seconds: f64) {
        let millis = (seconds * 1000.0).round() as u64;
        if millis > 0 {
            self.add(host, "voxgate.audio_milliseconds_charged", millis);
            if let Some(plan) = plan {
                self.add(host, &format!("voxgate.plan_audio_milliseconds.{}", label(plan)), millis);
            }
        }
    }

    pub fn cas_retries(&self, host: &dyn Host, retries: u32) {
        if retries > 0 {
            self.add(host, "voxgate.cas_retries", u64::from(retries));
        }
    }

    pub fn jwks_fetch(&self, host: &dyn Host, provider: &str, ok: bool) {
        self.add(host, &jwks_name(provider, ok), 1);
    }

    /// Exports the growth of the authenticator's cumulative per-worker cache counters.
    pub fn token_cache(&self, host: &dyn Host, (hits, misses): (u64, u64)) {
        let (seen_hits, seen_misses) = self.token_cache_seen.replace((hits, misses));
        self.add(host, "voxgate.token_cache.hit", hits.saturating_sub(seen_hits));
        self.add(host, "voxgate.token_cache.miss", misses.saturating_sub(seen_misses));
    }

    /// Metrics never decide a request: a failing metric call is logged at debug and dropped.
    fn add(&self, host: &dyn Host, name: &str, delta: u64) {
        let known = self.ids.borrow().get(name).copied();
        let id = match known {
            Some(id) => id,
            None => match host.define_counter(name) {
                Ok(id) => {
                    self.ids.borrow_mut().insert(name.to_string(), id);
                    id
                }
                Err(e) => {
                    host.log(LogLevel::Debug, &format!("voxgate: metric {name} not defined: {e}"));
                    return;
                }
            },
        };
        if delta > 0 {
            if let Err(e) = host.increment_counter(id, delta) {
                host.log(LogLevel::Debug, &format!("voxgate: metric {name} not incremented: {e}"));
            }
        }
    }
}

fn decision_name(reason: &str) -> String {
    format!("voxgate.decision.{}", label(reason))
}

fn jwks_name(provider: &str, ok: bool) -> String {
    format!(
        "voxgate.jwks_fetch.{}.{}",
        label(provider),
        if ok { "ok" } else { "failed" }
    )
}

/// A label value safe inside a dotted stat name (dots would split it into two segments).
fn label(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeHost;

    #[test]
    fn counters_are_defined_once_and_incremented() {
        let host = FakeHost::new();
        let metrics = Metrics::new();
        metrics.decision(&host, "invalid_token");
        metrics.decision(&host, "invalid_token");
        metrics.rate_limited(&host, "subject_requests");
        metrics.jwks_fetch(&host, "corp.idp", false);
        assert_eq!(host.counter("voxgate.decision.invalid_token"), 2);
        assert_eq!(host.counter("voxgate.rate_limited.subject_requests"), 1);
        assert_eq!(host.counter("voxgate.jwks_fetch.corp_idp.failed"), 1);
    }

    #[test]
    fn common_counters_exist_at_zero() {
        let host = FakeHost::new();
        Metrics::new().define_common(&host, &["corp".to_string()]);
        for name in [
            "voxgate.decision.allowed",
            "voxgate.characters_admitted",
            "voxgate.cas_retries",
            "voxgate.token_cache.hit",
            "voxgate.token_cache.miss",
            "voxgate.jwks_fetch.corp.ok",
            "voxgate.jwks_fetch.corp.failed",
        ] {
            assert!(host.counter_defined(name), "{name}");
            assert_eq!(host.counter(name), 0, "{name}");
        }
    }

    #[test]
    fn token_cache_exports_deltas_of_cumulative_counts() {
        let host = FakeHost::new();
        let metrics = Metrics::new();
        metrics.token_cache(&host, (0, 1));
        metrics.token_cache(&host, (3, 1));
        assert_eq!(host.counter("voxgate.token_cache.hit"), 3);
        assert_eq!(host.counter("voxgate.token_cache.miss"), 1);
    }
}
