//! The phonemizer process's side: one JSON request per line on stdin, one JSON reply per line
//! on stdout, espeak-ng in between. Lines suit the protocol because JSON escapes every line
//! break inside a string, and the parent is the only peer, so a malformed line ends the process.

use std::io::{self, BufRead, Write};

use serde::{Deserialize, Serialize};

use super::{espeak, PhonemizeError};

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
}

impl Reply {
    pub fn into_result(self) -> Result<String, PhonemizeError> {
        match self {
            Reply::Phonemes(phonemes) => Ok(phonemes),
            Reply::VoiceKnown => Ok(String::new()),
            Reply::Unavailable => Err(PhonemizeError::Unavailable),
            Reply::UnknownVoice(voice) => Err(PhonemizeError::UnknownVoice(voice)),
        }
    }
}

fn answer(request: &Request) -> Reply {
    let outcome = match &request.text {
        Some(text) => espeak::phonemize(text, &request.voice).map(Reply::Phonemes),
        None => espeak::check_voice(&request.voice).map(|()| Reply::VoiceKnown),
    };
    outcome.unwrap_or_else(|error| match error {
        PhonemizeError::UnknownVoice(voice) => Reply::UnknownVoice(voice),
        _ => Reply::Unavailable,
    })
}

/// Answers requests until the input ends (the service closed the pipe or exited).
pub fn serve(input: impl BufRead, mut output: impl Write) -> io::Result<()> {
    for line in input.lines() {
        let line = line?;
        let request: Request = serde_json::from_str(&line)
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
        serde_json::to_writer(&mut output, &answer(&request))?;
        output.write_all(b"\n")?;
        output.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(requests: &str) -> Vec<Reply> {
        let mut output = Vec::new();
        serve(requests.as_bytes(), &mut output).unwrap();
        String::from_utf8(output)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    #[test]
    fn one_reply_per_request_in_order() {
        let replies = exchange(concat!(
            r#"{"voice":"en-us","text":"Hello world.\nThis is a test!"}"#,
            "\n",
            r#"{"voice":"en-us"}"#,
            "\n",
            r#"{"voice":"no-such-voice"}"#,
            "\n",
        ));
        assert_eq!(
            replies,
            [
                Reply::Phonemes("həlˈoʊ wˈɜːld. ðɪs ɪz ɐ tˈɛst!".into()),
                Reply::VoiceKnown,
                Reply::UnknownVoice("no-such-voice".into()),
            ]
        );
    }

    #[test]
    fn a_malformed_request_ends_the_exchange() {
        let mut output = Vec::new();
        let error = serve(&b"{\"voice\":\n"[..], &mut output).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(output.is_empty());
    }
}
