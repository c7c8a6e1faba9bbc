//! Tests of the request limiter against the in-memory double of Envoy's shared data:
//! exactness under threads and under a scripted interleaving, bounded keys, collisions,
//! all-or-nothing refunds, in-flight leases, shadow mode and headers.

use std::cell::RefCell;
use std::sync::{Arc, Barrier};
use std::thread;

use super::keys::SlotTable;
use crate::testing::MemoryStore;
use super::record::Record;
use super::secret::SECRET_KEY;
use super::*;

fn limiter(json: &str) -> RateLimiter {
    serde_json::from_str::<RateLimitConfig>(json).unwrap().compile().unwrap()
}

fn user<'a>(subject: &'a str, plan: Option<&'a str>) -> Identity<'a> {
    Identity { subject: Some(subject), plan, client_addr: "192.0.2.1:40000" }
}

fn anonymous(addr: &str) -> Identity<'_> {
    Identity { subject: None, plan: None, client_addr: addr }
}

fn header<'a>(v: &'a Verdict, name: &str) -> Option<&'a str> {
    v.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
}

fn subject_record(store: &MemoryStore, slots: u32, subject: &str) -> Record {
    let slot = SlotTable::new("subject", slots).locate(store, subject).unwrap();
    Record::decode(&store.raw(&slot.key).unwrap(), 3).unwrap()
}

const FREE_PRO: &str = r#"{
    "default_plan": "free", "slots": 1024,
    "plans": {
      "free": {"requests": {"capacity": 10, "refill_per_second": 0.5},
               "characters": {"capacity": 2000, "refill_per_second": 20}, "max_in_flight": 2},
      "pro":  {"requests": {"capacity": 100, "refill_per_second": 5},
               "characters": {"capacity": 20000, "refill_per_second": 200}, "max_in_flight": 8}}}"#;

#[test]
fn a_subject_gets_exactly_its_capacity_then_an_exact_retry_after() {
    let store = MemoryStore::with_fixed_secret();
    let rl = limiter(FREE_PRO);
    let t0 = 1_700_000_000_000;
    for i in 0..10 {
        let v = rl.admit(&store, t0, &user("alice", None), 0).unwrap();
        assert!(v.allowed(), "request {i}");
        rl.release_in_flight(&store, &user("alice", None)).unwrap();
    }
    let v = rl.admit(&store, t0, &user("alice", None), 0).unwrap();
    assert!(!v.allowed());
    assert_eq!(v.refused_by(), Some("subject_requests"));
    assert_eq!(header(&v, "Retry-After"), Some("2"), "1 token at 0.5/s");
    let rejection = v.rejection().unwrap();
    assert_eq!((rejection.status(), rejection.code.as_str()), (429, "rate_limited"));
    assert_eq!(rejection.headers, v.headers);
    assert!(!rl.admit(&store, t0 + 1_999, &user("alice", None), 0).unwrap().allowed());
    assert!(rl.admit(&store, t0 + 2_000, &user("alice", None), 0).unwrap().allowed());
    // another subject is untouched
    assert!(rl.admit(&store, t0, &user("bob", None), 0).unwrap().allowed());
}

#[test]
fn characters_are_charged_exactly_and_oversized_texts_are_bad_requests() {
    let store = MemoryStore::with_fixed_secret();
    let rl = limiter(FREE_PRO);
    let who = user("carol", None);
    assert!(rl.admit(&store, 0, &who, 1_990).unwrap().allowed());
    rl.release_in_flight(&store, &who).unwrap();
    let v = rl.admit(&store, 0, &who, 100).unwrap();
    assert_eq!(v.refused_by(), Some("subject_characters"));
    assert_eq!(header(&v, "Retry-After"), Some("5"), "90 missing at 20/s = 4.5 s");
    assert!(rl.admit(&store, 0, &who, 10).unwrap().allowed(), "exactly the capacity in characters");
    let v = rl.admit(&store, 0, &who, 2_001).unwrap();
    let rejection = v.rejection().unwrap().clone();
    assert_eq!((rejection.status(), rejection.code.as_str()), (400, "text_exceeds_plan"));
    assert!(!rejection.message.contains("carol"));
    // the pro plan holds it
    assert!(rl.admit(&store, 0, &user("dave", Some("pro")), 2_001).unwrap().allowed());
}

