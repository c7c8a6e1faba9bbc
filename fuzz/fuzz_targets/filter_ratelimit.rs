//! The rate limiter against Envoy-like shared data, driven by a configuration and a sequence
//! of operations built from the input: admissions by subjects (each with its plan) and by
//! client addresses, in-flight releases, failed-auth takes and peeks, clock moves (also
//! backwards, as between workers), lost CAS races, and stored records rewritten or replaced
//! behind the limiter's back. Slots are few, so identities collide.
//!
//! Judged:
//! - the stored-record encoding round-trips: a record the limiter wrote itself always decodes
//!   again (`state_reset` only ever follows a value someone else wrote);
//! - exactness: for buckets that never refill, no subject, address or the global scope is
//!   admitted more often than its capacity, whatever the lost races and the store errors
//!   (they may only cost admissions), as long as nobody rewrites the store; an admission
//!   given back (as after a cluster refusal) counts as none, so a refund can never create
//!   capacity;
//! - verdicts are consistent (`allowed` iff no rejection; refusals are 429 with a positive
//!   whole `Retry-After`, or 400 `text_exceeds_plan`);
//! - `client_key` is idempotent, so a key never changes when re-derived.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use voxgate_filter::ratelimit::{
    client_key, BucketConfig, BucketTable, HeaderStyle, Identity, Outcome, PlanConfig,
    RateLimitConfig, RateLimiter, ScopeConfig, StoreError,
};
use voxgate_fuzz::oracle;
use voxgate_fuzz::store::FuzzStore;

const PLANS: [&str; 3] = ["free", "pro", "team"];
const SUBJECTS: usize = 6;
const ADDRESSES: [&str; 8] = [
    "203.0.113.9:53211",
    "203.0.113.9:40000",
    "198.51.100.7",
    "[2001:db8:1:2:3:4:5:6]:443",
    "[2001:db8:1:2:ffff::1]:80",
    "[::ffff:198.51.100.7]:8080",
    "unix:/run/envoy.sock",
    "",
];

#[derive(Arbitrary, Debug, Clone, Copy)]
struct Bucket {
    capacity: u8,
    /// Thousandths of a token per second; 0 never refills.
    refill_milli: u16,
}

impl Bucket {
    fn config(self) -> BucketConfig {
        BucketConfig {
            capacity: u64::from(self.capacity).max(1),
            refill_per_second: f64::from(self.refill_milli) / 1000.0,
        }
    }
    fn never_refills(self) -> bool {
        self.refill_milli == 0
    }
}

#[derive(Arbitrary, Debug)]
struct Plan {
    requests: Option<Bucket>,
    characters: Option<Bucket>,
    audio_seconds: Option<Bucket>,
    max_in_flight: Option<u8>,
}

/// Requests, characters and audio-seconds buckets of a scope.
type ScopeBuckets = (Option<Bucket>, Option<Bucket>, Option<Bucket>);

