//! llama.cpp's GBNF: `name ::= alternatives`, one rule per line (a rule may go on over
//! several lines inside parentheses or after `::=` / `|`), `"literals"` and `[classes]`
//! with `\x`, `\u`, `\U`, `\t`, `\n`, `\r`, `\\`, `\"`, `\[`, `\]` escapes, `.` for any
//! character, `( )` groups, `*`, `+`, `?` and `{m}`, `{m,}`, `{m,n}`, `{,n}`, `#` comments.
//! Groups and repetitions become generated rules as llama.cpp makes them, so the grammar
//! the matcher follows has only classes and rule references.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::grammar::{Grammar, Sym, MAX_ELEMS, MAX_RULES};

/// Deepest nesting of parentheses accepted (the parser recurses on them).
const MAX_DEPTH: usize = 128;
/// Largest bound of a `{m,n}` repetition.
const MAX_REPEAT: u32 = 10_000;

/// Parses GBNF text into a grammar whose start rule is `root`.
pub fn parse(text: &str) -> Result<Grammar> {
    let mut p = Parser {
        src: text,
        pos: 0,
        ids: HashMap::new(),
        names: Vec::new(),
        rules: Vec::new(),
        symbols: 0,
    };
    p.grammar()?;
    Grammar::build(p.names, p.rules)
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    ids: HashMap<String, u32>,
    names: Vec<String>,
    rules: Vec<Option<Vec<Vec<Sym>>>>,
    /// Symbols made so far, to stop a repetition bomb before it fills memory.
    symbols: usize,
}

