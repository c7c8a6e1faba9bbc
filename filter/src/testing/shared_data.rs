//! In-memory test double of Envoy's shared data (proxy-wasm-cpp-host `SharedData`),
//! reproducing its semantics exactly: one CAS counter for the whole store that starts at 1,
//! increases on every write and skips 0; a write to an existing key with a non-zero CAS that
//! differs from the stored one fails with `CasMismatch`; a write to a missing key creates it
//! whatever the CAS; keys are never removed.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::ratelimit::{SharedStore, StoreError, SECRET_KEY};

/// The slot-hash secret of `MemoryStore::with_fixed_secret`.
const FIXED_SECRET: [u8; 16] = *b"voxgate-test-key";

#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, (Vec<u8>, u32)>,
    last_cas: u32,
}

impl Inner {
    fn next_cas(&mut self) -> u32 {
        self.last_cas = self.last_cas.wrapping_add(1);
        if self.last_cas == 0 {
            self.last_cas = 1;
        }
        self.last_cas
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// A store whose deployment secret is already drawn, always the same one: which identities
    /// share a slot is then the same on every run, as it is for one Envoy during its lifetime.
    pub fn with_fixed_secret() -> Self {
        let store = Self::default();
        store.set(SECRET_KEY, &FIXED_SECRET, None).unwrap();
        store
    }

    /// Starts the CAS counter so that the next write gets `next`.
    pub fn with_next_cas(next: u32) -> Self {
        let store = Self::default();
        store.inner.lock().unwrap().last_cas = next.wrapping_sub(1);
        store
    }

    pub fn key_count(&self) -> usize {
        self.inner.lock().unwrap().entries.len()
    }

    /// Every key, sorted, so that picking the n-th one is the same on every run.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.inner.lock().unwrap().entries.keys().cloned().collect();
        keys.sort();
        keys
    }

    pub fn raw(&self, key: &str) -> Option<Vec<u8>> {
        self.inner.lock().unwrap().entries.get(key).map(|(v, _)| v.clone())
    }
}

impl SharedStore for MemoryStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        Ok(self.inner.lock().unwrap().entries.get(key).cloned())
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        let mut inner = self.inner.lock().unwrap();
        let cas = cas.unwrap_or(0);
        if let Some((_, stored)) = inner.entries.get(key) {
            if cas != 0 && cas != *stored {
                return Err(StoreError::CasMismatch);
            }
        }
        let next = inner.next_cas();
        inner.entries.insert(key.to_string(), (value.to_vec(), next));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_is_checked_only_for_existing_keys() {
        let store = MemoryStore::new();
        store.set("k", b"a", Some(12345)).unwrap();
        let (v, cas) = store.get("k").unwrap().unwrap();
        assert_eq!((v.as_slice(), cas), (b"a".as_slice(), 1));
        assert_eq!(store.set("k", b"b", Some(cas + 1)), Err(StoreError::CasMismatch));
        store.set("k", b"b", Some(cas)).unwrap();
        assert_eq!(store.set("k", b"c", Some(cas)), Err(StoreError::CasMismatch));
        store.set("k", b"c", None).unwrap();
        store.set("k", b"d", Some(0)).unwrap();
        assert_eq!(store.get("k").unwrap().unwrap(), (b"d".to_vec(), 4));
    }

    #[test]
    fn cas_counter_is_global_and_skips_zero() {
        let store = MemoryStore::with_next_cas(u32::MAX);
        store.set("a", b"1", None).unwrap();
        store.set("b", b"1", None).unwrap();
        assert_eq!(store.get("a").unwrap().unwrap().1, u32::MAX);
        assert_eq!(store.get("b").unwrap().unwrap().1, 1);
    }
}
