//! voxgate-phonemizer: runs espeak-ng for `voxgate-sidecar`, which starts it and talks to it
//! over stdin and stdout (protocol in `voxgate_sidecar::phonemize::worker`). Not meant to be
//! run by hand.
//!
//! It lives exactly as long as the service's pipe: it exits when its input ends, and it ignores
//! SIGINT and SIGTERM, which a terminal or a process manager sends to the whole process group,
//! so that the service's graceful shutdown can still phonemize the sentences in flight.

use std::io::{stdin, stdout};
use std::process::ExitCode;

fn main() -> ExitCode {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: setting a signal's disposition to "ignore" before any other thread exists.
        unsafe { libc::signal(signal, libc::SIG_IGN) };
    }
    match voxgate_sidecar::phonemize::worker::serve(stdin().lock(), stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("voxgate-phonemizer: {error}");
            ExitCode::FAILURE
        }
    }
}
