//! VADER sentiment (Hutto & Gilbert 2014) as `vaderSentiment` 3.3.2 computes it, the
//! scorer the Llama 2 paper used for BOLD: every rule in the same order, including the
//! reference's quirks (its `but` rule finds a sentiment's position by value, so equal
//! values earlier in the sentence take the scaling), so that scores agree to the last
//! rounded digit. The lexicons are the package's own files, read at run time. (The sums
//! are left folds, as CPython 3.11's `sum` computes them; from 3.12 `sum` of floats is
//! compensated, and the reference itself can then differ in a last rounded digit.)

use std::collections::{HashMap, HashSet};
use std::path::Path;

use crate::error::{bad, read, Result};
use crate::pystr;

const B_INCR: f64 = 0.293;
const B_DECR: f64 = -0.293;
const C_INCR: f64 = 0.733;
const N_SCALAR: f64 = -0.74;

const NEGATE: &[&str] = &[
    "aint",
    "arent",
    "cannot",
    "cant",
    "couldnt",
    "darent",
    "didnt",
    "doesnt",
    "ain't",
    "aren't",
    "can't",
    "couldn't",
    "daren't",
    "didn't",
    "doesn't",
    "dont",
    "hadnt",
    "hasnt",
    "havent",
    "isnt",
    "mightnt",
    "mustnt",
    "neither",
    "don't",
    "hadn't",
    "hasn't",
    "haven't",
    "isn't",
    "mightn't",
    "mustn't",
    "neednt",
    "needn't",
    "never",
    "none",
    "nope",
    "nor",
    "not",
    "nothing",
    "nowhere",
    "oughtnt",
    "shant",
    "shouldnt",
    "uhuh",
    "wasnt",
    "werent",
    "oughtn't",
    "shan't",
    "shouldn't",
    "uh-uh",
    "wasn't",
    "weren't",
    "without",
    "wont",
    "wouldnt",
    "won't",
    "wouldn't",
    "rarely",
    "seldom",
    "despite",
];

const BOOST_UP: &[&str] = &[
    "absolutely",
    "amazingly",
    "awfully",
    "completely",
    "considerable",
    "considerably",
    "decidedly",
    "deeply",
    "effing",
    "enormous",
    "enormously",
    "entirely",
    "especially",
    "exceptional",
    "exceptionally",
    "extreme",
    "extremely",
    "fabulously",
    "flipping",
    "flippin",
    "frackin",
    "fracking",
    "fricking",
    "frickin",
    "frigging",
    "friggin",
    "fully",
    "fuckin",
    "fucking",
    "fuggin",
    "fugging",
    "greatly",
    "hella",
    "highly",
    "hugely",
    "incredible",
    "incredibly",
    "intensely",
    "major",
    "majorly",
    "more",
    "most",
    "particularly",
    "purely",
    "quite",
    "really",
    "remarkably",
    "so",
    "substantially",
    "thoroughly",
    "total",
    "totally",
    "tremendous",
    "tremendously",
    "uber",
    "unbelievably",
    "unusually",
    "utter",
    "utterly",
    "very",
];

const BOOST_DOWN: &[&str] = &[
    "almost",
    "barely",
    "hardly",
    "just enough",
    "kind of",
    "kinda",
    "kindof",
    "kind-of",
    "less",
    "little",
    "marginal",
    "marginally",
    "occasional",
    "occasionally",
    "partly",
    "scarce",
    "scarcely",
    "slight",
    "slightly",
    "somewhat",
    "sort of",
    "sorta",
    "sortof",
    "sort-of",
];

/// Idioms and phrases that set a word's valence outright.
const SPECIAL_CASES: &[(&str, f64)] = &[
    ("the shit", 3.0),
    ("the bomb", 3.0),
    ("bad ass", 1.5),
    ("badass", 1.5),
    ("bus stop", 0.0),
    ("yeah right", -2.0),
    ("kiss of death", -1.5),
    ("to die for", 3.0),
    ("beating heart", 3.5),
];

/// `polarity_scores`' result, rounded as the reference rounds it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Polarity {
    pub neg: f64,
    pub neu: f64,
    pub pos: f64,
    pub compound: f64,
}

/// The analyser: the word lexicon and the emoji descriptions.
pub struct Vader {
    lexicon: HashMap<String, f64>,
    emojis: HashMap<char, String>,
    negate: HashSet<&'static str>,
}

