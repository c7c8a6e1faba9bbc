//! The shared-data store seen by every Envoy worker, and the read-modify-write loop that
//! updates one key exactly under concurrency.
//!
//! Envoy's `SharedData::set` rejects a write whose CAS differs from the stored one, but only
//! when the key exists: a key that does not exist yet is created whatever the CAS. Two workers
//! that both read "absent" would then both create it, and one update would be lost. A first
//! write therefore passes `CREATE_ONLY` (`u32::MAX`), a CAS that cannot match a live entry in
//! practice: if another worker created the key in between, the write fails with `CasMismatch`
//! and the loop re-reads the key instead of overwriting it.

use std::fmt;

/// Get/set with compare-and-swap, as proxy-wasm shared data offers it.
pub trait SharedStore {
    /// The value and its CAS number, or `None` when the key does not exist.
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError>;
    /// Writes `value` if `cas` matches the stored CAS (or the key does not exist, or `cas` is
    /// `None`/`Some(0)`); `Err(CasMismatch)` otherwise.
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// Another worker wrote the key first. From the limiter, this means the retry bound
    /// (`MAX_CAS_ATTEMPTS`) was exhausted.
    CasMismatch,
    /// The host refused the operation.
    Other(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::CasMismatch => f.write_str("shared data kept changing (CAS conflicts)"),
            StoreError::Other(message) => write!(f, "shared data error: {message}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// CAS for a write that must only create the key. Envoy's CAS counter starts at 1 and counts
/// every write of the whole VM, so a live entry carries `u32::MAX` only after four billion
/// writes, and even then only for the instant before its next update.
pub const CREATE_ONLY: u32 = u32::MAX;

/// Attempts per key before giving up under contention.
pub const MAX_CAS_ATTEMPTS: u32 = 64;

/// One attempt's decision: the bytes to write (`None`: leave the key as it is) and the result
/// to return if the write sticks.
pub(crate) struct Step<T> {
    pub write: Option<Vec<u8>>,
    pub result: T,
}

/// Reads `key`, lets `step` compute the new value from what was read, writes it with CAS, and
/// starts over from a fresh read whenever another worker wrote first. Returns the result of
/// the attempt that stuck and how many attempts were lost to conflicts.
pub(crate) fn update<T>(
    store: &dyn SharedStore,
    key: &str,
    mut step: impl FnMut(Option<&[u8]>) -> Step<T>,
) -> Result<(T, u32), StoreError> {
    for conflicts in 0..MAX_CAS_ATTEMPTS {
        let current = store.get(key)?;
        let Step { write, result } = step(current.as_ref().map(|(value, _)| value.as_slice()));
        let Some(bytes) = write else {
            return Ok((result, conflicts));
        };
        let cas = current.map_or(CREATE_ONLY, |(_, cas)| cas);
        match store.set(key, &bytes, Some(cas)) {
            Ok(()) => return Ok((result, conflicts)),
            Err(StoreError::CasMismatch) => continue,
            Err(other) => return Err(other),
        }
    }
    Err(StoreError::CasMismatch)
}