impl Parser<'_> {
    fn error(&self, message: impl Into<String>) -> Error {
        let before = &self.src[..self.pos];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Error::Syntax {
            line,
            column,
            message: message.into(),
        }
    }

    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn eat(&mut self, s: &str) -> bool {
        if self.src[self.pos..].starts_with(s) {
            self.pos += s.len();
            true
        } else {
            false
        }
    }

    /// Skips blanks and comments; line breaks too when `newlines`.
    fn space(&mut self, newlines: bool) {
        while let Some(c) = self.peek() {
            match c {
                ' ' | '\t' => self.pos += 1,
                '\r' | '\n' if newlines => self.pos += 1,
                '#' => {
                    let rest = &self.src[self.pos..];
                    self.pos += rest.find(['\r', '\n']).unwrap_or(rest.len());
                }
                _ => break,
            }
        }
    }

    fn rule_id(&mut self, name: &str) -> Result<u32> {
        if let Some(&id) = self.ids.get(name) {
            return Ok(id);
        }
        self.new_rule(name.to_string())
    }

    fn new_rule(&mut self, name: String) -> Result<u32> {
        if self.rules.len() >= MAX_RULES {
            return Err(self.error(format!("more than {MAX_RULES} rules")));
        }
        let id = self.rules.len() as u32;
        self.ids.insert(name.clone(), id);
        self.names.push(name);
        self.rules.push(None);
        Ok(id)
    }

    /// A generated rule named after `base` (`base-3`), defined at once.
    fn generated(&mut self, base: &str, alts: Vec<Vec<Sym>>) -> Result<u32> {
        let mut name = format!("{base}-{}", self.rules.len());
        while self.ids.contains_key(&name) {
            name.push('_');
        }
        let id = self.new_rule(name)?;
        self.count(alts.iter().map(|a| a.len() + 1).sum())?;
        self.rules[id as usize] = Some(alts);
        Ok(id)
    }

    fn count(&mut self, n: usize) -> Result<()> {
        self.symbols += n;
        if self.symbols > MAX_ELEMS {
            return Err(self.error(format!(
                "more than {MAX_ELEMS} elements after expanding repetitions"
            )));
        }
        Ok(())
    }

    fn name(&mut self) -> Option<String> {
        let start = self.pos;
        let rest = &self.src[start..];
        let len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .unwrap_or(rest.len());
        if len == 0 {
            return None;
        }
        self.pos += len;
        Some(self.src[start..start + len].to_string())
    }

    fn grammar(&mut self) -> Result<()> {
        self.space(true);
        while self.peek().is_some() {
            let Some(name) = self.name() else {
                return Err(self.error("expected a rule name"));
            };
            self.space(false);
            if !self.eat("::=") {
                return Err(self.error(format!("expected `::=` after `{name}`")));
            }
            self.space(true);
            let id = self.rule_id(&name)?;
            if self.rules[id as usize].is_some() {
                return Err(self.error(format!("rule `{name}` is defined twice")));
            }
            let alts = self.alternates(&name, 0)?;
            self.count(alts.iter().map(|a| a.len() + 1).sum())?;
            self.rules[id as usize] = Some(alts);
            self.space(false);
            match self.peek() {
                None | Some('\n' | '\r') => self.space(true),
                Some(c) => return Err(self.error(format!("unexpected `{c}`"))),
            }
        }
        Ok(())
    }

    fn alternates(&mut self, rule: &str, depth: usize) -> Result<Vec<Vec<Sym>>> {
        if depth > MAX_DEPTH {
            return Err(self.error(format!("groups nested deeper than {MAX_DEPTH}")));
        }
        let mut alts = vec![self.sequence(rule, depth)?];
        while self.eat("|") {
            self.space(true);
            alts.push(self.sequence(rule, depth)?);
        }
        Ok(alts)
    }

    /// Items up to `|`, `)`, the end, or (outside groups) the end of the line.
    fn sequence(&mut self, rule: &str, depth: usize) -> Result<Vec<Sym>> {
        let nested = depth > 0;
        let mut out: Vec<Sym> = Vec::new();
        // Where the last item begins in `out`, for a repetition that follows it.
        let mut last: Option<usize> = None;
        loop {
            self.space(nested);
            let Some(c) = self.peek() else { break };
            match c {
                '|' | ')' | '\n' | '\r' => break,
                '"' => {
                    self.pos += 1;
                    last = Some(out.len());
                    loop {
                        match self.peek() {
                            None | Some('\n' | '\r') => {
                                return Err(self.error("unterminated string literal"))
                            }
                            Some('"') => {
                                self.pos += 1;
                                break;
                            }
                            Some(_) => {
                                let ch = self.char_in_literal()?;
                                out.push(Sym::Chars {
                                    ranges: vec![(ch, ch)],
                                    negated: false,
                                });
                            }
                        }
                    }
                }
                '[' => {
                    self.pos += 1;
                    last = Some(out.len());
                    let negated = self.eat("^");
                    let mut ranges = Vec::new();
                    loop {
                        match self.peek() {
                            None | Some('\n' | '\r') => {
                                return Err(self.error("unterminated character class"))
                            }
                            Some(']') => {
                                self.pos += 1;
                                break;
                            }
                            Some(_) => {
                                let lo = self.char_in_literal()?;
                                let hi = if self.src[self.pos..].starts_with('-')
                                    && !self.src[self.pos + 1..].starts_with(']')
                                {
                                    self.pos += 1;
                                    self.char_in_literal()?
                                } else {
                                    lo
                                };
                                ranges.push((lo, hi));
                            }
                        }
                    }
                    out.push(Sym::Chars { ranges, negated });
                }
                '.' => {
                    self.pos += 1;
                    last = Some(out.len());
                    out.push(Sym::Chars {
                        ranges: Vec::new(),
                        negated: true,
                    });
                }
                '(' => {
                    self.pos += 1;
                    self.space(true);
                    let alts = self.alternates(rule, depth + 1)?;
                    self.space(true);
                    if !self.eat(")") {
                        return Err(self.error("expected `)`"));
                    }
                    let id = self.generated(rule, alts)?;
                    last = Some(out.len());
                    out.push(Sym::Rule(id));
                }
                '*' | '+' | '?' | '{' => {
                    let Some(start) = last.take() else {
                        return Err(self.error(format!("`{c}` has nothing to repeat")));
                    };
                    let (min, max) = self.repetition()?;
                    let item = out.split_off(start);
                    let repeated = self.repeat(rule, item, min, max)?;
                    out.extend(repeated);
                }
                '<' => {
                    return Err(
                        self.error("token references (`<...>`) are not supported; write the text")
                    )
                }
                c if c.is_ascii_alphanumeric() || c == '-' || c == '_' => {
                    let name = self.name().unwrap_or_default();
                    let save = self.pos;
                    self.space(false);
                    if self.src[self.pos..].starts_with("::=") {
                        return Err(self.error(format!(
                            "a new rule `{name}` begins before the line ends: missing line break?"
                        )));
                    }
                    self.pos = save;
                    last = Some(out.len());
                    out.push(Sym::Rule(self.rule_id(&name)?));
                }
                c => return Err(self.error(format!("unexpected `{c}`"))),
            }
        }
        Ok(out)
    }

    /// One character of a literal or class, escapes decoded.
    fn char_in_literal(&mut self) -> Result<u32> {
        let Some(c) = self.bump() else {
            return Err(self.error("unexpected end of grammar"));
        };
        if c != '\\' {
            return Ok(c as u32);
        }
        let Some(e) = self.bump() else {
            return Err(self.error("unexpected end after `\\`"));
        };
        let hex = |p: &mut Self, n: usize| -> Result<u32> {
            let digits = p.src.get(p.pos..p.pos + n).unwrap_or("");
            if digits.len() != n || !digits.chars().all(|d| d.is_ascii_hexdigit()) {
                return Err(p.error(format!("`\\{e}` needs {n} hex digits")));
            }
            p.pos += n;
            u32::from_str_radix(digits, 16).map_err(|_| p.error("bad hex escape"))
        };
        Ok(match e {
            'x' => hex(self, 2)?,
            'u' => hex(self, 4)?,
            'U' => hex(self, 8)?,
            't' => '\t' as u32,
            'r' => '\r' as u32,
            'n' => '\n' as u32,
            '\\' | '"' | '[' | ']' | '-' | '^' | '/' => e as u32,
            other => return Err(self.error(format!("unknown escape `\\{other}`"))),
        })
    }

    /// After an item: `*`, `+`, `?` or `{m}`, `{m,}`, `{m,n}`, `{,n}`.
    fn repetition(&mut self) -> Result<(u32, Option<u32>)> {
        match self.bump() {
            Some('*') => Ok((0, None)),
            Some('+') => Ok((1, None)),
            Some('?') => Ok((0, Some(1))),
            _ => {
                self.space(false);
                let min = self.number()?.unwrap_or(0);
                self.space(false);
                let max = if self.eat(",") {
                    self.space(false);
                    self.number()?
                } else {
                    Some(min)
                };
                self.space(false);
                if !self.eat("}") {
                    return Err(self.error("expected `}` to close the repetition"));
                }
                if max.is_some_and(|m| m < min) {
                    return Err(self.error(format!("repetition {{{min},{max:?}}}: max < min")));
                }
                Ok((min, max))
            }
        }
    }

    fn number(&mut self) -> Result<Option<u32>> {
        let rest = &self.src[self.pos..];
        let len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if len == 0 {
            return Ok(None);
        }
        let n: u32 = rest[..len]
            .parse()
            .ok()
            .filter(|&n| n <= MAX_REPEAT)
            .ok_or_else(|| self.error(format!("repetition bound above {MAX_REPEAT}")))?;
        self.pos += len;
        Ok(Some(n))
    }

    /// `item{min,max}` as llama.cpp rewrites it: `min` copies, then either a right-recursive
    /// `x-star ::= item x-star |` or `max - min` nested optional copies.
    fn repeat(
        &mut self,
        rule: &str,
        item: Vec<Sym>,
        min: u32,
        max: Option<u32>,
    ) -> Result<Vec<Sym>> {
        let one = if item.len() == 1 {
            item[0].clone()
        } else {
            Sym::Rule(self.generated(rule, vec![item])?)
        };
        self.count(min as usize + max.map_or(2, |m| (m - min) as usize * 2))?;
        let mut out = vec![one.clone(); min as usize];
        match max {
            None => {
                let id = self.new_rule(format!("{rule}-{}-star", self.rules.len()))?;
                self.rules[id as usize] = Some(vec![vec![one, Sym::Rule(id)], vec![]]);
                out.push(Sym::Rule(id));
            }
            Some(max) if max > min => {
                let mut inner = self.generated(rule, vec![vec![one.clone()], vec![]])?;
                for _ in 1..max - min {
                    inner =
                        self.generated(rule, vec![vec![one.clone(), Sym::Rule(inner)], vec![]])?;
                }
                out.push(Sym::Rule(inner));
            }
            Some(_) => {}
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syntax_error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn rules_literals_classes_and_repetitions_parse() {
        let g = parse(
            "root ::= \"a\" [b-d]* x? (\"e\" | [^f])+ .{2,3} # comment\n\
             x ::=\n  \"\\x41\\u00e9\\n\" |\n  [\\]-]\n",
        )
        .unwrap();
        assert!(g.rule_count() > 2);
        assert_eq!(g.rule_name(0), "root");
    }

    #[test]
    fn malformed_grammars_say_where() {
        assert_eq!(
            syntax_error("root ::= \"abc"),
            "grammar, line 1 column 14: unterminated string literal"
        );
        assert!(syntax_error("root ::= [a-b").contains("unterminated character class"));
        assert!(syntax_error("root ::= (\"a\"").contains("expected `)`"));
        assert!(syntax_error("root ::= * \"a\"").contains("nothing to repeat"));
        assert!(syntax_error("root ::= \"a\"{3,1}").contains("max < min"));
        assert!(syntax_error("root ::= \"a\"{99999}").contains("above"));
        assert!(syntax_error("root ::= \"\\q\"").contains("unknown escape"));
        assert!(syntax_error("root \"a\"").contains("expected `::=`"));
        assert!(syntax_error("root ::= a b ::= \"x\"").contains("missing line break"));
        assert!(syntax_error("root ::= <think>").contains("not supported"));
        assert_eq!(
            syntax_error("root ::= \"a\"\nroot ::= \"b\""),
            "grammar, line 2 column 10: rule `root` is defined twice"
        );
    }

    #[test]
    fn undefined_missing_root_and_left_recursion_are_refused() {
        assert_eq!(
            parse("root ::= item").unwrap_err().to_string(),
            "grammar: rule `item` is used but never defined"
        );
        assert!(parse("start ::= \"a\"")
            .unwrap_err()
            .to_string()
            .contains("no rule named `root`"));
        assert!(parse("root ::= root \"a\" | \"b\"")
            .unwrap_err()
            .to_string()
            .contains("left-recursive"));
        // Left recursion through a nullable prefix and through another rule.
        assert!(parse("root ::= e a\ne ::= \"x\"?\na ::= root \"y\" | \"z\"").is_err());
        // Right recursion is fine.
        assert!(parse("root ::= \"a\" root | \"b\"").is_ok());
    }

    #[test]
    fn repetition_bombs_are_bounded() {
        // Nested repetitions share their inner rule, so they stay small ...
        assert!(parse("root ::= (((\"a\"{10000}){10000}){10000})").is_ok());
        // ... but each copy written out counts.
        let bomb = format!("root ::= {}", "\"ab\"{10000} ".repeat(120));
        assert!(parse(&bomb).unwrap_err().to_string().contains("elements"));
        let rules = format!("root ::= {}", "\"a\"{0,10000} ".repeat(8));
        assert!(parse(&rules).unwrap_err().to_string().contains("rules"));
        let deep = format!("root ::= {}\"a\"{}", "(".repeat(500), ")".repeat(500));
        assert!(parse(&deep).unwrap_err().to_string().contains("nested"));
    }
}
