//! espeak-ng inside this process: text → IPA phonemes, one call at a time.
//!
//! Only the phonemizer worker (`voxgate-phonemizer`) runs this: libespeak-ng 1.51 has memory
//! defects that some texts reach (see `super`), so the service keeps it out of its own address
//! space.
//!
//! espeak-ng keeps global state (the selected voice, a static output buffer and a
//! character it has read ahead), so every call runs under one process-wide lock,
//! consumes its whole text before releasing it, and starts from a clean state: a
//! character read ahead at the end of the previous text is dropped, and the voice is
//! selected again when a canary phrase no longer sounds as it did (a character of another
//! script can leave another language's phonemes on for every later text).
//!
//! Stock espeak-ng 1.51 returns each clause's phonemes without the punctuation that
//! ended the clause (Piper's patched espeak reports it). The punctuation carries
//! prosody for VITS voices, so it is recovered from the input text each call
//! consumed and appended to the clause, the way Piper and Coqui write it:
//! `həlˈoʊ, wˈɜːld. ðɪs ɪz ɐ tˈɛst!`.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::{Mutex, OnceLock};

use super::{segment, PhonemizeError};

/// Characters that end a clause and are kept in the phoneme string.
const CLAUSE_PUNCTUATION: &[char] = &['.', ',', '!', '?', ';', ':', '…'];

/// Characters that may follow a clause's punctuation without belonging to the next
/// clause: closing quotes and brackets (`"Hi." Then`).
const CLAUSE_CLOSERS: &[char] = &['"', '\'', '”', '’', '»', ')', ']', '}'];

/// Phonemizes `text` with the espeak-ng voice `voice` (e.g. `en-us`), keeping clause
/// punctuation. Clauses are separated by a single space. The text goes to espeak in the pieces
/// `segment` cuts it into, one after the other.
pub fn phonemize(text: &str, voice: &str) -> Result<String, PhonemizeError> {
    let espeak = espeak()?;
    let mut espeak = espeak
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    espeak.drop_read_ahead();
    espeak.select_voice(voice)?;
    let mut clauses = Vec::new();
    for (i, piece) in segment::pieces(text).into_iter().enumerate() {
        if i > 0 {
            espeak.drop_read_ahead();
        }
        clauses.extend(espeak.clauses(piece));
    }
    Ok(join_clauses(&clauses))
}

/// Checks, without phonemizing anything, that espeak-ng works and knows `voice`.
/// Used when voices are loaded so a bad voice fails at start, not per request.
pub fn check_voice(voice: &str) -> Result<(), PhonemizeError> {
    let espeak = espeak()?;
    let mut espeak = espeak
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    espeak.select_voice(voice)
}

/// One clause as espeak produced it, with the punctuation that ended it in the input.
#[derive(Debug, PartialEq)]
struct Clause {
    phonemes: String,
    punctuation: String,
}

fn join_clauses(clauses: &[Clause]) -> String {
    let mut out = String::new();
    for clause in clauses {
        let phonemes = strip_language_flags(&clause.phonemes);
        let phonemes = phonemes.trim();
        if phonemes.is_empty() && clause.punctuation.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(phonemes);
        out.push_str(&clause.punctuation);
    }
    out
}

/// The punctuation that ended a clause: the trailing run of clause punctuation in
/// the clause's input, looking through whitespace and closing quotes or brackets.
fn clause_punctuation(clause_text: &str) -> String {
    let trimmed =
        clause_text.trim_end_matches(|c: char| c.is_whitespace() || CLAUSE_CLOSERS.contains(&c));
    let run_start = trimmed
        .char_indices()
        .rev()
        .take_while(|(_, c)| CLAUSE_PUNCTUATION.contains(c))
        .last()
        .map_or(trimmed.len(), |(i, _)| i);
    trimmed[run_start..].to_string()
}

