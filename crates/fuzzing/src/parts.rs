//! Several byte strings in one fuzz input: each is a little-endian `u32` length and that
//! many bytes; a length past the end takes what is left, and missing parts are empty, so
//! every input means something and the fuzzer's mutations of a length move a boundary.

/// Splits `data` into `n` parts.
pub fn split(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut out = Vec::with_capacity(n);
    let mut rest = data;
    for _ in 0..n {
        if rest.len() < 4 {
            out.push(&rest[..0]);
            rest = &rest[rest.len()..];
            continue;
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let body = &rest[4..];
        let len = len.min(body.len());
        out.push(&body[..len]);
        rest = &body[len..];
    }
    out
}

/// Joins parts so that [`split`] gives them back (for writing seeds).
pub fn join(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        let len = u32::try_from(p.len()).expect("a seed part over 4 GiB");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(p);
    }
    out
}

/// The text parts of an input separated by NUL bytes (templates, messages, grammars): at
/// most `n`, the last taking the rest; invalid UTF-8 replaced, as a server's decoder would
/// refuse it before these parsers ever saw it.
pub fn texts(data: &[u8], n: usize) -> Vec<String> {
    data.splitn(n, |&b| b == 0)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip_and_short_input_is_empty_parts() {
        let joined = join(&[b"abc", b"", b"\x00\x01"]);
        assert_eq!(split(&joined, 3), vec![&b"abc"[..], b"", b"\x00\x01"]);
        assert_eq!(split(&joined, 4)[3], b"");
        assert_eq!(split(b"\xff\xff\xff\xffxy", 2), vec![&b"xy"[..], b""]);
        assert_eq!(split(b"ab", 2), vec![&b""[..], b""]);
    }
}