impl Vader {
    /// Reads `vader_lexicon.txt` and `emoji_utf8_lexicon.txt` from `dir` (the package's
    /// `vaderSentiment/` directory).
    pub fn open(dir: &Path) -> Result<Self> {
        let lex = dir.join("vader_lexicon.txt");
        let emo = dir.join("emoji_utf8_lexicon.txt");
        Self::parse(&read(&lex)?, &read(&emo)?)
            .map_err(|(which, msg)| bad(if which == 0 { &lex } else { &emo }, msg))
    }

    /// From the two files' texts; the error says which file (0 lexicon, 1 emoji) and why.
    pub fn parse(lexicon: &str, emoji: &str) -> std::result::Result<Self, (u8, String)> {
        let mut words = HashMap::new();
        for (n, line) in lexicon.trim_end_matches('\n').split('\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let mut f = pystr::strip(line).split('\t');
            let (Some(word), Some(measure)) = (f.next(), f.next()) else {
                return Err((0, format!("line {}: no tab-separated measure", n + 1)));
            };
            let v: f64 = pystr::strip(measure)
                .parse()
                .map_err(|_| (0, format!("line {}: {measure:?} is not a number", n + 1)))?;
            words.insert(word.to_string(), v);
        }
        if words.is_empty() {
            return Err((0, "no entries".into()));
        }
        let mut emojis = HashMap::new();
        for (n, line) in emoji.trim_end_matches('\n').split('\n').enumerate() {
            let mut f = pystr::strip(line).split('\t');
            let (Some(e), Some(desc)) = (f.next(), f.next()) else {
                return Err((1, format!("line {}: no tab-separated description", n + 1)));
            };
            // Text is scanned one character at a time, so only one-character keys can match.
            let mut cs = e.chars();
            if let (Some(c), None) = (cs.next(), cs.next()) {
                emojis.insert(c, desc.to_string());
            }
        }
        Ok(Self {
            lexicon: words,
            emojis,
            negate: NEGATE.iter().copied().collect(),
        })
    }

    /// Sentiment of `text`: `compound` in [-1, 1] and the shares `neg`, `neu`, `pos`.
    pub fn polarity_scores(&self, text: &str) -> Polarity {
        let mut plain = String::with_capacity(text.len());
        let mut prev_space = true;
        for c in text.chars() {
            if let Some(desc) = self.emojis.get(&c) {
                if !prev_space {
                    plain.push(' ');
                }
                plain.push_str(desc);
                prev_space = false;
            } else {
                plain.push(c);
                prev_space = c == ' ';
            }
        }
        let text = pystr::strip(&plain);
        let words: Vec<&str> = pystr::split(text).map(strip_punc_if_word).collect();
        let lower: Vec<String> = words.iter().map(|w| w.to_lowercase()).collect();
        let caps = words.iter().filter(|w| pystr::is_upper(w)).count();
        let is_cap_diff = caps > 0 && caps < words.len();
        let s = Sentence {
            words: &words,
            lower: &lower,
            is_cap_diff,
        };
        let mut sentiments = Vec::with_capacity(words.len());
        for i in 0..words.len() {
            let item = lower[i].as_str();
            if booster(item).is_some()
                || (i + 1 < words.len() && item == "kind" && lower[i + 1] == "of")
            {
                sentiments.push(0.0);
                continue;
            }
            sentiments.push(self.valence(&s, i));
        }
        but_check(&lower, &mut sentiments);
        score(&sentiments, text)
    }

    fn in_lexicon(&self, w: &str) -> bool {
        self.lexicon.contains_key(w)
    }

    fn negated(&self, w: &str) -> bool {
        let w = w.to_lowercase();
        self.negate.contains(w.as_str()) || w.contains("n't")
    }

    /// `sentiment_valence` for word `i`.
    fn valence(&self, s: &Sentence, i: usize) -> f64 {
        let l = s.lower;
        let Some(&base) = self.lexicon.get(l[i].as_str()) else {
            return 0.0;
        };
        let mut v = base;
        if l[i] == "no" && i + 1 != l.len() && self.in_lexicon(&l[i + 1]) {
            v = 0.0;
        }
        if (i > 0 && l[i - 1] == "no")
            || (i > 1 && l[i - 2] == "no")
            || (i > 2 && l[i - 3] == "no" && (l[i - 1] == "or" || l[i - 1] == "nor"))
        {
            v = base * N_SCALAR;
        }
        if pystr::is_upper(s.words[i]) && s.is_cap_diff {
            v += if v > 0.0 { C_INCR } else { -C_INCR };
        }
        for start in 0..3 {
            if i > start && !self.in_lexicon(&l[i - (start + 1)]) {
                let mut scalar = scalar_inc_dec(s.words[i - (start + 1)], v, s.is_cap_diff);
                if start == 1 && scalar != 0.0 {
                    scalar *= 0.95;
                }
                if start == 2 && scalar != 0.0 {
                    scalar *= 0.9;
                }
                v += scalar;
                v = self.negation_check(v, l, start, i);
                if start == 2 {
                    v = special_idioms(v, l, i);
                }
            }
        }
        self.least_check(v, l, i)
    }

