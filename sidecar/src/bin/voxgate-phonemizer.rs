//! voxgate-phonemizer: runs espeak-ng for `voxgate-sidecar`, which starts it and talks to it
//! over stdin and stdout (protocol in `voxgate_sidecar::phonemize::worker`). Not meant to be
//! run by hand. It exits when its input ends, so it never outlives the service's pipe.

use std::io::{stdin, stdout};
use std::process::ExitCode;

fn main() -> ExitCode {
    match voxgate_sidecar::phonemize::worker::serve(stdin().lock(), stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("voxgate-phonemizer: {error}");
            ExitCode::FAILURE
        }
    }
}
