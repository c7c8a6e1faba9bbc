//! The `rate_limits` section of the plugin configuration, and its checks: every problem is
//! reported with the JSON path of the offending field.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::bucket::{BucketSpec, MAX_CAPACITY};
use super::cluster::{ClusterConfig, ServiceLimit};
use super::headers::HeaderStyle;
use crate::error::ConfigError;

/// Accepted number of slots per bucket kind.
pub const SLOTS_RANGE: std::ops::RangeInclusive<u32> = 16..=(1 << 22);
/// Accepted `max_in_flight`.
pub const MAX_IN_FLIGHT_RANGE: std::ops::RangeInclusive<u32> = 1..=256;
/// Fastest accepted refill, tokens per second.
pub const MAX_REFILL_PER_SECOND: f64 = 1e9;

/// One token bucket: `capacity` tokens, refilled continuously at `refill_per_second`
/// (resolution 0.001; 0 means the bucket never refills).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketConfig {
    pub capacity: u64,
    pub refill_per_second: f64,
}

impl BucketConfig {
    /// Checks the bucket; `field` is its JSON path, used in the error.
    pub fn compile(&self, field: &str) -> Result<BucketSpec, ConfigError> {
        if !(1..=MAX_CAPACITY).contains(&self.capacity) {
            return Err(ConfigError::new(
                format!("{field}.capacity"),
                format!("must be between 1 and {MAX_CAPACITY}"),
            ));
        }
        let rate = self.refill_per_second;
        if !rate.is_finite() || !(0.0..=MAX_REFILL_PER_SECOND).contains(&rate) {
            return Err(ConfigError::new(
                format!("{field}.refill_per_second"),
                format!("must be a number between 0 and {MAX_REFILL_PER_SECOND}"),
            ));
        }
        let milli = (rate * 1000.0).round() as u64;
        if rate > 0.0 && milli == 0 {
            return Err(ConfigError::new(
                format!("{field}.refill_per_second"),
                "must be 0 or at least 0.001 (the resolution of refill rates)",
            ));
        }
        Ok(BucketSpec::new(self.capacity, milli))
    }
}

/// Limits of one plan (tier) of subjects.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanConfig {
    /// Cost 1 per request.
    pub requests: Option<BucketConfig>,
    /// Cost 1 per character of validated text (speech routes).
    pub characters: Option<BucketConfig>,
    /// Seconds of audio the sidecar synthesizes (speech routes): what speech really costs.
    pub audio_seconds: Option<BucketConfig>,
    /// Requests admitted and not yet finished, per subject.
    pub max_in_flight: Option<u32>,
}

/// Limits of the anonymous (per client address) and global scopes.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeConfig {
    pub requests: Option<BucketConfig>,
    pub characters: Option<BucketConfig>,
    pub audio_seconds: Option<BucketConfig>,
}

/// `rate_limits` in the plugin configuration. An omitted section limits nothing.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Count and report, never refuse.
    pub shadow: bool,
    /// Slots per bucket kind; bounds shared-data memory whatever the number of identities.
    pub slots: u32,
    /// The verified claim that names a subject's plan.
    pub plan_claim: String,
    /// Plan of subjects whose claim is missing or names no configured plan.
    pub default_plan: Option<String>,
    pub plans: BTreeMap<String, PlanConfig>,
    /// Per client address, on routes without authentication.
    pub anonymous: Option<ScopeConfig>,
    /// One bucket pair for all traffic, protecting the sidecar.
    pub global: Option<ScopeConfig>,
    pub headers: HeaderStyle,
    /// An admitted request whose end is never reported stops counting as in flight after this.
    pub in_flight_timeout_seconds: u64,
    /// Limits enforced across every Envoy by a rate-limit service, after the local buckets.
    pub cluster: Option<ClusterConfig>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            shadow: false,
            slots: 65_536,
            plan_claim: "plan".to_string(),
            default_plan: None,
            plans: BTreeMap::new(),
            anonymous: None,
            global: None,
            headers: HeaderStyle::Draft03,
            in_flight_timeout_seconds: 300,
            cluster: None,
        }
    }
}

/// Checked buckets of one scope or plan: `[requests, characters, audio_seconds]`.
pub(crate) type CompiledBuckets = Vec<Option<BucketSpec>>;

/// A plan after checking.
pub(crate) struct CompiledPlan {
    pub name: String,
    pub buckets: CompiledBuckets,
    pub max_in_flight: Option<u32>,
}

