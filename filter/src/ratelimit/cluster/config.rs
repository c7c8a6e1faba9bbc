//! `rate_limits.cluster` in the plugin configuration: the rate-limit service that holds the
//! cluster-wide counters, how long a request may wait for it, what a failure means, and which
//! of the configured limits it enforces. Also the limits the service must know, derived from
//! the same plan definitions the local buckets use, so the two can never disagree.

use serde::Deserialize;

use super::super::config::{BucketConfig, RateLimitConfig};
use crate::error::ConfigError;

const FIELD: &str = "rate_limits.cluster";

/// Accepted `timeout_ms`: long enough for a loopback or in-zone call, short enough that a hung
/// service never holds a request for long.
pub const TIMEOUT_MS_RANGE: std::ops::RangeInclusive<u64> = 1..=10_000;
/// Accepted `local_only_seconds`.
pub const LOCAL_ONLY_SECONDS_RANGE: std::ops::RangeInclusive<u64> = 1..=3_600;
/// The largest `reserve`: beyond half a window's budget per call, one Envoy would hold most of
/// what the others need.
pub const MAX_RESERVE: f64 = 0.5;

/// What a request gets when the rate-limit service cannot decide (down, hung, slow, or an
/// answer that does not decode).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Refuse with 503 `rate_limit_unavailable` (fail closed) and give back the local tokens.
    #[default]
    Deny,
    /// Let the request through; the service is asked again for the next request.
    Allow,
    /// Let the request through and stop asking the service for `local_only_seconds`: the local
    /// buckets alone limit traffic meanwhile, and no request pays the timeout again.
    LocalOnly,
}

impl FailureMode {
    pub fn name(self) -> &'static str {
        match self {
            FailureMode::Deny => "deny",
            FailureMode::Allow => "allow",
            FailureMode::LocalOnly => "local_only",
        }
    }
}

/// A limit the rate-limit service can enforce across every replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GlobalLimit {
    SubjectRequests,
    SubjectCharacters,
    AnonymousRequests,
    AnonymousCharacters,
    GlobalRequests,
    GlobalCharacters,
}

/// Whose counter a limit keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// One counter per verified subject, with the numbers of the subject's plan.
    Subject,
    /// One counter per client address (`client_key`), on routes without authentication.
    Client,
    /// One counter for all traffic.
    Everyone,
}

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cost {
    Requests,
    Characters,
}

impl GlobalLimit {
    pub const ALL: [GlobalLimit; 6] = [
        GlobalLimit::SubjectRequests,
        GlobalLimit::SubjectCharacters,
        GlobalLimit::AnonymousRequests,
        GlobalLimit::AnonymousCharacters,
        GlobalLimit::GlobalRequests,
        GlobalLimit::GlobalCharacters,
    ];

    /// The value of the `limit` descriptor entry, and the local limit of the same numbers.
    pub fn name(self) -> &'static str {
        match self {
            GlobalLimit::SubjectRequests => "subject_requests",
            GlobalLimit::SubjectCharacters => "subject_characters",
            GlobalLimit::AnonymousRequests => "anonymous_requests",
            GlobalLimit::AnonymousCharacters => "anonymous_characters",
            GlobalLimit::GlobalRequests => "global_requests",
            GlobalLimit::GlobalCharacters => "global_characters",
        }
    }

    /// The name a refusal by the service carries in answers, logs and metrics.
    pub fn refusal_name(self) -> &'static str {
        match self {
            GlobalLimit::SubjectRequests => "cluster_subject_requests",
            GlobalLimit::SubjectCharacters => "cluster_subject_characters",
            GlobalLimit::AnonymousRequests => "cluster_anonymous_requests",
            GlobalLimit::AnonymousCharacters => "cluster_anonymous_characters",
            GlobalLimit::GlobalRequests => "cluster_global_requests",
            GlobalLimit::GlobalCharacters => "cluster_global_characters",
        }
    }

    pub fn holder(self) -> Holder {
        match self {
            GlobalLimit::SubjectRequests | GlobalLimit::SubjectCharacters => Holder::Subject,
            GlobalLimit::AnonymousRequests | GlobalLimit::AnonymousCharacters => Holder::Client,
            GlobalLimit::GlobalRequests | GlobalLimit::GlobalCharacters => Holder::Everyone,
        }
    }

    pub fn cost(self) -> Cost {
        match self {
            GlobalLimit::SubjectRequests | GlobalLimit::AnonymousRequests | GlobalLimit::GlobalRequests => {
                Cost::Requests
            }
            _ => Cost::Characters,
        }
    }
}

