//! Envoy's shared data in memory, with proxy-wasm-cpp-host's CAS rules: one CAS counter for
//! the whole store that starts at 1, grows on every write and skips 0; a write to an existing
//! key with a non-zero CAS other than the stored one is refused; a write to a missing key
//! creates it whatever the CAS. The filter's own test double is test-only, so this one lives
//! here, with what the rate-limit target adds to play a hostile neighbour: values rewritten
//! behind the limiter's back, and writes lost to other workers.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};

use voxgate_filter::ratelimit::{SharedStore, StoreError};

#[derive(Default)]
pub struct FuzzStore {
    entries: RefCell<BTreeMap<String, (Vec<u8>, u32)>>,
    last_cas: Cell<u32>,
    /// Keys whose value was last written by `tamper` or `replace`, not by the limiter.
    tampered: RefCell<BTreeSet<String>>,
    read_tampered: Cell<bool>,
    lost_writes_left: Cell<u32>,
}

/// Where the rate limiter keeps its slot-hash secret (`ratelimit::secret`).
const HASH_SECRET_KEY: &str = "vg:rl:hash_key";

impl FuzzStore {
    /// A store that already holds a fixed slot-hash secret, as if another VM had created it.
    /// A fresh secret is random, and slot collisions, so whole runs, would not reproduce.
    pub fn with_fixed_secret() -> Self {
        let store = Self::default();
        let cas = store.next_cas();
        store.entries.borrow_mut().insert(
            HASH_SECRET_KEY.to_string(),
            (b"fuzzing, fixed!!".to_vec(), cas),
        );
        store
    }

    fn next_cas(&self) -> u32 {
        let next = match self.last_cas.get().wrapping_add(1) {
            0 => 1,
            n => n,
        };
        self.last_cas.set(next);
        next
    }

    pub fn key_count(&self) -> usize {
        self.entries.borrow().len()
    }

    fn key_at(&self, index: usize) -> Option<String> {
        let entries = self.entries.borrow();
        let count = entries.len();
        (count > 0)
            .then(|| entries.keys().nth(index % count).cloned())
            .flatten()
    }

    /// Another party overwrites eight bytes of a stored value (a clock from the future, a
    /// token count from another configuration, a foreign identity tag).
    pub fn tamper(&self, key_index: usize, offset: usize, word: u64) {
        let Some(key) = self.key_at(key_index) else {
            return;
        };
        let cas = self.next_cas();
        let mut entries = self.entries.borrow_mut();
        let Some((value, stored_cas)) = entries.get_mut(&key) else {
            return;
        };
        for (i, byte) in word.to_le_bytes().iter().enumerate() {
            if value.is_empty() {
                break;
            }
            let at = (offset + i) % value.len();
            value[at] = *byte;
        }
        *stored_cas = cas;
        self.tampered.borrow_mut().insert(key);
    }

    /// Another party replaces a stored value with arbitrary bytes.
    pub fn replace(&self, key_index: usize, bytes: Vec<u8>) {
        let Some(key) = self.key_at(key_index) else {
            return;
        };
        let cas = self.next_cas();
        self.entries.borrow_mut().insert(key.clone(), (bytes, cas));
        self.tampered.borrow_mut().insert(key);
    }

    /// The next `count` writes to existing keys lose the race to another worker: the key's
    /// CAS moves on and the write is refused with `CasMismatch`.
    pub fn lose_next_writes(&self, count: u32) {
        self.lost_writes_left.set(count);
    }

    /// Starts observing one call into the filter.
    pub fn begin_call(&self) {
        self.read_tampered.set(false);
    }

    /// Whether the call since `begin_call` read a value the limiter did not write itself.
    pub fn call_read_tampered(&self) -> bool {
        self.read_tampered.get()
    }
}

impl SharedStore for FuzzStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        if self.tampered.borrow().contains(key) {
            self.read_tampered.set(true);
        }
        Ok(self.entries.borrow().get(key).cloned())
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        let exists = self.entries.borrow().contains_key(key);
        if exists && self.lost_writes_left.get() > 0 {
            self.lost_writes_left.set(self.lost_writes_left.get() - 1);
            let cas = self.next_cas();
            if let Some(entry) = self.entries.borrow_mut().get_mut(key) {
                entry.1 = cas;
            }
            return Err(StoreError::CasMismatch);
        }
        let cas = cas.unwrap_or(0);
        if let Some((_, stored)) = self.entries.borrow().get(key) {
            if cas != 0 && cas != *stored {
                return Err(StoreError::CasMismatch);
            }
        }
        let next = self.next_cas();
        self.entries
            .borrow_mut()
            .insert(key.to_string(), (value.to_vec(), next));
        self.tampered.borrow_mut().remove(key);
        Ok(())
    }
}