/// espeak marks words it reads with another language's rules as `(fr)…(en)`; the
/// flags are not phonemes, so they are dropped (as Piper and Coqui do).
fn strip_language_flags(phonemes: &str) -> String {
    let mut out = String::with_capacity(phonemes.len());
    let mut rest = phonemes;
    while let Some(open) = rest.find('(') {
        let after = &rest[open + 1..];
        match after.find(')') {
            Some(close)
                if after[..close]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-') =>
            {
                out.push_str(&rest[..open]);
                rest = &after[close + 1..];
            }
            _ => {
                out.push_str(&rest[..=open]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

const AUDIO_OUTPUT_SYNCHRONOUS: c_int = 2;
const ESPEAK_INITIALIZE_DONT_EXIT: c_int = 0x8000;
const ESPEAK_CHARS_UTF8: c_int = 1;
/// `phonememode` bit 1: IPA as UTF-8 instead of espeak's ASCII phoneme names; no
/// separator between phonemes (bits 8–23 zero).
const PHONEME_MODE_IPA: c_int = 0x02;
const EE_OK: c_int = 0;

#[link(name = "espeak-ng")]
extern "C" {
    fn espeak_Initialize(
        output: c_int,
        buflength: c_int,
        path: *const c_char,
        options: c_int,
    ) -> c_int;
    fn espeak_SetVoiceByName(name: *const c_char) -> c_int;
    fn espeak_TextToPhonemes(
        textptr: *mut *const c_void,
        textmode: c_int,
        phonememode: c_int,
    ) -> *const c_char;
}

/// Phrase whose phonemes tell whether espeak still reads with the selected voice's rules.
const CANARY: &CStr = c"hello world this is a test";

/// The initialized library; holding its lock is holding espeak.
struct Espeak {
    /// The voice selected last, and the phonemes of `CANARY` right after selecting it.
    selected: Option<(String, String)>,
}

fn espeak() -> Result<&'static Mutex<Espeak>, PhonemizeError> {
    static ESPEAK: OnceLock<Option<Mutex<Espeak>>> = OnceLock::new();
    ESPEAK
        .get_or_init(|| {
            // SAFETY: called once, before any other espeak function; a null path
            // selects the default data directory (or ESPEAK_DATA_PATH).
            let sample_rate = unsafe {
                espeak_Initialize(
                    AUDIO_OUTPUT_SYNCHRONOUS,
                    0,
                    std::ptr::null(),
                    ESPEAK_INITIALIZE_DONT_EXIT,
                )
            };
            (sample_rate > 0).then(|| Mutex::new(Espeak { selected: None }))
        })
        .as_ref()
        .ok_or(PhonemizeError::Unavailable)
}

impl Espeak {
    /// Selects `voice` unless it is selected and still in effect. espeak switches language
    /// by itself for characters of other scripts and does not always switch back (after
    /// U+13AF "hello" read as "hˈʌlʌ" for good), while selecting a voice leaks about 1 KB
    /// in espeak-ng 1.51, so the voice is selected again only when the canary changed.
    fn select_voice(&mut self, voice: &str) -> Result<(), PhonemizeError> {
        if let Some((selected, canary)) = self.selected.take() {
            if selected == voice && self.phonemes_of(CANARY) == canary {
                self.selected = Some((selected, canary));
                return Ok(());
            }
        }
        let name =
            CString::new(voice).map_err(|_| PhonemizeError::UnknownVoice(voice.to_string()))?;
        // SAFETY: espeak is initialized and the caller holds the lock.
        let status = unsafe { espeak_SetVoiceByName(name.as_ptr()) };
        if status != EE_OK {
            return Err(PhonemizeError::UnknownVoice(voice.to_string()));
        }
        self.phonemes_of(c"");
        self.selected = Some((voice.to_string(), self.phonemes_of(CANARY)));
        Ok(())
    }

    /// The phonemes of a one-clause text, without punctuation recovery.
    fn phonemes_of(&mut self, text: &CStr) -> String {
        let mut cursor: *const c_void = text.as_ptr().cast();
        // SAFETY: espeak is initialized with a voice selected (callers check), the caller
        // holds the lock, and `cursor` points to a NUL-terminated string that outlives the
        // call; the result is copied at once.
        let phonemes =
            unsafe { espeak_TextToPhonemes(&mut cursor, ESPEAK_CHARS_UTF8, PHONEME_MODE_IPA) };
        if phonemes.is_null() {
            return String::new();
        }
        // SAFETY: a NUL-terminated string in espeak's buffer, valid until the next call.
        unsafe { CStr::from_ptr(phonemes) }
            .to_string_lossy()
            .into_owned()
    }

    /// Makes espeak drop a character it read ahead at the end of the previous text, which
    /// it would otherwise read as the first character of the next one (after "I.." the
    /// next text started with "dot"). Before any voice is selected there is nothing to drop,
    /// and espeak must not be called.
    fn drop_read_ahead(&mut self) {
        if self.selected.is_some() {
            self.phonemes_of(c"");
        }
    }

    /// Runs espeak over the whole text, one clause per call.
    ///
    /// Each call advances the text pointer past the clause and past one more
    /// character that espeak read ahead and keeps internally for the next call, so
    /// the clause's own input ends one character before the returned pointer.
    fn clauses(&mut self, text: &str) -> Vec<Clause> {
        let input = CString::new(without_control_characters(text)).unwrap_or_default();
        let bytes = input.as_bytes();
        let base = input.as_ptr() as usize;
        let mut cursor: *const c_void = input.as_ptr().cast();
        let mut clause_start = 0usize;
        let mut clauses = Vec::new();
        // Each call consumes at least one character or ends the text; the bound
        // only guards against a library that stops advancing.
        for _ in 0..=bytes.len() + 1 {
            // SAFETY: `cursor` points into `input` (NUL-terminated, alive for the
            // whole loop) or was set to null by espeak, which ends the loop below.
            let phonemes_ptr =
                unsafe { espeak_TextToPhonemes(&mut cursor, ESPEAK_CHARS_UTF8, PHONEME_MODE_IPA) };
            let phonemes = if phonemes_ptr.is_null() {
                String::new()
            } else {
                // SAFETY: espeak returns a NUL-terminated string in its own buffer,
                // valid until the next call; it is copied at once.
                unsafe { CStr::from_ptr(phonemes_ptr) }
                    .to_string_lossy()
                    .into_owned()
            };
            let clause_end = if cursor.is_null() {
                bytes.len()
            } else {
                let consumed = (cursor as usize).saturating_sub(base).min(bytes.len());
                start_of_last_char(text, consumed).max(clause_start)
            };
            let clause_text = text.get(clause_start..clause_end).unwrap_or("");
            clauses.push(Clause {
                phonemes,
                punctuation: clause_punctuation(clause_text),
            });
            clause_start = clause_end;
            if cursor.is_null() || phonemes_ptr.is_null() {
                break;
            }
        }
        clauses
    }
}

/// `text` with every control character but tab and line breaks replaced by as many spaces as
/// it has UTF-8 bytes, so that byte offsets into the result are offsets into `text`. espeak
/// reads NUL as the end of the text and U+0001 as the start of an embedded command, which
/// sends it past the end of its buffers when no valid command follows.
fn without_control_characters(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && !matches!(c, '\t' | '\n' | '\r') {
            out.extend(std::iter::repeat_n(' ', c.len_utf8()));
        } else {
            out.push(c);
        }
    }
    out
}

/// Byte offset where the character ending at `end` starts (espeak's read-ahead).
fn start_of_last_char(text: &str, end: usize) -> usize {
    text.get(..end)
        .and_then(|head| head.char_indices().next_back())
        .map_or(0, |(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn punctuation_is_the_trailing_run_through_spaces_and_closers() {
        assert_eq!(clause_punctuation("Hello world. "), ".");
        assert_eq!(clause_punctuation("He said \"hi.\" "), ".");
        assert_eq!(clause_punctuation("Wait (really)? "), "?");
        assert_eq!(clause_punctuation("One?! "), "?!");
        assert_eq!(clause_punctuation("three… "), "…");
        assert_eq!(clause_punctuation("Hello\n\n"), "");
        assert_eq!(clause_punctuation(""), "");
    }

    #[test]
    fn language_flags_are_removed_and_other_parentheses_kept() {
        assert_eq!(strip_language_flags("(fr)ʃɑːtˈo(en) hˈaʊs"), "ʃɑːtˈo hˈaʊs");
        assert_eq!(strip_language_flags("(en-us)a"), "a");
        assert_eq!(strip_language_flags("a(b c)d("), "a(b c)d(");
    }

    #[test]
    fn clauses_join_with_their_punctuation() {
        let clauses = [
            Clause {
                phonemes: "həlˈoʊ".into(),
                punctuation: ",".into(),
            },
            Clause {
                phonemes: "wˈɜːld".into(),
                punctuation: "".into(),
            },
            Clause {
                phonemes: "".into(),
                punctuation: "".into(),
            },
        ];
        assert_eq!(join_clauses(&clauses), "həlˈoʊ, wˈɜːld");
    }

    #[test]
    fn matches_coqui_espeak_fixture() {
        let phonemes = phonemize("Hello world. This is a test!", "en-us").unwrap();
        assert_eq!(phonemes, "həlˈoʊ wˈɜːld. ðɪs ɪz ɐ tˈɛst!");
    }

    #[test]
    fn keeps_every_clause_punctuation() {
        let phonemes = phonemize("Hello, world; how are you? Fine: thanks! Yes.", "en-us").unwrap();
        assert_eq!(
            phonemes,
            "həlˈoʊ, wˈɜːld; hˈaʊ ɑːɹ juː? fˈaɪn: θˈæŋks! jˈɛs."
        );
    }

    #[test]
    fn read_ahead_character_is_not_lost_across_multibyte_text() {
        assert_eq!(
            phonemize("Café, naïve élan! Ünder", "en-us").unwrap(),
            "kæfˈeɪ, naɪˈiːv eɪlˈɑːn! ˈuːndɚ"
        );
        assert_eq!(
            phonemize("He said \"hi.\" Then left.", "en-us").unwrap(),
            "hiː sˈɛd hˈaɪ. ðˈɛn lˈɛft."
        );
    }

    #[test]
    fn empty_text_gives_no_phonemes() {
        assert_eq!(phonemize("", "en-us").unwrap(), "");
        assert_eq!(phonemize("   ", "en-us").unwrap(), "");
    }

    #[test]
    fn unknown_voice_is_an_error() {
        assert!(matches!(
            phonemize("hi", "no-such-voice"),
            Err(PhonemizeError::UnknownVoice(_))
        ));
        assert_eq!(phonemize("hi", "en-us").unwrap(), "hˈaɪ");
    }

    #[test]
    fn control_characters_are_read_as_spaces() {
        // Found by fuzzing: espeak-ng takes U+0001 for the start of an embedded command and
        // read past its buffers on "\u{1}B" (a crash, a hang, or phonemes made of memory).
        for (text, spaced) in [
            ("\u{1}B", " B"),
            ("a\u{1}50S b", "a 50S b"),
            ("x\u{1b}[1m y\u{85}z\u{7f}", "x [1m y  z "),
        ] {
            assert_eq!(
                phonemize(text, "en-us").unwrap(),
                phonemize(spaced, "en-us").unwrap(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn nothing_carries_over_from_one_text_to_the_next() {
        // Found by fuzzing: espeak kept the character it had read ahead at the end of "I.."
        // and spoke it ("dot") at the start of the next text, and a character it read with
        // another language's rules (Cherokee U+13AF) left that language on for the next text.
        let clean = phonemize("Hello world.", "en-us").unwrap();
        for previous in ["I..", "3..", "\u{13AF} This"] {
            phonemize(previous, "en-us").unwrap();
            assert_eq!(
                phonemize("Hello world.", "en-us").unwrap(),
                clean,
                "after {previous:?}"
            );
        }
    }

    #[test]
    fn concurrent_calls_do_not_interfere() {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    (0..20)
                        .map(|_| phonemize("Hello world. This is a test!", "en-us").unwrap())
                        .all(|p| p == "həlˈoʊ wˈɜːld. ðɪs ɪz ɐ tˈɛst!")
                })
            })
            .collect();
        assert!(handles.into_iter().all(|h| h.join().unwrap()));
    }
}
