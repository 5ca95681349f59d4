//! Byte-level BPE merging as llama.cpp runs it (`llm_tokenizer_bpe_session`): within each
//! pre-tokenized word (already in GPT-2's byte alphabet), repeatedly merge the adjacent pair
//! with the lowest merge rank (ties: leftmost), then look every piece up in the vocabulary.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::LookupMap;

/// Merge ranks. Pairs of vocabulary tokens are keyed by ids; merges naming a side that is
/// not a token (legal, if unusual) are kept by text.
pub(crate) struct BpeRanks {
    by_id: LookupMap<(u32, u32), u32>,
    by_text: LookupMap<String, u32>,
}

impl BpeRanks {
    /// Ranks from `"left right"` merge lines; the first occurrence of a pair wins.
    pub fn new(merges: &[String], token_to_id: &LookupMap<String, u32>) -> BpeRanks {
        let mut by_id = LookupMap::with_capacity_and_hasher(merges.len(), Default::default());
        let mut by_text = LookupMap::default();
        for (rank, line) in merges.iter().enumerate() {
            let rank = rank as u32;
            // llama.cpp splits at the first space from the second byte on.
            let Some(pos) = line.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1) else {
                continue;
            };
            let (left, right) = (&line[..pos], &line[pos + 1..]);
            // Pieces never contain a space (it is 'Ġ' in the byte alphabet), so such a merge
            // can never apply.
            if left.contains(' ') || right.contains(' ') {
                continue;
            }
            match (token_to_id.get(left), token_to_id.get(right)) {
                (Some(&a), Some(&b)) => {
                    by_id.entry((a, b)).or_insert(rank);
                }
                _ => {
                    by_text.entry(line.clone()).or_insert(rank);
                }
            }
        }
        BpeRanks { by_id, by_text }
    }

    fn rank(&self, left: (&str, Option<u32>), right: (&str, Option<u32>)) -> Option<u32> {
        match (left.1, right.1) {
            (Some(a), Some(b)) => self.by_id.get(&(a, b)).copied(),
            _ if self.by_text.is_empty() => None,
            _ => self
                .by_text
                .get(&format!("{} {}", left.0, right.0))
                .copied(),
        }
    }
}

/// A piece of the word: bytes `start..start + len` and its token id if it is one.
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
    id: Option<u32>,
}

/// A candidate merge; the lengths it was queued with tell whether it is still current.
struct Bigram {
    left: usize,
    right: usize,
    rank: u32,
    left_len: usize,
    right_len: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Bigram {}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bigram {
    /// Max-heap order: lowest rank first, then the leftmost pair.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .rank
            .cmp(&self.rank)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// What BPE needs from the vocabulary.
pub(crate) struct BpeVocab<'a> {
    pub token_to_id: &'a LookupMap<String, u32>,
    pub ranks: &'a BpeRanks,
    /// Emit a word that is itself a token without merging (Llama 3's `ignore_merges`).
    pub ignore_merges: bool,
}

/// Merges one byte-level word and appends its ids to `out`.
pub(crate) fn tokenize_word(v: &BpeVocab, word: &str, out: &mut Vec<u32>) {
    if v.ignore_merges {
        if let Some(&id) = v.token_to_id.get(word) {
            out.push(id);
            return;
        }
    }
    let mut symbols: Vec<Symbol> = Vec::with_capacity(word.len());
    for (i, (start, c)) in word.char_indices().enumerate() {
        let len = c.len_utf8();
        let next = (start + len < word.len()).then_some(i + 1);
        let id = v.token_to_id.get(&word[start..start + len]).copied();
        symbols.push(Symbol {
            start,
            len,
            prev: i.checked_sub(1),
            next,
            id,
        });
    }
    let mut queue = BinaryHeap::new();
    for i in 1..symbols.len() {
        try_add(v, word, &symbols, Some(i - 1), Some(i), &mut queue);
    }
    while let Some(b) = queue.pop() {
        let (l, r) = (&symbols[b.left], &symbols[b.right]);
        // llama.cpp compares the texts; with fixed starts, equal lengths mean equal texts.
        if l.len == 0 || r.len == 0 || l.len != b.left_len || r.len != b.right_len {
            continue;
        }
        let right_next = r.next;
        let start = l.start;
        let len = l.len + r.len;
        symbols[b.left].len = len;
        symbols[b.left].id = v.token_to_id.get(&word[start..start + len]).copied();
        symbols[b.right].len = 0;
        symbols[b.left].next = right_next;
        if let Some(n) = right_next {
            symbols[n].prev = Some(b.left);
        }
        let prev = symbols[b.left].prev;
        try_add(v, word, &symbols, prev, Some(b.left), &mut queue);
        try_add(v, word, &symbols, Some(b.left), right_next, &mut queue);
    }
    for s in symbols.iter().filter(|s| s.len > 0) {
        match s.id {
            Some(id) => out.push(id),
            // As llama.cpp: look each byte up as a one-byte token; only ASCII bytes can be one.
            None => out.extend(
                word[s.start..s.start + s.len]
                    .bytes()
                    .filter(u8::is_ascii)
                    .filter_map(|b| {
                        v.token_to_id
                            .get(char::from(b).encode_utf8(&mut [0; 4]) as &str)
                            .copied()
                    }),
            ),
        }
    }
}

fn try_add(
    v: &BpeVocab,
    word: &str,
    symbols: &[Symbol],
    left: Option<usize>,
    right: Option<usize>,
    queue: &mut BinaryHeap<Bigram>,
) {
    let (Some(left), Some(right)) = (left, right) else {
        return;
    };
    let (l, r) = (&symbols[left], &symbols[right]);
    let lt = &word[l.start..l.start + l.len];
    let rt = &word[r.start..r.start + r.len];
    if let Some(rank) = v.ranks.rank((lt, l.id), (rt, r.id)) {
        queue.push(Bigram {
            left,
            right,
            rank,
            left_len: l.len,
            right_len: r.len,
        });
    }
}
