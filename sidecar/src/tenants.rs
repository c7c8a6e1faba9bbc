//! The sidecar's side of the gateway's budgets: per tenant (the identity the filter charges,
//! forwarded as `x-voxgate-tenant`), the syntheses running for it, the predicted cost of its
//! requests admitted here but not yet reported to the filter, and the cost of requests that
//! ended without a report.
//!
//! The filter cannot phonemize, so it cannot know what a text costs; it forwards the tenant's
//! remaining audio budget instead, and charges what the answer's `x-voxgate-audio-seconds`
//! reports. Between the two, this ledger makes sure that what runs here never exceeds that
//! budget: a request is admitted only if its predicted audio, plus everything reserved or owed
//! by the same tenant, fits the budget; and a request that ends without a report (its client
//! left before the answer's headers) is owed and reported with the tenant's next answer.
//! The verified subject and plan (`x-voxgate-subject`, `x-voxgate-plan`) say whom the
//! scheduler shares workers between. The sidecar may trust these headers only because the filter removes every client-sent
//! `x-voxgate-*` header and the sidecar is reachable only through Envoy.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::http::HeaderMap;

/// Headers the filter sets on a request it forwards.
pub const TENANT_HEADER: &str = "x-voxgate-tenant";
pub const BUDGET_HEADER: &str = "x-voxgate-audio-budget";
pub const CAPACITY_HEADER: &str = "x-voxgate-audio-capacity";
pub const MAX_IN_FLIGHT_HEADER: &str = "x-voxgate-max-in-flight";
/// The verified caller, its issuer and its plan, which the scheduler shares workers by.
pub const SUBJECT_HEADER: &str = "x-voxgate-subject";
pub const ISSUER_HEADER: &str = "x-voxgate-issuer";
pub const PLAN_HEADER: &str = "x-voxgate-plan";

/// The scheduling tenant of every request without a verified subject: anonymous callers share
/// one fair share, whatever their address.
const ANONYMOUS: &str = "anonymous";

/// Most tenants tracked at once. Entries live while something runs, is reserved or is owed;
/// past this, tenants that only owe are forgotten (their debt is lost, their budget is not).
const MAX_TENANTS: usize = 65_536;

/// Costs below this are zero: floating-point dust left by additions and subtractions.
const EPSILON_SECONDS: f64 = 1e-6;

/// What the filter forwarded about the caller; `None` fields are not limited here.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Tenant {
    pub key: Option<String>,
    /// Audio seconds the tenant may still spend.
    pub budget_seconds: Option<f64>,
    /// Audio seconds the tenant's bucket holds when full: the most one request can ever cost.
    pub capacity_seconds: Option<f64>,
    pub max_in_flight: Option<u32>,
    /// The verified subject, prefixed by its issuer: who the scheduler shares workers between.
    pub subject: Option<String>,
    pub plan: Option<String>,
}

impl Tenant {
    /// Whom the scheduler counts this request's sentences to.
    pub fn scheduling_key(&self) -> &str {
        self.subject.as_deref().unwrap_or(ANONYMOUS)
    }

    /// Reads the filter's headers. A value that does not parse is ignored with a warning: the
    /// filter wrote it, so it is a deployment fault, not the client's.
    pub fn from_headers(headers: &HeaderMap) -> Tenant {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let number = |name: &str| {
            let value = text(name)?;
            match value.trim().parse::<f64>() {
                Ok(n) if n.is_finite() => Some(n),
                _ => {
                    tracing::warn!(header = name, "ignored a malformed gateway header");
                    None
                }
            }
        };
        Tenant {
            key: text(TENANT_HEADER)
                .filter(|key| !key.is_empty())
                .map(str::to_string),
            budget_seconds: number(BUDGET_HEADER),
            capacity_seconds: number(CAPACITY_HEADER),
            max_in_flight: number(MAX_IN_FLIGHT_HEADER).map(|n| n.clamp(0.0, 1e6) as u32),
            subject: text(SUBJECT_HEADER)
                .filter(|subject| !subject.is_empty())
                .map(|subject| format!("{} {subject}", text(ISSUER_HEADER).unwrap_or(""))),
            plan: text(PLAN_HEADER)
                .filter(|plan| !plan.is_empty())
                .map(str::to_string),
        }
    }
}

/// Why a tenant's request may not run.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// More than the tenant's bucket can ever hold: no wait helps.
    OverCapacity {
        required: f64,
        capacity: f64,
    },
    /// More than the tenant has left now; `required` counts what it has reserved and owes.
    OverBudget {
        required: f64,
        budget: f64,
    },
    TooManyInFlight {
        max: u32,
    },
}

#[derive(Debug, Default)]
struct Entry {
    running: u32,
    reserved: f64,
    owed: f64,
}

