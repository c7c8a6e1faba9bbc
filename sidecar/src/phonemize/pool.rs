//! The service's side: a fixed number of `voxgate-phonemizer` processes shared by the
//! synthesis threads, each used by one thread at a time, started on first use and replaced
//! when it dies, answers garbage or overruns the timeout.
//!
//! A slot is held through a guard that gives it back on every path, and waiting for one is
//! bounded too. Every wait on a process has a deadline (the pipes are polled), so a process stuck inside
//! espeak-ng holds one request for at most the timeout and is then killed. A process that
//! died is no proof that the text killed it (it may have been killed while idle), so the
//! request is tried once more on a fresh process before it fails.

use std::io::{self, Read, Write};
use std::num::NonZeroUsize;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::worker::{Reply, Request};
use super::{describe_exit, PhonemizeError};
use crate::metrics;

/// File name of the phonemizer executable, built beside `voxgate-sidecar`.
const PHONEMIZER_PROGRAM: &str = "voxgate-phonemizer";

/// espeak-ng takes about a millisecond per clause; a sentence-sized text that takes ten
/// seconds is stuck.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq)]
pub struct PhonemizerSettings {
    /// The `voxgate-phonemizer` executable.
    pub program: PathBuf,
    /// Processes, i.e. texts phonemized at the same time.
    pub processes: NonZeroUsize,
    /// Longest wait for one answer; a process that takes longer is killed and replaced.
    pub timeout: Duration,
}

