//! State shared by the handlers: request limits, the scheduler and its plan weights, the tenant
//! ledger, the voices once they are loaded, whether the service is draining for shutdown, and
//! the metrics renderer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use voxgate_rules::{Resolved, RuleCode, RuleError, VoiceTable};

use super::errors::ApiError;
use crate::scheduler::{PlanWeights, Scheduler};
use crate::tenants::Ledger;
use crate::voice::{Voice, VoiceCatalog};
use voxgate_rules::TextLimits;

/// Request limits and timings taken from the configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The shared text rules: character limit, control characters.
    pub text: TextLimits,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub sentence_gap: Duration,
    pub retry_after_secs: u64,
    /// Largest predicted audio of one request, in seconds.
    pub max_request_audio_seconds: f64,
    /// Least audio seconds a synthesis is charged: the fixed cost of any request.
    pub min_request_audio_seconds: f64,
    /// Largest predicted audio of one model run: bounds its memory and its duration.
    pub max_utterance_seconds: f64,
}

/// The catalog, the voice used when a request names none, and the alias table.
pub struct LoadedVoices {
    catalog: VoiceCatalog,
    default_voice: Arc<Voice>,
    table: VoiceTable,
}

impl LoadedVoices {
    /// Picks the default voice (the one named, or the first by name) and checks the aliases
    /// against the catalog.
    pub fn new(
        catalog: VoiceCatalog,
        default_name: Option<&str>,
        aliases: BTreeMap<String, String>,
    ) -> anyhow::Result<Self> {
        let default_voice = match default_name {
            Some(name) => catalog.get(name).ok_or_else(|| {
                anyhow::anyhow!("the default voice `{name}` is not in the voices folder")
            })?,
            None => catalog
                .voices()
                .into_iter()
                .next()
                .ok_or_else(|| anyhow::anyhow!("the voices folder holds no voice"))?,
        };
        let names = catalog
            .voices()
            .iter()
            .map(|v| v.info().name.clone())
            .collect();
        let default = Some(default_voice.info().name.clone());
        let table = VoiceTable::new(names, default, aliases, Vec::new())
            .map_err(|problem| anyhow::anyhow!("voice aliases: {problem}"))?;
        Ok(LoadedVoices {
            catalog,
            default_voice,
            table,
        })
    }

    /// The voice for a request's `voice` and `model` (see `VoiceTable::resolve`).
    pub fn resolve(
        &self,
        voice: Option<&str>,
        model: Option<&str>,
    ) -> Result<Arc<Voice>, ApiError> {
        match self.table.resolve(voice, model)? {
            Resolved::Voice(name) => self.catalog.get(name).ok_or_else(|| {
                ApiError::from(RuleError::invalid(
                    "voice",
                    RuleCode::UnknownVoice,
                    "`voice` is not an available voice (GET /v1/audio/voices)",
                ))
            }),
            Resolved::Default => Ok(Arc::clone(&self.default_voice)),
        }
    }

    pub fn table(&self) -> &VoiceTable {
        &self.table
    }

    pub fn get(&self, name: &str) -> Option<Arc<Voice>> {
        self.catalog.get(name)
    }

    pub fn all(&self) -> Vec<Arc<Voice>> {
        self.catalog.voices()
    }

    pub fn default_voice(&self) -> &Arc<Voice> {
        &self.default_voice
    }
}

/// Cheap to clone; every handler gets one.
#[derive(Clone)]
pub struct AppState {
    shared: Arc<Shared>,
}

struct Shared {
    limits: Limits,
    scheduler: Scheduler,
    plan_weights: PlanWeights,
    ledger: Ledger,
    voices: OnceLock<LoadedVoices>,
    draining: AtomicBool,
    metrics: PrometheusHandle,
}

impl AppState {
    pub fn new(
        limits: Limits,
        scheduler: Scheduler,
        plan_weights: PlanWeights,
        metrics: PrometheusHandle,
    ) -> Self {
        AppState {
            shared: Arc::new(Shared {
                limits,
                scheduler,
                plan_weights,
                ledger: Ledger::default(),
                voices: OnceLock::new(),
                draining: AtomicBool::new(false),
                metrics,
            }),
        }
    }

    /// Makes the service ready. Voices are loaded once; a second call is refused.
    pub fn set_voices(&self, voices: LoadedVoices) -> anyhow::Result<()> {
        self.shared
            .voices
            .set(voices)
            .map_err(|_| anyhow::anyhow!("voices are already loaded"))
    }

    /// The voices, or 503 `not_ready` while they load.
    pub fn voices(&self) -> Result<&LoadedVoices, ApiError> {
        self.shared
            .voices
            .get()
            .ok_or_else(|| ApiError::not_ready(self.shared.limits.retry_after_secs))
    }

    /// From now on `/readyz` answers 503 so that balancers stop sending traffic; requests
    /// already accepted still finish.
    pub fn begin_draining(&self) {
        self.shared.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::Acquire)
    }

    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    pub fn scheduler(&self) -> &Scheduler {
        &self.shared.scheduler
    }

    /// The scheduler's share of each plan.
    pub fn plan_weights(&self) -> &PlanWeights {
        &self.shared.plan_weights
    }

    /// What runs, is reserved and is owed per tenant.
    pub fn ledger(&self) -> &Ledger {
        &self.shared.ledger
    }

    pub fn metrics(&self) -> &PrometheusHandle {
        &self.shared.metrics
    }
}
