//! Following a grammar character by character, as llama.cpp does: the parse so far is a
//! set of stacks of positions in the grammar, each stack's top the next character class
//! to match. Stacks are linked frames in an arena, so stepping shares their tails instead
//! of copying them, and a token-mask walk can undo a step by truncating the arena.

use crate::error::{Error, Result};
use crate::grammar::{Elem, Grammar};

/// No frame: the bottom of a stack. A head equal to `NIL` is a finished parse.
pub(crate) const NIL: u32 = u32::MAX;
/// Most simultaneous parses followed; more is an error, not a slowdown.
pub(crate) const MAX_STACKS: usize = 4096;
/// Most rule expansions for one step, against exponential ambiguity.
const MAX_EXPANSIONS: usize = 1 << 16;

/// One level of a stack: a position in `Grammar::elems` and the frame below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frame {
    pub pos: u32,
    pub next: u32,
}

/// An incomplete UTF-8 character: the bits so far and how many bytes are still due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) struct Partial {
    pub value: u32,
    pub due: u8,
    /// The smallest character a sequence of this length may encode (shorter is overlong).
    pub min: u32,
}

/// What one more byte does to a partial character.
pub(crate) enum ByteStep {
    /// A whole character.
    Char(u32),
    /// Still incomplete.
    Pending(Partial),
    /// Not UTF-8.
    Invalid,
}

impl Partial {
    pub fn push(self, b: u8) -> ByteStep {
        if self.due == 0 {
            let (value, due, min) = match b {
                0x00..=0x7F => return ByteStep::Char(b as u32),
                0xC2..=0xDF => ((b & 0x1F) as u32, 1, 0x80),
                0xE0..=0xEF => ((b & 0x0F) as u32, 2, 0x800),
                0xF0..=0xF4 => ((b & 0x07) as u32, 3, 0x10000),
                _ => return ByteStep::Invalid,
            };
            return ByteStep::Pending(Partial { value, due, min });
        }
        if b & 0xC0 != 0x80 {
            return ByteStep::Invalid;
        }
        let value = (self.value << 6) | (b & 0x3F) as u32;
        if self.due > 1 {
            return ByteStep::Pending(Partial {
                value,
                due: self.due - 1,
                min: self.min,
            });
        }
        // Overlong forms, surrogates and values past U+10FFFF are not characters.
        if value < self.min {
            return ByteStep::Invalid;
        }
        match value {
            0xD800..=0xDFFF | 0x110000.. => ByteStep::Invalid,
            _ => ByteStep::Char(value),
        }
    }

    /// The characters this prefix can still become (`lo > hi`: none, e.g. `E0 80`,
    /// which only overlong forms would complete).
    pub fn range(self) -> (u32, u32) {
        let shift = 6 * self.due as u32;
        let lo = self.value << shift;
        let hi = (lo | ((1 << shift) - 1)).min(crate::grammar::MAX_CHAR);
        (lo.max(self.min), hi)
    }
}

impl Grammar {
    /// The stacks `head` stands for once every rule reference on top is replaced by its
    /// alternatives, so that each top is a character class (or the stack is empty).
    pub(crate) fn expand(
        &self,
        frames: &mut Vec<Frame>,
        head: u32,
        out: &mut Vec<u32>,
    ) -> Result<()> {
        let mut work = vec![head];
        let mut budget = MAX_EXPANSIONS;
        while let Some(h) = work.pop() {
            if h == NIL {
                out.push(NIL);
                continue;
            }
            let f = frames[h as usize];
            match self.elems[f.pos as usize] {
                Elem::Class(_) => out.push(h),
                Elem::End => work.push(f.next),
                Elem::Rule(r) => {
                    budget = budget
                        .checked_sub(1)
                        .ok_or(Error::TooAmbiguous(MAX_STACKS))?;
                    let rest = self.push_rest(frames, f.pos + 1, f.next);
                    for &a in self.alts[r as usize].iter().rev() {
                        work.push(self.push_rest(frames, a, rest));
                    }
                }
            }
            if out.len() > MAX_STACKS {
                return Err(Error::TooAmbiguous(MAX_STACKS));
            }
        }
        Ok(())
    }