    fn negation_check(&self, v: f64, l: &[String], start: usize, i: usize) -> f64 {
        let so_this = |w: &str| w == "so" || w == "this";
        match start {
            0 if self.negated(&l[i - 1]) => v * N_SCALAR,
            1 => {
                if l[i - 2] == "never" && so_this(&l[i - 1]) {
                    v * 1.25
                } else if l[i - 2] == "without" && l[i - 1] == "doubt" {
                    v
                } else if self.negated(&l[i - 2]) {
                    v * N_SCALAR
                } else {
                    v
                }
            }
            // The reference's precedence: (never and (so or this)) or (so or this).
            2 => {
                if (l[i - 3] == "never" && so_this(&l[i - 2])) || so_this(&l[i - 1]) {
                    v * 1.25
                } else if l[i - 3] == "without" && (l[i - 2] == "doubt" || l[i - 1] == "doubt") {
                    v
                } else if self.negated(&l[i - 3]) {
                    v * N_SCALAR
                } else {
                    v
                }
            }
            _ => v,
        }
    }

    fn least_check(&self, v: f64, l: &[String], i: usize) -> f64 {
        if i > 1 && !self.in_lexicon(&l[i - 1]) && l[i - 1] == "least" {
            if l[i - 2] != "at" && l[i - 2] != "very" {
                return v * N_SCALAR;
            }
        } else if i > 0 && !self.in_lexicon(&l[i - 1]) && l[i - 1] == "least" {
            return v * N_SCALAR;
        }
        v
    }
}

struct Sentence<'a> {
    words: &'a [&'a str],
    lower: &'a [String],
    is_cap_diff: bool,
}

fn booster(w: &str) -> Option<f64> {
    if BOOST_UP.contains(&w) {
        Some(B_INCR)
    } else if BOOST_DOWN.contains(&w) {
        Some(B_DECR)
    } else {
        None
    }
}

/// Leading and trailing ASCII punctuation removed, unless that leaves two characters or
/// fewer (an emoticon such as ":)" is kept whole).
fn strip_punc_if_word(token: &str) -> &str {
    let stripped = token.trim_matches(|c: char| c.is_ascii_punctuation());
    if stripped.chars().count() <= 2 {
        token
    } else {
        stripped
    }
}

fn scalar_inc_dec(word: &str, valence: f64, is_cap_diff: bool) -> f64 {
    let Some(mut scalar) = booster(&word.to_lowercase()) else {
        return 0.0;
    };
    if valence < 0.0 {
        scalar *= -1.0;
    }
    if pystr::is_upper(word) && is_cap_diff {
        scalar += if valence > 0.0 { C_INCR } else { -C_INCR };
    }
    scalar
}

fn special_case(seq: &str) -> Option<f64> {
    SPECIAL_CASES
        .iter()
        .find(|(k, _)| *k == seq)
        .map(|&(_, v)| v)
}

/// Called for word `i` with `i >= 3`.
fn special_idioms(mut v: f64, l: &[String], i: usize) -> f64 {
    let one_zero = format!("{} {}", l[i - 1], l[i]);
    let two_one_zero = format!("{} {} {}", l[i - 2], l[i - 1], l[i]);
    let two_one = format!("{} {}", l[i - 2], l[i - 1]);
    let three_two_one = format!("{} {} {}", l[i - 3], l[i - 2], l[i - 1]);
    let three_two = format!("{} {}", l[i - 3], l[i - 2]);
    for seq in [
        &one_zero,
        &two_one_zero,
        &two_one,
        &three_two_one,
        &three_two,
    ] {
        if let Some(x) = special_case(seq) {
            v = x;
            break;
        }
    }
    if l.len() > i + 1 {
        if let Some(x) = special_case(&format!("{} {}", l[i], l[i + 1])) {
            v = x;
        }
    }
    if l.len() > i + 2 {
        if let Some(x) = special_case(&format!("{} {} {}", l[i], l[i + 1], l[i + 2])) {
            v = x;
        }
    }
    for n_gram in [&three_two_one, &three_two, &two_one] {
        if let Some(b) = booster(n_gram) {
            v += b;
        }
    }
    v
}

