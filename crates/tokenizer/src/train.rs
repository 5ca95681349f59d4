//! Learning a SentencePiece-style BPE vocabulary from text, as Llama 2's tokenizer was
//! made (Touvron et al. 2023, 2.1; SentencePiece's `--model_type=bpe --split_digits
//! --byte_fallback`): spaces become `▁` and start each word, a word never merges across a
//! space, every digit stays its own piece, characters outside the coverage are left to
//! the 256 byte tokens. The most frequent adjacent pair is merged until the vocabulary is
//! full; a merged piece's score is minus its rank, so the SPM encoder, which merges the
//! best-scoring pair first, replays the training order.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::vocab::{ModelKind, SpecialIds, TokenType, Vocab};

/// What to learn.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainerOptions {
    /// Tokens in the finished vocabulary, specials and byte tokens included.
    pub vocab_size: usize,
    /// Share of character occurrences the character pieces must cover (SentencePiece's
    /// `character_coverage`; Llama 2 used 0.9995 for its multilingual corpus); the rarest
    /// characters beyond it are spelled with byte tokens.
    pub character_coverage: f64,
    /// Pieces seen fewer times than this are not merged.
    pub min_frequency: u64,
}

impl Default for TrainerOptions {
    fn default() -> Self {
        Self {
            vocab_size: 4096,
            character_coverage: 0.9995,
            min_frequency: 2,
        }
    }
}

/// `<unk>`, `<s>`, `</s>`, then `<0x00>`..`<0xFF>`.
const FIXED: usize = 3 + 256;

/// Learns a vocabulary from `docs`.
pub fn train_spm_bpe(docs: &[String], opts: &TrainerOptions) -> Result<Vocab> {
    if opts.vocab_size < FIXED + 1 {
        return Err(Error::Training(format!(
            "a vocabulary of {} cannot hold the {FIXED} special and byte tokens and any piece",
            opts.vocab_size
        )));
    }
    let words = count_words(docs);
    if words.is_empty() {
        return Err(Error::Training("no text to learn a vocabulary from".into()));
    }
    let chars = kept_chars(&words, opts.character_coverage, opts.vocab_size - FIXED);
    let mut pieces: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
    let mut piece_id: HashMap<String, u32> = pieces
        .iter()
        .enumerate()
        .map(|(i, p)| (p.clone(), i as u32))
        .collect();
    let is_digit: Vec<bool> = chars.iter().map(|c| c.is_ascii_digit()).collect();
    // Each distinct word as symbol ids; a character outside the kept set breaks the word
    // (it will be bytes), so symbols on either side never merge through it.
    let mut seqs: Vec<Vec<u32>> = Vec::new();
    let mut counts: Vec<u64> = Vec::new();
    for (word, &n) in &words {
        for part in split_unknown(word, &piece_id) {
            if part.len() > 1 {
                seqs.push(part);
                counts.push(n);
            }
        }
    }
    let mut merges = Merger::new(&seqs, &counts, &is_digit);
    let mut merged: Vec<String> = Vec::new();
    while FIXED + chars.len() + merged.len() < opts.vocab_size {
        let Some((a, b)) = merges.best(opts.min_frequency) else {
            break;
        };
        let text = format!("{}{}", pieces[a as usize], pieces[b as usize]);
        let id = match piece_id.get(&text) {
            Some(&id) => id,
            None => {
                let id = pieces.len() as u32;
                pieces.push(text.clone());
                piece_id.insert(text.clone(), id);
                merged.push(text);
                id
            }
        };
        merges.apply((a, b), id, &mut seqs, &counts);
    }
    Ok(build_vocab(&chars, &merged))
}

/// Words with their counts: each document's text with spaces as `▁` and a `▁` in front,
/// cut before every `▁` and around every digit.
fn count_words(docs: &[String]) -> HashMap<String, u64> {
    docs.par_iter()
        .fold(HashMap::new, |mut acc: HashMap<String, u64>, doc| {
            for w in pre_split(doc) {
                *acc.entry(w).or_default() += 1;
            }
            acc
        })
        .reduce(HashMap::new, |mut a, b| {
            for (k, v) in b {
                *a.entry(k).or_default() += v;
            }
            a
        })
}

