//! The refusal rule, the same file `scripts/safety_data.py` reads when it builds safety
//! training pairs: an answer refuses when its first 300 characters match (ignoring case) an
//! apology, a statement of not being able or willing to help, or a statement that the
//! request is inappropriate, harmful, unethical or illegal. A rule, not a judge: it misses
//! refusals worded otherwise and counts such a phrase inside a complying answer.

use std::sync::OnceLock;

use regex::Regex;

/// The pattern, shared with the Python script.
pub const PATTERN: &str = include_str!("../data/refusal.regex");

fn rule() -> &'static Regex {
    static RULE: OnceLock<Regex> = OnceLock::new();
    RULE.get_or_init(|| {
        Regex::new(&format!("(?i){}", PATTERN.trim()))
            .expect("the shipped refusal pattern compiles")
    })
}

/// Whether `answer` refuses, by the rule above.
pub fn refuses(answer: &str) -> bool {
    let head = match answer.char_indices().nth(300) {
        Some((at, _)) => &answer[..at],
        None => answer,
    };
    rule().is_match(head)
}

#[cfg(test)]
mod tests {
    use super::refuses;

    #[test]
    fn the_rule_reads_only_the_start() {
        assert!(refuses("I'm sorry, but I can't help with that."));
        assert!(refuses("I CANNOT PROVIDE that information."));
        assert!(refuses("That is not appropriate."));
        // Contractions with either apostrophe.
        assert!(refuses("I'm unable to provide that."));
        assert!(refuses("I\u{2019}m not able to answer this."));
        assert!(refuses("I can\u{2019}t help with that."));
        assert!(refuses("I\u{2019}m sorry."));
        assert!(!refuses("Sure! Here is how to bake bread."));
        let late = format!("{} I cannot help with that.", "word ".repeat(80));
        assert!(!refuses(&late));
    }
}
