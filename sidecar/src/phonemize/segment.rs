//! Where a text is cut into pieces that espeak-ng phonemizes one after the other, so that no
//! text reaches two stack overflows of libespeak-ng 1.51 (both still in 1.52):
//!
//! - Initials: espeak joins single letters separated by periods (`a.b.c`, `U.S.A.`, also
//!   `a . b`, `a..b`, `a. b` and `a.;b`) into one word to spell, copying the letters' UTF-8
//!   bytes into an 80-byte stack buffer without a bound (`CheckDottedAbbrev`): 81 ASCII
//!   letters, 41 two-byte ones or 21 four-byte ones overflow it (`"a."` × 85 ends in `stack smashing detected`).
//! - Words per clause: espeak keeps at most 299 words of a clause, yet a spelled run near that
//!   limit marks as many later words deleted as it has letters, past the end of its 300-entry
//!   array (a few hundred one-character words such as `a.a.a,a.a.a,…` in one clause).
//!
//! - `'s` suffixes: espeak adds the phonemes of each `'s` ending a word to the word's phoneme
//!   buffer without a bound, so one word of about 70 of them (`"'s"` × 70, also `’s`, `'S`)
//!   ends in `buffer overflow detected`.
//!
//! So a word is cut before every [`MAX_SUFFIXES`]th `'s`, a run of more than [`MAX_INITIALS`] initials is cut between two of them into runs of
//! nearly equal length (at least 8 each, so no lone letter is read as a word), and a clause is
//! cut before it reaches [`MAX_WORDS`] of espeak's words. Each piece is phonemized alone and the
//! pieces' phonemes are joined with a space: the letters are spelled as before, in groups that
//! each end with their period (a short pause). Ordinary text has neither and stays one piece.

/// Initials espeak may join into one word: at most 4 UTF-8 bytes each, 64 of its 80 bytes, with
/// room for the `'s` it also copies after the last one.
const MAX_INITIALS: usize = 16;

/// `'s` suffixes one word may carry, well under the ~65 after which espeak overflows.
const MAX_SUFFIXES: usize = 16;

/// Bound on espeak's words in one clause, well under the 299 it keeps; `WordCount` counts more
/// words than espeak makes, never fewer.
const MAX_WORDS: usize = 200;

/// `text` cut into consecutive pieces (their concatenation is `text`), each safe for espeak.
pub(super) fn pieces(text: &str) -> Vec<&str> {
    let mut cuts = initials_cuts(text);
    cuts.extend(suffix_cuts(text));
    cuts.sort_unstable();
    let cuts = clause_cuts(text, &cuts);
    let mut pieces = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for cut in cuts {
        if cut > start && cut < text.len() {
            pieces.push(&text[start..cut]);
            start = cut;
        }
    }
    pieces.push(&text[start..]);
    pieces
}

/// A character espeak may take for a letter (`IsAlpha`): ASCII letters, and anything outside
/// ASCII but whitespace, since espeak counts many marks and signs of other scripts as letters.
fn letter_like(c: char) -> bool {
    c.is_ascii_alphabetic() || (!c.is_ascii() && !c.is_whitespace() && !unread(c))
}

/// Byte offsets, each just after the periods of an initial, where over-long runs are cut.
fn initials_cuts(text: &str) -> Vec<usize> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut cuts = Vec::new();
    // For each initial of the current run, the offset just after the periods that follow it.
    let mut run: Vec<usize> = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if !is_initial(&chars, i) {
            cut_run(&run, &mut cuts);
            run.clear();
            i += 1;
            continue;
        }
        let (next, dots_end) = after_separator(&chars, i + 1);
        run.push(dots_end);
        if dots_end > 0 && next < chars.len() && is_initial(&chars, next) {
            i = next;
        } else {
            cut_run(&run, &mut cuts);
            run.clear();
            i += 1;
        }
    }
    cut_run(&run, &mut cuts);
    cuts
}

/// Characters espeak skips as if they were not there: control characters and the soft hyphen
/// (`ʚ\0.Y.Z.` is joined like `ʚ.Y.Z.`).
fn unread(c: char) -> bool {
    c.is_control() || c == '\u{ad}'
}

/// What may stand between an initial and its period without ending the run: what espeak does
/// not read, and marks and symbols outside ASCII (`ŕ\u{fffd}.` is joined like `ŕ.`). Taking too
/// many only cuts a long run more often, which is harmless; too few lets one overflow.
fn transparent(c: char) -> bool {
    unread(c) || (!c.is_ascii() && !c.is_alphanumeric())
}