#[derive(Arbitrary, Debug)]
struct Config {
    shadow: bool,
    extra_slots: u8,
    plans: [Option<Plan>; 3],
    default_plan: u8,
    anonymous: Option<ScopeBuckets>,
    global: Option<ScopeBuckets>,
    headers: u8,
    in_flight_timeout_seconds: u16,
    failed_auth: Bucket,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// `given_back`: a later tier (the cluster's rate-limit service) refuses the request once
    /// admitted, and everything it took is given back.
    Admit {
        subject: Option<u8>,
        address: u8,
        chars: u16,
        given_back: bool,
    },
    Release {
        subject: Option<u8>,
        address: u8,
    },
    /// The sidecar's answer about audio, in hundredths of a second: what a finished request
    /// made (charged), or what a refused one would have needed (`refused`).
    Audio {
        subject: Option<u8>,
        address: u8,
        centiseconds: u16,
        refused: bool,
    },
    FailedAuth {
        address: u8,
        cost: u8,
    },
    PeekFailedAuth {
        address: u8,
    },
    Advance {
        ms: u32,
    },
    GoBack {
        ms: u16,
    },
    LoseWrites {
        count: u8,
    },
    Tamper {
        key: u8,
        offset: u8,
        word: u64,
    },
    Replace {
        key: u8,
        bytes: Vec<u8>,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    config: Config,
    start_ms: u64,
    ops: Vec<Op>,
}

/// What the exactness bound needs to know about the run so far.
#[derive(Default)]
struct Tally {
    tampered: bool,
    subject_admits: BTreeMap<usize, u64>,
    anonymous_admits: BTreeMap<String, u64>,
    global_admits: u64,
    failed_auth_takes: BTreeMap<String, u64>,
}

fuzz_target!(|input: Input| {
    let Some((limiter, table, bounds)) = build(&input.config) else {
        return;
    };
    let store = FuzzStore::with_fixed_secret();
    let mut now_ms = input.start_ms;
    let mut tally = Tally::default();
    for op in input.ops.iter().take(64) {
        store.begin_call();
        match op {
            Op::Admit {
                subject,
                address,
                chars,
                given_back,
            } => {
                let (who, subject_index) = identity(*subject, *address);
                match limiter.admit(&store, now_ms, &who, u64::from(*chars)) {
                    Ok(verdict) => {
                        assert!(
                            !verdict.state_reset || store.call_read_tampered(),
                            "a record the limiter wrote did not decode"
                        );
                        if let Some(rejection) = verdict.rejection() {
                            oracle::check_rejection(rejection, &[400, 429], &[]);
                            if rejection.status() == 429 {
                                let retry = rejection
                                    .headers
                                    .iter()
                                    .find(|(n, _)| n == "Retry-After")
                                    .map(|(_, v)| v);
                                let seconds: u64 = retry
                                    .expect("a 429 carries Retry-After")
                                    .parse()
                                    .expect("whole seconds");
                                assert!(seconds >= 1);
                            } else {
                                assert_eq!(rejection.code, "text_exceeds_plan");
                            }
                        }
                        if verdict.allowed() && *given_back {
                            // Counted as never admitted: a refund that gave back more than
                            // was taken would let a later admission pass its capacity.
                            match limiter.give_back(&store, now_ms, &verdict.receipt) {
                                Ok(_) | Err(StoreError::CasMismatch) => {}
                                Err(StoreError::Other(message)) => {
                                    panic!("the fuzz store never fails otherwise: {message}")
                                }
                            }
                        } else if verdict.outcome == Outcome::Admitted {
                            match subject_index {
                                Some(s) => *tally.subject_admits.entry(s).or_default() += 1,
                                None => {
                                    *tally
                                        .anonymous_admits
                                        .entry(client_key(who.client_addr))
                                        .or_default() += 1
                                }
                            }
                            tally.global_admits += 1;
                        }
                    }
                    Err(StoreError::CasMismatch) => {}
                    Err(StoreError::Other(message)) => {
                        panic!("the fuzz store never fails otherwise: {message}")
                    }
                }
            }
            Op::Release { subject, address } => {
                let (who, _) = identity(*subject, *address);
                let _ = limiter.release_in_flight(&store, &who);
            }
            Op::Audio {
                subject,
                address,
                centiseconds,
                refused,
            } => {
                let (who, _) = identity(*subject, *address);
                let seconds = f64::from(*centiseconds) / 100.0;
                if !refused {
                    if let Err(StoreError::Other(message)) =
                        limiter.charge_audio(&store, now_ms, &who, seconds)
                    {
                        panic!("the fuzz store never fails otherwise: {message}")
                    }
                } else if let Ok(Some(refusal)) =
                    limiter.audio_refusal(&store, now_ms, &who, seconds)
                {
                    assert!(refusal.retry_after_s >= 1, "{refusal:?}");
                    let retry = refusal.headers.iter().find(|(n, _)| n == "Retry-After");
                    assert_eq!(
                        retry.map(|(_, v)| v.clone()),
                        Some(refusal.retry_after_s.to_string())
                    );
                }
            }
            Op::FailedAuth { address, cost } => {
                let key = client_key(address_of(*address));
                match table.take(&store, now_ms, &key, u64::from(*cost % 4)) {
                    Ok(take) => {
                        assert!(
                            !take.state_reset || store.call_read_tampered(),
                            "a bucket the table wrote did not decode"
                        );
                        assert_eq!(take.allowed, take.retry_after_s == 0, "{take:?}");
                        if take.allowed && *cost % 4 > 0 {
                            *tally.failed_auth_takes.entry(key).or_default() +=
                                u64::from(*cost % 4);
                        }
                    }
                    Err(_) => {}
                }
            }
            Op::PeekFailedAuth { address } => {
                let key = client_key(address_of(*address));
                if let Ok(take) = table.peek(&store, now_ms, &key) {
                    assert!(
                        !take.state_reset || store.call_read_tampered(),
                        "a bucket the table wrote did not decode"
                    );
                }
            }
            Op::Advance { ms } => now_ms = now_ms.saturating_add(u64::from(*ms)),
            Op::GoBack { ms } => now_ms = now_ms.saturating_sub(u64::from(*ms)),
            Op::LoseWrites { count } => store.lose_next_writes(u32::from(*count % 80)),
            Op::Tamper { key, offset, word } => {
                tally.tampered |= store.key_count() > 0;
                store.tamper(usize::from(*key), usize::from(*offset), *word);
            }
            Op::Replace { key, bytes } => {
                tally.tampered |= store.key_count() > 0;
                store.replace(usize::from(*key), bytes.clone());
            }
        }
    }
    if !tally.tampered && !input.config.shadow {
        bounds.check(&tally);
    }
    for address in ADDRESSES {
        let key = client_key(address);
        assert_eq!(
            client_key(&key),
            key,
            "client_key is not idempotent for {address:?}"
        );
    }
});

/// Capacities that bound admissions when their buckets never refill.
struct Bounds {
    subject_requests: Option<u64>,
    anonymous_requests: Option<u64>,
    global_requests: Option<u64>,
    failed_auth: Option<u64>,
}

impl Bounds {
    fn check(&self, tally: &Tally) {
        if let Some(cap) = self.subject_requests {
            for (subject, admitted) in &tally.subject_admits {
                assert!(
                    *admitted <= cap,
                    "subject {subject} admitted {admitted} times, capacity {cap}"
                );
            }
        }
        if let Some(cap) = self.anonymous_requests {
            for (key, admitted) in &tally.anonymous_admits {
                assert!(
                    *admitted <= cap,
                    "address {key} admitted {admitted} times, capacity {cap}"
                );
            }
        }
        if let Some(cap) = self.global_requests {
            assert!(
                tally.global_admits <= cap,
                "admitted {} requests globally, capacity {cap}",
                tally.global_admits
            );
        }
        if let Some(cap) = self.failed_auth {
            for (key, taken) in &tally.failed_auth_takes {
                assert!(
                    *taken <= cap,
                    "address {key} took {taken} failed-auth tokens, capacity {cap}"
                );
            }
        }
    }
}

fn address_of(index: u8) -> &'static str {
    ADDRESSES[usize::from(index) % ADDRESSES.len()]
}

