//! Splitting long input into sentence-sized chunks for synthesis, and whitespace
//! normalization.
//!
//! A chunk is what one model run turns into audio: small enough to start streaming
//! early and to bound the model's input length, large enough to keep the prosody of
//! a sentence. Chunks keep their punctuation, since the voices pause on it.

/// Upper bound on a chunk's length, in characters.
pub const MAX_CHUNK_CHARS: usize = 400;

/// Sentences shorter than this (in characters) are merged into a neighbour, so a
/// lone "Hi." or "1." does not become its own, oddly intoned, utterance.
pub const MIN_CHUNK_CHARS: usize = 8;

const SENTENCE_END: &[char] = &['.', '!', '?', '…', '。', '！', '？'];
const CLOSERS: &[char] = &['"', '\'', '”', '’', '»', ')', ']', '}'];
const CLAUSE_END: &[char] = &[',', ';', ':', '—', '–'];

/// Abbreviations whose trailing period does not end a sentence (compared lowercase).
const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "vs", "etc", "e.g", "i.e", "fig",
    "approx", "dept", "inc", "ltd", "co", "corp", "gen", "col", "lt", "sgt", "capt", "rev", "hon",
    "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
];

/// Collapses every run of whitespace (including newlines and tabs) into one space and
/// trims both ends.
pub fn normalize_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Splits text into chunks of at most [`MAX_CHUNK_CHARS`] characters, in order.
///
/// Sentences end at `.`, `!`, `?` or `…` (with any closing quotes or brackets) followed
/// by whitespace, and at blank lines; periods after common abbreviations and single
/// initials do not end a sentence. Fragments shorter than [`MIN_CHUNK_CHARS`] are
/// merged with a neighbour; sentences longer than the bound are cut at the last
/// clause punctuation, else the last space, else at the bound itself. Whitespace in
/// each chunk is normalized; empty input gives no chunks.
pub fn split_sentences(text: &str) -> Vec<String> {
    let sentences = raw_sentences(text);
    let bounded = sentences
        .iter()
        .flat_map(|s| hard_split(s, MAX_CHUNK_CHARS));
    merge_short(bounded, MIN_CHUNK_CHARS, MAX_CHUNK_CHARS)
}

fn raw_sentences(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut sentences = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < chars.len() {
        let mut end = None;
        if SENTENCE_END.contains(&chars[i]) {
            let mut j = i + 1;
            while j < chars.len()
                && (SENTENCE_END.contains(&chars[j]) || CLOSERS.contains(&chars[j]))
            {
                j += 1;
            }
            let at_boundary = j == chars.len() || chars[j].is_whitespace();
            if at_boundary && !(chars[i] == '.' && ends_with_abbreviation(&chars[start..i])) {
                end = Some(j);
            }
        } else if chars[i] == '\n' && is_blank_line_break(&chars, i) {
            end = Some(i);
        }
        match end {
            Some(j) => {
                push_normalized(&mut sentences, &chars[start..j]);
                start = j;
                i = j.max(i + 1);
            }
            None => i += 1,
        }
    }
    push_normalized(&mut sentences, &chars[start..]);
    sentences
}

fn push_normalized(out: &mut Vec<String>, chars: &[char]) {
    let sentence = normalize_whitespace(&chars.iter().collect::<String>());
    if !sentence.is_empty() {
        out.push(sentence);
    }
}

/// A newline followed by optional spaces and another newline: a paragraph break.
fn is_blank_line_break(chars: &[char], newline: usize) -> bool {
    chars[newline + 1..]
        .iter()
        .take_while(|c| c.is_whitespace())
        .any(|&c| c == '\n')
}

/// Whether the word just before a period is an abbreviation or a single initial.
fn ends_with_abbreviation(before_period: &[char]) -> bool {
    let word: String = before_period
        .iter()
        .rev()
        .take_while(|c| !c.is_whitespace() && !CLOSERS.contains(c) && **c != '(')
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let lower = word.to_lowercase();
    let single_initial = word.chars().count() == 1 && word.chars().all(char::is_uppercase);
    single_initial || ABBREVIATIONS.contains(&lower.as_str())
}

/// Cuts a sentence into pieces of at most `max_chars` characters.
fn hard_split(sentence: &str, max_chars: usize) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut rest: Vec<char> = sentence.chars().collect();
    while rest.len() > max_chars {
        let window = &rest[..max_chars];
        let cut = last_clause_cut(window)
            .or_else(|| {
                window
                    .iter()
                    .rposition(|c| c.is_whitespace())
                    .filter(|&p| p > 0)
            })
            .unwrap_or(max_chars);
        let piece: String = rest[..cut].iter().collect();
        let piece = piece.trim().to_string();
        if !piece.is_empty() {
            pieces.push(piece);
        }
        rest.drain(..cut);
    }
    let tail: String = rest.iter().collect();
    let tail = tail.trim();
    if !tail.is_empty() {
        pieces.push(tail.to_string());
    }
    pieces
}