/// `rate_limits.cluster`, as written by the operator.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The Envoy cluster (HTTP/2) that serves `envoy.service.ratelimit.v3.RateLimitService`.
    pub service: String,
    /// The `domain` of every request: the namespace of the service's limits.
    #[serde(default = "default_domain")]
    pub domain: String,
    /// The most a request waits for the service's answer.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default)]
    pub failure_mode: FailureMode,
    /// How long `local_only` stops asking after a failure.
    #[serde(default = "default_local_only_seconds")]
    pub local_only_seconds: u64,
    /// The limits the service enforces, each with the numbers of its local bucket.
    pub limits: Vec<GlobalLimit>,
    /// The share of each limit's capacity a call reserves ahead for the next requests of the
    /// same holder (see `reserve`); `None`: every request asks the service.
    #[serde(default)]
    pub reserve: Option<f64>,
}

fn default_domain() -> String {
    "voxgate".to_string()
}

fn default_timeout_ms() -> u64 {
    100
}

fn default_local_only_seconds() -> u64 {
    5
}

/// One limit the rate-limit service must hold: a fixed window of `capacity` units per
/// `window_seconds` (the time the local bucket takes to refill from empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceLimit {
    pub limit: GlobalLimit,
    /// The plan a subject limit applies to; `None` for the other holders.
    pub plan: Option<String>,
    pub capacity: u64,
    pub window_seconds: u64,
}

/// The window of a limit whose bucket never refills: a year, so that its budget is spent once.
pub const NEVER_RESETS_SECONDS: u64 = 365 * 86_400;

fn window_seconds(bucket: &BucketConfig) -> u64 {
    if bucket.refill_per_second <= 0.0 {
        return NEVER_RESETS_SECONDS;
    }
    ((bucket.capacity as f64 / bucket.refill_per_second).ceil() as u64).clamp(1, NEVER_RESETS_SECONDS)
}

impl ClusterConfig {
    /// Checks the section against the rest of `rate_limits`: every limit it names must have a
    /// local bucket, whose numbers the service then uses.
    pub fn check(&self, rate_limits: &RateLimitConfig) -> Result<(), ConfigError> {
        if self.service.trim().is_empty() {
            return Err(ConfigError::new(format!("{FIELD}.service"), "must name an Envoy cluster"));
        }
        if self.domain.trim().is_empty() {
            return Err(ConfigError::new(format!("{FIELD}.domain"), "must not be empty"));
        }
        if !TIMEOUT_MS_RANGE.contains(&self.timeout_ms) {
            return Err(ConfigError::new(
                format!("{FIELD}.timeout_ms"),
                format!("must be between {} and {}", TIMEOUT_MS_RANGE.start(), TIMEOUT_MS_RANGE.end()),
            ));
        }
        if !LOCAL_ONLY_SECONDS_RANGE.contains(&self.local_only_seconds) {
            return Err(ConfigError::new(
                format!("{FIELD}.local_only_seconds"),
                format!(
                    "must be between {} and {}",
                    LOCAL_ONLY_SECONDS_RANGE.start(),
                    LOCAL_ONLY_SECONDS_RANGE.end()
                ),
            ));
        }
        if let Some(reserve) = self.reserve {
            if !(reserve > 0.0 && reserve <= MAX_RESERVE) {
                return Err(ConfigError::new(
                    format!("{FIELD}.reserve"),
                    format!("must be above 0 and at most {MAX_RESERVE} (a share of each limit's capacity)"),
                ));
            }
        }
        if self.limits.is_empty() {
            return Err(ConfigError::new(format!("{FIELD}.limits"), "must name at least one limit"));
        }
        for (index, limit) in self.limits.iter().enumerate() {
            if self.limits[..index].contains(limit) {
                return Err(ConfigError::new(format!("{FIELD}.limits[{index}]"), "is named twice"));
            }
            if service_limits_of(*limit, rate_limits).is_empty() {
                return Err(ConfigError::new(
                    format!("{FIELD}.limits[{index}]"),
                    format!("{} has no bucket configured in `rate_limits` to take its numbers from", limit.name()),
                ));
            }
        }
        Ok(())
    }

    /// Every limit the service must hold for this configuration.
    pub fn service_limits(&self, rate_limits: &RateLimitConfig) -> Vec<ServiceLimit> {
        self.limits.iter().flat_map(|limit| service_limits_of(*limit, rate_limits)).collect()
    }
}

