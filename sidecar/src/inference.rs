//! ONNX Runtime for VITS voices: the process-wide runtime and, per voice, one session per
//! scheduler worker.
//!
//! `Session::run` needs exclusive access. The scheduler (`crate::scheduler`) gives each model
//! run a worker, and the worker's index names the session it runs on, so a scheduled run never
//! waits here; each session's mutex only guards callers outside the scheduler (tools, tests)
//! and a voice configured with fewer sessions than workers.
//!
//! The runtime library is loaded from `ORT_DYLIB_PATH` (default: `libonnxruntime.so`
//! through the system loader), once per process.

use std::borrow::Cow;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError, TryLockError};

use ort::environment::Environment;
use ort::ep;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::{RunOptions, Session, SessionInputValue};
use ort::value::{TensorElementType, ValueType};

/// The model inputs a Piper or Coqui VITS export takes; `sid` only when multi-speaker.
const INPUT_IDS: &str = "input";
const INPUT_LENGTHS: &str = "input_lengths";
const INPUT_SCALES: &str = "scales";
const INPUT_SPEAKER: &str = "sid";

/// ONNX Runtime graph optimization level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GraphOptimization {
    Disable,
    Basic,
    Extended,
    #[default]
    All,
}

impl FromStr for GraphOptimization {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "disable" | "none" | "0" => Ok(GraphOptimization::Disable),
            "basic" | "1" => Ok(GraphOptimization::Basic),
            "extended" | "2" => Ok(GraphOptimization::Extended),
            "all" | "3" => Ok(GraphOptimization::All),
            _ => Err(format!(
                "unknown graph optimization level {s:?} (disable, basic, extended, all)"
            )),
        }
    }
}

impl From<GraphOptimization> for GraphOptimizationLevel {
    fn from(level: GraphOptimization) -> Self {
        match level {
            GraphOptimization::Disable => GraphOptimizationLevel::Disable,
            GraphOptimization::Basic => GraphOptimizationLevel::Level1,
            GraphOptimization::Extended => GraphOptimizationLevel::Level2,
            GraphOptimization::All => GraphOptimizationLevel::Level3,
        }
    }
}

/// How the sessions of one voice are built.
#[derive(Debug, Clone, Copy)]
pub struct SessionSettings {
    pub sessions: usize,
    pub intra_op_threads: usize,
    pub optimization: GraphOptimization,
}

/// What a model run gets: token ids, `[noise_scale, length_scale, noise_w]`, and the
/// speaker id for multi-speaker models.
#[derive(Debug, Clone, Copy)]
pub struct ModelInput<'a> {
    pub ids: &'a [i64],
    pub scales: [f32; 3],
    pub speaker: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    #[error("ONNX Runtime is unavailable: {0}")]
    Runtime(String),
    #[error("the model cannot be used: {0}")]
    Model(String),
    #[error("the model run failed: {0}")]
    Run(String),
    #[error("the model run was stopped before it finished")]
    Stopped,
}

/// Lets another thread stop a model run in progress: ONNX Runtime checks the flag between
/// kernels, so a run ends within milliseconds of [`Interrupt::stop`] instead of finishing a
/// sentence that may take tens of seconds.
pub struct Interrupt {
    options: RunOptions,
    stopped: AtomicBool,
}

impl std::fmt::Debug for Interrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interrupt").finish_non_exhaustive()
    }
}

impl Interrupt {
    pub fn new() -> Result<Interrupt, InferenceError> {
        environment()?;
        let options = RunOptions::new().map_err(|e| InferenceError::Runtime(e.to_string()))?;
        Ok(Interrupt {
            options,
            stopped: AtomicBool::new(false),
        })
    }

    /// Stops the run in progress and every later run given this interrupt.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        if let Err(error) = self.options.terminate() {
            tracing::warn!(%error, "could not stop a model run");
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }
}

/// Sessions of one model, each used by one caller at a time.
pub struct SessionPool {
    sessions: Vec<Mutex<Session>>,
    takes_speaker: bool,
    output_name: String,
}