/// Position just after the last clause punctuation that is followed by a space.
fn last_clause_cut(window: &[char]) -> Option<usize> {
    (1..window.len())
        .rev()
        .find(|&i| window[i].is_whitespace() && CLAUSE_END.contains(&window[i - 1]))
}

fn merge_short(
    pieces: impl IntoIterator<Item = String>,
    min_chars: usize,
    max_chars: usize,
) -> Vec<String> {
    let mut chunks: Vec<String> = Vec::new();
    let mut pending: Option<String> = None;
    for piece in pieces {
        let piece = match pending.take() {
            Some(short) if fits(&short, &piece, max_chars) => format!("{short} {piece}"),
            Some(short) => {
                chunks.push(short);
                piece
            }
            None => piece,
        };
        if piece.chars().count() < min_chars {
            pending = Some(piece);
        } else {
            chunks.push(piece);
        }
    }
    if let Some(short) = pending {
        match chunks.last_mut() {
            Some(last) if fits(last, &short, max_chars) => {
                last.push(' ');
                last.push_str(&short);
            }
            _ => chunks.push(short),
        }
    }
    chunks
}

fn fits(a: &str, b: &str, max_chars: usize) -> bool {
    a.chars().count() + 1 + b.chars().count() <= max_chars
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_is_collapsed_and_trimmed() {
        assert_eq!(normalize_whitespace("  a \n\t b   c "), "a b c");
        assert_eq!(normalize_whitespace(" \n "), "");
    }

    #[test]
    fn splits_after_sentence_punctuation_followed_by_space() {
        assert_eq!(
            split_sentences(
                "The first sentence. Is this the second?  Yes, it is!\nAnd a fourth one…"
            ),
            [
                "The first sentence.",
                "Is this the second?",
                "Yes, it is!",
                "And a fourth one…"
            ]
        );
    }

    #[test]
    fn punctuation_inside_words_and_numbers_does_not_split() {
        assert_eq!(
            split_sentences("Pi is about 3.14 today. See example.com for more."),
            ["Pi is about 3.14 today.", "See example.com for more."]
        );
    }

    #[test]
    fn closing_quotes_stay_with_their_sentence() {
        assert_eq!(
            split_sentences("She said \"I am here.\" Then she left the room."),
            ["She said \"I am here.\"", "Then she left the room."]
        );
    }

    #[test]
    fn abbreviations_and_initials_do_not_end_sentences() {
        assert_eq!(
            split_sentences("Dr. Smith met J. R. Tolkien at St. Mary's. It went well."),
            [
                "Dr. Smith met J. R. Tolkien at St. Mary's.",
                "It went well."
            ]
        );
    }

    #[test]
    fn blank_lines_end_a_sentence() {
        assert_eq!(
            split_sentences("A heading without a period\n\nThe body starts here."),
            ["A heading without a period", "The body starts here."]
        );
    }

    #[test]
    fn tiny_fragments_are_merged() {
        assert_eq!(
            split_sentences("Hi. How are you doing today? Ok."),
            ["Hi. How are you doing today? Ok."]
        );
        assert_eq!(split_sentences("Yes."), ["Yes."]);
    }

    #[test]
    fn empty_input_has_no_chunks() {
        assert!(split_sentences("").is_empty());
        assert!(split_sentences(" \n\t ").is_empty());
    }

    #[test]
    fn long_sentences_are_cut_at_a_clause_then_at_a_space() {
        let clause = "word ".repeat(50);
        let long = format!("{}, {}", clause.trim(), clause.repeat(2).trim());
        let chunks = split_sentences(&long);
        assert!(
            chunks.iter().all(|c| c.chars().count() <= MAX_CHUNK_CHARS),
            "{chunks:?}"
        );
        assert!(chunks[0].ends_with(','), "{chunks:?}");
        assert_eq!(chunks.join(" "), normalize_whitespace(&long));
    }

    #[test]
    fn unbroken_text_is_cut_at_the_bound() {
        let long = "x".repeat(MAX_CHUNK_CHARS * 2 + 7);
        let chunks = split_sentences(&long);
        assert_eq!(
            chunks.iter().map(|c| c.chars().count()).collect::<Vec<_>>(),
            [400, 400, 7]
        );
    }

    #[test]
    fn every_chunk_is_bounded_for_any_mix() {
        let text = "Short. ".repeat(100) + &"a, ".repeat(300) + "End.";
        let chunks = split_sentences(&text);
        assert!(chunks
            .iter()
            .all(|c| !c.is_empty() && c.chars().count() <= MAX_CHUNK_CHARS));
        assert_eq!(chunks.join(" "), normalize_whitespace(&text));
    }
}