#[test]
fn plan_claim_selects_the_plan_and_unknown_plans_get_the_default() {
    let store = MemoryStore::with_fixed_secret();
    let rl = limiter(FREE_PRO);
    assert_eq!(rl.plan_claim(), "plan");
    // each admitted request ends at once, so only the requests bucket binds
    let finished = |subject: &str, plan: Option<&str>| {
        let who = user(subject, plan);
        let mut n = 0;
        for _ in 0..200 {
            if rl.admit(&store, 0, &who, 0).unwrap().allowed() {
                n += 1;
                rl.release_in_flight(&store, &who).unwrap();
            }
        }
        n
    };
    assert_eq!(finished("p1", Some("pro")), 100);
    assert_eq!(finished("p2", Some("gold")), 10);
    assert_eq!(finished("p3", None), 10);
    let concurrent = (0..200).filter(|_| rl.admit(&store, 0, &user("p4", Some("free")), 0).unwrap().allowed()).count();
    assert_eq!(concurrent, 2, "without releases the in-flight cap of 2 binds first");
}

#[test]
fn anonymous_requests_are_keyed_by_address_without_port() {
    let store = MemoryStore::with_fixed_secret();
    let rl = limiter(r#"{"anonymous": {"requests": {"capacity": 3, "refill_per_second": 0}}}"#);
    for port in 1..=3 {
        assert!(rl.admit(&store, 0, &anonymous(&format!("203.0.113.5:{port}")), 0).unwrap().allowed());
    }
    let v = rl.admit(&store, 0, &anonymous("203.0.113.5:4"), 0).unwrap();
    assert_eq!(v.refused_by(), Some("anonymous_requests"));
    assert_eq!(header(&v, "Retry-After"), Some(&*NEVER_REFILLS_SECS.to_string()));
    assert!(rl.admit(&store, 0, &anonymous("203.0.113.6:1"), 0).unwrap().allowed());
    // authenticated requests are not anonymous; with no plans they are not limited here
    for _ in 0..10 {
        assert!(rl.admit(&store, 0, &Identity { subject: Some("x"), plan: None, client_addr: "203.0.113.5:9" }, 0).unwrap().allowed());
    }
}

#[test]
fn nothing_configured_allows_everything_without_touching_the_store() {
    let store = MemoryStore::new();
    let rl = limiter("{}");
    let v = rl.admit(&store, 0, &user("a", None), 5_000).unwrap();
    assert!(v.allowed() && v.headers.is_empty() && !v.in_flight_lease);
    rl.release_in_flight(&store, &user("a", None)).unwrap();
    assert_eq!(store.key_count(), 0);
}

#[test]
fn refusal_by_the_global_bucket_gives_back_the_subject_tokens() {
    let store = MemoryStore::with_fixed_secret();
    let rl = limiter(
        r#"{"default_plan": "free", "slots": 64,
            "plans": {"free": {"requests": {"capacity": 10, "refill_per_second": 0},
                               "characters": {"capacity": 1000, "refill_per_second": 0}, "max_in_flight": 4}},
            "global": {"requests": {"capacity": 1, "refill_per_second": 0}}}"#,
    );
    let who = user("erin", None);
    assert!(rl.admit(&store, 0, &who, 100).unwrap().allowed());
    let v = rl.admit(&store, 0, &who, 100).unwrap();
    assert_eq!(v.refused_by(), Some("global_requests"));
    assert!(!v.in_flight_lease);
    let record = subject_record(&store, 64, "erin");
    assert_eq!(record.buckets[0].tokens, 9_000_000, "one request charged, the refused one given back");
    assert_eq!(record.buckets[1].tokens, 900_000_000);
    assert_eq!(record.leases.len(), 1, "only the admitted request is in flight");
}