/// Whether `chars[i]` is a letter standing alone: no letter or digit right before or after it.
fn is_initial(chars: &[(usize, char)], i: usize) -> bool {
    // Only what surely makes a word with it: a mark espeak may not read must not hide a run.
    let joined = |c: char| c.is_alphanumeric();
    letter_like(chars[i].1)
        && !(i > 0 && joined(chars[i - 1].1))
        && !chars.get(i + 1).is_some_and(|&(_, next)| joined(next))
}

/// Skips whitespace (and what espeak does not read), periods, then commas, semicolons, colons
/// and whitespace from `chars[i]`: the index of the character after them, and the byte offset
/// just after the last period (0 when there is none).
fn after_separator(chars: &[(usize, char)], mut i: usize) -> (usize, usize) {
    let skip_whitespace = |mut i: usize| {
        while chars.get(i).is_some_and(|&(_, c)| c.is_whitespace() || transparent(c)) {
            i += 1;
        }
        i
    };
    i = skip_whitespace(i);
    let mut dots_end = 0;
    while let Some(&(at, '.')) = chars.get(i) {
        dots_end = at + 1;
        i += 1;
    }
    if dots_end > 0 {
        // espeak keeps joining initials over a comma, semicolon or colon right after the
        // period (`X.Y.Z.;a.Y.Z.;a…` × 29 overflowed its buffer as one run).
        while chars.get(i).is_some_and(|&(_, c)| matches!(c, ',' | ';' | ':')) {
            i += 1;
        }
        i = skip_whitespace(i);
    }
    (i, dots_end)
}

/// Cuts a run of initials longer than [`MAX_INITIALS`] into the fewest runs of nearly equal
/// length that fit. Every initial but the run's last is followed by periods.
fn cut_run(run: &[usize], cuts: &mut Vec<usize>) {
    if run.len() <= MAX_INITIALS {
        return;
    }
    let groups = run.len().div_ceil(MAX_INITIALS);
    let (size, longer) = (run.len() / groups, run.len() % groups);
    let mut end = 0;
    for group in 0..groups - 1 {
        end += size + usize::from(group < longer);
        cuts.push(run[end - 1]);
    }
}

/// Counts the words espeak makes of a text, or more: every punctuation mark or symbol is one,
/// and a word also starts where letters meet digits, another script, or a capital after a
/// small letter or after two capitals (espeak splits `aB`, `ABc`, `a1`, `aж`).
#[derive(Default)]
struct WordCount {
    words: usize,
    previous: Option<(Class, u32)>,
    capitals: usize,
}

#[derive(Clone, Copy, PartialEq)]
enum Class {
    Letter,
    Digit,
}

impl WordCount {
    /// Counts `c`; whether it starts a word.
    fn add(&mut self, c: char) -> bool {
        let starts = if c.is_whitespace() {
            self.previous = None;
            false
        } else if combining(c) && self.previous.is_some() {
            false
        } else if c.is_alphabetic() || c.is_numeric() || combining(c) {
            let class = if c.is_numeric() {
                Class::Digit
            } else {
                Class::Letter
            };
            let current = (class, script(c));
            let starts = match self.previous {
                None => true,
                Some(previous) if previous != current => true,
                Some(_) => {
                    (c.is_uppercase() && self.capitals == 0)
                        || (c.is_lowercase() && self.capitals >= 2)
                }
            };
            self.previous = Some(current);
            self.capitals = if c.is_uppercase() {
                self.capitals + 1
            } else {
                0
            };
            starts
        } else {
            self.previous = None;
            true
        };
        self.words += usize::from(starts);
        starts
    }
}

/// Combining accents, which belong to the letter before them (alone, espeak reads one as a word).
fn combining(c: char) -> bool {
    matches!(c as u32, 0x300..=0x36F | 0x1AB0..=0x1AFF | 0x1DC0..=0x1DFF | 0x20D0..=0x20FF | 0xFE20..=0xFE2F)
}

/// A coarse script of a letter: one for all of Latin (so that accented words are one word),
/// else its 128-character block.
fn script(c: char) -> u32 {
    match c as u32 {
        0..=0x24F | 0x1E00..=0x1EFF => 0,
        code => code >> 7,
    }
}