fn service_limits_of(limit: GlobalLimit, rate_limits: &RateLimitConfig) -> Vec<ServiceLimit> {
    let pick = |requests: &Option<BucketConfig>, characters: &Option<BucketConfig>| match limit.cost() {
        Cost::Requests => requests.clone(),
        Cost::Characters => characters.clone(),
    };
    let make = |plan: Option<String>, bucket: BucketConfig| ServiceLimit {
        limit,
        plan,
        capacity: bucket.capacity,
        window_seconds: window_seconds(&bucket),
    };
    match limit.holder() {
        Holder::Subject => rate_limits
            .plans
            .iter()
            .filter_map(|(name, plan)| pick(&plan.requests, &plan.characters).map(|b| make(Some(name.clone()), b)))
            .collect(),
        Holder::Client => rate_limits
            .anonymous
            .iter()
            .filter_map(|scope| pick(&scope.requests, &scope.characters).map(|b| make(None, b)))
            .collect(),
        Holder::Everyone => rate_limits
            .global
            .iter()
            .filter_map(|scope| pick(&scope.requests, &scope.characters).map(|b| make(None, b)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate_limits(json: &str) -> RateLimitConfig {
        serde_json::from_str(json).unwrap()
    }

    const PLANS: &str = r#"{ "default_plan": "free",
        "plans": {
          "free": {"requests": {"capacity": 10, "refill_per_second": 0.5},
                   "characters": {"capacity": 2000, "refill_per_second": 20}},
          "pro":  {"requests": {"capacity": 100, "refill_per_second": 0}}},
        "global": {"requests": {"capacity": 50, "refill_per_second": 20}},
        "cluster": {"service": "voxgate_rls",
                    "limits": ["subject_requests", "subject_characters", "global_requests"]} }"#;

    #[test]
    fn service_limits_take_the_numbers_of_the_local_buckets() {
        let config = rate_limits(PLANS);
        let cluster = config.cluster.clone().unwrap();
        cluster.check(&config).unwrap();
        assert_eq!(cluster.domain, "voxgate");
        assert_eq!(cluster.timeout_ms, 100);
        assert_eq!(cluster.failure_mode, FailureMode::Deny);
        let limits = cluster.service_limits(&config);
        let plan = |name: &str| Some(name.to_string());
        assert_eq!(
            limits,
            vec![
                ServiceLimit { limit: GlobalLimit::SubjectRequests, plan: plan("free"), capacity: 10, window_seconds: 20 },
                ServiceLimit {
                    limit: GlobalLimit::SubjectRequests,
                    plan: plan("pro"),
                    capacity: 100,
                    window_seconds: NEVER_RESETS_SECONDS
                },
                ServiceLimit {
                    limit: GlobalLimit::SubjectCharacters,
                    plan: plan("free"),
                    capacity: 2000,
                    window_seconds: 100
                },
                ServiceLimit { limit: GlobalLimit::GlobalRequests, plan: None, capacity: 50, window_seconds: 3 },
            ]
        );
    }

    fn error(cluster: &str) -> ConfigError {
        let config = rate_limits(&PLANS.replace(
            r#""cluster": {"service": "voxgate_rls",
                    "limits": ["subject_requests", "subject_characters", "global_requests"]}"#,
            &format!(r#""cluster": {cluster}"#),
        ));
        config.cluster.clone().unwrap().check(&config).expect_err("should be refused")
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(error(r#"{"service": " ", "limits": ["global_requests"]}"#).field, "rate_limits.cluster.service");
        assert_eq!(
            error(r#"{"service": "rls", "domain": "", "limits": ["global_requests"]}"#).field,
            "rate_limits.cluster.domain"
        );
        assert_eq!(
            error(r#"{"service": "rls", "timeout_ms": 0, "limits": ["global_requests"]}"#).field,
            "rate_limits.cluster.timeout_ms"
        );
        assert_eq!(
            error(r#"{"service": "rls", "local_only_seconds": 0, "limits": ["global_requests"]}"#).field,
            "rate_limits.cluster.local_only_seconds"
        );
        assert_eq!(error(r#"{"service": "rls", "limits": []}"#).field, "rate_limits.cluster.limits");
        let unbacked = error(r#"{"service": "rls", "limits": ["global_requests", "anonymous_requests"]}"#);
        assert_eq!(unbacked.field, "rate_limits.cluster.limits[1]");
        assert!(unbacked.message.contains("anonymous_requests"), "{}", unbacked.message);
        assert_eq!(
            error(r#"{"service": "rls", "limits": ["global_requests", "global_requests"]}"#).field,
            "rate_limits.cluster.limits[1]"
        );
    }

    #[test]
    fn unknown_limits_and_modes_are_refused() {
        let parse = |json: &str| serde_json::from_str::<ClusterConfig>(json);
        assert!(parse(r#"{"service": "rls", "limits": ["subject_audio_seconds"]}"#).is_err());
        assert!(parse(r#"{"service": "rls", "limits": ["global_requests"], "failure_mode": "open"}"#).is_err());
        assert_eq!(
            parse(r#"{"service": "rls", "limits": ["global_requests"], "failure_mode": "local_only"}"#)
                .unwrap()
                .failure_mode,
            FailureMode::LocalOnly
        );
    }
}