#[test]
fn in_flight_cap_and_release() {
    let store = MemoryStore::with_fixed_secret();
    let rl = limiter(FREE_PRO);
    let who = user("frank", None);
    let first = rl.admit(&store, 0, &who, 0).unwrap();
    assert!(first.allowed() && first.in_flight_lease);
    assert!(rl.admit(&store, 0, &who, 0).unwrap().allowed());
    let v = rl.admit(&store, 0, &who, 0).unwrap();
    assert_eq!(v.refused_by(), Some("subject_in_flight"));
    assert_eq!(header(&v, "Retry-After"), Some("1"));
    assert_eq!(v.rejection().unwrap().code.as_str(), "too_many_in_flight");
    assert_eq!(subject_record(&store, 1024, "frank").buckets[0].tokens, 8_000_000, "a refusal takes nothing");
    rl.release_in_flight(&store, &who).unwrap();
    assert!(rl.admit(&store, 0, &who, 0).unwrap().allowed());
    // releasing more than was admitted does not go below zero
    for _ in 0..5 {
        rl.release_in_flight(&store, &who).unwrap();
    }
    assert!(subject_record(&store, 1024, "frank").leases.is_empty());
}

#[test]
fn a_lease_never_released_expires() {
    let store = MemoryStore::with_fixed_secret();
    let rl = limiter(&FREE_PRO.replace("\"slots\": 1024", "\"slots\": 1024, \"in_flight_timeout_seconds\": 60"));
    let who = user("gina", None);
    assert!(rl.admit(&store, 0, &who, 0).unwrap().allowed());
    assert!(rl.admit(&store, 0, &who, 0).unwrap().allowed());
    assert!(!rl.admit(&store, 59_999, &who, 0).unwrap().allowed());
    assert!(rl.admit(&store, 60_000, &who, 0).unwrap().allowed());
}

#[test]
fn shadow_mode_counts_but_never_refuses_and_takes_nothing_on_refusal() {
    let store = MemoryStore::with_fixed_secret();
    let rl = limiter(
        r#"{"shadow": true, "default_plan": "free", "slots": 64,
            "plans": {"free": {"requests": {"capacity": 2, "refill_per_second": 0}, "max_in_flight": 1}},
            "global": {"requests": {"capacity": 100, "refill_per_second": 0}}}"#,
    );
    let who = user("hank", None);
    let verdicts: Vec<Verdict> = (0..4).map(|_| rl.admit(&store, 0, &who, 0).unwrap()).collect();
    assert!(verdicts.iter().all(|v| v.allowed() && v.rejection().is_none()));
    assert_eq!(verdicts.iter().map(|v| matches!(v.outcome, Outcome::WouldRefuse { .. })).collect::<Vec<_>>(), [false, true, true, true]);
    assert_eq!(verdicts[1].refused_by(), Some("subject_in_flight"));
    assert!(verdicts.iter().all(|v| v.in_flight_lease), "every forwarded request is in flight");
    assert!(header(&verdicts[1], "Retry-After").is_none());
    let record = subject_record(&store, 64, "hank");
    assert_eq!(record.buckets[0].tokens, 1_000_000, "refused requests took no token");
    assert_eq!(record.leases.len(), 4);
    for _ in 0..4 {
        rl.release_in_flight(&store, &who).unwrap();
    }
    let v = rl.admit(&store, 0, &who, 0).unwrap();
    assert!(!matches!(v.outcome, Outcome::WouldRefuse { .. }));
    let v = rl.admit(&store, 0, &who, 0).unwrap();
    assert_eq!(v.refused_by(), Some("subject_requests"));
    // the global bucket was only charged for requests that passed the subject bucket
    let global = SlotTable::new("global", 1).locate(&store, "").unwrap();
    let global = Record::decode(&store.raw(&global.key).unwrap(), 3).unwrap();
    assert_eq!(global.buckets[0].tokens, 98_000_000);
}