/// Where a word with more than [`MAX_SUFFIXES`] `'s` suffixes is cut: before every
/// `MAX_SUFFIXES`th after the first. Any mark other than a letter, digit or space before an `s`
/// counts as an apostrophe: cutting too often is harmless, missing one is not.
fn suffix_cuts(text: &str) -> Vec<usize> {
    let mut cuts = Vec::new();
    let mut suffixes = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        if c.is_whitespace() {
            suffixes = 0;
        } else if !c.is_alphanumeric() && chars.peek().is_some_and(|&(_, next)| next == 's' || next == 'S') {
            if suffixes == MAX_SUFFIXES {
                cuts.push(at);
                suffixes = 0;
            }
            suffixes += 1;
        }
    }
    cuts
}

/// `initials` merged with the cuts that keep every clause under [`MAX_WORDS`] words, sorted.
///
/// The count restarts at a cut, and after `,` `;` `:` `!` `?` followed by whitespace once the
/// clause has a letter or digit, where espeak always ends a clause. A clause that grows too long
/// is cut after its last sentence end (`.` and whitespace) when it has one, else before the word
/// that reaches the bound.
fn clause_cuts(text: &str, initials: &[usize]) -> Vec<usize> {
    let mut cuts = Vec::new();
    let mut initials = initials.iter().copied().peekable();
    let mut count = WordCount::default();
    let mut alphanumeric = false;
    let mut sentence_end = None;
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        while initials.next_if(|&cut| cut <= at).is_some() {
            cuts.push(at);
            (count, alphanumeric, sentence_end) = (WordCount::default(), false, None);
        }
        if count.add(c) && count.words >= MAX_WORDS {
            let cut = sentence_end.take().unwrap_or(at);
            cuts.push(cut);
            count = WordCount::default();
            text[cut..at]
                .chars()
                .chain([c])
                .for_each(|c| _ = count.add(c));
            alphanumeric = text[cut..at].chars().any(char::is_alphanumeric);
        }
        alphanumeric |= c.is_alphanumeric();
        let before_space = chars.peek().is_some_and(|(_, next)| next.is_whitespace());
        if before_space && alphanumeric && matches!(c, ',' | ';' | ':' | '!' | '?') {
            (count, alphanumeric, sentence_end) = (WordCount::default(), false, None);
        } else if before_space && c == '.' {
            sentence_end = Some(at + 1);
        }
    }
    cuts.extend(initials);
    cuts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn initials(n: usize) -> String {
        (0..n)
            .map(|i| format!("{}.", char::from(b'A' + (i % 26) as u8)))
            .collect()
    }

    /// The initials in each piece, for pieces that are runs of initials.
    fn run_lengths(pieces: &[&str]) -> Vec<usize> {
        pieces
            .iter()
            .map(|piece| piece.chars().filter(char::is_ascii_alphabetic).count())
            .collect()
    }

    #[test]
    fn ordinary_text_is_one_piece() {
        for text in [
            "",
            "Hello world. This is a test!",
            "e.g. the U.S.A. and J. R. R. Tolkien, i.e. a.m. or p.m.",
            "Visit https://example.com/a.b.c/d.e.f?x=1.2.3 at 3.14159 or 192.168.1.1.",
            "A.B.C.D.E.F.G.H.I.J.K.L.M.N.O.P.",
            "Café, naïve élan! Ünder Tiếng Việt, Привет мир.",
        ] {
            assert_eq!(pieces(text), [text], "{text:?}");
        }
    }

    /// Found by the `sidecar_phonemize` fuzz target: espeak-ng aborted with `stack smashing
    /// detected` on the first unit × 25, a run it joins over the `;`, and on `.ŕ\u{fffd}` × 127,
    /// a run it joins over a symbol between a letter and its period.
    #[test]
    fn initials_run_on_over_a_comma_semicolon_or_colon() {
        for (unit, letters) in [
            (".Y.Z.;\u{29a}\0", 3),
            (".Y.Z.;\u{29a}", 3),
            (".Y.Z.,a\u{ad}", 3),
            (".Y.Z.: a", 3),
            (".\u{155}\u{fffd}", 1),
        ] {
            let text = unit.repeat(40);
            let cut = pieces(&text);
            assert_eq!(cut.concat(), text);
            assert!(cut.len() >= 40 * letters / MAX_INITIALS, "{unit:?}: {} pieces", cut.len());
        }
    }

    /// Found by the `sidecar_phonemize` fuzz target: `"'s"` × 92 ended in `buffer overflow
    /// detected` (espeak adds each suffix's phonemes to one word's buffer).
    #[test]
    fn a_word_of_many_possessive_suffixes_is_cut() {
        for unit in ["'s", "\u{2019}s", "'S", "\u{2018}s"] {
            let text = unit.repeat(92);
            let cut = pieces(&text);
            assert_eq!(cut.concat(), text);
            assert_eq!(cut.len(), 92usize.div_ceil(MAX_SUFFIXES), "{unit:?}");
        }
        assert_eq!(pieces("the cat's toy and the dog's bone"), ["the cat's toy and the dog's bone"]);
        assert_eq!(pieces(&"it's ".repeat(40)).len(), 1, "one suffix per word is never cut");
    }

    #[test]
    fn long_runs_of_initials_are_cut_into_even_groups() {
        let text = "a.".repeat(85);
        let cut = pieces(&text);
        assert_eq!(cut.concat(), text);
        assert_eq!(run_lengths(&cut), [15, 14, 14, 14, 14, 14]);
        assert!(cut.iter().all(|piece| piece.ends_with('.')));

        assert_eq!(run_lengths(&pieces(&initials(17))), [9, 8]);
        assert_eq!(run_lengths(&pieces(&initials(32))), [16, 16]);
        assert_eq!(run_lengths(&pieces(&initials(33))), [11, 11, 11]);
    }

    #[test]
    fn every_form_espeak_joins_is_a_run() {
        for (text, letters) in [
            ("a . ".repeat(40), 40usize),
            ("a .".repeat(40), 40),
            ("a..".repeat(40), 40),
            ("a. ".repeat(40), 40),
            ("é.".repeat(40), 40),
            ("\u{1D41A}.".repeat(40), 40),
            (format!("hello {}'s", "a.".repeat(40)), 40),
            (format!("({})", "b.".repeat(40)), 40),
        ] {
            let cut = pieces(&text);
            assert_eq!(cut.concat(), text);
            assert_eq!(cut.len(), letters.div_ceil(MAX_INITIALS), "{text:?}");
        }
    }

    #[test]
    fn letters_inside_words_and_digits_are_not_initials() {
        for text in [
            "ab.".repeat(60),
            "1.".repeat(90),
            "a.1.".repeat(45),
            "bc.d".repeat(30),
        ] {
            assert_eq!(pieces(&text), [text.as_str()]);
        }
    }

    #[test]
    fn a_clause_of_too_many_words_is_cut_before_the_bound() {
        let text = "a,".repeat(300);
        let cut = pieces(&text);
        assert_eq!(cut.concat(), text);
        assert!(cut.len() >= 3, "{}", cut.len());
        for piece in &cut {
            let mut count = WordCount::default();
            piece.chars().for_each(|c| _ = count.add(c));
            assert!(count.words < MAX_WORDS, "{} words", count.words);
        }
    }

    #[test]
    fn clause_punctuation_restarts_the_count() {
        let text = "one two three four, ".repeat(100);
        assert_eq!(pieces(&text), [text.as_str()]);
    }

    #[test]
    fn punctuation_before_any_letter_does_not_restart_the_count() {
        let text = ", ".repeat(300) + "a.b.c.";
        assert!(pieces(&text).len() >= 2);
    }

    #[test]
    fn a_long_clause_is_cut_at_its_last_sentence_end() {
        let sentence = "x y z w v u t s r q. ";
        let text = sentence.repeat(30);
        let cut = pieces(&text);
        assert_eq!(cut.concat(), text);
        assert!(cut.len() >= 2);
        assert!(
            cut[..cut.len() - 1]
                .iter()
                .all(|piece| piece.ends_with('.')),
            "{cut:?}"
        );
    }

    #[test]
    fn words_are_counted_where_espeak_splits_them() {
        let words = |text: &str| {
            let mut count = WordCount::default();
            text.chars().for_each(|c| _ = count.add(c));
            count.words
        };
        assert_eq!(words("hello world"), 2);
        assert_eq!(words("Hello naïve café"), 3);
        assert_eq!(words("camelCase ABCdef a1b"), 2 + 2 + 3);
        assert_eq!(words("hello, world."), 4);
        assert_eq!(words("aж"), 2);
        assert_eq!(words("e\u{301}te\u{301}"), 1);
        assert_eq!(words("\u{301} \u{301}"), 2);
    }
}
