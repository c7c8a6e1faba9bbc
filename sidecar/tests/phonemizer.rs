//! Component tests of the phonemizer pool with the real `voxgate-phonemizer` processes: it
//! phonemizes as espeak-ng does, in parallel, and a process that is killed, stopped or missing
//! costs at most the request that met it, never the caller.
//!
//! Each test runs the program under its own name (a hard link), so it finds its own processes
//! (children of this test process running that name) while the other tests run beside it.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use voxgate_sidecar::phonemize::{PhonemizeError, Phonemizer, PhonemizerSettings};

const HELLO: &str = "Hello world. This is a test!";
const HELLO_PHONEMES: &str = "həlˈoʊ wˈɜːld. ðɪs ɪz ɐ tˈɛst!";

/// The phonemizer under a private name, and a pool of `processes` running it.
struct Pool {
    phonemizer: Option<Phonemizer>,
    program: PathBuf,
    _folder: tempfile::TempDir,
}

impl Pool {
    fn new(processes: usize, timeout: Duration) -> Pool {
        // A hard link, not a copy: a copy is written through a file descriptor that a process
        // forked meanwhile by another test inherits, and exec then fails with ETXTBSY.
        let folder = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let program = folder.path().join("voxgate-phonemizer");
        std::fs::hard_link(env!("CARGO_BIN_EXE_voxgate-phonemizer"), &program).unwrap();
        let phonemizer = Phonemizer::new(PhonemizerSettings {
            program: program.clone(),
            processes: NonZeroUsize::new(processes).unwrap(),
            timeout,
        });
        Pool {
            phonemizer: Some(phonemizer),
            program,
            _folder: folder,
        }
    }

    fn get(&self) -> &Phonemizer {
        self.phonemizer.as_ref().unwrap()
    }

    /// Pids of this test's phonemizer processes that are still alive (zombies excluded).
    fn processes(&self) -> Vec<i32> {
        let me = std::process::id().to_string();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // After the command name in parentheses: state, then the parent's pid.
            let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
            let runs_this_copy =
                std::fs::read_link(entry.path().join("exe")).is_ok_and(|exe| exe == self.program);
            if fields[1] == me && fields[0] != "Z" && runs_this_copy {
                pids.push(pid);
            }
        }
        pids
    }

    fn the_only_process(&self) -> i32 {
        let pids = self.processes();
        assert_eq!(pids.len(), 1, "one phonemizer process: {pids:?}");
        pids[0]
    }
}

fn signal(pid: i32, signal: libc::c_int) {
    // SAFETY: sends a signal to a child of this test; no memory is involved.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

fn wait_until_gone(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.contains(") Z ") {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn phonemizes_like_espeak_and_starts_processes_on_demand() {
    let pool = Pool::new(2, Duration::from_secs(10));
    assert!(
        pool.processes().is_empty(),
        "no process before the first text"
    );
    assert_eq!(
        pool.get().phonemize(HELLO, "en-us").unwrap(),
        HELLO_PHONEMES
    );
    pool.get().check_voice("en-us").unwrap();
    assert!(matches!(
        pool.get().check_voice("no-such-voice"),
        Err(PhonemizeError::UnknownVoice(voice)) if voice == "no-such-voice"
    ));
    assert_eq!(
        pool.processes().len(),
        1,
        "requests one after the other share one process"
    );
}

#[test]
fn parallel_requests_use_every_process_and_agree() {
    let pool = Pool::new(2, Duration::from_secs(10));
    let texts = [
        "Hello world.",
        "Café, naïve élan!",
        HELLO,
        "Fine: thanks! Yes.",
    ];
    let expected: Vec<String> = texts
        .iter()
        .map(|text| pool.get().phonemize(text, "en-us").unwrap())
        .collect();
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..10 {
                    for (text, phonemes) in texts.iter().zip(&expected) {
                        assert_eq!(&pool.get().phonemize(text, "en-us").unwrap(), phonemes);
                    }
                }
            });
        }
    });
    assert_eq!(pool.processes().len(), 2);
}

#[test]
fn a_process_killed_while_idle_is_replaced_and_the_next_text_is_answered() {
    let pool = Pool::new(1, Duration::from_secs(10));
    pool.get().phonemize("warm up", "en-us").unwrap();
    let killed = pool.the_only_process();
    signal(killed, libc::SIGKILL);
    wait_until_gone(killed);

    assert_eq!(
        pool.get().phonemize(HELLO, "en-us").unwrap(),
        HELLO_PHONEMES
    );
    let replacement = pool.the_only_process();
    assert_ne!(replacement, killed);
}