#[test]
fn shadow_mode_reports_texts_too_long_for_the_plan() {
    let store = MemoryStore::with_fixed_secret();
    let rl = limiter(r#"{"shadow": true, "global": {"characters": {"capacity": 10, "refill_per_second": 1}}}"#);
    let v = rl.admit(&store, 0, &anonymous("192.0.2.9:1"), 11).unwrap();
    assert!(matches!(v.outcome, Outcome::WouldRefuse { .. }));
    assert_eq!(v.refused_by(), Some("global_characters"));
}

#[test]
fn draft03_headers_on_allowed_and_refused_answers() {
    let store = MemoryStore::with_fixed_secret();
    let rl = limiter(FREE_PRO);
    let who = user("ivy", None);
    let v = rl.admit(&store, 0, &who, 1_000).unwrap();
    // requests 9/10 left, characters 1000/2000 left: characters constrain most
    assert_eq!(
        header(&v, "X-RateLimit-Limit"),
        Some("2000, 10;w=20;name=\"subject_requests\", 2000;w=100;name=\"subject_characters\"")
    );
    assert_eq!(header(&v, "X-RateLimit-Remaining"), Some("1000"));
    assert_eq!(header(&v, "X-RateLimit-Reset"), Some("50"));
    assert!(header(&v, "Retry-After").is_none());
    rl.admit(&store, 0, &who, 0).unwrap();
    let v = rl.admit(&store, 0, &who, 0).unwrap();
    assert_eq!(v.refused_by(), Some("subject_in_flight"));
    assert_eq!(header(&v, "X-RateLimit-Limit").unwrap().split(',').next(), Some("2"));
    assert_eq!(header(&v, "X-RateLimit-Remaining"), Some("0"));
}

#[test]
fn ietf_headers_list_every_applied_limit() {
    let store = MemoryStore::with_fixed_secret();
    let rl = limiter(
        r#"{"headers": "ietf", "default_plan": "free", "slots": 64,
            "plans": {"free": {"requests": {"capacity": 10, "refill_per_second": 1}}},
            "global": {"requests": {"capacity": 50, "refill_per_second": 0}}}"#,
    );
    let v = rl.admit(&store, 0, &user("jack", None), 0).unwrap();
    assert_eq!(header(&v, "RateLimit-Policy"), Some("\"subject_requests\";q=10;w=10, \"global_requests\";q=50"));
    assert_eq!(header(&v, "RateLimit"), Some("\"subject_requests\";r=9;t=1, \"global_requests\";r=49"));
    assert!(header(&v, "X-RateLimit-Limit").is_none());
}

#[test]
fn unreadable_state_is_replaced_by_a_full_bucket_and_flagged() {
    let store = MemoryStore::with_fixed_secret();
    let rl = limiter(FREE_PRO);
    let slot = SlotTable::new("subject", 1024).locate(&store, "kate").unwrap();
    store.set(&slot.key, b"\x07not a record", None).unwrap();
    let v = rl.admit(&store, 0, &user("kate", None), 0).unwrap();
    assert!(v.allowed() && v.state_reset);
    assert_eq!(subject_record(&store, 1024, "kate").buckets[0].tokens, 9_000_000);
    assert!(!rl.admit(&store, 0, &user("kate", None), 0).unwrap().state_reset);
}