impl std::fmt::Debug for SessionPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionPool")
            .field("size", &self.sessions.len())
            .field("takes_speaker", &self.takes_speaker)
            .finish_non_exhaustive()
    }
}

impl SessionPool {
    /// Loads `settings.sessions` sessions of the model and checks that its inputs are
    /// the VITS export's.
    pub fn load(model: &Path, settings: &SessionSettings) -> Result<SessionPool, InferenceError> {
        let environment = environment()?;
        let sessions = (0..settings.sessions.max(1))
            .map(|_| build_session(environment, model, settings))
            .collect::<Result<Vec<_>, _>>()?;
        let first = sessions
            .first()
            .ok_or_else(|| InferenceError::Model("no session".into()))?;
        let takes_speaker = check_inputs(first)?;
        let output_name = check_output(first)?;
        Ok(SessionPool {
            sessions: sessions.into_iter().map(Mutex::new).collect(),
            takes_speaker,
            output_name,
        })
    }

    /// Whether the model has a `sid` input (a multi-speaker model).
    pub fn takes_speaker(&self) -> bool {
        self.takes_speaker
    }

    pub fn size(&self) -> usize {
        self.sessions.len()
    }

    /// Runs the model on session `slot` (modulo the pool's size; another one if that one is
    /// busy and another is free) and returns the audio samples, whatever the rank of the
    /// output tensor. A run stopped through `interrupt` returns [`InferenceError::Stopped`].
    pub fn run(
        &self,
        input: &ModelInput<'_>,
        interrupt: &Interrupt,
        slot: usize,
    ) -> Result<Vec<f32>, InferenceError> {
        let speaker = match (self.takes_speaker, input.speaker) {
            (true, Some(speaker)) => Some(speaker),
            (true, None) => return Err(InferenceError::Run("the model needs a speaker id".into())),
            (false, _) => None,
        };
        let mut inputs: Vec<(Cow<'static, str>, SessionInputValue<'static>)> = vec![
            (
                INPUT_IDS.into(),
                tensor(vec![1, input.ids.len()], input.ids.to_vec())?,
            ),
            (
                INPUT_LENGTHS.into(),
                tensor(vec![1], vec![input.ids.len() as i64])?,
            ),
            (INPUT_SCALES.into(), tensor(vec![3], input.scales.to_vec())?),
        ];
        if let Some(speaker) = speaker {
            inputs.push((INPUT_SPEAKER.into(), tensor(vec![1], vec![speaker])?));
        }
        let mut session = self.session(slot);
        let outputs = session
            .run_with_options(inputs, &interrupt.options)
            .map_err(|e| {
                if interrupt.is_stopped() {
                    InferenceError::Stopped
                } else {
                    InferenceError::Run(e.to_string())
                }
            })?;
        let output = outputs.get(&self.output_name).ok_or_else(|| {
            InferenceError::Run(format!("no output named {:?}", self.output_name))
        })?;
        let (_, samples) = output
            .try_extract_tensor::<f32>()
            .map_err(|e| InferenceError::Run(e.to_string()))?;
        Ok(samples.to_vec())
    }

