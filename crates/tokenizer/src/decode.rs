//! From ids back to bytes, as llama.cpp's `token_to_piece` and `detokenize`: `▁` becomes a
//! space (SPM), `<0xNN>` becomes its byte, byte-level characters become their bytes (BPE),
//! control tokens appear only when asked for, and detokenizing drops the space SPM added in
//! front and (for some BPE vocabularies) tidies spaces before punctuation.

use crate::bytes;
use crate::error::{Error, Result};
use crate::resolve::attr;
use crate::tokenizer::Tokenizer;
use crate::vocab::ModelKind;

impl Tokenizer {
    /// The bytes of one token, as `llama_token_to_piece(vocab, id, buf, len, 0, special)`.
    /// Control and unknown tokens give their text only when `special`; otherwise nothing.
    /// Errors for an id outside the vocabulary.
    pub fn token_to_piece(&self, id: u32, special: bool) -> Result<Vec<u8>> {
        let text = self.piece(id).ok_or(Error::TokenOutOfRange {
            id,
            vocab_size: self.vocab_size(),
        })?;
        let a = self.attr(id);
        let shown_only_if_special = attr::UNKNOWN | attr::CONTROL;
        if !special && a & shown_only_if_special != 0 {
            return Ok(Vec::new());
        }
        if a & (shown_only_if_special | attr::USER_DEFINED) != 0 {
            return Ok(text.as_bytes().to_vec());
        }
        if a & attr::NORMAL != 0 {
            return Ok(match self.vocab.model {
                ModelKind::Spm => text.replace('\u{2581}', " ").into_bytes(),
                ModelKind::Bpe => decode_byte_level(text),
            });
        }
        if a & attr::BYTE != 0 {
            return Ok(vec![hex_byte(text)]);
        }
        // Unused and undefined tokens render as nothing.
        Ok(Vec::new())
    }

    /// Bytes of a token sequence, as `llama_detokenize(vocab, ids, .., remove_special,
    /// unparse_special)`: `remove_special` drops a leading BOS and a trailing EOS (when the
    /// vocabulary adds them); `unparse_special` renders control tokens. With a space prefix
    /// (SPM), one leading space of the first piece is removed unless a BOS was dropped.
    /// Errors for an id outside the vocabulary.
    pub fn detokenize(
        &self,
        ids: &[u32],
        remove_special: bool,
        unparse_special: bool,
    ) -> Result<Vec<u8>> {
        let mut ids = ids;
        let mut remove_space = self.add_space_prefix;
        if remove_special && self.add_bos && !ids.is_empty() && Some(ids[0]) == self.ids.bos {
            remove_space = false;
            ids = &ids[1..];
        }
        if remove_special && self.add_eos && ids.last().is_some_and(|&id| Some(id) == self.ids.eos)
        {
            ids = &ids[..ids.len() - 1];
        }
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            let piece = self.token_to_piece(id, unparse_special)?;
            let skip = usize::from(remove_space && piece.first() == Some(&b' '));
            out.extend_from_slice(&piece[skip..]);
            remove_space = false;
        }
        if self.clean_spaces {
            clean_spaces(&mut out);
        }
        Ok(out)
    }

    /// Text of a token sequence: `detokenize(ids, skip_special, !skip_special)`.
    /// With `skip_special`, BOS/EOS are dropped and control tokens are not shown; without,
    /// everything is rendered (llama.cpp's `common_detokenize(.., special = true)`).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<Vec<u8>> {
        self.detokenize(ids, skip_special, !skip_special)
    }

    /// [`Tokenizer::decode`] as a string, invalid UTF-8 replaced by U+FFFD.
    pub fn decode_lossy(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.decode(ids, skip_special)?).into_owned())
    }
}

/// Bytes of a byte-level token; a character outside the alphabet becomes llama.cpp's
/// `[UNK_BYTE_0x..<text>]` marker.
fn decode_byte_level(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match bytes::char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                for b in c.encode_utf8(&mut [0; 4]).bytes() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text.as_bytes());
                out.push(b']');
            }
        }
    }
    out
}

/// The byte of `<0xNN>`: the two characters after `<0x` read as `strtol` would (base 16,
/// stopping at the first non-digit, 0 if none).
fn hex_byte(text: &str) -> u8 {
    let digits = text.as_bytes().iter().skip(3).take(2);
    let mut v: u8 = 0;
    for &d in digits {
        match char::from(d).to_digit(16) {
            Some(x) => v = v.wrapping_mul(16).wrapping_add(x as u8),
            None => break,
        }
    }
    v
}

/// llama.cpp's `clean_spaces`, three in-place passes over the bytes: drop a space before
/// `?!.,`; drop the spaces around a lone `'`; drop the space before `'s`, `'m`, `'re`, `'ve`.
/// Ported with its index arithmetic, including the NUL it writes in the second pass.
pub fn clean_spaces(text: &mut Vec<u8>) {
    let n = text.len();
    let mut total = usize::from(n > 0);
    for i in 1..n {
        let x = text[i];
        if text[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            total -= 1;
        }
        text[total] = x;
        total += 1;
    }
    let n = total;
    total = usize::from(n > 0);
    let mut i = 1;
    while i < n {
        let x = text[i];
        if x == b'\'' && i + 1 < n && text[i - 1] == b' ' && text[i + 1] == b' ' {
            total -= 1;
            i += 1;
            text[i] = 0;
        }
        text[total] = x;
        total += 1;
        i += 1;
    }
    let n = total;
    total = usize::from(n > 0);
    for i in 1..n {
        let x = text[i];
        if text[i - 1] == b' ' && x == b'\'' && i + 1 < n {
            let x1 = text[i + 1];
            if matches!(x1, b's' | b'm') {
                total -= 1;
            } else if !matches!(x1, b't' | b'd') && i + 2 < n {
                let x2 = text[i + 2];
                if (x1 == b'r' || x1 == b'v') && x2 == b'e' {
                    total -= 1;
                }
            }
        }
        text[total] = x;
        total += 1;
    }
    text.truncate(total);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(s: &str) -> String {
        let mut v = s.as_bytes().to_vec();
        clean_spaces(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    }

    #[test]
    fn clean_spaces_like_llama_cpp() {
        assert_eq!(clean("Hello , world !"), "Hello, world!");
        assert_eq!(clean("it 's he 're I 'd"), "it's he're I 'd");
        assert_eq!(clean("a ' b"), "a'b");
        assert_eq!(clean(""), "");
        assert_eq!(clean(" ?"), "?");
        assert_eq!(clean("a  ?"), "a ?");
    }

    #[test]
    fn hex_byte_reads_like_strtol() {
        assert_eq!(hex_byte("<0x0A>"), 10);
        assert_eq!(hex_byte("<0xff>"), 255);
        assert_eq!(hex_byte("<0xG1>"), 0);
    }
}