    /// A frame at `pos` over `next`, or just `next` when `pos` ends its alternative.
    fn push_rest(&self, frames: &mut Vec<Frame>, pos: u32, next: u32) -> u32 {
        if self.elems[pos as usize] == Elem::End {
            return next;
        }
        frames.push(Frame { pos, next });
        (frames.len() - 1) as u32
    }

    /// The stacks after character `c`, appended to `out`.
    pub(crate) fn step(
        &self,
        frames: &mut Vec<Frame>,
        heads: &[u32],
        c: u32,
        out: &mut Vec<u32>,
    ) -> Result<()> {
        for &h in heads {
            if h == NIL {
                continue;
            }
            let f = frames[h as usize];
            if let Elem::Class(k) = self.elems[f.pos as usize] {
                if self.class_has(k, c) {
                    let rest = self.push_rest(frames, f.pos + 1, f.next);
                    self.expand(frames, rest, out)?;
                }
            }
        }
        if out.len() > MAX_STACKS {
            return Err(Error::TooAmbiguous(MAX_STACKS));
        }
        Ok(())
    }

    /// Whether some stack can take a character that starts with `partial`.
    pub(crate) fn admits(&self, frames: &[Frame], heads: &[u32], partial: Partial) -> bool {
        let (lo, hi) = partial.range();
        if lo > hi {
            return false;
        }
        heads.iter().any(|&h| {
            h != NIL
                && matches!(self.elems[frames[h as usize].pos as usize],
                    Elem::Class(k) if self.class_meets(k, lo, hi))
        })
    }
}

/// The state of one parse: the stacks and any incomplete character.
#[derive(Debug, Clone)]
pub(crate) struct ParseState {
    pub frames: Vec<Frame>,
    pub heads: Vec<u32>,
    pub partial: Partial,
}

impl ParseState {
    /// The start: `root`'s alternatives expanded.
    pub fn start(g: &Grammar) -> Result<Self> {
        let mut frames = Vec::new();
        let mut heads = Vec::new();
        for &a in &g.alts[g.root as usize] {
            let h = g.push_rest(&mut frames, a, NIL);
            g.expand(&mut frames, h, &mut heads)?;
        }
        let mut s = ParseState {
            frames,
            heads,
            partial: Partial::default(),
        };
        s.compact();
        Ok(s)
    }

    /// The state after `bytes`, or `None` when the grammar rejects them.
    pub fn advance(&self, g: &Grammar, bytes: &[u8]) -> Result<Option<ParseState>> {
        let mut frames = self.frames.clone();
        let mut heads = self.heads.clone();
        let mut partial = self.partial;
        let mut next = Vec::new();
        for &b in bytes {
            match partial.push(b) {
                ByteStep::Invalid => return Ok(None),
                ByteStep::Pending(p) => {
                    if !g.admits(&frames, &heads, p) {
                        return Ok(None);
                    }
                    partial = p;
                }
                ByteStep::Char(c) => {
                    next.clear();
                    g.step(&mut frames, &heads, c, &mut next)?;
                    if next.is_empty() {
                        return Ok(None);
                    }
                    std::mem::swap(&mut heads, &mut next);
                    partial = Partial::default();
                }
            }
        }
        let mut s = ParseState {
            frames,
            heads,
            partial,
        };
        s.compact();
        Ok(Some(s))
    }

    /// Whether the text so far is a complete sentence of the grammar.
    pub fn accepting(&self) -> bool {
        self.partial.due == 0 && self.heads.contains(&NIL)
    }

    /// Whether any character may follow.
    pub fn can_continue(&self) -> bool {
        self.heads.iter().any(|&h| h != NIL)
    }

    /// The positions of stack `h`, top first.
    fn chain(&self, mut h: u32, out: &mut Vec<u32>) {
        while h != NIL {
            let f = self.frames[h as usize];
            out.push(f.pos);
            h = f.next;
        }
    }

    /// A key equal for equal states: each stack's positions, sorted.
    pub fn key(&self) -> Vec<u32> {
        let mut stacks: Vec<Vec<u32>> = self
            .heads
            .iter()
            .map(|&h| {
                let mut v = Vec::new();
                self.chain(h, &mut v);
                v
            })
            .collect();
        stacks.sort_unstable();
        let p = self.partial;
        let mut key = vec![p.value, p.due as u32, p.min];
        for s in stacks {
            key.extend(s);
            key.push(NIL);
        }
        key
    }

