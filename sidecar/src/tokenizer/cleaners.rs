//! Coqui's text cleaners, selected by `text_cleaner` in a Coqui `config.json`.
//!
//! Each cleaner applies the same steps, in the same order, as the Coqui function of
//! that name, with the language left unset (as Coqui's tokenizer calls them for a
//! single-language model). Number, time and abbreviation expansion are not
//! reproduced: for phoneme voices espeak-ng reads numbers and abbreviations itself.

use unicode_normalization::UnicodeNormalization;

use super::TokenizerError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cleaner {
    /// `text_cleaner: null`: the text is used as given.
    None,
    NoCleaners,
    Basic,
    BasicTurkish,
    English,
    Phoneme,
    Multilingual,
    MultilingualPhoneme,
}

impl Cleaner {
    pub fn from_name(name: Option<&str>) -> Result<Cleaner, TokenizerError> {
        Ok(match name {
            None => Cleaner::None,
            Some("no_cleaners") => Cleaner::NoCleaners,
            Some("basic_cleaners" | "transliteration_cleaners" | "basic_german_cleaners") => {
                Cleaner::Basic
            }
            Some("basic_turkish_cleaners") => Cleaner::BasicTurkish,
            Some("english_cleaners") => Cleaner::English,
            Some("phoneme_cleaners") => Cleaner::Phoneme,
            Some("multilingual_cleaners") => Cleaner::Multilingual,
            Some("multilingual_phoneme_cleaners") => Cleaner::MultilingualPhoneme,
            Some(other) => return Err(TokenizerError::UnsupportedCleaner(other.to_string())),
        })
    }

    pub fn clean(self, text: &str) -> String {
        match self {
            Cleaner::None => text.to_string(),
            Cleaner::NoCleaners => text.replace('\n', ""),
            Cleaner::Basic => collapse_whitespace(&nfc(text).to_lowercase()),
            Cleaner::BasicTurkish => {
                collapse_whitespace(&nfc(text).replace('I', "ı").to_lowercase())
            }
            Cleaner::English | Cleaner::Multilingual => collapse_whitespace(&remove_aux_symbols(
                &replace_symbols(&nfc(text).to_lowercase()),
            )),
            Cleaner::Phoneme | Cleaner::MultilingualPhoneme => {
                collapse_whitespace(&remove_aux_symbols(&replace_symbols(&nfc(text))))
            }
        }
    }
}

fn nfc(text: &str) -> String {
    text.nfc().collect()
}

fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Coqui's `replace_symbols` for an unset language.
fn replace_symbols(text: &str) -> String {
    text.replace(';', ",").replace('-', " ").replace(':', ",")
}

/// Coqui's `remove_aux_symbols`: drops `< > ( ) [ ] "`.
fn remove_aux_symbols(text: &str) -> String {
    text.chars()
        .filter(|c| !matches!(c, '<' | '>' | '(' | ')' | '[' | ']' | '"'))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phoneme_cleaners_keep_case_and_simplify_symbols() {
        let cleaned = Cleaner::Phoneme.clean("Hello  (big) world; well-known: \"yes\"\n");
        assert_eq!(cleaned, "Hello big world, well known, yes");
    }

    #[test]
    fn basic_cleaners_lowercase_and_collapse() {
        assert_eq!(Cleaner::Basic.clean("  Hello\tWORLD. "), "hello world.");
    }

    #[test]
    fn english_cleaners_lowercase_and_simplify_symbols() {
        assert_eq!(
            Cleaner::English.clean("Well-Known [sic]; OK"),
            "well known sic, ok"
        );
    }

    #[test]
    fn no_cleaner_leaves_text_alone() {
        assert_eq!(
            Cleaner::None.clean("Hello  world. This is a test!"),
            "Hello  world. This is a test!"
        );
        assert_eq!(Cleaner::NoCleaners.clean("a\nb"), "ab");
    }

    #[test]
    fn names_map_to_cleaners() {
        assert_eq!(
            Cleaner::from_name(Some("phoneme_cleaners")).unwrap(),
            Cleaner::Phoneme
        );
        assert_eq!(Cleaner::from_name(None).unwrap(), Cleaner::None);
        assert!(Cleaner::from_name(Some("klingon_cleaners")).is_err());
    }

    #[test]
    fn text_is_composed_to_nfc() {
        assert_eq!(Cleaner::Phoneme.clean("e\u{301}"), "\u{e9}");
    }
}