impl Entry {
    fn is_idle(&self) -> bool {
        self.running == 0 && self.reserved < EPSILON_SECONDS && self.owed < EPSILON_SECONDS
    }
}

/// Shared by every request; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    entries: Arc<Mutex<HashMap<String, Entry>>>,
}

impl Ledger {
    /// Admits a request predicted to cost `cost` audio seconds, or says why not. A tenant
    /// without a key is not tracked (a direct call, or a gateway without audio budgets).
    pub fn admit(&self, tenant: &Tenant, cost: f64) -> Result<Admitted, Refusal> {
        if let Some(capacity) = tenant.capacity_seconds {
            if cost > capacity + EPSILON_SECONDS {
                return Err(Refusal::OverCapacity {
                    required: cost,
                    capacity,
                });
            }
        }
        let Some(key) = &tenant.key else {
            return Ok(Admitted {
                charge: None,
                running: None,
            });
        };
        let mut entries = self.lock();
        if entries.len() >= MAX_TENANTS && !entries.contains_key(key) {
            entries.retain(|_, entry| entry.running > 0 || entry.reserved >= EPSILON_SECONDS);
        }
        let entry = entries.entry(key.clone()).or_default();
        let refusal = if tenant.max_in_flight.is_some_and(|max| entry.running >= max) {
            Some(Refusal::TooManyInFlight {
                max: tenant.max_in_flight.unwrap_or(0),
            })
        } else {
            let required = cost + entry.reserved + entry.owed;
            tenant
                .budget_seconds
                .filter(|budget| required > budget + EPSILON_SECONDS)
                .map(|budget| Refusal::OverBudget { required, budget })
        };
        if let Some(refusal) = refusal {
            if entry.is_idle() {
                entries.remove(key);
            }
            return Err(refusal);
        }
        entry.running += 1;
        entry.reserved += cost;
        Ok(Admitted {
            charge: Some(Arc::new(Charge {
                ledger: self.clone(),
                key: key.clone(),
                cost,
                state: Mutex::new(ChargeState::default()),
            })),
            running: Some(Running {
                ledger: self.clone(),
                key: key.clone(),
            }),
        })
    }

    /// Takes what `tenant` owes, to be reported with an answer that has no charge of its own.
    pub fn take_owed(&self, tenant: &Tenant) -> f64 {
        let Some(key) = &tenant.key else { return 0.0 };
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(key) else {
            return 0.0;
        };
        let owed = std::mem::take(&mut entry.owed);
        if entry.is_idle() {
            entries.remove(key);
        }
        owed
    }

    /// Syntheses running for `key` (tests and metrics).
    pub fn running(&self, key: &str) -> u32 {
        self.lock().get(key).map_or(0, |entry| entry.running)
    }

    /// Tenants tracked now.
    pub fn tenants(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update(&self, key: &str, change: impl FnOnce(&mut Entry)) {
        let mut entries = self.lock();
        if let Some(entry) = entries.get_mut(key) {
            change(entry);
            if entry.is_idle() {
                entries.remove(key);
            }
        }
    }
}

/// A request the ledger let through: its charge (shared by the answer, which reports it, and
/// the synthesis, which says how much it made) and its running slot (held by the synthesis).
#[derive(Debug)]
pub struct Admitted {
    pub charge: Option<Arc<Charge>>,
    pub running: Option<Running>,
}

/// One request's predicted cost, reserved until the answer reports it. If the last holder lets
/// go without a report, what the synthesis made is owed instead.
#[derive(Debug)]
pub struct Charge {
    ledger: Ledger,
    key: String,
    cost: f64,
    state: Mutex<ChargeState>,
}

#[derive(Debug, Default)]
struct ChargeState {
    reported: bool,
    synthesized: f64,
}

impl Charge {
    /// The seconds the answer reports: this request's cost and whatever the tenant owes; from
    /// now on the filter has them. `None` if already reported.
    pub fn report(&self) -> Option<f64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.reported {
            return None;
        }
        state.reported = true;
        let mut reported = self.cost;
        let cost = self.cost;
        self.ledger.update(&self.key, |entry| {
            entry.reserved = (entry.reserved - cost).max(0.0);
            reported += std::mem::take(&mut entry.owed);
        });
        Some(reported)
    }

    /// Records the audio the synthesis made, owed if the answer never reports.
    pub fn synthesized(&self, seconds: f64) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .synthesized = seconds;
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        if state.reported {
            return;
        }
        let (cost, synthesized) = (self.cost, state.synthesized);
        self.ledger.update(&self.key, |entry| {
            entry.reserved = (entry.reserved - cost).max(0.0);
            entry.owed += synthesized;
        });
    }
}