#[test]
fn a_clock_going_backwards_never_refills() {
    let store = MemoryStore::with_fixed_secret();
    let rl = limiter(r#"{"global": {"requests": {"capacity": 2, "refill_per_second": 1}}}"#);
    let who = anonymous("192.0.2.1:1");
    assert!(rl.admit(&store, 10_000, &who, 0).unwrap().allowed());
    assert!(rl.admit(&store, 10_000, &who, 0).unwrap().allowed());
    assert!(!rl.admit(&store, 5_000, &who, 0).unwrap().allowed());
    assert!(!rl.admit(&store, 10_999, &who, 0).unwrap().allowed());
    assert!(rl.admit(&store, 11_000, &who, 0).unwrap().allowed());
}

/// Subjects whose records share one slot of a 16-slot table under `store`'s secret.
fn colliding_subjects(store: &MemoryStore) -> (String, String) {
    let table = SlotTable::new("subject", 16);
    let key = |subject: &str| table.locate(store, subject).unwrap().key;
    let first = "collide-0".to_string();
    let second = (1..).map(|i| format!("collide-{i}")).find(|s| key(s) == key(&first)).unwrap();
    (first, second)
}

#[test]
fn a_live_collision_shares_the_tighter_plan_and_an_idle_slot_is_taken_over() {
    let store = MemoryStore::with_fixed_secret();
    let rl = limiter(
        r#"{"default_plan": "free", "slots": 16,
            "plans": {"free": {"requests": {"capacity": 3, "refill_per_second": 1}},
                      "pro":  {"requests": {"capacity": 50, "refill_per_second": 10}}}}"#,
    );
    let (a, b) = colliding_subjects(&store);
    let tag = |subject: &str| SlotTable::new("subject", 16).locate(&store, subject).unwrap().tag;
    assert!(rl.admit(&store, 0, &user(&a, Some("free")), 0).unwrap().allowed());
    // b (pro) arrives while a's bucket is not full: both draw from one record under free limits
    assert!(rl.admit(&store, 0, &user(&b, Some("pro")), 0).unwrap().allowed());
    assert!(rl.admit(&store, 0, &user(&b, Some("pro")), 0).unwrap().allowed());
    let v = rl.admit(&store, 0, &user(&b, Some("pro")), 0).unwrap();
    assert_eq!(v.refused_by(), Some("subject_requests"));
    assert!(!rl.admit(&store, 0, &user(&a, Some("free")), 0).unwrap().allowed(), "a shares the refusal");
    let record = subject_record(&store, 16, &a);
    assert_eq!(record.tag, tag(&a), "the resident keeps the slot");
    // 3 s later a's bucket is full again and nothing is in flight: b takes the slot over
    let v = rl.admit(&store, 3_000, &user(&b, Some("pro")), 0).unwrap();
    assert!(v.allowed());
    assert_eq!(header(&v, "X-RateLimit-Remaining"), Some("49"));
    assert_eq!(subject_record(&store, 16, &b).tag, tag(&b));
    assert_eq!(store.key_count(), 2, "one slot and the hash key");
}

#[test]
fn a_million_subjects_never_use_more_keys_than_slots() {
    let store = MemoryStore::with_fixed_secret();
    let rl = limiter(
        r#"{"default_plan": "free", "slots": 4096,
            "plans": {"free": {"requests": {"capacity": 5, "refill_per_second": 1}}},
            "anonymous": {"requests": {"capacity": 5, "refill_per_second": 1}},
            "global": {"requests": {"capacity": 1000000000, "refill_per_second": 0}}}"#,
    );
    for i in 0..1_000_000u32 {
        let subject = format!("subject-{i}");
        rl.admit(&store, u64::from(i), &user(&subject, None), 0).unwrap();
    }
    for i in 0..100_000u32 {
        let addr = format!("10.{}.{}.{}:443", i >> 16, (i >> 8) & 255, i & 255);
        rl.admit(&store, 0, &anonymous(&addr), 0).unwrap();
    }
    assert_eq!(store.key_count(), 4096 + 4096 + 1 + 1, "slots, the global record and the hash key");
}

