//! The deployment's secret that keys the slot hash (see `keys`).
//!
//! Every worker of one Envoy must address the same slots, so the secret lives in shared data
//! under one fixed key. The first VM that needs it draws 128 random bits (WASI `random_get`)
//! and writes them with a create-only CAS; a VM that loses that race reads the winner's
//! secret instead. Each VM then keeps it for its lifetime. It is never logged, and it changes
//! only when Envoy restarts, together with every bucket.

use std::sync::OnceLock;

use super::keys::HashKey;
use super::store::{self, SharedStore, Step, StoreError};

/// Shared-data key of the secret.
pub(crate) const SECRET_KEY: &str = "vg:rl:hash_key";

const SECRET_BYTES: usize = 16;

/// The secret as one VM sees it: read from shared data on first use, then kept.
#[derive(Debug, Clone, Default)]
pub(crate) struct SharedSecret {
    key: OnceLock<HashKey>,
}

impl SharedSecret {
    pub fn get(&self, store: &dyn SharedStore) -> Result<HashKey, StoreError> {
        if let Some(key) = self.key.get() {
            return Ok(*key);
        }
        let key = load_or_create(store, random_secret)?;
        Ok(*self.key.get_or_init(|| key))
    }
}

/// The secret stored under `SECRET_KEY`, created from `fresh` when there is none. A stored
/// value of the wrong size (written by something else) is replaced, as an unreadable bucket
/// record is.
pub(crate) fn load_or_create(
    store: &dyn SharedStore,
    mut fresh: impl FnMut() -> Result<[u8; SECRET_BYTES], String>,
) -> Result<HashKey, StoreError> {
    let (loaded, _) = store::update(store, SECRET_KEY, |stored| {
        if let Some(bytes) = stored.and_then(|bytes| <[u8; SECRET_BYTES]>::try_from(bytes).ok()) {
            return Step { write: None, result: Ok(HashKey(bytes)) };
        }
        match fresh() {
            Ok(bytes) => Step { write: Some(bytes.to_vec()), result: Ok(HashKey(bytes)) },
            Err(message) => Step { write: None, result: Err(message) },
        }
    })?;
    loaded.map_err(StoreError::Other)
}

fn random_secret() -> Result<[u8; SECRET_BYTES], String> {
    let mut bytes = [0u8; SECRET_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for the rate-limit hash key: {e}"))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::sync::{Arc, Barrier};
    use std::thread;

    use super::*;
    use crate::testing::MemoryStore;

    fn fixed(byte: u8) -> impl FnMut() -> Result<[u8; SECRET_BYTES], String> {
        move || Ok([byte; SECRET_BYTES])
    }

    #[test]
    fn the_first_vm_creates_the_secret_and_the_others_read_it() {
        let store = MemoryStore::new();
        assert_eq!(load_or_create(&store, fixed(1)).unwrap(), HashKey([1; 16]));
        assert_eq!(load_or_create(&store, fixed(2)).unwrap(), HashKey([1; 16]), "a later VM reads the first secret");
        assert_eq!(store.raw(SECRET_KEY).unwrap(), vec![1; 16]);
    }

    #[test]
    fn fresh_secrets_are_random() {
        let a = load_or_create(&MemoryStore::new(), random_secret).unwrap();
        let b = load_or_create(&MemoryStore::new(), random_secret).unwrap();
        assert_ne!(a, b);
    }

    /// Another VM creates the secret between this VM's read and its write.
    struct Racing<'a> {
        inner: &'a MemoryStore,
        raced: Cell<bool>,
    }

    impl SharedStore for Racing<'_> {
        fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
            self.inner.get(key)
        }

        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
            if !self.raced.replace(true) {
                self.inner.set(key, &[9; 16], None)?;
            }
            self.inner.set(key, value, cas)
        }
    }

    #[test]
    fn a_vm_that_loses_the_creation_race_uses_the_winners_secret() {
        let store = MemoryStore::new();
        let racing = Racing { inner: &store, raced: Cell::new(false) };
        assert_eq!(load_or_create(&racing, fixed(3)).unwrap(), HashKey([9; 16]));
        assert_eq!(store.raw(SECRET_KEY).unwrap(), vec![9; 16]);
    }

    #[test]
    fn concurrent_vms_agree_on_one_secret() {
        const THREADS: usize = 8;
        let store = Arc::new(MemoryStore::new());
        let barrier = Arc::new(Barrier::new(THREADS));
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let (store, barrier) = (store.clone(), barrier.clone());
                thread::spawn(move || {
                    barrier.wait();
                    SharedSecret::default().get(&*store).unwrap()
                })
            })
            .collect();
        let keys: Vec<HashKey> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
        assert_eq!(store.raw(SECRET_KEY).unwrap(), keys[0].0.to_vec());
    }

    #[test]
    fn a_value_of_the_wrong_size_is_replaced() {
        let store = MemoryStore::new();
        store.set(SECRET_KEY, b"short", None).unwrap();
        assert_eq!(load_or_create(&store, fixed(4)).unwrap(), HashKey([4; 16]));
        assert_eq!(load_or_create(&store, fixed(5)).unwrap(), HashKey([4; 16]));
    }

    #[test]
    fn no_randomness_is_an_error_and_writes_nothing() {
        let store = MemoryStore::new();
        let error = load_or_create(&store, || Err("random_get failed".to_string())).unwrap_err();
        assert_eq!(error, StoreError::Other("random_get failed".to_string()));
        assert_eq!(store.key_count(), 0);
    }

    #[test]
    fn a_vm_keeps_the_secret_it_read() {
        let store = MemoryStore::new();
        let secret = SharedSecret::default();
        let first = secret.get(&store).unwrap();
        store.set(SECRET_KEY, &[7; 16], None).unwrap();
        assert_eq!(secret.get(&store).unwrap(), first);
    }
}