impl Default for PhonemizerSettings {
    fn default() -> Self {
        PhonemizerSettings {
            program: default_program(),
            processes: std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// `VOXGATE_PHONEMIZER` when set; else `voxgate-phonemizer` beside the running executable or
/// one folder up (Cargo puts test and example binaries in `deps/` and `examples/` below the
/// folder of the package's binaries); else the bare name, looked up in `PATH`.
pub fn default_program() -> PathBuf {
    if let Some(program) = std::env::var_os("VOXGATE_PHONEMIZER") {
        return program.into();
    }
    let executable = std::env::current_exe().ok();
    let folder = executable.as_deref().and_then(Path::parent);
    let built = [folder, folder.and_then(Path::parent)]
        .into_iter()
        .flatten()
        .map(|folder| folder.join(PHONEMIZER_PROGRAM))
        .find(|candidate| candidate.is_file());
    built.unwrap_or_else(|| PathBuf::from(PHONEMIZER_PROGRAM))
}

pub struct Phonemizer {
    settings: PhonemizerSettings,
    /// One entry per process slot not in use; `None` until its process is started.
    idle: Mutex<Vec<Option<Process>>>,
    slot_returned: Condvar,
}

impl Phonemizer {
    /// Starts no process yet: each slot starts its own on first use.
    pub fn new(settings: PhonemizerSettings) -> Self {
        let idle = (0..settings.processes.get()).map(|_| None).collect();
        Phonemizer {
            settings,
            idle: Mutex::new(idle),
            slot_returned: Condvar::new(),
        }
    }

    /// See `super::phonemize`.
    pub fn phonemize(&self, text: &str, voice: &str) -> Result<String, PhonemizeError> {
        self.ask(&Request {
            voice: voice.to_owned(),
            text: Some(text.to_owned()),
        })
    }

    /// See `super::check_voice`.
    pub fn check_voice(&self, voice: &str) -> Result<(), PhonemizeError> {
        self.ask(&Request {
            voice: voice.to_owned(),
            text: None,
        })
        .map(drop)
    }

    /// Ends every process not in use (killing and reaping it) and returns how many there
    /// were; a later request starts new ones.
    pub fn stop_idle_processes(&self) -> usize {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.iter_mut().filter_map(Option::take).count()
    }

    fn ask(&self, request: &Request) -> Result<String, PhonemizeError> {
        let mut line = serde_json::to_vec(request).expect("a request of two strings serializes");
        line.push(b'\n');
        let mut slot = self.take_slot()?;
        match self.exchange(&mut slot, &line) {
            Err(PhonemizeError::WorkerDied { .. }) => self.exchange(&mut slot, &line),
            answer => answer,
        }
    }

    /// One request on the slot's process, started first when the slot has none; a process
    /// that fails is retired and leaves the slot empty.
    fn exchange(&self, slot: &mut Slot<'_>, line: &[u8]) -> Result<String, PhonemizeError> {
        let process = match &mut slot.process {
            Some(process) => process,
            empty => empty.insert(Process::start(&self.settings.program)?),
        };
        match process.exchange(line, self.settings.timeout) {
            Ok(reply) => {
                if let Reply::Crashed(status) = &reply {
                    tracing::warn!(pid = process.child.id(), %status, "espeak-ng crashed on a text; its fork ended");
                    metrics::phonemizer_crashed();
                }
                reply.into_result()
            }
            Err(failure) => {
                let process = slot.process.take().expect("the slot held the process that failed");
                Err(process.retire(failure, self.settings.timeout))
            }
        }
    }

    /// Waits for a free slot. A slot is held for one text, whose every exchange is bounded by
    /// the timeout, so a wait longer than twice the timeout (an answer and its one retry) means
    /// more texts are waiting than the processes can serve: the caller is refused, not parked.
    fn take_slot(&self) -> Result<Slot<'_>, PhonemizeError> {
        let patience = self.settings.timeout * 2;
        let deadline = Instant::now() + patience;
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(process) = idle.pop() {
                return Ok(Slot {
                    pool: self,
                    process,
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(PhonemizeError::Busy(patience));
            }
            idle = self
                .slot_returned
                .wait_timeout(idle, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// One process slot in use; given back when dropped, on every path, a panic included.
struct Slot<'a> {
    pool: &'a Phonemizer,
    /// `None` until a process is started in it, and again once a failed one is retired.
    process: Option<Process>,
}

impl Drop for Slot<'_> {
    /// Last in, first out, so that a light load keeps using the processes already started.
    fn drop(&mut self) {
        self.pool
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(self.process.take());
        self.pool.slot_returned.notify_one();
    }
}

/// Why a process is retired.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Failure {
    /// Its pipes closed: it exited or was killed.
    Died,
    /// It answered something that is not a reply.
    Garbled,
    TimedOut,
}

impl Failure {
    fn as_str(self) -> &'static str {
        match self {
            Failure::Died => "died",
            Failure::Garbled => "garbled",
            Failure::TimedOut => "timed_out",
        }
    }
}

/// One running `voxgate-phonemizer`; dropping it kills the process.
struct Process {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
}

impl Process {
    fn start(program: &Path) -> Result<Process, PhonemizeError> {
        let cannot_start = |reason: String| PhonemizeError::CannotStart {
            program: program.display().to_string(),
            reason,
        };
        let mut child = Command::new(program)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|error| cannot_start(error.to_string()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(cannot_start("its pipes were not opened".into()));
        };
        // Writes must not block either: a process that stopped reading would hold a long
        // text's writer past the deadline.
        set_nonblocking(&stdin).map_err(|error| cannot_start(error.to_string()))?;
        Ok(Process {
            child,
            stdin,
            stdout,
        })
    }

    /// Sends one request line and reads the one reply line, both before `timeout` ends.
    fn exchange(&mut self, line: &[u8], timeout: Duration) -> Result<Reply, Failure> {
        let deadline = Instant::now() + timeout;
        let mut sent = 0;
        while sent < line.len() {
            match self.stdin.write(&line[sent..]) {
                Ok(0) => return Err(Failure::Died),
                Ok(written) => sent += written,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    wait_for(&self.stdin, libc::POLLOUT, deadline)?;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(Failure::Died),
            }
        }
        // The process writes nothing but one line per request, so a read that ends with a
        // line break has read the whole reply and nothing after it.
        let mut reply = Vec::new();
        let mut chunk = [0u8; 4096];
        while reply.last() != Some(&b'\n') {
            wait_for(&self.stdout, libc::POLLIN, deadline)?;
            match self.stdout.read(&mut chunk) {
                Ok(0) => return Err(Failure::Died),
                Ok(read) => reply.extend_from_slice(&chunk[..read]),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(Failure::Died),
            }
        }
        serde_json::from_slice(&reply).map_err(|_| Failure::Garbled)
    }

    /// Kills and reaps the process, logs and counts why, and names the error for the request.
    fn retire(mut self, failure: Failure, timeout: Duration) -> PhonemizeError {
        let pid = self.child.id();
        let _ = self.child.kill();
        let status = self
            .child
            .wait()
            .map_or_else(|error| format!("status unknown: {error}"), describe_exit);
        tracing::warn!(pid, reason = failure.as_str(), %status, "phonemizer process replaced");
        metrics::phonemizer_replaced(failure.as_str());
        match failure {
            Failure::TimedOut => PhonemizeError::WorkerTimedOut(timeout),
            Failure::Died | Failure::Garbled => PhonemizeError::WorkerDied { status },
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn set_nonblocking(pipe: &impl AsRawFd) -> io::Result<()> {
    let fd = pipe.as_raw_fd();
    // SAFETY: `fd` is an open descriptor owned by `pipe`; F_GETFL and F_SETFL only change its
    // status flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits until `pipe` is ready for `events`, or hung up, or the deadline passed.
fn wait_for(pipe: &impl AsRawFd, events: libc::c_short, deadline: Instant) -> Result<(), Failure> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Failure::TimedOut);
        }
        let mut descriptor = libc::pollfd {
            fd: pipe.as_raw_fd(),
            events,
            revents: 0,
        };
        let millis = left.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd that outlives the call.
        let ready = unsafe { libc::poll(&mut descriptor, 1, millis) };
        // Ready, hung up or in error: the read or write that follows tells which.
        if ready > 0 {
            return Ok(());
        }
        if ready < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return Err(Failure::Died);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(timeout: Duration) -> Phonemizer {
        Phonemizer::new(PhonemizerSettings {
            program: PathBuf::from("/nonexistent/voxgate-phonemizer"),
            processes: NonZeroUsize::MIN,
            timeout,
        })
    }

    #[test]
    fn a_slot_comes_back_when_its_holder_panics() {
        let phonemizer = pool(Duration::from_millis(50));
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _slot = phonemizer.take_slot().expect("a free slot");
            panic!("a holder panicked");
        }));
        assert!(outcome.is_err());
        assert!(phonemizer.take_slot().is_ok());
    }

    #[test]
    fn waiting_for_a_slot_is_bounded() {
        let phonemizer = pool(Duration::from_millis(50));
        let _held = phonemizer.take_slot().expect("a free slot");
        let started = Instant::now();
        assert!(matches!(phonemizer.take_slot(), Err(PhonemizeError::Busy(_))));
        assert!(started.elapsed() >= Duration::from_millis(100));
    }

    #[test]
    fn a_slot_whose_process_cannot_start_is_still_given_back() {
        let phonemizer = pool(Duration::from_millis(50));
        assert!(matches!(
            phonemizer.phonemize("Hello.", "en-us"),
            Err(PhonemizeError::CannotStart { .. })
        ));
        assert!(phonemizer.take_slot().is_ok());
    }
}
