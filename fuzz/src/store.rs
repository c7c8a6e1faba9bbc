//! The rate-limit targets' shared data: the filter's own test double of Envoy's shared data
//! (`voxgate_filter::testing::MemoryStore`, proxy-wasm-cpp-host's CAS rules), with what a
//! hostile neighbour adds: values rewritten behind the limiter's back, and writes lost to
//! other workers. Every rewrite is an ordinary unconditional write, as another VM's would be.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;

use voxgate_filter::ratelimit::{SharedStore, StoreError};
use voxgate_filter::testing::MemoryStore;

pub struct FuzzStore {
    store: MemoryStore,
    /// Keys whose value was last written by `tamper` or `replace`, not by the limiter.
    tampered: RefCell<BTreeSet<String>>,
    read_tampered: Cell<bool>,
    lost_writes_left: Cell<u32>,
}

impl FuzzStore {
    /// A store that already holds a fixed slot-hash secret, as if another VM had created it.
    /// A fresh secret is random, and slot collisions, so whole runs, would not reproduce.
    pub fn with_fixed_secret() -> Self {
        FuzzStore {
            store: MemoryStore::with_fixed_secret(),
            tampered: RefCell::default(),
            read_tampered: Cell::new(false),
            lost_writes_left: Cell::new(0),
        }
    }

    pub fn key_count(&self) -> usize {
        self.store.key_count()
    }

    fn key_at(&self, index: usize) -> Option<String> {
        let keys = self.store.keys();
        (!keys.is_empty()).then(|| keys[index % keys.len()].clone())
    }

    /// Another party writes `value` to `key` without looking at its CAS.
    fn overwrite(&self, key: String, value: &[u8]) {
        self.store.set(&key, value, None).expect("the memory store accepts unconditional writes");
        self.tampered.borrow_mut().insert(key);
    }

    /// Another party overwrites eight bytes of a stored value (a clock from the future, a
    /// token count from another configuration, a foreign identity tag).
    pub fn tamper(&self, key_index: usize, offset: usize, word: u64) {
        let Some(key) = self.key_at(key_index) else {
            return;
        };
        let mut value = self.store.raw(&key).unwrap_or_default();
        if !value.is_empty() {
            let len = value.len();
            for (i, byte) in word.to_le_bytes().iter().enumerate() {
                value[(offset + i) % len] = *byte;
            }
        }
        self.overwrite(key, &value);
    }

    /// Another party replaces a stored value with arbitrary bytes.
    pub fn replace(&self, key_index: usize, bytes: Vec<u8>) {
        if let Some(key) = self.key_at(key_index) {
            self.overwrite(key, &bytes);
        }
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
        self.store.get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        let left = self.lost_writes_left.get();
        if left > 0 {
            if let Some(current) = self.store.raw(key) {
                self.lost_writes_left.set(left - 1);
                // The other worker wrote the same value: the CAS moves on, the value does not.
                self.store.set(key, &current, None)?;
                return Err(StoreError::CasMismatch);
            }
        }
        self.store.set(key, value, cas)?;
        self.tampered.borrow_mut().remove(key);
        Ok(())
    }
}