/// The whole section after checking, before it becomes a `RateLimiter`.
pub(crate) struct Compiled {
    pub shadow: bool,
    pub slots: u32,
    pub plan_claim: String,
    pub plans: Vec<CompiledPlan>,
    pub default_plan: u16,
    pub anonymous: Option<CompiledBuckets>,
    pub global: Option<CompiledBuckets>,
    pub headers: HeaderStyle,
    pub lease_ttl_ms: u64,
    /// The cluster tier and the limits its service holds.
    pub cluster: Option<(ClusterConfig, Vec<ServiceLimit>)>,
}

const FIELD: &str = "rate_limits";

fn buckets(
    requests: &Option<BucketConfig>,
    characters: &Option<BucketConfig>,
    audio_seconds: &Option<BucketConfig>,
    field: &str,
) -> Result<CompiledBuckets, ConfigError> {
    Ok(vec![
        requests.as_ref().map(|b| b.compile(&format!("{field}.requests"))).transpose()?,
        characters.as_ref().map(|b| b.compile(&format!("{field}.characters"))).transpose()?,
        audio_seconds
            .as_ref()
            .map(|b| b.compile(&format!("{field}.audio_seconds")).map(BucketSpec::with_debt))
            .transpose()?,
    ])
}

impl RateLimitConfig {
    pub(crate) fn check(self) -> Result<Compiled, ConfigError> {
        if !SLOTS_RANGE.contains(&self.slots) {
            return Err(ConfigError::new(
                format!("{FIELD}.slots"),
                format!("must be between {} and {}", SLOTS_RANGE.start(), SLOTS_RANGE.end()),
            ));
        }
        if self.plan_claim.trim().is_empty() {
            return Err(ConfigError::new(format!("{FIELD}.plan_claim"), "must name a claim"));
        }
        if !(1..=86_400).contains(&self.in_flight_timeout_seconds) {
            return Err(ConfigError::new(
                format!("{FIELD}.in_flight_timeout_seconds"),
                "must be between 1 and 86400",
            ));
        }
        if self.plans.len() > 1024 {
            return Err(ConfigError::new(format!("{FIELD}.plans"), "at most 1024 plans"));
        }
        let mut plans = Vec::with_capacity(self.plans.len());
        for (name, plan) in &self.plans {
            let field = format!("{FIELD}.plans.{name}");
            if name.is_empty() {
                return Err(ConfigError::new(field, "plan names must not be empty"));
            }
            if let Some(max) = plan.max_in_flight {
                if !MAX_IN_FLIGHT_RANGE.contains(&max) {
                    return Err(ConfigError::new(
                        format!("{field}.max_in_flight"),
                        format!("must be between {} and {}", MAX_IN_FLIGHT_RANGE.start(), MAX_IN_FLIGHT_RANGE.end()),
                    ));
                }
            }
            plans.push(CompiledPlan {
                name: name.clone(),
                buckets: buckets(&plan.requests, &plan.characters, &plan.audio_seconds, &field)?,
                max_in_flight: plan.max_in_flight,
            });
        }
        let default_plan = match (&self.default_plan, plans.is_empty()) {
            (None, true) => 0,
            (None, false) => {
                return Err(ConfigError::new(format!("{FIELD}.default_plan"), "is required when plans are defined"))
            }
            (Some(_), true) => {
                return Err(ConfigError::new(format!("{FIELD}.default_plan"), "names a plan but no plans are defined"))
            }
            (Some(name), false) => match plans.iter().position(|p| &p.name == name) {
                Some(index) => index as u16,
                None => {
                    return Err(ConfigError::new(format!("{FIELD}.default_plan"), "must name one of `plans`"))
                }
            },
        };
        let anonymous = self
            .anonymous
            .as_ref()
            .map(|s| buckets(&s.requests, &s.characters, &s.audio_seconds, &format!("{FIELD}.anonymous")))
            .transpose()?;
        let global = self
            .global
            .as_ref()
            .map(|s| buckets(&s.requests, &s.characters, &s.audio_seconds, &format!("{FIELD}.global")))
            .transpose()?;
        let cluster = match &self.cluster {
            Some(cluster) => {
                cluster.check(&self)?;
                Some((cluster.clone(), cluster.service_limits(&self)))
            }
            None => None,
        };
        Ok(Compiled {
            shadow: self.shadow,
            slots: self.slots,
            plan_claim: self.plan_claim,
            plans,
            default_plan,
            anonymous,
            global,
            headers: self.headers,
            lease_ttl_ms: self.in_flight_timeout_seconds * 1000,
            cluster,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> RateLimitConfig {
        serde_json::from_str(json).unwrap()
    }

    fn error(json: &str) -> ConfigError {
        parse(json).check().err().expect("configuration should be refused")
    }

    #[test]
    fn the_documented_example_parses() {
        let c = parse(
            r#"{ "shadow": false, "slots": 65536, "plan_claim": "plan", "default_plan": "free",
            "plans": {
              "free": {"requests": {"capacity": 10, "refill_per_second": 0.5},
                       "characters": {"capacity": 2000, "refill_per_second": 20}, "max_in_flight": 2},
              "pro":  {"requests": {"capacity": 100, "refill_per_second": 5},
                       "characters": {"capacity": 20000, "refill_per_second": 200}, "max_in_flight": 8}},
            "anonymous": {"requests": {"capacity": 5, "refill_per_second": 0.2}},
            "global": {"requests": {"capacity": 50, "refill_per_second": 20},
                       "characters": {"capacity": 50000, "refill_per_second": 5000}},
            "headers": "draft03" }"#,
        )
        .check()
        .unwrap();
        assert_eq!(c.plans.len(), 2);
        assert_eq!(c.default_plan, 0);
        assert_eq!(c.plans[0].buckets[0], Some(BucketSpec::new(10, 500)));
        assert_eq!(c.anonymous.unwrap()[1], None);
        assert_eq!(c.lease_ttl_ms, 300_000);
    }

    #[test]
    fn an_empty_section_limits_nothing() {
        let c = parse("{}").check().unwrap();
        assert!(c.plans.is_empty() && c.anonymous.is_none() && c.global.is_none());
        assert_eq!(c.slots, 65_536);
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_str::<RateLimitConfig>(r#"{"slot": 5}"#).is_err());
        assert!(serde_json::from_str::<RateLimitConfig>(
            r#"{"global": {"requests": {"capacity": 1, "refill_per_second": 1, "burst": 2}}}"#
        )
        .is_err());
        assert!(serde_json::from_str::<RateLimitConfig>(r#"{"headers": "draft02"}"#).is_err());
    }

    #[test]
    fn errors_name_the_field() {
        let plan = |bucket: &str| {
            format!(r#"{{"default_plan": "free", "plans": {{"free": {{"requests": {bucket}}}}}}}"#)
        };
        assert_eq!(
            error(&plan(r#"{"capacity": 0, "refill_per_second": 1}"#)).field,
            "rate_limits.plans.free.requests.capacity"
        );
        assert_eq!(
            error(&plan(r#"{"capacity": 5, "refill_per_second": -1}"#)).field,
            "rate_limits.plans.free.requests.refill_per_second"
        );
        assert_eq!(
            error(&plan(r#"{"capacity": 5, "refill_per_second": 0.0004}"#)).field,
            "rate_limits.plans.free.requests.refill_per_second"
        );
        assert_eq!(
            error(&plan(r#"{"capacity": 5, "refill_per_second": 2e9}"#)).field,
            "rate_limits.plans.free.requests.refill_per_second"
        );
        assert_eq!(
            error(r#"{"global": {"characters": {"capacity": 2000000000000, "refill_per_second": 1}}}"#).field,
            "rate_limits.global.characters.capacity"
        );
        assert_eq!(error(r#"{"slots": 8}"#).field, "rate_limits.slots");
        assert_eq!(error(r#"{"slots": 8388608}"#).field, "rate_limits.slots");
        assert_eq!(error(r#"{"plan_claim": " "}"#).field, "rate_limits.plan_claim");
        assert_eq!(error(r#"{"in_flight_timeout_seconds": 0}"#).field, "rate_limits.in_flight_timeout_seconds");
        assert_eq!(
            error(r#"{"default_plan": "free", "plans": {"free": {"max_in_flight": 0}}}"#).field,
            "rate_limits.plans.free.max_in_flight"
        );
    }

    #[test]
    fn default_plan_must_exist() {
        let e = error(r#"{"default_plan": "gold", "plans": {"free": {}}}"#);
        assert_eq!(e.field, "rate_limits.default_plan");
        assert_eq!(error(r#"{"plans": {"free": {}}}"#).field, "rate_limits.default_plan");
        assert_eq!(error(r#"{"default_plan": "free"}"#).field, "rate_limits.default_plan");
    }

    #[test]
    fn zero_refill_is_allowed() {
        let c = parse(r#"{"global": {"requests": {"capacity": 3, "refill_per_second": 0}}}"#).check().unwrap();
        assert_eq!(c.global.unwrap()[0], Some(BucketSpec::new(3, 0)));
    }
}
