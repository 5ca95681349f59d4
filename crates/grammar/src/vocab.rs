//! A model's tokens as a byte trie, and the set of tokens a grammar state allows.
//!
//! Checking all 32k-150k tokens one by one would redo the same prefixes over and over;
//! walking the trie steps the grammar once per shared prefix and drops a whole subtree as
//! soon as its prefix is refused.

use crate::error::Result;
use crate::grammar::Grammar;
use crate::matcher::{ByteStep, Frame, ParseState, Partial};

/// Tokens longer than this are never allowed under a grammar (keeps the walk's recursion
/// shallow whatever a vocabulary holds; real tokens are far shorter).
pub const MAX_TOKEN_BYTES: usize = 1024;

/// The tokens of a model, as the grammar sees them.
#[derive(Clone)]
pub struct Vocabulary {
    n_tokens: usize,
    /// End-of-generation tokens: allowed exactly when the grammar is complete.
    eog: Vec<u32>,
    nodes: Vec<Node>,
    /// (byte, child) edges, each node's sorted by byte.
    edges: Vec<(u8, u32)>,
    /// Token ids ending at each node, each node's contiguous.
    ends: Vec<u32>,
    pieces: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Vocabulary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vocabulary")
            .field("tokens", &self.n_tokens)
            .field("trie_nodes", &self.nodes.len())
            .field("eog", &self.eog)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Node {
    edges: (u32, u32),
    ends: (u32, u32),
}

impl Vocabulary {
    /// `pieces[id]` is the text token `id` adds (None or empty for control tokens, which a
    /// grammar never allows); `eog` are the end-of-generation ids.
    pub fn new(pieces: Vec<Option<Vec<u8>>>, eog: &[u32]) -> Self {
        let n_tokens = pieces.len();
        let pieces: Vec<Vec<u8>> = pieces.into_iter().map(Option::unwrap_or_default).collect();
        let mut order: Vec<u32> = (0..n_tokens as u32)
            .filter(|&i| {
                let p = &pieces[i as usize];
                !p.is_empty() && p.len() <= MAX_TOKEN_BYTES && !eog.contains(&i)
            })
            .collect();
        order.sort_unstable_by(|&a, &b| pieces[a as usize].cmp(&pieces[b as usize]));
        let mut v = Vocabulary {
            n_tokens,
            eog: eog
                .iter()
                .copied()
                .filter(|&e| (e as usize) < n_tokens)
                .collect(),
            nodes: vec![Node::default()],
            edges: Vec::new(),
            ends: Vec::new(),
            pieces,
        };
        v.build(0, &order, 0);
        v
    }

    /// Fills node `node` from `ids` (sorted by piece, all sharing `depth` leading bytes).
    fn build(&mut self, node: usize, ids: &[u32], depth: usize) {
        let n_end = ids
            .iter()
            .take_while(|&&i| self.pieces[i as usize].len() == depth)
            .count();
        let start = self.ends.len() as u32;
        self.ends.extend_from_slice(&ids[..n_end]);
        self.nodes[node].ends = (start, start + n_end as u32);
        // Group the rest by their next byte; children are laid out before recursing so
        // each node's edges are contiguous.
        let rest = &ids[n_end..];
        let mut groups = Vec::new();
        let mut i = 0;
        while i < rest.len() {
            let b = self.pieces[rest[i] as usize][depth];
            let j = i + rest[i..]
                .iter()
                .take_while(|&&t| self.pieces[t as usize][depth] == b)
                .count();
            groups.push((b, i, j));
            i = j;
        }
        let first = self.edges.len() as u32;
        for &(b, _, _) in &groups {
            self.nodes.push(Node::default());
            self.edges.push((b, (self.nodes.len() - 1) as u32));
        }
        self.nodes[node].edges = (first, first + groups.len() as u32);
        for (k, &(_, i, j)) in groups.iter().enumerate() {
            let child = self.edges[first as usize + k].1 as usize;
            self.build(child, &rest[i..j], depth + 1);
        }
    }

    /// Number of token ids.
    pub fn len(&self) -> usize {
        self.n_tokens
    }

    /// Whether there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.n_tokens == 0
    }

    /// The bytes of token `id` (empty for control tokens and unknown ids).
    pub fn piece(&self, id: u32) -> &[u8] {
        self.pieces.get(id as usize).map_or(&[], |p| p.as_slice())
    }

    /// Whether `id` ends generation.
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// Every token the grammar allows next from `state`.
    pub(crate) fn allowed(&self, g: &Grammar, state: &ParseState) -> Result<TokenMask> {
        let mut mask = TokenMask::empty(self.n_tokens);
        if state.accepting() {
            for &e in &self.eog {
                mask.set(e);
            }
        }
        let mut frames = state.frames.clone();
        let mut pool = Vec::new();
        self.walk(
            g,
            &mut frames,
            0,
            &state.heads,
            state.partial,
            &mut mask,
            &mut pool,
        )?;
        Ok(mask)
    }

    /// Marks every token below trie node `node`, reached with parse `heads`.
    fn walk(
        &self,
        g: &Grammar,
        frames: &mut Vec<Frame>,
        node: u32,
        heads: &[u32],
        partial: Partial,
        mask: &mut TokenMask,
        pool: &mut Vec<Vec<u32>>,
    ) -> Result<()> {
        let (e0, e1) = self.nodes[node as usize].edges;
        let mut next = pool.pop().unwrap_or_default();
        for &(b, child) in &self.edges[e0 as usize..e1 as usize] {
            let mark = frames.len();
            next.clear();
            let after = match partial.push(b) {
                ByteStep::Invalid => continue,
                ByteStep::Pending(p) => {
                    if !g.admits(frames, heads, p) {
                        continue;
                    }
                    next.extend_from_slice(heads);
                    p
                }
                ByteStep::Char(c) => {
                    g.step(frames, heads, c, &mut next)?;
                    if next.is_empty() {
                        frames.truncate(mark);
                        continue;
                    }
                    Partial::default()
                }
            };
            let (t0, t1) = self.nodes[child as usize].ends;
            for &t in &self.ends[t0 as usize..t1 as usize] {
                mask.set(t);
            }
            let heads_here = std::mem::take(&mut next);
            self.walk(g, frames, child, &heads_here, after, mask, pool)?;
            next = heads_here;
            frames.truncate(mark);
        }
        pool.push(next);
        Ok(())
    }
}

/// A set of token ids, one bit each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenMask {
    bits: Vec<u64>,
    len: usize,
}

impl TokenMask {
    /// No token allowed.
    pub fn empty(len: usize) -> Self {
        TokenMask {
            bits: vec![0; len.div_ceil(64)],
            len,
        }
    }

    fn set(&mut self, id: u32) {
        if let Some(w) = self.bits.get_mut(id as usize / 64) {
            *w |= 1 << (id % 64);
        }
    }

    /// Whether token `id` is allowed.
    pub fn allows(&self, id: u32) -> bool {
        self.bits
            .get(id as usize / 64)
            .is_some_and(|w| w & (1 << (id % 64)) != 0)
    }

    /// How many tokens are allowed.
    pub fn count(&self) -> usize {
        self.bits.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Sets the logit of every token not allowed (and of ids past the vocabulary) to
    /// negative infinity.
    pub fn apply(&self, logits: &mut [f32]) {
        for (i, l) in logits.iter_mut().enumerate() {
            if i >= self.len || !self.allows(i as u32) {
                *l = f32::NEG_INFINITY;
            }
        }
    }
}