/// Subject `s` always presents plan `PLANS[s % 3]` (its token's plan claim); without a
/// subject the request is anonymous from one of the addresses.
fn identity(subject: Option<u8>, address: u8) -> (Identity<'static>, Option<usize>) {
    const NAMES: [&str; SUBJECTS] = ["alice", "bob", "carol", "dave", "erin", "frank"];
    let index = subject.map(|s| usize::from(s) % SUBJECTS);
    let who = Identity {
        subject: index.map(|i| NAMES[i]),
        plan: index.map(|i| PLANS[i % PLANS.len()]),
        client_addr: address_of(address),
    };
    (who, index)
}

fn build(c: &Config) -> Option<(RateLimiter, BucketTable, Bounds)> {
    let slots = 16 + u32::from(c.extra_slots % 16);
    let plans: BTreeMap<String, PlanConfig> = PLANS
        .iter()
        .zip(&c.plans)
        .filter_map(|(name, plan)| {
            let plan = plan.as_ref()?;
            Some((
                name.to_string(),
                PlanConfig {
                    requests: plan.requests.map(Bucket::config),
                    characters: plan.characters.map(Bucket::config),
                    audio_seconds: plan.audio_seconds.map(Bucket::config),
                    max_in_flight: plan.max_in_flight.map(|m| u32::from(m % 8) + 1),
                },
            ))
        })
        .collect();
    let default_plan = plans
        .keys()
        .nth(usize::from(c.default_plan) % plans.len().max(1))
        .cloned();
    let scope = |buckets: Option<ScopeBuckets>| {
        buckets.map(|(requests, characters, audio_seconds)| ScopeConfig {
            requests: requests.map(Bucket::config),
            characters: characters.map(Bucket::config),
            audio_seconds: audio_seconds.map(Bucket::config),
        })
    };
    let config = RateLimitConfig {
        shadow: c.shadow,
        slots,
        plan_claim: "plan".to_string(),
        default_plan,
        plans,
        anonymous: scope(c.anonymous),
        global: scope(c.global),
        headers: [HeaderStyle::Draft03, HeaderStyle::Ietf, HeaderStyle::Off]
            [usize::from(c.headers % 3)],
        in_flight_timeout_seconds: u64::from(c.in_flight_timeout_seconds % 600) + 1,
        cluster: None,
    };
    let limiter = config.compile().ok()?;
    let table = BucketTable::new(
        "failed_auth",
        &c.failed_auth.config(),
        slots,
        "auth.failed_auth",
    )
    .ok()?;

    // A subject's bound holds when every configured plan limits requests without refilling
    // (a subject always gets one of them: its own plan or the default one).
    let configured: Vec<&Plan> = c.plans.iter().flatten().collect();
    let subject_requests = (!configured.is_empty()
        && configured
            .iter()
            .all(|p| p.requests.is_some_and(Bucket::never_refills)))
    .then(|| {
        configured
            .iter()
            .filter_map(|p| p.requests)
            .map(|b| b.config().capacity)
            .max()
    })
    .flatten();
    let never = |buckets: &Option<ScopeBuckets>| {
        buckets
            .and_then(|(requests, _, _)| requests)
            .filter(|b| b.never_refills())
            .map(|b| b.config().capacity)
    };
    let bounds = Bounds {
        subject_requests,
        anonymous_requests: never(&c.anonymous),
        global_requests: never(&c.global),
        failed_auth: c
            .failed_auth
            .never_refills()
            .then(|| c.failed_auth.config().capacity),
    };
    Some((limiter, table, bounds))
}
