//! Byte-level BPE pre-tokenizers: split text into words before merging, exactly as llama.cpp's
//! `unicode_regex_split` does for the pre-tokenizer types we support. llama.cpp runs a list
//! of regexes, each splitting the pieces the previous one left; the GPT-2 and Llama-3
//! patterns are hand-written there (`unicode_regex_split_custom_gpt2/llama3`) and so are
//! here, with their quirks, and the category patterns match on llama.cpp's code point table.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::unicode::Flags;

/// GPT-2's pattern (llama.cpp's pre types gpt-2, mpt, olmo, ...).
pub const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Llama 3's pattern as written in its `tokenizer.json`.
pub const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// The patterns of llama.cpp's "default" BPE pre-tokenizer, applied in turn.
pub const DEFAULT_PATTERNS: [&str; 4] = [
    r"[\p{P}\$\+<=>\^~\|]+",
    GPT2_PATTERN,
    r"\p{N}+",
    r"[0-9][0-9][0-9]",
];

/// Which sequence of splits a pre-tokenizer type runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Splitter {
    /// llama.cpp's default: punctuation runs, GPT-2, number runs, ASCII digit triples.
    Default,
    /// The GPT-2 pattern alone.
    Gpt2,
    /// The Llama 3 pattern.
    Llama3,
    /// Every `\p{N}` code point on its own, then GPT-2 (StarCoder, SmolLM).
    DigitsGpt2,
}

/// What a `tokenizer.ggml.pre` name means to llama.cpp (`llama_vocab::impl::load`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreConfig {
    /// How words are split.
    pub splitter: Splitter,
    /// Whether detokenizing removes spaces before `?!.,` and some apostrophes.
    pub clean_spaces: bool,
    /// Whether a word that is itself a token skips merging (Llama 3).
    pub ignore_merges: bool,
    /// llama.cpp's default for `add_bos` with this type.
    pub add_bos: bool,
}

/// `(names, splitter, clean_spaces, ignore_merges, add_bos)` for the supported types.
const PRE_TYPES: &[(&[&str], Splitter, bool, bool, bool)] = &[
    (&["default"], Splitter::Default, true, false, false),
    (
        &[
            "llama3",
            "llama-v3",
            "llama-bpe",
            "falcon3",
            "falcon-h1",
            "pixtral",
            "midm-2.0",
            "lfm2",
            "jina-v5-nano",
        ],
        Splitter::Llama3,
        true,
        true,
        true,
    ),
    (&["dbrx", "smaug-bpe"], Splitter::Llama3, true, false, false),
    (
        &[
            "gpt-2",
            "phi-2",
            "jina-es",
            "jina-de",
            "gigachat",
            "jina-v2-es",
            "jina-v2-de",
            "a.x-4.0",
            "mellum",
            "modern-bert",
            "exaone4",
            "mpt",
            "olmo",
            "jais",
        ],
        Splitter::Gpt2,
        true,
        false,
        false,
    ),
    (
        &["trillion", "granite-docling"],
        Splitter::Gpt2,
        false,
        false,
        false,
    ),
    (
        &[
            "starcoder",
            "refact",
            "codeshell",
            "exaone",
            "minerva-7b",
            "mellum2",
        ],
        Splitter::DigitsGpt2,
        true,
        false,
        false,
    ),
    (
        &["smollm", "command-r"],
        Splitter::DigitsGpt2,
        false,
        false,
        false,
    ),
];

/// The settings of a byte-level BPE pre-tokenizer name; `None` (key absent) is "default".
pub fn pre_config(name: Option<&str>) -> Result<PreConfig> {
    let name = name.unwrap_or("default");
    PRE_TYPES
        .iter()
        .find(|(names, ..)| names.contains(&name))
        .map(
            |&(_, splitter, clean_spaces, ignore_merges, add_bos)| PreConfig {
                splitter,
                clean_spaces,
                ignore_merges,
                add_bos,
            },
        )
        .ok_or_else(|| Error::UnsupportedPre(name.to_string(), supported_names()))
}

/// The supported `tokenizer.ggml.pre` names, comma-separated.
pub fn supported_names() -> String {
    PRE_TYPES
        .iter()
        .flat_map(|(names, ..)| names.iter().copied())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Code points of the text with their classes.
struct Text {
    cpts: Vec<char>,
    flags: Vec<Flags>,
}

/// One piece of the text being split: code points `ini..end`. Positions outside it read as
/// "no code point" / empty flags, as llama.cpp's `_get_cpt` / `_get_flags` do.
#[derive(Clone, Copy)]
struct Seg<'a> {
    t: &'a Text,
    ini: usize,
    end: usize,
}

