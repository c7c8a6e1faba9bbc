//! A request's text as the utterances the model will speak, and what they will cost.
//!
//! Sentences (from `text::split_sentences`) become token ids; a sentence whose predicted audio
//! is longer than the per-inference bound is cut in two, again and again, until every piece
//! fits. Characters are a poor measure of work: espeak-ng reads `🈶` as "Japanese 'not free of
//! charge' button", so one character can make seconds of audio. Token ids come after that
//! expansion, and a VITS model's work and memory grow with the audio it makes, so the
//! predicted audio of the ids is what one inference costs, and their sum is the request's cost.

use crate::voice::{SynthesisError, SynthesisOptions, Voice};

/// One model run: its ids and the audio they are expected to make.
#[derive(Debug, Clone, PartialEq)]
pub struct Utterance {
    pub ids: Vec<i64>,
    pub predicted_seconds: f64,
    /// The piece continues the sentence of the utterance before it (no pause between them).
    pub continues_sentence: bool,
}

/// Everything a request will synthesize.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Script {
    pub utterances: Vec<Utterance>,
}

impl Script {
    /// Predicted audio of the whole request, in seconds: its cost.
    pub fn predicted_seconds(&self) -> f64 {
        self.utterances.iter().map(|u| u.predicted_seconds).sum()
    }
}

/// Phonemizes `sentences` for `voice` and cuts them until each utterance is predicted to make
/// at most `max_utterance_seconds` of audio (a single character that makes more on its own is
/// kept whole: it cannot be cut). Sentences with nothing to speak are left out. Blocking.
pub fn prepare(
    voice: &Voice,
    sentences: &[String],
    options: &SynthesisOptions,
    max_utterance_seconds: f64,
) -> Result<Script, SynthesisError> {
    let length_scale = voice.length_scale(options);
    let mut script = Script::default();
    for sentence in sentences {
        let mut continues_sentence = false;
        let mut pending = vec![sentence.clone()];
        while let Some(piece) = pending.pop() {
            let ids = match voice.text_to_ids(&piece) {
                Ok(ids) => ids,
                Err(SynthesisError::EmptyText) => continue,
                Err(error) => return Err(error),
            };
            let predicted_seconds = voice.predict_seconds(ids.len(), length_scale);
            if predicted_seconds > max_utterance_seconds {
                if let Some((first, second)) = halves(&piece) {
                    pending.push(second);
                    pending.push(first);
                    continue;
                }
            }
            script.utterances.push(Utterance {
                ids,
                predicted_seconds,
                continues_sentence,
            });
            continues_sentence = true;
        }
    }
    Ok(script)
}

/// Cuts a piece of text in two near its middle: at the space closest to it, else between the
/// characters closest to it that do not belong to one symbol (a flag's two regional
/// indicators, an emoji and its modifiers, a letter and its combining marks). `None` when the
/// text is one symbol.
fn halves(text: &str) -> Option<(String, String)> {
    let chars: Vec<char> = text.chars().collect();
    let middle = chars.len() / 2;
    let space = (1..chars.len())
        .filter(|&i| chars[i].is_whitespace())
        .min_by_key(|&i| i.abs_diff(middle));
    let cut = match space {
        Some(at) => at,
        None => (1..chars.len())
            .filter(|&i| is_symbol_boundary(&chars, i))
            .min_by_key(|&i| i.abs_diff(middle))?,
    };
    let first: String = chars[..cut].iter().collect();
    let second: String = chars[cut..].iter().collect();
    let (first, second) = (first.trim().to_string(), second.trim().to_string());
    if first.is_empty() || second.is_empty() {
        return None;
    }
    Some((first, second))
}

/// Whether a cut before `chars[at]` keeps every symbol whole.
fn is_symbol_boundary(chars: &[char], at: usize) -> bool {
    let (before, after) = (chars[at - 1], chars[at]);
    if joins_previous(after) || before == ZERO_WIDTH_JOINER {
        return false;
    }
    if is_regional_indicator(before) && is_regional_indicator(after) {
        // Regional indicators pair up from the start of their run: cut only after a pair.
        let run = chars[..at]
            .iter()
            .rev()
            .take_while(|c| is_regional_indicator(**c))
            .count();
        return run % 2 == 0;
    }
    true
}

const ZERO_WIDTH_JOINER: char = '\u{200D}';

/// Characters that attach to the one before them.
fn joins_previous(c: char) -> bool {
    unicode_normalization::char::is_combining_mark(c)
        || c == ZERO_WIDTH_JOINER
        || matches!(c, '\u{FE00}'..='\u{FE0F}' | '\u{1F3FB}'..='\u{1F3FF}' | '\u{E0020}'..='\u{E007F}')
}

fn is_regional_indicator(c: char) -> bool {
    matches!(c, '\u{1F1E6}'..='\u{1F1FF}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_cut_at_the_space_nearest_its_middle() {
        assert_eq!(
            halves("one two three four"),
            Some(("one two".into(), "three four".into()))
        );
        assert_eq!(
            halves("🈶 🈶 🈶 🈶"),
            Some(("🈶 🈶".into(), "🈶 🈶".into()))
        );
    }

    #[test]
    fn text_without_spaces_is_cut_between_whole_symbols() {
        assert_eq!(halves("abcd"), Some(("ab".into(), "cd".into())));
        // Three flags: the cut falls after the first or second pair, never inside one.
        let flags = "🇺🇸🇫🇷🇩🇪";
        let (first, second) = halves(flags).expect("cut");
        assert_eq!(format!("{first}{second}"), flags);
        assert_eq!(first.chars().count() % 2, 0, "{first}");
        // A letter with its combining accent stays whole.
        let (first, second) = halves("e\u{301}e\u{301}").expect("cut");
        assert_eq!((first.as_str(), second.as_str()), ("e\u{301}", "e\u{301}"));
        // An emoji with a skin-tone modifier, and a ZWJ sequence, stay whole.
        let (first, _) = halves("👍🏽👍🏽").expect("cut");
        assert_eq!(first, "👍🏽");
        assert_eq!(halves("👩\u{200D}💻"), None);
    }

    #[test]
    fn a_single_symbol_cannot_be_cut() {
        assert_eq!(halves("x"), None);
        assert_eq!(halves("🇺🇸"), None);
        assert_eq!(halves(""), None);
    }
}