/// A synthesis running for a tenant; released when dropped, on every path.
#[derive(Debug)]
pub struct Running {
    ledger: Ledger,
    key: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.ledger.update(&self.key, |entry| {
            entry.running = entry.running.saturating_sub(1)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(budget: f64) -> Tenant {
        Tenant {
            key: Some("t1".into()),
            budget_seconds: Some(budget),
            capacity_seconds: Some(100.0),
            max_in_flight: Some(2),
            ..Tenant::default()
        }
    }

    #[test]
    fn reserved_costs_count_against_the_budget_until_reported() {
        let ledger = Ledger::default();
        let first = ledger.admit(&tenant(50.0), 30.0).expect("fits");
        // The filter has not charged the first yet, so it still sees 50 s left.
        assert_eq!(
            ledger.admit(&tenant(50.0), 30.0).unwrap_err(),
            Refusal::OverBudget {
                required: 60.0,
                budget: 50.0
            }
        );
        assert_eq!(first.charge.as_ref().unwrap().report(), Some(30.0));
        assert_eq!(
            first.charge.as_ref().unwrap().report(),
            None,
            "reported once"
        );
        // Once reported, the filter's budget carries it.
        assert!(ledger.admit(&tenant(20.0), 20.0).is_ok());
    }

    #[test]
    fn an_unreported_request_is_owed_and_reported_with_the_next_answer() {
        let ledger = Ledger::default();
        let admitted = ledger.admit(&tenant(50.0), 30.0).expect("fits");
        admitted.charge.as_ref().unwrap().synthesized(12.5);
        drop(admitted);
        assert_eq!(ledger.tenants(), 1, "the debt is remembered");
        assert_eq!(
            ledger.admit(&tenant(20.0), 10.0).unwrap_err(),
            Refusal::OverBudget {
                required: 22.5,
                budget: 20.0
            }
        );
        let next = ledger
            .admit(&tenant(50.0), 10.0)
            .expect("fits with the debt");
        assert_eq!(next.charge.as_ref().unwrap().report(), Some(22.5));
        drop(next);
        assert_eq!(ledger.tenants(), 0);
        assert_eq!(ledger.take_owed(&tenant(1.0)), 0.0);
    }

    #[test]
    fn running_syntheses_are_capped_and_released_on_drop() {
        let ledger = Ledger::default();
        let a = ledger.admit(&tenant(100.0), 1.0).unwrap();
        let b = ledger.admit(&tenant(100.0), 1.0).unwrap();
        assert_eq!(
            ledger.admit(&tenant(100.0), 1.0).unwrap_err(),
            Refusal::TooManyInFlight { max: 2 }
        );
        // The answer went out, but the synthesis still runs: still in flight.
        a.charge.as_ref().unwrap().report();
        drop(a.charge);
        assert_eq!(ledger.running("t1"), 2);
        drop(a.running);
        assert_eq!(ledger.running("t1"), 1);
        assert!(ledger.admit(&tenant(100.0), 1.0).is_ok());
        drop(b);
    }

    #[test]
    fn over_capacity_is_refused_even_without_a_key() {
        let ledger = Ledger::default();
        let anonymous = Tenant {
            key: None,
            ..tenant(500.0)
        };
        assert_eq!(
            ledger.admit(&anonymous, 150.0).unwrap_err(),
            Refusal::OverCapacity {
                required: 150.0,
                capacity: 100.0
            }
        );
        let admitted = ledger.admit(&anonymous, 50.0).expect("untracked");
        assert!(admitted.charge.is_none() && admitted.running.is_none());
    }

    #[test]
    fn headers_are_read_and_bad_values_ignored() {
        let mut headers = HeaderMap::new();
        headers.insert(TENANT_HEADER, "ab12".parse().unwrap());
        headers.insert(BUDGET_HEADER, "12.500".parse().unwrap());
        headers.insert(CAPACITY_HEADER, "nan".parse().unwrap());
        headers.insert(MAX_IN_FLIGHT_HEADER, "2".parse().unwrap());
        headers.insert(SUBJECT_HEADER, "alice".parse().unwrap());
        headers.insert(ISSUER_HEADER, "https://idp".parse().unwrap());
        headers.insert(PLAN_HEADER, "pro".parse().unwrap());
        let tenant = Tenant::from_headers(&headers);
        assert_eq!(tenant.scheduling_key(), "https://idp alice");
        assert_eq!(tenant.plan.as_deref(), Some("pro"));
        assert_eq!(tenant.key.as_deref(), Some("ab12"));
        assert_eq!(tenant.budget_seconds, Some(12.5));
        assert_eq!(tenant.capacity_seconds, None);
        assert_eq!(tenant.max_in_flight, Some(2));
        assert_eq!(Tenant::from_headers(&HeaderMap::new()), Tenant::default());
        assert_eq!(Tenant::default().scheduling_key(), "anonymous");
    }
}
