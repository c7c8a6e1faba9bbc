//! The phonemizer process's side: one JSON request per line on stdin, one JSON reply per line
//! on stdout, espeak-ng in between. Lines suit the protocol because JSON escapes every line
//! break inside a string, and the parent is the only peer, so a malformed line ends the process.
//!
//! The process itself never phonemizes a text: it initializes espeak-ng and selects voices
//! (`check_voice`), then forks one child per text, which answers and exits. Every text therefore
//! starts from the same memory, the one the process had after its voices were selected: when
//! libespeak-ng reads freed memory (on a language switch), it can only find what this text or
//! that start left there, never another text, and the answer does not depend on the texts
//! before it. A child that crashes costs its text only; the process answers `crashed`.

use std::io::{self, BufRead, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use serde::{Deserialize, Serialize};

use super::{describe_exit, espeak, PhonemizeError};

/// What the service asks: the phonemes of `text`, or with no text only whether `voice` exists.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Request {
    pub voice: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub(super) enum Reply {
    Phonemes(String),
    VoiceKnown,
    Unavailable,
    UnknownVoice(String),
    /// The child that phonemized the text ended without answering: how it ended.
    Crashed(String),
}

impl Reply {
    pub fn into_result(self) -> Result<String, PhonemizeError> {
        match self {
            Reply::Phonemes(phonemes) => Ok(phonemes),
            Reply::VoiceKnown => Ok(String::new()),
            Reply::Unavailable => Err(PhonemizeError::Unavailable),
            Reply::UnknownVoice(voice) => Err(PhonemizeError::UnknownVoice(voice)),
            Reply::Crashed(status) => Err(PhonemizeError::Crashed { status }),
        }
    }
}

fn answer(request: &Request) -> Reply {
    let outcome = match &request.text {
        Some(text) => espeak::phonemize(text, &request.voice).map(Reply::Phonemes),
        None => espeak::check_voice(&request.voice).map(|()| Reply::VoiceKnown),
    };
    outcome.unwrap_or_else(error_reply)
}

fn error_reply(error: PhonemizeError) -> Reply {
    match error {
        PhonemizeError::UnknownVoice(voice) => Reply::UnknownVoice(voice),
        _ => Reply::Unavailable,
    }
}

/// Answers requests until the input ends (the service closed the pipe or exited). Forks, so
/// only for a process with no other thread that could hold a lock the fork would need:
/// `voxgate-phonemizer` has only espeak-ng's own event thread besides the caller's, idle for
/// good in a condition wait (which releases its mutex), since nothing is ever spoken aloud.
pub fn serve(input: impl BufRead, mut output: impl Write) -> io::Result<()> {
    for line in input.lines() {
        let line = line?;
        let request: Request = serde_json::from_str(&line)
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
        // The voice is selected here, before any fork, so that no child pays for it.
        let reply = match (espeak::check_voice(&request.voice), &request.text) {
            (Ok(()), Some(_)) => answer_in_child(&request)?,
            (Ok(()), None) => Reply::VoiceKnown,
            (Err(error), _) => error_reply(error),
        };
        serde_json::to_writer(&mut output, &reply)?;
        output.write_all(b"\n")?;
        output.flush()?;
    }
    Ok(())
}

fn answer_in_child(request: &Request) -> io::Result<Reply> {
    let (mut from_child, mut to_parent) = io::pipe()?;
    let parent = std::process::id();
    // SAFETY: no other thread of the process holds a lock (see `serve`), so the child may run
    // any code.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(io::Error::last_os_error());
    }
    if child == 0 {
        drop(from_child);
        // A child stuck inside espeak-ng dies with the process the service kills for it.
        // SAFETY: plain system calls; the parent check closes the race with its death.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
        }
        let written = serde_json::to_vec(&answer(request))
            .map_err(io::Error::from)
            .and_then(|reply| to_parent.write_all(&reply));
        // SAFETY: ends the child without running the parent's exit handlers or flushing its
        // copies of the parent's buffers.
        unsafe { libc::_exit(i32::from(written.is_err())) }
    }
    drop(to_parent);
    let mut reply = Vec::new();
    let read = from_child.read_to_end(&mut reply);
    let status = ExitStatus::from_raw(wait_for(child)?);
    match (read, status.success()) {
        (Ok(_), true) => serde_json::from_slice(&reply).map_err(io::Error::from),
        _ => Ok(Reply::Crashed(describe_exit(status))),
    }
}

fn wait_for(child: libc::pid_t) -> io::Result<libc::c_int> {
    let mut status = 0;
    loop {
        // SAFETY: waits for this process's own child; `status` outlives the call.
        if unsafe { libc::waitpid(child, &mut status, 0) } == child {
            return Ok(status);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(voice: &str, text: Option<&str>) -> Request {
        Request {
            voice: voice.into(),
            text: text.map(str::to_owned),
        }
    }

    #[test]
    fn answers_name_the_outcome() {
        assert_eq!(
            answer(&request("en-us", Some("Hello world.\nThis is a test!"))),
            Reply::Phonemes("həlˈoʊ wˈɜːld. ðɪs ɪz ɐ tˈɛst!".into())
        );
        assert_eq!(answer(&request("en-us", None)), Reply::VoiceKnown);
        assert_eq!(
            answer(&request("no-such-voice", None)),
            Reply::UnknownVoice("no-such-voice".into())
        );
    }

    #[test]
    fn a_malformed_request_ends_the_exchange() {
        let mut output = Vec::new();
        let error = serve(&b"{\"voice\":\n"[..], &mut output).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(output.is_empty());
    }

    #[test]
    fn replies_are_one_json_line_each() {
        let line = serde_json::to_string(&Reply::Crashed("signal 11".into())).unwrap();
        assert_eq!(line, r#"{"crashed":"signal 11"}"#);
        let back: Reply = serde_json::from_str(&line).unwrap();
        assert_eq!(
            back.into_result().unwrap_err().to_string(),
            PhonemizeError::Crashed {
                status: "signal 11".into()
            }
            .to_string()
        );
    }
}