/// The pieces of `text` that merges stay within.
pub fn pre_split(text: &str) -> Vec<String> {
    let normalized = format!("▁{}", text.replace(' ', "▁"));
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in normalized.chars() {
        if (c == '▁' || c.is_ascii_digit()) && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        if c.is_ascii_digit() {
            out.push(c.to_string());
            continue;
        }
        cur.push(c);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The most frequent characters covering `coverage` of all occurrences (at most `max`),
/// in order of frequency (ties by code point), always including `▁` and the digits seen.
fn kept_chars(words: &HashMap<String, u64>, coverage: f64, max: usize) -> Vec<char> {
    let mut freq: HashMap<char, u64> = HashMap::new();
    for (w, &n) in words {
        for c in w.chars() {
            *freq.entry(c).or_default() += n;
        }
    }
    let total: u64 = freq.values().sum();
    let mut by_freq: Vec<(char, u64)> = freq.into_iter().collect();
    by_freq.sort_by_key(|&(c, n)| (Reverse(n), c));
    let mut kept = Vec::new();
    let mut covered = 0u64;
    for (c, n) in by_freq {
        let essential = c == '▁' || c.is_ascii_digit();
        if kept.len() >= max || (!essential && covered as f64 >= coverage * total as f64) {
            continue;
        }
        kept.push(c);
        covered += n;
    }
    kept
}

/// `word` as runs of known-character ids, split where a character is unknown.
fn split_unknown(word: &str, ids: &HashMap<String, u32>) -> Vec<Vec<u32>> {
    let mut parts = vec![Vec::new()];
    for c in word.chars() {
        match ids.get(c.encode_utf8(&mut [0; 4]) as &str) {
            Some(&id) => parts.last_mut().map(|p| p.push(id)).unwrap_or(()),
            None => parts.push(Vec::new()),
        }
    }
    parts
}

/// Pair counts with the words each pair occurs in, and a heap to find the best pair
/// without scanning them all after every merge.
struct Merger<'a> {
    pair_count: HashMap<(u32, u32), i64>,
    pair_words: HashMap<(u32, u32), HashSet<usize>>,
    heap: BinaryHeap<(i64, Reverse<(u32, u32)>)>,
    is_digit: &'a [bool],
}

impl<'a> Merger<'a> {
    fn new(seqs: &[Vec<u32>], counts: &[u64], is_digit: &'a [bool]) -> Self {
        let mut m = Self {
            pair_count: HashMap::new(),
            pair_words: HashMap::new(),
            heap: BinaryHeap::new(),
            is_digit,
        };
        for (i, s) in seqs.iter().enumerate() {
            m.add_word(i, s, counts[i] as i64);
        }
        let entries: Vec<_> = m
            .pair_count
            .iter()
            .map(|(&p, &n)| (n, Reverse(p)))
            .collect();
        m.heap.extend(entries);
        m
    }

    fn mergeable(&self, (a, b): (u32, u32)) -> bool {
        let digit = |x: u32| self.is_digit.get(x as usize).copied().unwrap_or(false);
        !digit(a) && !digit(b)
    }

    fn add_word(&mut self, i: usize, s: &[u32], n: i64) {
        for w in s.windows(2) {
            let p = (w[0], w[1]);
            if !self.mergeable(p) {
                continue;
            }
            *self.pair_count.entry(p).or_default() += n;
            if n > 0 {
                self.pair_words.entry(p).or_default().insert(i);
            }
        }
    }

    /// The most frequent pair (ties: smallest ids, i.e. the earlier pieces).
    fn best(&mut self, min: u64) -> Option<(u32, u32)> {
        while let Some((n, Reverse(p))) = self.heap.pop() {
            let current = self.pair_count.get(&p).copied().unwrap_or(0);
            if current != n {
                if current > 0 {
                    self.heap.push((current, Reverse(p)));
                }
                continue;
            }
            return (n as u64 >= min.max(1)).then_some(p);
        }
        None
    }

    /// Replaces every occurrence of `pair` by `id` in the words that hold it.
    fn apply(&mut self, pair: (u32, u32), id: u32, seqs: &mut [Vec<u32>], counts: &[u64]) {
        let mut words: Vec<usize> = self
            .pair_words
            .remove(&pair)
            .unwrap_or_default()
            .into_iter()
            .collect();
        words.sort_unstable();
        let mut touched = HashSet::new();
        for i in words {
            let n = counts[i] as i64;
            let old = std::mem::take(&mut seqs[i]);
            if !old.windows(2).any(|w| (w[0], w[1]) == pair) {
                seqs[i] = old;
                continue;
            }
            for w in old.windows(2) {
                touched.insert((w[0], w[1]));
            }
            self.add_word(i, &old, -n);
            let mut new = Vec::with_capacity(old.len());
            let mut j = 0;
            while j < old.len() {
                if j + 1 < old.len() && (old[j], old[j + 1]) == pair {
                    new.push(id);
                    j += 2;
                } else {
                    new.push(old[j]);
                    j += 1;
                }
            }
            self.add_word(i, &new, n);
            for w in new.windows(2) {
                touched.insert((w[0], w[1]));
            }
            seqs[i] = new;
        }
        self.pair_count.remove(&pair);
        let mut touched: Vec<_> = touched.into_iter().collect();
        touched.sort_unstable();
        for p in touched {
            if let Some(&n) = self.pair_count.get(&p) {
                if n > 0 {
                    self.heap.push((n, Reverse(p)));
                }
            }
        }
    }
}

/// Specials, bytes, merged pieces (score -rank), then the characters (scored below every
/// merge, as SentencePiece orders them).
fn build_vocab(chars: &[char], merged: &[String]) -> Vocab {
    let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
    let mut types = vec![TokenType::Unknown, TokenType::Control, TokenType::Control];
    tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    types.extend([TokenType::Byte; 256]);
    let mut scores = vec![0.0f32; tokens.len()];
    for (rank, piece) in merged.iter().enumerate() {
        tokens.push(piece.clone());
        types.push(TokenType::Normal);
        scores.push(-(rank as f32));
    }
    for (i, c) in chars.iter().enumerate() {
        tokens.push(c.to_string());
        types.push(TokenType::Normal);
        scores.push(-((merged.len() + i) as f32));
    }
    Vocab {
        model: ModelKind::Spm,
        pre: None,
        tokens,
        scores: Some(scores),
        token_types: Some(types),
        merges: Vec::new(),
        special: SpecialIds {
            unk: Some(0),
            bos: Some(1),
            eos: Some(2),
            ..SpecialIds::default()
        },
        add_bos: Some(true),
        add_eos: Some(false),
        add_space_prefix: Some(true),
        name: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_start_at_spaces_and_digits_stand_alone() {
        assert_eq!(
            pre_split("in 1984 we  met"),
            ["▁in", "▁", "1", "9", "8", "4", "▁we", "▁", "▁met"]
        );
        assert_eq!(pre_split("a2b"), ["▁a", "2", "b"]);
    }
}