/// A store that lets another logical worker run at a chosen point: after the first read of a
/// bucket record.
struct Interleaved<'a> {
    inner: &'a MemoryStore,
    after_first_get: RefCell<Option<Box<dyn FnOnce() + 'a>>>,
}

impl SharedStore for Interleaved<'_> {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        let value = self.inner.get(key);
        if key == SECRET_KEY {
            return value;
        }
        let hook = self.after_first_get.borrow_mut().take();
        if let Some(other_worker) = hook {
            other_worker();
        }
        value
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        self.inner.set(key, value, cas)
    }
}

#[test]
fn two_workers_that_both_read_absent_are_both_counted() {
    let store = MemoryStore::with_fixed_secret();
    let rl = limiter(r#"{"global": {"requests": {"capacity": 2, "refill_per_second": 0}}}"#);
    let who = anonymous("192.0.2.1:1");
    let worker_a = || {
        let v = rl.admit(&store, 0, &who, 0).unwrap();
        assert!(v.allowed());
        assert_eq!(v.cas_retries, 0);
    };
    let worker_b_view = Interleaved { inner: &store, after_first_get: RefCell::new(Some(Box::new(worker_a))) };
    // B reads "absent", then A reads "absent" and creates the key, then B writes.
    let v = rl.admit(&worker_b_view, 0, &who, 0).unwrap();
    assert!(v.allowed());
    assert_eq!(v.cas_retries, 1, "B's create-only write failed and was redone on A's record");
    assert!(!rl.admit(&store, 0, &who, 0).unwrap().allowed(), "both requests were counted");
}

#[test]
fn a_write_that_ignores_the_creation_race_loses_an_update() {
    // What the CREATE_ONLY CAS prevents: with no CAS both first writes succeed.
    let store = MemoryStore::with_fixed_secret();
    assert!(store.get("k").unwrap().is_none());
    assert!(store.get("k").unwrap().is_none());
    store.set("k", b"A", None).unwrap();
    store.set("k", b"B", None).unwrap();
    assert_eq!(store.raw("k").unwrap(), b"B");
    let store = MemoryStore::with_fixed_secret();
    store.set("k", b"A", Some(CREATE_ONLY)).unwrap();
    assert_eq!(store.set("k", b"B", Some(CREATE_ONLY)), Err(StoreError::CasMismatch));
}

/// A store where every write of a bucket record loses to another worker.
struct AlwaysConflicting {
    gets: RefCell<u32>,
}

impl SharedStore for AlwaysConflicting {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        if key == SECRET_KEY {
            return Ok(Some((vec![0; 16], 1)));
        }
        *self.gets.borrow_mut() += 1;
        Ok(None)
    }
    fn set(&self, _: &str, _: &[u8], _: Option<u32>) -> Result<(), StoreError> {
        Err(StoreError::CasMismatch)
    }
}

#[test]
fn conflicts_are_retried_a_bounded_number_of_times() {
    let rl = limiter(r#"{"global": {"requests": {"capacity": 2, "refill_per_second": 0}}}"#);
    let store = AlwaysConflicting { gets: RefCell::new(0) };
    assert_eq!(rl.admit(&store, 0, &anonymous("a"), 0), Err(StoreError::CasMismatch));
    assert_eq!(*store.gets.borrow(), MAX_CAS_ATTEMPTS);
}

/// A store whose writes to one key prefix fail.
struct FailingOn<'a> {
    inner: &'a MemoryStore,
    prefix: &'static str,
}

impl SharedStore for FailingOn<'_> {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        self.inner.get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        if key.starts_with(self.prefix) {
            return Err(StoreError::Other("host refused".into()));
        }
        self.inner.set(key, value, cas)
    }
}

