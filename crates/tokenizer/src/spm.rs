//! SentencePiece-style BPE as llama.cpp runs it (`llm_tokenizer_spm_session`): start from
//! UTF-8 characters, repeatedly merge the adjacent pair whose concatenation is the
//! best-scoring vocabulary token (ties: leftmost), and emit pieces that are not tokens as
//! byte-fallback tokens `<0xNN>`. The caller escapes spaces to `▁` first.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::LookupMap;

/// A piece of the text: bytes `start..start + len`, linked to its neighbours.
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A candidate merge of symbols `left` and `right` (adjacent when queued).
struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    /// Byte length of the merged text when queued; a mismatch later means it is stale.
    size: usize,
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
    /// Max-heap order: higher score first, then the leftmost pair.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// What SPM needs from the vocabulary.
pub(crate) struct SpmVocab<'a> {
    pub token_to_id: &'a LookupMap<String, u32>,
    pub scores: &'a [f32],
    /// Token of each byte for fallback; `None` when the vocabulary lacks it.
    pub byte_tokens: &'a [Option<u32>; 256],
}

/// Tokenizes `text` (spaces already escaped) and appends the ids to `out`.
pub(crate) fn tokenize(v: &SpmVocab, text: &str, out: &mut Vec<u32>) {
    let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
    for (i, (start, c)) in text.char_indices().enumerate() {
        let len = c.len_utf8();
        let next = (start + len < text.len()).then_some(i + 1);
        symbols.push(Symbol {
            start,
            len,
            prev: i.checked_sub(1),
            next,
        });
    }
    let mut queue = BinaryHeap::new();
    for i in 1..symbols.len() {
        try_add(v, text, &symbols, Some(i - 1), Some(i), &mut queue);
    }
    while let Some(b) = queue.pop() {
        let (l, r) = (&symbols[b.left], &symbols[b.right]);
        if l.len == 0 || r.len == 0 || l.len + r.len != b.size {
            continue;
        }
        let right_next = r.next;
        symbols[b.left].len += symbols[b.right].len;
        symbols[b.right].len = 0;
        symbols[b.left].next = right_next;
        if let Some(n) = right_next {
            symbols[n].prev = Some(b.left);
        }
        let prev = symbols[b.left].prev;
        try_add(v, text, &symbols, prev, Some(b.left), &mut queue);
        try_add(v, text, &symbols, Some(b.left), right_next, &mut queue);
    }
    let mut cur = (!symbols.is_empty()).then_some(0);
    while let Some(i) = cur {
        let s = &symbols[i];
        emit(v, &text[s.start..s.start + s.len], out);
        cur = s.next;
    }
}

/// Queues the merge of two neighbours if their concatenation is a token.
fn try_add(
    v: &SpmVocab,
    text: &str,
    symbols: &[Symbol],
    left: Option<usize>,
    right: Option<usize>,
    queue: &mut BinaryHeap<Bigram>,
) {
    let (Some(left), Some(right)) = (left, right) else {
        return;
    };
    let (l, r) = (&symbols[left], &symbols[right]);
    let piece = &text[l.start..l.start + l.len + r.len];
    if let Some(&id) = v.token_to_id.get(piece) {
        // `+ 0.0` turns -0.0 into 0.0, which C++'s `<` treats as equal.
        let score = v.scores.get(id as usize).copied().unwrap_or(0.0) + 0.0;
        queue.push(Bigram {
            left,
            right,
            score,
            size: piece.len(),
        });
    }
}

/// Emits a final piece: its token, or one byte token per byte.
///
/// llama.cpp also keeps a map from merged text to the pair it came from, to re-split pieces
/// that are not tokens. Every merge yields a token, so only unmerged single characters can
/// miss, and those have no pair: the map never changes the result and is left out here.
fn emit(v: &SpmVocab, piece: &str, out: &mut Vec<u32>) {
    if let Some(&id) = v.token_to_id.get(piece) {
        out.push(id);
        return;
    }
    // llama.cpp throws when a byte token is missing; we skip the byte (see `Tokenizer::encode`).
    out.extend(piece.bytes().filter_map(|b| v.byte_tokens[usize::from(b)]));
}
