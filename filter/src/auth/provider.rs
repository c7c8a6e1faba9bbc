//! One token issuer: its audiences, its current key set, and for a remote JWKS the fetch
//! schedule; or, for an issuer whose tokens Envoy's `jwt_authn` verifies, where its payloads
//! are found. A fetched set replaces the previous one only when it parses and holds at least
//! one usable key, so a bad fetch never leaves the provider without keys.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use super::claims::TimeRules;
use super::config::RemoteJwksConfig;
use super::jwks::KeySet;
use super::remote::{FetchSchedule, RemoteJwksSource};

pub(crate) struct Provider {
    pub name: String,
    pub issuer: String,
    pub audiences: Vec<String>,
    pub times: TimeRules,
    /// `None` until a remote provider's first good fetch, and for a `jwt_authn` provider.
    keys: RefCell<Option<Rc<KeySet>>>,
    remote: Option<RemoteJwks>,
    /// The `payload_in_metadata` key of a provider whose tokens `jwt_authn` verifies.
    pub payload_key: Option<String>,
}

pub(crate) struct RemoteJwks {
    config: RemoteJwksConfig,
    schedule: RefCell<FetchSchedule>,
    last_success_s: Cell<Option<u64>>,
}

impl RemoteJwks {
    pub(crate) fn new(config: RemoteJwksConfig) -> Self {
        let schedule = FetchSchedule::new(config.refresh_seconds, config.timeout_ms);
        RemoteJwks { config, schedule: RefCell::new(schedule), last_success_s: Cell::new(None) }
    }
}

/// What replacing a key set did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeysReplaced {
    Same,
    Changed,
}

impl Provider {
    pub(crate) fn inline(
        name: String,
        issuer: String,
        audiences: Vec<String>,
        times: TimeRules,
        keys: KeySet,
    ) -> Self {
        Provider {
            name,
            issuer,
            audiences,
            times,
            keys: RefCell::new(Some(Rc::new(keys))),
            remote: None,
            payload_key: None,
        }
    }

    pub(crate) fn remote(
        name: String,
        issuer: String,
        audiences: Vec<String>,
        times: TimeRules,
        remote: RemoteJwks,
    ) -> Self {
        Provider { name, issuer, audiences, times, keys: RefCell::new(None), remote: Some(remote), payload_key: None }
    }

    pub(crate) fn jwt_authn(
        name: String,
        issuer: String,
        audiences: Vec<String>,
        times: TimeRules,
        payload_key: String,
    ) -> Self {
        Provider { name, issuer, audiences, times, keys: RefCell::new(None), remote: None, payload_key: Some(payload_key) }
    }

    pub(crate) fn keys(&self) -> Option<Rc<KeySet>> {
        self.keys.borrow().clone()
    }

    pub(crate) fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    pub(crate) fn source(&self) -> Option<RemoteJwksSource> {
        let remote = self.remote.as_ref()?;
        Some(RemoteJwksSource {
            provider: self.name.clone(),
            cluster: remote.config.cluster.clone(),
            authority: remote.config.authority.clone(),
            path: remote.config.path.clone(),
            timeout_ms: remote.config.timeout_ms,
            next_fetch_s: remote.schedule.borrow().next_fetch_s(),
            has_keys: self.keys.borrow().is_some(),
        })
    }

    pub(crate) fn is_fetch_due(&self, now_s: u64) -> bool {
        self.remote.as_ref().is_some_and(|r| r.schedule.borrow().is_due(now_s))
    }

    pub(crate) fn fetch_started(&self, now_s: u64) {
        if let Some(remote) = &self.remote {
            remote.schedule.borrow_mut().started(now_s);
        }
    }

    pub(crate) fn fetch_failed(&self, now_s: u64) {
        if let Some(remote) = &self.remote {
            remote.schedule.borrow_mut().failed(now_s);
        }
    }

    /// Installs a freshly fetched key set; `now_s` is the best known time, used only when the
    /// fetch's dispatch was not noted.
    pub(crate) fn replace_keys(&self, keys: KeySet, now_s: u64) -> KeysReplaced {
        if let Some(remote) = &self.remote {
            let fetched_at = remote.schedule.borrow_mut().succeeded(now_s);
            remote.last_success_s.set(Some(fetched_at));
        }
        let mut current = self.keys.borrow_mut();
        let same = current.as_ref().is_some_and(|k| k.fingerprint() == keys.fingerprint());
        if same {
            return KeysReplaced::Same;
        }
        *current = Some(Rc::new(keys));
        KeysReplaced::Changed
    }

    /// A token named a `kid` this remote set lacks: the provider may have rotated its keys.
    pub(crate) fn request_early_refresh(&self, now_s: u64) {
        if let Some(remote) = &self.remote {
            remote.schedule.borrow_mut().request_early(now_s, remote.last_success_s.get());
        }
    }
}
