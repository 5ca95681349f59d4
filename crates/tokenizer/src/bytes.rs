//! GPT-2's byte-level alphabet: every byte maps to one printable code point, so byte-level
//! BPE vocabularies are plain strings. Printable Latin-1 bytes map to themselves; the other
//! 68 bytes map, in order, to U+0100 onwards (so ' ' is 'Ġ' and '\n' is 'Ċ').
//! Reference: openai/gpt-2 `encoder.py` `bytes_to_unicode`, llama.cpp `unicode.cpp`.

/// Whether byte `b` stands for itself in the byte-level alphabet.
fn is_printable(b: u8) -> bool {
    matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// The code point standing for byte `b`.
pub fn byte_to_char(b: u8) -> char {
    if is_printable(b) {
        return char::from(b);
    }
    // Rank of `b` among the non-printable bytes.
    let n = (0..b).filter(|&x| !is_printable(x)).count() as u32;
    char::from_u32(0x100 + n).unwrap_or(char::REPLACEMENT_CHARACTER)
}

/// The byte a code point of the byte-level alphabet stands for, if it is one.
pub fn char_to_byte(c: char) -> Option<u8> {
    let cpt = c as u32;
    if cpt < 0x100 {
        let b = cpt as u8;
        return is_printable(b).then_some(b);
    }
    let n = cpt.checked_sub(0x100)?;
    (0..=255u8).filter(|&x| !is_printable(x)).nth(n as usize)
}

/// A lookup table from byte to its code point, for encoding whole strings quickly.
pub fn byte_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    for (b, slot) in table.iter_mut().enumerate() {
        *slot = byte_to_char(b as u8);
    }
    table
}

/// Encodes UTF-8 bytes into the byte-level alphabet.
pub fn encode_bytes(table: &[char; 256], bytes: &[u8]) -> String {
    bytes.iter().map(|&b| table[usize::from(b)]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_and_newline() {
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_to_char(b'a'), 'a');
        assert_eq!(byte_to_char(0xAD), '\u{143}');
    }

    #[test]
    fn round_trip_all_bytes() {
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(byte_to_char(b)), Some(b));
        }
        assert_eq!(char_to_byte('€'), None);
        assert_eq!(char_to_byte(' '), None);
    }
}