#[test]
fn a_store_error_on_the_global_record_gives_back_the_subject_charge() {
    let store = MemoryStore::with_fixed_secret();
    let rl = limiter(
        r#"{"default_plan": "free", "slots": 64,
            "plans": {"free": {"requests": {"capacity": 10, "refill_per_second": 0}, "max_in_flight": 3}},
            "global": {"requests": {"capacity": 10, "refill_per_second": 0}}}"#,
    );
    let failing = FailingOn { inner: &store, prefix: "vg:rl:global" };
    let result = rl.admit(&failing, 0, &user("lena", None), 0);
    assert_eq!(result, Err(StoreError::Other("host refused".into())));
    let record = subject_record(&store, 64, "lena");
    assert_eq!(record.buckets[0].tokens, 10_000_000);
    assert!(record.leases.is_empty());
}

/// Admits like a client that retries when the limiter gives up under contention: a
/// `CasMismatch` from `admit` means nothing was taken, so the request is simply sent again.
fn admit_until_answered(rl: &RateLimiter, store: &dyn SharedStore, who: &Identity, chars: u64) -> bool {
    for _ in 0..10_000 {
        match rl.admit(store, 0, who, chars) {
            Ok(verdict) => return verdict.allowed(),
            Err(StoreError::CasMismatch) => thread::yield_now(),
            Err(other) => panic!("{other}"),
        }
    }
    panic!("no answer after 10 000 tries");
}

/// Yields between a read and the write that follows it, so threads interleave there.
struct Yielding(MemoryStore);

impl SharedStore for Yielding {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        let value = self.0.get(key);
        thread::yield_now();
        value
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        self.0.set(key, value, cas)
    }
}

#[test]
fn exactly_capacity_requests_pass_under_eight_threads_for_many_fresh_keys() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 12;
    const CAPACITY: usize = 50;
    let rl = Arc::new(limiter(&format!(
        r#"{{"default_plan": "free", "slots": 4096,
            "plans": {{"free": {{"requests": {{"capacity": {CAPACITY}, "refill_per_second": 0}}}}}},
            "global": {{"characters": {{"capacity": 1000000, "refill_per_second": 0}}}}}}"#
    )));
    let store = Arc::new(Yielding(MemoryStore::with_fixed_secret()));
    let mut total_allowed = 0;
    for round in 0..40 {
        let barrier = Arc::new(Barrier::new(THREADS));
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let (rl, store, barrier) = (rl.clone(), store.clone(), barrier.clone());
                thread::spawn(move || {
                    barrier.wait();
                    let subject = format!("fresh-{round}");
                    (0..PER_THREAD)
                        .filter(|_| admit_until_answered(&rl, &*store, &user(&subject, None), 3))
                        .count()
                })
            })
            .collect();
        let allowed: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(allowed, CAPACITY, "round {round}");
        total_allowed += allowed;
    }
    let global = SlotTable::new("global", 1).locate(&store.0, "").unwrap();
    let global = Record::decode(&store.0.raw(&global.key).unwrap(), 3).unwrap();
    let charged = 1_000_000 - global.buckets[1].tokens / 1_000_000;
    assert_eq!(charged as usize, total_allowed * 3, "refused requests were given back exactly");
}

#[test]
fn a_character_bucket_admits_exactly_its_capacity_under_threads() {
    const THREADS: usize = 8;
    let rl = Arc::new(limiter(r#"{"global": {"characters": {"capacity": 1000, "refill_per_second": 0}}}"#));
    let store = Arc::new(Yielding(MemoryStore::with_fixed_secret()));
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (rl, store, barrier) = (rl.clone(), store.clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                let addr = format!("192.0.2.{t}:1");
                (0..40).filter(|_| admit_until_answered(&rl, &*store, &anonymous(&addr), 7)).count()
            })
        })
        .collect();
    let allowed: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(allowed, 1000 / 7);
    let global = SlotTable::new("global", 1).locate(&store.0, "").unwrap();
    let global = Record::decode(&store.0.raw(&global.key).unwrap(), 3).unwrap();
    assert_eq!(global.buckets[1].tokens, (1000 - 7 * 142) * 1_000_000, "exactly 142 × 7 characters taken");
}
