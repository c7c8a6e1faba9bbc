//! The per-worker cache of tokens whose signature has been verified, so an asymmetric
//! signature is checked once per token per worker rather than once per request.
//!
//! Keys are 128-bit SipHash-2-4 digests of the token under a key drawn at random for each
//! cache (the token itself is never stored): without the key nobody can make a forged token
//! that lands on a verified one's entry. A keyed SipHash costs a fraction of a SHA-256, and
//! the digest is computed on every request. The cache holds at most `capacity` entries; when
//! full, the oldest insertion is evicted. Proxy-wasm runs one thread per VM, so interior
//! mutability through `RefCell` is enough.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};

use std::hash::Hasher;
use std::rc::Rc;

use siphasher::sip128::{Hasher128, SipHasher24};

use super::Verified;

pub(crate) type TokenDigest = u128;

/// A cached verification.
#[derive(Clone)]
pub(crate) struct CachedToken {
    /// Index of the provider whose key verified the token.
    pub provider: usize,
    /// Shared with the requests that use it: a cache hit copies no claims.
    pub verified: Rc<Verified>,
}

struct Entry {
    /// Insertion number, telling a live ring slot from one left behind by a removal.
    seq: u64,
    /// Last second (inclusive) at which the verification may be reused.
    valid_until_s: u64,
    token: CachedToken,
}

struct Slots {
    capacity: usize,
    entries: HashMap<TokenDigest, Entry>,
    /// Insertion order; never longer than `capacity`, so neither is `entries`.
    ring: VecDeque<(TokenDigest, u64)>,
    next_seq: u64,
}

pub(crate) struct TokenCache {
    key: [u8; 16],
    slots: RefCell<Slots>,
    hits: Cell<u64>,
    misses: Cell<u64>,
}

impl TokenCache {
    /// An empty cache with a fresh random key (WASI `random_get` in Envoy).
    pub(crate) fn new(capacity: usize) -> Result<Self, String> {
        let mut key = [0u8; 16];
        getrandom::fill(&mut key).map_err(|e| format!("no randomness for the token cache key: {e}"))?;
        Ok(TokenCache {
            key,
            slots: RefCell::new(Slots {
                capacity,
                entries: HashMap::with_capacity(capacity.min(1024)),
                ring: VecDeque::with_capacity(capacity.min(1024)),
                next_seq: 0,
            }),
            hits: Cell::new(0),
            misses: Cell::new(0),
        })
    }

    /// The key of `token` in this cache.
    pub(crate) fn digest(&self, token: &str) -> TokenDigest {
        let mut hasher = SipHasher24::new_with_key(&self.key);
        hasher.write(token.as_bytes());
        hasher.finish128().as_u128()
    }

    /// The cached verification of `digest`, if it is still valid at `now_s`. An entry past
    /// its validity is dropped, and the caller verifies the token from scratch.
    pub(crate) fn get(&self, digest: &TokenDigest, now_s: u64) -> Option<CachedToken> {
        let mut slots = self.slots.borrow_mut();
        let found = match slots.entries.get(digest) {
            Some(entry) if now_s <= entry.valid_until_s => Some(entry.token.clone()),
            Some(_) => {
                slots.entries.remove(digest);
                None
            }
            None => None,
        };
        let counter = if found.is_some() { &self.hits } else { &self.misses };
        counter.set(counter.get() + 1);
        found
    }

    pub(crate) fn insert(&self, digest: TokenDigest, valid_until_s: u64, token: CachedToken) {
        let mut slots = self.slots.borrow_mut();
        while slots.ring.len() >= slots.capacity {
            let Some((oldest, seq)) = slots.ring.pop_front() else { break };
            if slots.entries.get(&oldest).is_some_and(|e| e.seq == seq) {
                slots.entries.remove(&oldest);
            }
        }
        let seq = slots.next_seq;
        slots.next_seq += 1;
        slots.ring.push_back((digest, seq));
        slots.entries.insert(digest, Entry { seq, valid_until_s, token });
    }

    /// Drops every verification made with a provider's keys (after its key set changed, so a
    /// withdrawn key stops being trusted at once).
    pub(crate) fn forget_provider(&self, provider: usize) {
        self.slots.borrow_mut().entries.retain(|_, e| e.token.provider != provider);
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.borrow().entries.len()
    }

    pub(crate) fn hits(&self) -> u64 {
        self.hits.get()
    }

    pub(crate) fn misses(&self) -> u64 {
        self.misses.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    fn token(subject: &str) -> CachedToken {
        CachedToken {
            provider: 0,
            verified: Rc::new(Verified {
                subject: subject.to_string(),
                issuer: "iss".to_string(),
                expires_at: 100,
                claims: Map::new(),
                plan: None,
                forwarded: Vec::new(),
            }),
        }
    }

    #[test]
    fn bounded_under_ten_times_capacity_and_evicts_oldest_first() {
        let cache = TokenCache::new(16).unwrap();
        for i in 0..160 {
            cache.insert(cache.digest(&format!("t{i}")), 100, token(&i.to_string()));
            assert!(cache.len() <= 16);
        }
        assert_eq!(cache.len(), 16);
        assert!(cache.get(&cache.digest("t143"), 0).is_none());
        assert_eq!(cache.get(&cache.digest("t144"), 0).unwrap().verified.subject, "144");
        assert!(cache.slots.borrow().ring.len() <= 16);
    }

    #[test]
    fn expired_entries_are_dropped_and_counted_as_misses() {
        let cache = TokenCache::new(4).unwrap();
        cache.insert(cache.digest("a"), 100, token("a"));
        assert!(cache.get(&cache.digest("a"), 100).is_some());
        assert!(cache.get(&cache.digest("a"), 101).is_none());
        assert_eq!(cache.len(), 0);
        assert_eq!((cache.hits(), cache.misses()), (1, 1));
    }

    #[test]
    fn reinsertion_after_removal_keeps_the_ring_bounded() {
        let cache = TokenCache::new(2).unwrap();
        for round in 0..50 {
            cache.insert(cache.digest("a"), round, token("a"));
            assert!(cache.get(&cache.digest("a"), round + 1).is_none());
        }
        cache.insert(cache.digest("b"), 100, token("b"));
        cache.insert(cache.digest("c"), 100, token("c"));
        assert!(cache.slots.borrow().ring.len() <= 2);
        assert!(cache.get(&cache.digest("b"), 0).is_some());
        assert!(cache.get(&cache.digest("c"), 0).is_some());
    }

    #[test]
    fn forgetting_a_provider_keeps_the_others() {
        let cache = TokenCache::new(4).unwrap();
        cache.insert(cache.digest("a"), 100, token("a"));
        cache.insert(cache.digest("b"), 100, CachedToken { provider: 1, ..token("b") });
        cache.forget_provider(0);
        assert!(cache.get(&cache.digest("a"), 0).is_none());
        assert!(cache.get(&cache.digest("b"), 0).is_some());
    }
}
