//! Python's string predicates where they differ from Rust's, for the scorers that must
//! agree with Python code character for character (VADER, garak's detectors).

/// `str.isspace` of one character: Unicode White_Space plus the four ASCII separators
/// U+001C..U+001F, which Python counts as whitespace (bidirectional class B or S) and
/// Rust does not.
pub fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `str.strip()` without arguments.
pub fn strip(s: &str) -> &str {
    s.trim_matches(is_space)
}

/// `str.split()` without arguments: runs of whitespace separate, none are empty.
pub fn split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_space).filter(|w| !w.is_empty())
}

/// Titlecase letters (general category Lt), which `str.isupper` counts against a word.
fn is_titlecase(c: char) -> bool {
    matches!(c,
        '\u{1c5}' | '\u{1c8}' | '\u{1cb}' | '\u{1f2}'
        | '\u{1f88}'..='\u{1f8f}' | '\u{1f98}'..='\u{1f9f}' | '\u{1fa8}'..='\u{1faf}'
        | '\u{1fbc}' | '\u{1fcc}' | '\u{1ffc}')
}

/// `str.isupper`: at least one uppercase character and none lowercase or titlecase.
pub fn is_upper(s: &str) -> bool {
    let mut cased = false;
    for c in s.chars() {
        if c.is_lowercase() || is_titlecase(c) {
            return false;
        }
        cased |= c.is_uppercase();
    }
    cased
}

/// A word character of Python's `re` (`\w` on `str`): alphanumeric or underscore. Close,
/// not equal: Rust's alphabetic includes Other_Alphabetic (some combining marks, circled
/// and squared Latin letters) that Python's `isalnum` does not; no English text of the
/// measured runs held one (see benches/safety_scorers.py).
pub fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `round(x, digits)`: the decimal nearest to the exact binary value, ties to even, as
/// Python's correctly rounded `round` and Rust's formatting both compute it.
pub fn round(x: f64, digits: usize) -> f64 {
    if !x.is_finite() {
        return x;
    }
    format!("{x:.digits$}").parse().unwrap_or(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_whitespace_and_case() {
        assert_eq!(
            split(" a\u{1f}b\u{a0}c  ").collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(strip("\u{1c} x \u{85}"), "x");
        assert!(is_upper("SUX!"));
        assert!(!is_upper("123!"));
        assert!(!is_upper("Sux"));
        assert!(!is_upper("A\u{1c5}"));
    }

    #[test]
    fn round_is_half_even_on_the_exact_value() {
        // 0.125 and 0.375 are exact binary ties; 2.675 is just below its tie.
        assert_eq!(round(0.125, 2), 0.12);
        assert_eq!(round(0.375, 2), 0.38);
        assert_eq!(round(2.675, 2), 2.67);
        assert_eq!(round(-0.03125, 4), -0.0312);
        assert_eq!(round(0.4404, 4), 0.4404);
    }
}