impl Seg<'_> {
    fn cpt(&self, pos: usize) -> Option<char> {
        (self.ini <= pos && pos < self.end).then(|| self.t.cpts[pos])
    }

    fn flags(&self, pos: usize) -> Flags {
        if self.ini <= pos && pos < self.end {
            self.t.flags[pos]
        } else {
            Flags::default()
        }
    }
}

/// One splitting pass: cuts a segment into pieces, appended to the list.
type SplitStep = fn(Seg, &mut Vec<Range<usize>>);

/// Splits `text` into the words BPE merges within.
pub fn split(text: &str, splitter: Splitter) -> Vec<&str> {
    let mut starts: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
    starts.push(text.len());
    let cpts: Vec<char> = text.chars().collect();
    let flags = cpts.iter().map(|&c| Flags::of(c)).collect();
    let t = Text { cpts, flags };
    let steps: &[SplitStep] = match splitter {
        Splitter::Default => &[punct_runs, split_gpt2, number_runs, digit_triples],
        Splitter::Gpt2 => &[split_gpt2],
        Splitter::Llama3 => &[split_llama3],
        Splitter::DigitsGpt2 => &[single_numbers, split_gpt2],
    };
    // One piece, the whole text, which the steps split further.
    #[allow(clippy::single_range_in_vec_init)]
    let mut pieces = vec![0..t.cpts.len()];
    for step in steps {
        let mut next = Vec::with_capacity(pieces.len());
        for r in &pieces {
            step(
                Seg {
                    t: &t,
                    ini: r.start,
                    end: r.end,
                },
                &mut next,
            );
        }
        pieces = next;
    }
    pieces
        .into_iter()
        .filter(|r| !r.is_empty())
        .map(|r| &text[starts[r.start]..starts[r.end]])
        .collect()
}