    /// Drops frames no stack uses and duplicate stacks, so the arena stays the size of
    /// the live parse however long the text grows.
    fn compact(&mut self) {
        let mut seen: Vec<Vec<u32>> = Vec::with_capacity(self.heads.len());
        let mut frames = Vec::new();
        let mut heads = Vec::with_capacity(self.heads.len());
        let mut remap = vec![NIL; self.frames.len()];
        for &h in &self.heads {
            let mut chain = Vec::new();
            self.chain(h, &mut chain);
            if seen.contains(&chain) {
                continue;
            }
            // Copy the frames the stack needs, bottom first, sharing ones already copied.
            let mut path = Vec::new();
            let mut cur = h;
            while cur != NIL && remap[cur as usize] == NIL {
                path.push(cur);
                cur = self.frames[cur as usize].next;
            }
            let mut below = if cur == NIL { NIL } else { remap[cur as usize] };
            for &old in path.iter().rev() {
                frames.push(Frame {
                    pos: self.frames[old as usize].pos,
                    next: below,
                });
                below = (frames.len() - 1) as u32;
                remap[old as usize] = below;
            }
            heads.push(if h == NIL { NIL } else { remap[h as usize] });
            seen.push(chain);
        }
        self.frames = frames;
        self.heads = heads;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_bytes_become_characters() {
        let mut p = Partial::default();
        let mut chars = Vec::new();
        for &b in "aé€😀".as_bytes() {
            match p.push(b) {
                ByteStep::Char(c) => {
                    chars.push(char::from_u32(c).unwrap());
                    p = Partial::default();
                }
                ByteStep::Pending(q) => p = q,
                ByteStep::Invalid => panic!("valid UTF-8 refused"),
            }
        }
        assert_eq!(chars.into_iter().collect::<String>(), "aé€😀");
        assert!(matches!(Partial::default().push(0xC0), ByteStep::Invalid));
        assert!(matches!(Partial::default().push(0x80), ByteStep::Invalid));
        // A surrogate, ED A0 80.
        let ByteStep::Pending(p) = Partial::default().push(0xED) else {
            panic!()
        };
        let ByteStep::Pending(p) = p.push(0xA0) else {
            panic!()
        };
        assert!(matches!(p.push(0x80), ByteStep::Invalid));
        // Overlong '/', E0 80 AF.
        let ByteStep::Pending(p) = Partial::default().push(0xE0) else {
            panic!()
        };
        let ByteStep::Pending(p) = p.push(0x80) else {
            panic!()
        };
        assert!(matches!(p.push(0xAF), ByteStep::Invalid));
    }

    #[test]
    fn partial_ranges_cover_their_completions() {
        let ByteStep::Pending(p) = Partial::default().push(0xE2) else {
            panic!()
        };
        assert_eq!(p.range(), (0x2000, 0x2FFF));
        let ByteStep::Pending(p) = p.push(0x82) else {
            panic!()
        };
        assert_eq!(p.range(), (0x2080, 0x20BF));
        assert!((p.range().0..=p.range().1).contains(&('€' as u32)));
        // A lone E0 or F0 can only become characters above the overlong ones.
        let ByteStep::Pending(p) = Partial::default().push(0xE0) else {
            panic!()
        };
        assert_eq!(p.range(), (0x800, 0xFFF));
        let ByteStep::Pending(p) = Partial::default().push(0xF0) else {
            panic!()
        };
        assert_eq!(p.range(), (0x10000, 0x3FFFF));
        let ByteStep::Pending(p) = Partial::default().push(0xF4) else {
            panic!()
        };
        assert_eq!(p.range(), (0x100000, 0x10FFFF));
        let ByteStep::Pending(p) = p.push(0x80) else {
            panic!()
        };
        assert_eq!(p.range(), (0x100000, 0x100FFF));
        let ByteStep::Pending(p) = Partial::default().push(0xE0) else {
            panic!()
        };
        let ByteStep::Pending(p) = p.push(0x80) else {
            panic!()
        };
        let (lo, hi) = p.range();
        assert!(lo > hi, "E0 80 cannot complete");
    }
}
