//! Code point classes as llama.cpp's `unicode.cpp` sees them: the general category from
//! its generated table (see `unicode_table.rs`) plus its own fixed whitespace set. The
//! pre-tokenizers in `pretokenize.rs` use these instead of `char` methods, because Rust's
//! notion of whitespace and Unicode version differ from llama.cpp's.

use crate::unicode_table::CATEGORY_RANGES;

/// The classes of one code point. `0` means "outside the text" (llama.cpp's empty flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags(u16);

impl Flags {
    /// Unassigned code point (`Cn`).
    pub const UNDEFINED: u16 = 0x0001;
    /// `\p{N}`.
    pub const NUMBER: u16 = 0x0002;
    /// `\p{L}`.
    pub const LETTER: u16 = 0x0004;
    /// `\p{Z}`.
    pub const SEPARATOR: u16 = 0x0008;
    /// `\p{M}`.
    pub const MARK: u16 = 0x0010;
    /// `\p{P}`.
    pub const PUNCTUATION: u16 = 0x0020;
    /// `\p{S}`.
    pub const SYMBOL: u16 = 0x0040;
    /// `\p{C}` other than unassigned.
    pub const CONTROL: u16 = 0x0080;
    /// llama.cpp's `\s`: the Unicode `White_Space` property.
    pub const WHITESPACE: u16 = 0x0100;

    /// Flags of a code point.
    pub fn of(c: char) -> Flags {
        let cpt = c as u32;
        // The last range starting at or before `cpt`; the table starts at 0.
        let i = CATEGORY_RANGES
            .partition_point(|&(start, _)| start <= cpt)
            .saturating_sub(1);
        let category = u16::from(CATEGORY_RANGES[i].1);
        let ws = if is_whitespace(cpt) {
            Self::WHITESPACE
        } else {
            0
        };
        Flags(category | ws)
    }

    /// No class at all: the position is outside the text being split.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// `\p{L}`.
    pub fn is_letter(self) -> bool {
        self.0 & Self::LETTER != 0
    }

    /// `\p{N}`.
    pub fn is_number(self) -> bool {
        self.0 & Self::NUMBER != 0
    }

    /// `\p{P}`.
    pub fn is_punctuation(self) -> bool {
        self.0 & Self::PUNCTUATION != 0
    }

    /// `\s`.
    pub fn is_whitespace(self) -> bool {
        self.0 & Self::WHITESPACE != 0
    }
}

/// llama.cpp's whitespace set (`White_Space` in Unicode's PropList.txt).
fn is_whitespace(cpt: u32) -> bool {
    matches!(cpt, 0x09..=0x0D | 0x20 | 0x85 | 0xA0 | 0x1680 | 0x2000..=0x200A | 0x2028 | 0x2029 | 0x202F | 0x205F | 0x3000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_classes() {
        assert!(Flags::of('a').is_letter());
        assert!(Flags::of('Z').is_letter());
        assert!(Flags::of('7').is_number());
        assert!(Flags::of('!').is_punctuation());
        assert!(Flags::of(' ').is_whitespace());
        assert!(Flags::of('\n').is_whitespace());
        assert!(!Flags::of('$').is_punctuation());
        assert!(!Flags::of('$').is_empty());
    }

    #[test]
    fn non_ascii_classes() {
        assert!(Flags::of('ä').is_letter());
        assert!(Flags::of('½').is_number());
        assert!(Flags::of('\u{3000}').is_whitespace());
        assert!(!Flags::of('\u{200B}').is_whitespace());
        // U+10FFFF is a noncharacter: unassigned, so flagged UNDEFINED but not empty.
        assert!(!Flags::of('\u{10FFFF}').is_empty());
    }
}
