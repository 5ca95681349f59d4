//! MATH answers as Minerva (Lewkowycz et al. 2022, appendix D) and lm-evaluation-harness's
//! `minerva_math` read them: the final answer after "Final Answer: The final answer is",
//! the gold answer in the solution's last `\boxed{}`, both normalised by
//! `normalize_final_answer` (units and phrasing removed, TeX shorthand written out). The
//! harness then calls two answers equal when the strings are, or when sympy finds their
//! difference simplifies to 0; only the first test is made here (there is no computer
//! algebra system), so `minerva_exact_match` is a lower bound of the harness's
//! `exact_match` (answers written differently but equal in value count as wrong).

use fancy_regex::Regex;
use std::sync::OnceLock;

const SUBSTITUTIONS: [(&str, &str); 10] = [
    ("an ", ""),
    ("a ", ""),
    (".$", "$"),
    ("\\$", ""),
    ("\\ ", ""),
    (" ", ""),
    ("mbox", "text"),
    (",\\text{and}", ","),
    ("\\text{and}", ","),
    ("\\text{m}", "\\text{}"),
];

const REMOVED_EXPRESSIONS: &[&str] = &[
    "square",
    "ways",
    "integers",
    "dollars",
    "mph",
    "inches",
    "ft",
    "hours",
    "km",
    "units",
    "\\ldots",
    "sue",
    "points",
    "feet",
    "minutes",
    "digits",
    "cents",
    "degrees",
    "cm",
    "gm",
    "pounds",
    "meters",
    "meals",
    "edges",
    "students",
    "childrentickets",
    "multiples",
    "\\text{s}",
    "\\text{.}",
    "\\text{\ns}",
    "\\text{}^2",
    "\\text{}^3",
    "\\text{\n}",
    "\\text{}",
    "\\mathrm{th}",
    "^\\circ",
    "^{\\circ}",
    "\\;",
    ",\\!",
    "{,}",
    "\"",
    "\\dots",
];

fn is_alpha(s: &str) -> bool {
    !s.is_empty() && s.chars().all(char::is_alphabetic)
}

struct Patterns {
    unit_words: Vec<Regex>,
    command: Regex,
    dollars: Regex,
    text: Regex,
    textbf: Regex,
    overline: Regex,
    boxed: Regex,
    frac: Regex,
    sqrt_index: Regex,
    sqrt: Regex,
    thousands: Regex,
    final_answer: Regex,
}

fn patterns() -> &'static Patterns {
    static P: OnceLock<Patterns> = OnceLock::new();
    P.get_or_init(|| {
        let re = |p: &str| Regex::new(p).unwrap_or_else(|e| panic!("pattern {p}: {e}"));
        Patterns {
            unit_words: REMOVED_EXPRESSIONS
                .iter()
                .filter(|e| is_alpha(e))
                .map(|e| re(&format!(r"(?<!\\)\b{e}\b")))
                .collect(),
            command: re(r"\\[a-zA-Z]+"),
            dollars: re(r"(.*?)(\$)(.*?)(\$)(.*)"),
            text: re(r"(\\text\{)(.*?)(\})"),
            textbf: re(r"(\\textbf\{)(.*?)(\})"),
            overline: re(r"(\\overline\{)(.*?)(\})"),
            boxed: re(r"(\\boxed\{)(.*)(\})"),
            frac: re(r"(frac)([^{])(.)"),
            sqrt_index: re(r"(sqrt)(\[[^\]]*\])(\w)"),
            sqrt: re(r"(sqrt)(?!\[)([^{])"),
            thousands: re(r"^-?\d{1,3}(,\d{3})+$"),
            final_answer: re(r"Final Answer: The final answer is(.*?). I hope it is correct."),
        }
    })
}

/// `normalize_final_answer`.
pub fn normalize_final_answer(answer: &str) -> String {
    let p = patterns();
    let mut s = answer.rsplit('=').next().unwrap_or("").to_string();
    for r in &p.unit_words {
        s = r.replace_all(&s, "").into_owned();
    }
    for (before, after) in SUBSTITUTIONS {
        s = s.replace(before, after);
    }
    for expr in REMOVED_EXPRESSIONS {
        if is_alpha(expr) {
            // Units glued to their neighbours once spaces are gone, outside TeX commands
            // (so "ft" does not break "\left").
            let mut out = String::with_capacity(s.len());
            let mut last = 0;
            for m in p.command.find_iter(&s).flatten() {
                out.push_str(&s[last..m.start()].replace(expr, ""));
                out.push_str(m.as_str());
                last = m.end();
            }
            out.push_str(&s[last..].replace(expr, ""));
            s = out;
        } else {
            s = s.replace(expr, "");
        }
    }
    s = p.dollars.replace_all(&s, "$$${3}$$").into_owned();
    s = p.text.replace_all(&s, "${2}").into_owned();
    s = p.textbf.replace_all(&s, "${2}").into_owned();
    s = p.overline.replace_all(&s, "${2}").into_owned();
    s = p.boxed.replace_all(&s, "${2}").into_owned();
    s = p.frac.replace_all(&s, "frac{${2}}{${3}}").into_owned();
    s = p.sqrt_index.replace_all(&s, "${1}${2}{${3}}").into_owned();
    s = p.sqrt.replace_all(&s, "sqrt{${2}}").into_owned();
    s = s.replace('$', "");
    if p.thousands.is_match(&s).unwrap_or(false) {
        s = s.replace(',', "");
    }
    s
}

/// `get_unnormalized_answer`: what follows "Final Answer: The final answer is", or
/// `[invalidanswer]`.
pub fn unnormalized_answer(text: &str) -> String {
    let text = format!("{text}I hope it is correct.");
    match patterns().final_answer.captures(&text) {
        Ok(Some(c)) => c.get(1).map_or("", |m| m.as_str()).trim().to_string(),
        _ => "[invalidanswer]".into(),
    }
}

/// `last_boxed_only_string`: the last `\boxed{...}` (or `\fbox{...}`, or `\boxed x`) of
/// a solution, braces balanced; None when there is none or it is not closed.
pub fn last_boxed(s: &str) -> Option<String> {
    if s.contains("\\boxed ") {
        let tail = s.rsplit("\\boxed ").next().unwrap_or("");
        return Some(format!("\\boxed {}", tail.split('$').next().unwrap_or("")));
    }
    let idx = s.rfind("\\boxed").or_else(|| s.rfind("\\fbox"))?;
    let mut depth = 0i32;
    for (i, c) in s[idx..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(s[idx..idx + i + 1].to_string());
                }
            }
            _ => {}
        }
    }
    None
}

/// `remove_boxed`: the inside of `\boxed{...}` or what follows `\boxed `.
pub fn remove_boxed(s: &str) -> Option<String> {
    if let Some(rest) = s.strip_prefix("\\boxed ") {
        return Some(rest.to_string());
    }
    s.strip_prefix("\\boxed{")
        .and_then(|r| r.strip_suffix('}'))
        .map(str::to_string)
}

/// 1.0 when the generation's normalised final answer equals the normalised last boxed
/// answer of the reference `solution` (as strings).
pub fn exact_match(generation: &str, solution: &str) -> f64 {
    let Some(gold) = last_boxed(solution).and_then(|b| remove_boxed(&b)) else {
        return 0.0;
    };
    let gold = normalize_final_answer(&gold);
    let answer = normalize_final_answer(&unnormalized_answer(generation));
    f64::from(u8::from(!answer.is_empty() && answer == gold))
}
