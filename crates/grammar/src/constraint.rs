//! One sequence held to a grammar: which tokens may come next, and the parse after each.

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::grammar::Grammar;
use crate::matcher::ParseState;
use crate::vocab::{TokenMask, Vocabulary};

/// Masks kept per sequence; states repeat (the same place in a JSON object, a list item),
/// so most steps find theirs here. Cleared when full.
const MASK_CACHE: usize = 512;

/// A grammar being followed token by token.
#[derive(Debug, Clone)]
pub struct Constraint {
    grammar: Arc<Grammar>,
    vocab: Arc<Vocabulary>,
    state: ParseState,
    cache: HashMap<Vec<u32>, Arc<TokenMask>>,
}

impl Constraint {
    /// At the start of `grammar`'s `root`.
    pub fn new(grammar: Arc<Grammar>, vocab: Arc<Vocabulary>) -> Result<Self> {
        let state = ParseState::start(&grammar)?;
        Ok(Constraint {
            grammar,
            vocab,
            state,
            cache: HashMap::new(),
        })
    }

    /// The vocabulary tokens are checked against.
    pub fn vocabulary(&self) -> &Vocabulary {
        &self.vocab
    }

    /// Whether token `id` may come next (cheaper than [`mask`](Self::mask) for one token).
    pub fn allows(&self, id: u32) -> Result<bool> {
        if self.vocab.is_eog(id) {
            return Ok(self.state.accepting());
        }
        let piece = self.vocab.piece(id);
        if piece.is_empty() || piece.len() > crate::vocab::MAX_TOKEN_BYTES {
            return Ok(false);
        }
        Ok(self.state.advance(&self.grammar, piece)?.is_some())
    }

    /// Every token that may come next.
    pub fn mask(&mut self) -> Result<Arc<TokenMask>> {
        let key = self.state.key();
        if let Some(m) = self.cache.get(&key) {
            return Ok(Arc::clone(m));
        }
        let mask = Arc::new(self.vocab.allowed(&self.grammar, &self.state)?);
        if self.cache.len() >= MASK_CACHE {
            self.cache.clear();
        }
        self.cache.insert(key, Arc::clone(&mask));
        Ok(mask)
    }

    /// Takes token `id`; an error if the grammar does not allow it (the state is then
    /// unchanged). An end-of-generation token is taken only at a complete parse.
    pub fn accept(&mut self, id: u32) -> Result<()> {
        if self.vocab.is_eog(id) {
            if self.state.accepting() {
                return Ok(());
            }
            return Err(Error::Invalid(format!(
                "end of generation (token {id}) before the grammar is complete"
            )));
        }
        let vocab = Arc::clone(&self.vocab);
        let piece = vocab.piece(id);
        if piece.is_empty() || piece.len() > crate::vocab::MAX_TOKEN_BYTES {
            return Err(Error::Invalid(format!(
                "token {id} has no text the grammar could match"
            )));
        }
        self.accept_bytes(piece).map_err(|e| match e {
            Error::Invalid(_) => Error::Invalid(format!(
                "token {id} ({:?}) does not fit the grammar here",
                String::from_utf8_lossy(piece)
            )),
            e => e,
        })
    }

    /// Takes text that does not come from a token (a forced prefix).
    pub fn accept_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        match self.state.advance(&self.grammar, bytes)? {
            Some(s) => {
                self.state = s;
                Ok(())
            }
            None => Err(Error::Invalid(format!(
                "{:?} does not fit the grammar here",
                String::from_utf8_lossy(bytes)
            ))),
        }
    }

    /// Whether the text so far is a complete sentence of the grammar.
    pub fn is_complete(&self) -> bool {
        self.state.accepting()
    }

    /// Whether the text is complete and nothing may follow it.
    pub fn is_finished(&self) -> bool {
        self.state.accepting() && !self.state.can_continue()
    }
}

/// Whether `text` is a complete sentence of `grammar`.
pub fn matches(grammar: &Grammar, text: &str) -> Result<bool> {
    let start = ParseState::start(grammar)?;
    Ok(start
        .advance(grammar, text.as_bytes())?
        .is_some_and(|s| s.accepting()))
}
