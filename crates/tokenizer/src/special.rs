//! Cutting special tokens out of raw text before tokenizing, as llama.cpp's
//! `tokenizer_st_partition`: for each special token in turn (longest text first), every
//! occurrence in the remaining text fragments becomes that token. Control and unknown
//! tokens are matched only when parsing specials; user-defined tokens always are.

use std::ops::Range;

use crate::resolve::attr;

/// A piece of the input: raw text (a byte range) or a token already decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fragment {
    Text(Range<usize>),
    Token(u32),
}

/// What partitioning needs from the vocabulary.
pub(crate) struct Specials<'a> {
    pub tokens: &'a [String],
    pub attrs: &'a [u16],
    /// Candidate ids in matching order.
    pub order: &'a [u32],
}

/// Splits `text` into fragments.
pub(crate) fn partition(s: &Specials, text: &str, parse_special: bool) -> Vec<Fragment> {
    let mut frags = if text.is_empty() {
        Vec::new()
    } else {
        vec![Fragment::Text(0..text.len())]
    };
    for &id in s.order {
        let a = s.attrs[id as usize];
        if !parse_special && a & (attr::CONTROL | attr::UNKNOWN) != 0 {
            continue;
        }
        let needle = s.tokens[id as usize].as_str();
        if needle.is_empty()
            || !frags
                .iter()
                .any(|f| matches!(f, Fragment::Text(r) if text[r.clone()].contains(needle)))
        {
            continue;
        }
        let mut next = Vec::with_capacity(frags.len() + 2);
        for f in frags {
            match f {
                Fragment::Text(r) => cut(text, r, needle, id, a, &mut next),
                token => next.push(token),
            }
        }
        frags = next;
    }
    frags
}

/// Cuts every occurrence of `needle` out of the fragment `r`, left to right, honouring the
/// token's `lstrip` (drop whitespace before) and `rstrip` (drop whitespace after).
fn cut(text: &str, r: Range<usize>, needle: &str, id: u32, a: u16, out: &mut Vec<Fragment>) {
    let bytes = text.as_bytes();
    let mut window = r;
    while let Some(found) = text[window.clone()].find(needle) {
        let m = window.start + found;
        let mut left_end = m;
        if a & attr::LSTRIP != 0 {
            while left_end > window.start && is_c_space(bytes[left_end - 1]) {
                left_end -= 1;
            }
        }
        if left_end > window.start {
            out.push(Fragment::Text(window.start..left_end));
        }
        out.push(Fragment::Token(id));
        let mut right_start = m + needle.len();
        if a & attr::RSTRIP != 0 {
            while right_start < window.end && is_c_space(bytes[right_start]) {
                right_start += 1;
            }
        }
        window = right_start..window.end;
        if window.is_empty() {
            return;
        }
    }
    out.push(Fragment::Text(window));
}

/// C's `isspace` in the "C" locale, which llama.cpp uses for the strip attributes.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specials() -> (Vec<String>, Vec<u16>) {
        let tokens = ["a", "<c>", "<u>", "<cc>"].map(String::from).to_vec();
        let attrs = vec![
            attr::NORMAL,
            attr::CONTROL,
            attr::USER_DEFINED,
            attr::CONTROL | attr::RSTRIP,
        ];
        (tokens, attrs)
    }

    #[test]
    fn control_only_when_parsing_specials() {
        let (tokens, attrs) = specials();
        let s = Specials {
            tokens: &tokens,
            attrs: &attrs,
            order: &[3, 1, 2],
        };
        let text = "x<c>y<u>z";
        assert_eq!(
            partition(&s, text, false),
            [
                Fragment::Text(0..5),
                Fragment::Token(2),
                Fragment::Text(8..9)
            ]
        );
        assert_eq!(
            partition(&s, text, true),
            [
                Fragment::Text(0..1),
                Fragment::Token(1),
                Fragment::Text(4..5),
                Fragment::Token(2),
                Fragment::Text(8..9)
            ]
        );
    }

    #[test]
    fn rstrip_drops_following_whitespace() {
        let (tokens, attrs) = specials();
        let s = Specials {
            tokens: &tokens,
            attrs: &attrs,
            order: &[3, 1, 2],
        };
        assert_eq!(partition(&s, "<cc>  \n", true), [Fragment::Token(3)]);
        assert_eq!(
            partition(&s, "<cc> q<cc>", true),
            [Fragment::Token(3), Fragment::Text(5..6), Fragment::Token(3)]
        );
    }
}