#[test]
fn a_process_that_stops_answering_fails_its_request_within_the_timeout_and_is_replaced() {
    let timeout = Duration::from_millis(300);
    let pool = Pool::new(1, timeout);
    pool.get().phonemize("warm up", "en-us").unwrap();
    let stuck = pool.the_only_process();
    signal(stuck, libc::SIGSTOP);

    let started = Instant::now();
    let error = pool.get().phonemize(HELLO, "en-us").unwrap_err();
    let waited = started.elapsed();
    assert!(
        matches!(error, PhonemizeError::WorkerTimedOut(t) if t == timeout),
        "{error}"
    );
    assert!(waited >= timeout, "answered before the timeout: {waited:?}");
    assert!(
        !pool.processes().contains(&stuck),
        "the stuck process is killed and reaped"
    );

    assert_eq!(
        pool.get().phonemize(HELLO, "en-us").unwrap(),
        HELLO_PHONEMES
    );
    assert_ne!(pool.the_only_process(), stuck);
}

#[test]
fn a_missing_program_is_an_error_naming_it() {
    let phonemizer = Phonemizer::new(PhonemizerSettings {
        program: PathBuf::from("/nonexistent/voxgate-phonemizer"),
        processes: NonZeroUsize::MIN,
        timeout: Duration::from_secs(1),
    });
    let error = phonemizer.phonemize(HELLO, "en-us").unwrap_err();
    assert!(matches!(error, PhonemizeError::CannotStart { .. }));
    assert!(
        error
            .to_string()
            .contains("/nonexistent/voxgate-phonemizer"),
        "{error}"
    );
}

#[test]
fn dropping_the_pool_ends_its_processes() {
    let mut pool = Pool::new(2, Duration::from_secs(10));
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                for _ in 0..5 {
                    pool.get().phonemize(HELLO, "en-us").unwrap();
                }
            });
        }
    });
    assert!(!pool.processes().is_empty());
    pool.phonemizer = None;
    assert!(pool.processes().is_empty(), "{:?}", pool.processes());
}

/// Texts that overflow libespeak-ng 1.51's stack buffers when they reach it whole: all but the
/// last end in `stack smashing detected`; the last writes past its clause's word array without
/// a crash in this build (AddressSanitizer reports it in the same code of 1.52).
fn overflowing_texts() -> Vec<(&'static str, String)> {
    let alphabet: String = ('A'..='Z').map(|c| format!("{c}.")).collect();
    vec![
        ("a. x 85", "a.".repeat(85)),
        ("the alphabet as initials x 4", alphabet.repeat(4)),
        ("lowercase initials", alphabet.to_lowercase().repeat(4)),
        ("initials with spaced periods", "a . ".repeat(90)),
        ("initials with double periods", "b..".repeat(90)),
        ("initials without the last period", ["x"; 90].join(".")),
        ("initials and 's", "a.".repeat(84) + "'s"),
        ("two-byte initials", "é.".repeat(57)),
        ("Cyrillic initials", "ж.".repeat(57)),
        ("four-byte initials", "\u{1D41A}.".repeat(40)),
        (
            "initials in a sentence",
            format!("Say {} now.", "u.".repeat(100)),
        ),
        (
            "a clause of one-letter words",
            "a . ".repeat(150) + &"1".repeat(32),
        ),
        (
            "runs of initials past the word limit of a clause",
            vec!["a.".repeat(15) + "a"; 14].join(","),
        ),
    ]
}

#[test]
fn texts_that_overflowed_espeak_give_phonemes() {
    let pool = Pool::new(1, Duration::from_secs(10));
    for (name, text) in overflowing_texts() {
        let phonemes = pool
            .get()
            .phonemize(&text, "en-us")
            .unwrap_or_else(|error| panic!("{name}: {error}"));
        assert!(!phonemes.trim().is_empty(), "{name}: no phonemes");
    }
    assert_eq!(
        pool.get().phonemize(HELLO, "en-us").unwrap(),
        HELLO_PHONEMES
    );
}

#[test]
fn a_long_run_of_initials_is_still_spelled_letter_by_letter() {
    let pool = Pool::new(1, Duration::from_secs(10));
    let phonemes = pool.get().phonemize(&"a.".repeat(85), "en-us").unwrap();
    assert_eq!(phonemes.matches("eɪ").count(), 85, "{phonemes}");
    let short = pool.get().phonemize("a.b.c.", "en-us").unwrap();
    assert_eq!(short, "ˌeɪbˌiːsˈiː.");
}