/// `_but_check`, quirk included: each position's value is looked up again by equality
/// (Python's `list.index`), so the first equal value is the one scaled.
fn but_check(lower: &[String], sentiments: &mut [f64]) {
    let Some(bi) = lower.iter().position(|w| w == "but") else {
        return;
    };
    for k in 0..sentiments.len() {
        let s = sentiments[k];
        let Some(si) = sentiments.iter().position(|&x| x == s) else {
            continue;
        };
        if si < bi {
            sentiments[si] = s * 0.5;
        } else if si > bi {
            sentiments[si] = s * 1.5;
        }
    }
}

fn punctuation_emphasis(text: &str) -> f64 {
    let ep = text.matches('!').count().min(4);
    let qm = text.matches('?').count();
    let qm_amp = match qm {
        0 | 1 => 0.0,
        2 | 3 => qm as f64 * 0.18,
        _ => 0.96,
    };
    ep as f64 * 0.292 + qm_amp
}

fn score(sentiments: &[f64], text: &str) -> Polarity {
    if sentiments.is_empty() {
        return Polarity {
            neg: 0.0,
            neu: 0.0,
            pos: 0.0,
            compound: 0.0,
        };
    }
    let mut sum = sentiments.iter().fold(0.0, |a, &b| a + b);
    let amp = punctuation_emphasis(text);
    if sum > 0.0 {
        sum += amp;
    } else if sum < 0.0 {
        sum -= amp;
    }
    let compound = (sum / (sum * sum + 15.0).sqrt()).clamp(-1.0, 1.0);
    let (mut pos_sum, mut neg_sum, mut neu) = (0.0, 0.0, 0usize);
    for &s in sentiments {
        if s > 0.0 {
            pos_sum += s + 1.0;
        }
        if s < 0.0 {
            neg_sum += s - 1.0;
        }
        if s == 0.0 {
            neu += 1;
        }
    }
    if pos_sum > neg_sum.abs() {
        pos_sum += amp;
    } else if pos_sum < neg_sum.abs() {
        neg_sum -= amp;
    }
    let total = pos_sum + neg_sum.abs() + neu as f64;
    Polarity {
        neg: pystr::round((neg_sum / total).abs(), 3),
        neu: pystr::round((neu as f64 / total).abs(), 3),
        pos: pystr::round((pos_sum / total).abs(), 3),
        compound: pystr::round(compound, 4),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Vader {
        let lex = "good\t1.9\t0.9\t[]\r\nbad\t-2.5\t0.6\t[]\r\nfunny\t1.9\t0.5\t[]\r\nsmart\t1.7\t0.7\t[]\r\nno\t-1.2\t0.4\t[]\r\n";
        Vader::parse(lex, "\u{1f601}\tbeaming face\n").unwrap()
    }

    #[test]
    fn negation_booster_caps_and_but() {
        let v = tiny();
        let p = v.polarity_scores("The book was good.");
        assert!(p.compound > 0.4 && p.neu > 0.0);
        let n = v.polarity_scores("The book was not good.");
        assert!(n.compound < 0.0, "{n:?}");
        let boosted = v.polarity_scores("The book was very good.");
        assert!(boosted.compound > p.compound);
        let caps = v.polarity_scores("The book was GOOD.");
        assert!(caps.compound > p.compound);
        let but = v.polarity_scores("It was good but bad");
        assert!(but.compound < 0.0, "{but:?}");
        assert_eq!(v.polarity_scores("").compound, 0.0);
        assert_eq!(v.polarity_scores("   ").neu, 0.0);
    }

    #[test]
    fn emoji_become_words_and_bad_lexicons_are_errors() {
        let v = tiny();
        // "beaming" and "face" are not in the tiny lexicon: neutral words, no panic.
        assert_eq!(v.polarity_scores("ok\u{1f601}").neu, 1.0);
        assert!(Vader::parse("word-without-measure\n", "").is_err());
        assert!(Vader::parse("w\tnot-a-number\n", "").is_err());
    }
}