    /// Session `slot`, else any free one, else `slot` once it is free. A run that panicked
    /// leaves its session as usable as any: ONNX Runtime keeps no state between runs.
    fn session(&self, slot: usize) -> MutexGuard<'_, Session> {
        let count = self.sessions.len();
        for offset in 0..count {
            match self.sessions[(slot + offset) % count].try_lock() {
                Ok(session) => return session,
                Err(TryLockError::Poisoned(poisoned)) => return poisoned.into_inner(),
                Err(TryLockError::WouldBlock) => {}
            }
        }
        self.sessions[slot % count]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

fn tensor<T>(shape: Vec<usize>, data: Vec<T>) -> Result<SessionInputValue<'static>, InferenceError>
where
    T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static,
{
    ort::value::Tensor::from_array((shape, data))
        .map(SessionInputValue::from)
        .map_err(|e| InferenceError::Run(e.to_string()))
}

fn environment() -> Result<&'static Environment, InferenceError> {
    static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();
    ENVIRONMENT
        .get_or_init(|| {
            let library = std::env::var("ORT_DYLIB_PATH")
                .ok()
                .filter(|path| !path.is_empty())
                .unwrap_or_else(|| "libonnxruntime.so".to_string());
            ort::init_from(&library)
                .map_err(|e| {
                    format!(
                        "cannot load {library:?} (set ORT_DYLIB_PATH to libonnxruntime.so): {e}"
                    )
                })?
                .with_name("voxgate")
                .with_telemetry(false)
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| InferenceError::Runtime(e.clone()))
}

fn build_session(
    environment: &Environment,
    model: &Path,
    settings: &SessionSettings,
) -> Result<Session, InferenceError> {
    let model_error = |e: ort::Error<SessionBuilder>| InferenceError::Model(e.to_string());
    Session::builder(environment)
        .map_err(|e| InferenceError::Model(e.to_string()))?
        .with_optimization_level(settings.optimization.into())
        .map_err(model_error)?
        .with_intra_threads(settings.intra_op_threads.max(1))
        .map_err(model_error)?
        .with_inter_threads(1)
        .map_err(model_error)?
        // Spinning intra-op threads of one session would steal the cores the other
        // sessions of the pool are running on.
        .with_intra_op_spinning(settings.sessions <= 1)
        .map_err(model_error)?
        // Memory patterns are planned and cached per input shape; every text has its own
        // length, so they only pile up in the arena (measured with two Joe sessions after
        // 40 sentences: 600 MB peak with them, 420 MB without, at the same speed).
        .with_memory_pattern(false)
        .map_err(model_error)?
        // The CPU arena keeps the peak of the longest inference for the life of the process
        // (measured: 3.4 GB resident after one 150 s utterance, never returned); without it
        // every tensor goes back to the allocator when the run ends.
        .with_execution_providers([ep::CPU::default().with_arena_allocator(false).build()])
        .map_err(model_error)?
        .commit_from_file(model)
        .map_err(|e| InferenceError::Model(e.to_string()))
}

/// Checks the model's inputs against the VITS export's; returns whether it takes `sid`.
fn check_inputs(session: &Session) -> Result<bool, InferenceError> {
    let mut takes_speaker = false;
    let mut required = [INPUT_IDS, INPUT_LENGTHS, INPUT_SCALES].to_vec();
    for input in session.inputs() {
        let expected = match input.name() {
            INPUT_IDS | INPUT_LENGTHS => TensorElementType::Int64,
            INPUT_SCALES => TensorElementType::Float32,
            INPUT_SPEAKER => {
                takes_speaker = true;
                TensorElementType::Int64
            }
            other => {
                return Err(InferenceError::Model(format!(
                    "unsupported model input {other:?}"
                )))
            }
        };
        if !matches!(input.dtype(), ValueType::Tensor { ty, .. } if *ty == expected) {
            return Err(InferenceError::Model(format!(
                "model input {:?} is not a {expected} tensor",
                input.name()
            )));
        }
        required.retain(|name| *name != input.name());
    }
    match required.first() {
        Some(missing) => Err(InferenceError::Model(format!(
            "the model has no {missing:?} input"
        ))),
        None => Ok(takes_speaker),
    }
}

/// The name of the audio output: the model's first output, a float tensor.
fn check_output(session: &Session) -> Result<String, InferenceError> {
    let output = session
        .outputs()
        .first()
        .ok_or_else(|| InferenceError::Model("the model has no output".into()))?;
    if !matches!(
        output.dtype(),
        ValueType::Tensor {
            ty: TensorElementType::Float32,
            ..
        }
    ) {
        return Err(InferenceError::Model(format!(
            "model output {:?} is not a float tensor",
            output.name()
        )));
    }
    Ok(output.name().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optimization_levels_parse() {
        assert_eq!(
            "all".parse::<GraphOptimization>().unwrap(),
            GraphOptimization::All
        );
        assert_eq!(
            "Basic".parse::<GraphOptimization>().unwrap(),
            GraphOptimization::Basic
        );
        assert_eq!(
            "0".parse::<GraphOptimization>().unwrap(),
            GraphOptimization::Disable
        );
        assert!("fast".parse::<GraphOptimization>().is_err());
    }
}
