//! The configuration sections built field by field rather than from JSON text, so numbers
//! JSON cannot carry (NaN, infinities, subnormals, `u64::MAX`) and boundary values reach
//! `TextRules::compile`, `RateLimitConfig::compile`, `BucketTable::new` and
//! `AuthConfig::compile`. Whatever compiles must then validate and admit requests (and, with a
//! cluster tier, ask it and give the admission back).
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::json;
use voxgate_filter::auth::{AuthConfig, FailedAuthLimit, ProviderConfig, RemoteJwksConfig};
use voxgate_filter::ratelimit::cluster::{ClusterConfig, FailureMode, GlobalLimit, Prepared};
use voxgate_filter::ratelimit::{
    BucketConfig, BucketTable, HeaderStyle, Identity, PlanConfig, RateLimitConfig, ScopeConfig,
};
use voxgate_filter::routes::Api;
use voxgate_filter::validate::TextRules;
use voxgate_fuzz::jwt;
use voxgate_fuzz::store::FuzzStore;

/// A number near the edges the checks are written against.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Float {
    Zero,
    Tiny,
    Milli,
    Small(u16),
    Huge,
    Max,
    Nan,
    Infinity,
    NegativeInfinity,
    Negative(u16),
    Any(f64),
}

impl Float {
    fn value(self) -> f64 {
        match self {
            Float::Zero => 0.0,
            Float::Tiny => 0.000_499,
            Float::Milli => 0.001,
            Float::Small(n) => f64::from(n) / 8.0,
            Float::Huge => 1e9,
            Float::Max => f64::MAX,
            Float::Nan => f64::NAN,
            Float::Infinity => f64::INFINITY,
            Float::NegativeInfinity => f64::NEG_INFINITY,
            Float::Negative(n) => -f64::from(n),
            Float::Any(f) => f,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Count {
    Zero,
    One,
    Small(u8),
    Edge(u8),
    Any(u64),
    Max,
}

impl Count {
    fn value(self) -> u64 {
        match self {
            Count::Zero => 0,
            Count::One => 1,
            Count::Small(n) => u64::from(n),
            // 2^k - 1, 2^k and 2^k + 1 around every power of two, and the documented limits.
            Count::Edge(n) => match n % 8 {
                0 => 1_000_000_000_000,
                1 => 1_000_000_000_001,
                2 => 16 << 20,
                3 => 1_000_000,
                4 => 86_400,
                _ => (1u64 << (n % 64))
                    .wrapping_add(u64::from(n % 3))
                    .wrapping_sub(1),
            },
            Count::Any(n) => n,
            Count::Max => u64::MAX,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct Bucket {
    capacity: Count,
    refill: Float,
}

impl Bucket {
    fn config(self) -> BucketConfig {
        BucketConfig {
            capacity: self.capacity.value(),
            refill_per_second: self.refill.value(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Text {
    max_body_bytes: Count,
    max_chars: Count,
    allow_control_chars: bool,
    deny_patterns: Vec<String>,
    voices: Vec<String>,
    response_formats: Vec<String>,
    min_speed: Float,
    max_speed: Float,
    sample: String,
}

#[derive(Arbitrary, Debug)]
struct PlanLimits {
    name: String,
    requests: Option<Bucket>,
    characters: Option<Bucket>,
    audio_seconds: Option<Bucket>,
    max_in_flight: Option<u32>,
}

/// Requests, characters and audio-seconds buckets of a scope.
type ScopeBuckets = (Option<Bucket>, Option<Bucket>, Option<Bucket>);

#[derive(Arbitrary, Debug)]
struct Limits {
    shadow: bool,
    slots: Count,
    plan_claim: String,
    default_plan: Option<String>,
    plans: Vec<PlanLimits>,
    anonymous: Option<ScopeBuckets>,
    global: Option<ScopeBuckets>,
    headers: u8,
    in_flight_timeout_seconds: Count,
    failed_auth: Bucket,
    now_ms: Count,
    chars: Count,
    cluster: Option<Cluster>,
}

#[derive(Arbitrary, Debug)]
struct Cluster {
    service: String,
    domain: String,
    timeout_ms: Count,
    failure_mode: u8,
    local_only_seconds: Count,
    limits: Vec<u8>,
    /// `reserve` in hundredths (0: none).
    reserve: u8,
}

impl Cluster {
    fn config(self) -> ClusterConfig {
        ClusterConfig {
            service: self.service,
            domain: self.domain,
            timeout_ms: self.timeout_ms.value(),
            failure_mode: [FailureMode::Deny, FailureMode::Allow, FailureMode::LocalOnly]
                [usize::from(self.failure_mode % 3)],
            local_only_seconds: self.local_only_seconds.value(),
            limits: self
                .limits
                .iter()
                .map(|i| GlobalLimit::ALL[usize::from(*i) % GlobalLimit::ALL.len()])
                .collect(),
            reserve: (self.reserve > 0).then(|| f64::from(self.reserve) / 100.0),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Auth {
    providers: Vec<Provider>,
    token_header: String,
    clock_skew_seconds: Count,
    required_scopes: Vec<String>,
    forward_claims: Vec<(String, String)>,
    cache_entries: Count,
    cache_ttl_seconds: Count,
    max_token_bytes: Count,
    failed_auth: Option<(Count, Float)>,
}

#[derive(Arbitrary, Debug)]
struct Provider {
    name: String,
    issuer: String,
    audiences: Vec<String>,
    key: Option<Vec<u8>>,
    remote: Option<(String, String, String, Count, Count)>,
    require_exp: bool,
    max_lifetime: Option<Count>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    text: Text,
    limits: Limits,
    auth: Auth,
}

fuzz_target!(|input: Input| {
    text_rules(input.text);
    rate_limits(input.limits);
    auth(input.auth);
});

fn text_rules(t: Text) {
    let rules = TextRules {
        max_body_bytes: t.max_body_bytes.value() as usize,
        max_chars: t.max_chars.value() as usize,
        allow_control_chars: t.allow_control_chars,
        deny_patterns: t.deny_patterns,
        voices: t.voices,
        catalog: Default::default(),
        response_formats: t.response_formats,
        min_speed: t.min_speed.value(),
        max_speed: t.max_speed.value(),
    };
    let Ok(validator) = rules.compile() else {
        return;
    };
    let body = json!({"input": t.sample, "speed": 1.0}).to_string();
    let _ = validator.validate_body(Api::OpenAiSpeech, Some("application/json"), body.as_bytes());
    let body = json!({"text": t.sample}).to_string();
    let _ = validator.validate_body(Api::CoquiTts, Some("application/json"), body.as_bytes());
}

fn rate_limits(l: Limits) {
    let scope = |buckets: Option<ScopeBuckets>| {
        buckets.map(|(requests, characters, audio_seconds)| ScopeConfig {
            requests: requests.map(Bucket::config),
            characters: characters.map(Bucket::config),
            audio_seconds: audio_seconds.map(Bucket::config),
        })
    };
    let plans: BTreeMap<String, PlanConfig> = l
        .plans
        .into_iter()
        .map(|p| {
            let plan = PlanConfig {
                requests: p.requests.map(Bucket::config),
                characters: p.characters.map(Bucket::config),
                audio_seconds: p.audio_seconds.map(Bucket::config),
                max_in_flight: p.max_in_flight,
            };
            (p.name, plan)
        })
        .collect();
    let plan_names: Vec<String> = plans.keys().cloned().collect();
    let slots = u32::try_from(l.slots.value()).unwrap_or(u32::MAX);
    let config = RateLimitConfig {
        shadow: l.shadow,
        slots,
        plan_claim: l.plan_claim,
        default_plan: l.default_plan,
        plans,
        anonymous: scope(l.anonymous),
        global: scope(l.global),
        headers: [HeaderStyle::Draft03, HeaderStyle::Ietf, HeaderStyle::Off]
            [usize::from(l.headers % 3)],
        in_flight_timeout_seconds: l.in_flight_timeout_seconds.value(),
        cluster: l.cluster.map(Cluster::config),
    };
    let store = FuzzStore::with_fixed_secret();
    let now_ms = l.now_ms.value();
    if let Ok(table) = BucketTable::new(
        "failed_auth",
        &l.failed_auth.config(),
        slots,
        "auth.failed_auth",
    ) {
        for _ in 0..3 {
            let _ = table.take(&store, now_ms, "203.0.113.9", 1);
        }
        let _ = table.peek(&store, now_ms, "203.0.113.9");
    }
    let Ok(limiter) = config.compile() else {
        return;
    };
    let chars = l.chars.value();
    for plan in plan_names.iter().map(String::as_str).chain(["", "unknown"]) {
        for subject in [Some("alice"), None] {
            let who = Identity {
                subject,
                plan: Some(plan),
                client_addr: "[2001:db8::1]:443",
            };
            for now in [now_ms, now_ms.saturating_add(1), now_ms.wrapping_sub(1)] {
                if let Ok(verdict) = limiter.admit(&store, now, &who, chars) {
                    if let (true, Some(tier)) = (verdict.allowed(), limiter.cluster()) {
                        // What the cluster tier does after an admission: take what reservations
                        // hold, ask, keep the blocks counted, and give back on a refusal.
                        if let Ok(Prepared::Ask(query)) = tier.prepare(&store, now, &who, limiter.plan_name(&who), chars) {
                            let resets = vec![Some(60_000); query.limits.len()];
                            let _ = tier.keep_reserved(&store, now, &query, &resets, now);
                            let _ = tier.give_back(&store, now, &query.exact());
                        }
                        let _ = limiter.give_back(&store, now, &verdict.receipt);
                        continue;
                    }
                    if verdict.in_flight_lease {
                        let _ = limiter.release_in_flight(&store, &who);
                    }
                    if verdict.audio.is_some() {
                        let _ = limiter.charge_audio(&store, now, &who, 2.5);
                        let _ = limiter.audio_refusal(&store, now, &who, 10.0);
                    }
                }
            }
        }
    }
}

fn auth(a: Auth) {
    let providers = a
        .providers
        .into_iter()
        .map(|p| {
            let jwks = p
                .key
                .map(|k| json!({"keys": [{"kty": "oct", "k": jwt::b64(&k)}]}));
            let remote_jwks =
                p.remote.map(
                    |(cluster, authority, path, refresh, timeout)| RemoteJwksConfig {
                        cluster,
                        authority,
                        path,
                        refresh_seconds: refresh.value(),
                        timeout_ms: timeout.value(),
                    },
                );
            ProviderConfig {
                name: p.name,
                issuer: p.issuer,
                audiences: p.audiences,
                jwks,
                remote_jwks,
                jwt_authn: None,
                require_exp: p.require_exp,
                max_lifetime_seconds: p.max_lifetime.map(Count::value),
            }
        })
        .collect();
    let config = AuthConfig {
        providers,
        api_keys: None,
        token_header: a.token_header,
        clock_skew_seconds: a.clock_skew_seconds.value(),
        required_scopes: a.required_scopes,
        forward_claims: a.forward_claims.into_iter().collect(),
        cache_entries: a.cache_entries.value() as usize,
        cache_ttl_seconds: a.cache_ttl_seconds.value(),
        max_token_bytes: a.max_token_bytes.value() as usize,
        failed_auth: a.failed_auth.map(|(capacity, rate)| FailedAuthLimit {
            capacity: capacity.value(),
            refill_per_second: rate.value(),
            refuse_before_verification: false,
        }),
    };
    let Ok(authenticator) = config.compile() else {
        return;
    };
    let _ = authenticator.remote_jwks();
    let _ = authenticator.due_jwks_fetches(jwt::NOW_S);
    let token = jwt::sign_hs256(
        br#"{"alg":"HS256"}"#,
        br#"{"sub":"alice","exp":1800000600}"#,
        jwt::DEV_SECRET,
    );
    let _ = authenticator.verify(&token, jwt::NOW_S);
}