/// `'s|'t|'re|'ve|'m|'ll|'d` (with `lower` applied to the letters): the length matched at `pos`.
fn contraction(s: Seg, pos: usize, lower: fn(char) -> char) -> Option<usize> {
    if s.cpt(pos) != Some('\'') || pos + 1 >= s.end {
        return None;
    }
    let next = s.cpt(pos + 1).map(lower);
    if matches!(next, Some('s' | 't' | 'm' | 'd')) {
        return Some(2);
    }
    if pos + 2 < s.end {
        let pair = (next, s.cpt(pos + 2).map(lower));
        if matches!(
            pair,
            (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l'))
        ) {
            return Some(3);
        }
    }
    None
}

/// Not whitespace, letter or number, but inside the text: `[^\s\p{L}\p{N}]`.
fn is_other(f: Flags) -> bool {
    !(f.is_whitespace() || f.is_letter() || f.is_number() || f.is_empty())
}

/// Length of the whitespace run at `pos`.
fn whitespace_run(s: Seg, pos: usize) -> usize {
    (pos..s.end)
        .take_while(|&p| s.flags(p).is_whitespace())
        .count()
}

/// GPT-2: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
fn split_gpt2(s: Seg, out: &mut Vec<Range<usize>>) {
    let mut pos = s.ini;
    while pos < s.end {
        let start = pos;
        let c = s.t.cpts[pos];
        if let Some(n) = contraction(s, pos, |c| c) {
            pos += n;
            out.push(start..pos);
            continue;
        }
        let lead = usize::from(c == ' ');
        let f2 = s.flags(pos + lead);
        let class: Option<fn(Flags) -> bool> = if f2.is_letter() {
            Some(Flags::is_letter)
        } else if f2.is_number() {
            Some(Flags::is_number)
        } else if is_other(f2) {
            Some(is_other)
        } else {
            None
        };
        if let Some(class) = class {
            pos += lead;
            while class(s.flags(pos)) {
                pos += 1;
            }
            out.push(start..pos);
            continue;
        }
        let n = whitespace_run(s, pos);
        if n > 1 && pos + n < s.end {
            // \s+(?!\S): leave the last space to prefix the next word.
            pos += n - 1;
        } else if n > 0 {
            pos += n;
        } else {
            pos += 1;
        }
        out.push(start..pos);
    }
}

/// Llama 3: `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
/// ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`.
fn split_llama3(s: Seg, out: &mut Vec<Range<usize>>) {
    let mut pos = s.ini;
    while pos < s.end {
        let start = pos;
        let c = s.t.cpts[pos];
        let f = s.t.flags[pos];
        // The letters of the contractions only lowercase from ASCII in llama.cpp's table.
        if let Some(n) = contraction(s, pos, |c| c.to_ascii_lowercase()) {
            pos += n;
            out.push(start..pos);
            continue;
        }
        if !(c == '\r' || c == '\n' || f.is_number())
            && (f.is_letter() || s.flags(pos + 1).is_letter())
        {
            pos += 1;
            while s.flags(pos).is_letter() {
                pos += 1;
            }
            out.push(start..pos);
            continue;
        }
        if f.is_number() {
            let mut ini = pos;
            while s.flags(pos).is_number() {
                pos += 1;
                if pos - ini >= 3 {
                    out.push(ini..pos);
                    ini = pos;
                }
            }
            out.push(ini..pos);
            continue;
        }
        // llama.cpp tests the class of the code point after a space but the non-emptiness of
        // the space itself, so a final lone space is taken here.
        let lead = usize::from(c == ' ');
        let f2 = s.flags(pos + lead);
        if !(f2.is_whitespace() || f2.is_letter() || f2.is_number() || f.is_empty()) {
            pos += lead;
            while is_other(s.flags(pos)) {
                pos += 1;
            }
            while matches!(s.cpt(pos), Some('\r' | '\n')) {
                pos += 1;
            }
            out.push(start..pos);
            continue;
        }
        let n = whitespace_run(s, pos);
        let last_newline = (pos..pos + n)
            .rev()
            .find(|&p| matches!(s.cpt(p), Some('\r' | '\n')));
        if let Some(p) = last_newline {
            pos = p + 1;
        } else if n > 1 && pos + n < s.end {
            pos += n - 1;
        } else if n > 0 {
            pos += n;
        } else {
            pos += 1;
        }
        out.push(start..pos);
    }
}

/// Splits a piece around the matches that `find(pos)` reports (length of a match starting at
/// `pos`), scanning left to right like `std::regex_iterator`; gaps stay pieces of their own.
fn split_matches(s: Seg, out: &mut Vec<Range<usize>>, find: impl Fn(usize) -> Option<usize>) {
    let mut gap = s.ini;
    let mut pos = s.ini;
    while pos < s.end {
        match find(pos) {
            Some(len) => {
                if pos > gap {
                    out.push(gap..pos);
                }
                out.push(pos..pos + len);
                pos += len;
                gap = pos;
            }
            None => pos += 1,
        }
    }
    if gap < s.end {
        out.push(gap..s.end);
    }
}

/// Length of the run of code points satisfying `pred` at `pos`, if non-empty.
fn run(s: Seg, pos: usize, pred: impl Fn(char, Flags) -> bool) -> Option<usize> {
    let n = (pos..s.end)
        .take_while(|&p| pred(s.t.cpts[p], s.t.flags[p]))
        .count();
    (n > 0).then_some(n)
}

/// `\p{N}`: each number code point alone.
fn single_numbers(s: Seg, out: &mut Vec<Range<usize>>) {
    split_matches(s, out, |p| s.t.flags[p].is_number().then_some(1));
}

/// `\p{N}+`.
fn number_runs(s: Seg, out: &mut Vec<Range<usize>>) {
    split_matches(s, out, |p| run(s, p, |_, f| f.is_number()));
}

/// `[0-9][0-9][0-9]`.
fn digit_triples(s: Seg, out: &mut Vec<Range<usize>>) {
    split_matches(s, out, |p| {
        (p + 3 <= s.end && s.t.cpts[p..p + 3].iter().all(char::is_ascii_digit)).then_some(3)
    });
}

/// `[\p{P}\$\+<=>\^~\|]+`. For ASCII, llama.cpp's `\p{P}` is its fixed list, which with the
/// listed symbols covers all ASCII punctuation and symbols except the backtick.
fn punct_runs(s: Seg, out: &mut Vec<Range<usize>>) {
    let class = |c: char, f: Flags| {
        if c.is_ascii() {
            c.is_ascii_punctuation() && c != '`'
        } else {
            f.is_punctuation() && !f.is_whitespace()
        }
    };
    split_matches(s, out, |p| run(s, p, class));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_keeps_space_before_word() {
        assert_eq!(
            split("Hello  world's", Splitter::Gpt2),
            ["Hello", " ", " world", "'s"]
        );
        assert_eq!(split("a\n\n b", Splitter::Gpt2), ["a", "\n\n", " b"]);
        assert_eq!(split("x   ", Splitter::Gpt2), ["x", "   "]);
    }

    #[test]
    fn llama3_groups_digits_by_three() {
        assert_eq!(split("12345 ab", Splitter::Llama3), ["123", "45", " ab"]);
        assert_eq!(
            split("I'M ok!!\n\nx", Splitter::Llama3),
            ["I", "'M", " ok", "!!\n\n", "x"]
        );
    }

    #[test]
    fn digits_isolated_then_gpt2() {
        assert_eq!(split("a 12", Splitter::DigitsGpt2), ["a", " ", "1", "2"]);
    }

    #[test]
    fn default_splits_punctuation_and_triples() {
        assert_eq!(
            split("ab,cd 12345", Splitter::Default),
            ["ab", ",", "cd", " ", "123", "45"]
        );
    }

    #[test]
    fn unknown_pre_is_an_error_naming_it() {
        let err = pre_config(Some("qwen2"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("\"qwen2\""), "{err}");
    }
}
