//! Python literals and the `assert` lines of MBPP's tests, parsed so they can be written
//! as Rust: `assert f(args) == expected`, `assert f(args)`, `assert not f(args)`, and
//! `assert math.isclose(f(args), expected, rel_tol=x)`. Anything else is refused.

/// A Python literal.
#[derive(Debug, Clone, PartialEq)]
pub enum Py {
    Int(i128),
    /// The float and its source text (kept as written).
    Float(f64, String),
    Str(String),
    Bool(bool),
    None,
    List(Vec<Py>),
    Tuple(Vec<Py>),
    Set(Vec<Py>),
    Dict(Vec<(Py, Py)>),
}

/// What one assert line checks.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// `f(args) == expected`.
    Equals { call: Call, expected: Py },
    /// `f(args)` (true) or `not f(args)` (false).
    Truth { call: Call, expected: bool },
    /// `math.isclose(f(args), expected, rel_tol=r)`.
    Close {
        call: Call,
        expected: Py,
        rel_tol: f64,
    },
}

/// A call of the function under test with literal arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub name: String,
    pub args: Vec<Py>,
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

type R<T> = Result<T, String>;

impl<'a> Parser<'a> {
    fn ws(&mut self) {
        while self.i < self.s.len() && (self.s[self.i] as char).is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, t: &str) -> bool {
        self.ws();
        if self.s[self.i..].starts_with(t.as_bytes()) {
            self.i += t.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, t: &str) -> R<()> {
        if self.eat(t) {
            Ok(())
        } else {
            Err(format!("expected {t:?} at byte {}", self.i))
        }
    }

    fn ident(&mut self) -> R<String> {
        self.ws();
        let start = self.i;
        while self.i < self.s.len()
            && (self.s[self.i].is_ascii_alphanumeric()
                || self.s[self.i] == b'_'
                || self.s[self.i] == b'.')
        {
            self.i += 1;
        }
        if start == self.i {
            return Err(format!("expected a name at byte {}", self.i));
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    /// Items up to `close`, separated by commas (a trailing comma allowed).
    fn items(&mut self, close: &str) -> R<(Vec<Py>, bool)> {
        let mut v = Vec::new();
        let mut trailing_comma = false;
        loop {
            if self.eat(close) {
                return Ok((v, trailing_comma));
            }
            v.push(self.value()?);
            trailing_comma = self.eat(",");
            if !trailing_comma {
                self.expect(close)?;
                return Ok((v, false));
            }
        }
    }

    fn value(&mut self) -> R<Py> {
        match self.peek() {
            Some(b'[') => {
                self.i += 1;
                Ok(Py::List(self.items("]")?.0))
            }
            Some(b'(') => {
                self.i += 1;
                let (v, comma) = self.items(")")?;
                // `(x)` is x; `(x,)` and `()` are tuples.
                if v.len() == 1 && !comma {
                    Ok(v.into_iter().next().unwrap_or(Py::None))
                } else {
                    Ok(Py::Tuple(v))
                }
            }
            Some(b'{') => {
                self.i += 1;
                if self.eat("}") {
                    return Ok(Py::Dict(Vec::new()));
                }
                let first = self.value()?;
                if self.eat(":") {
                    let mut pairs = vec![(first, self.value()?)];
                    while self.eat(",") {
                        if self.peek() == Some(b'}') {
                            break;
                        }
                        let k = self.value()?;
                        self.expect(":")?;
                        pairs.push((k, self.value()?));
                    }
                    self.expect("}")?;
                    Ok(Py::Dict(pairs))
                } else {
                    let mut v = vec![first];
                    if self.eat(",") {
                        v.extend(self.items("}")?.0);
                    } else {
                        self.expect("}")?;
                    }
                    Ok(Py::Set(v))
                }
            }
            Some(b'\'') | Some(b'"') => self.string(),
            Some(c) if c == b'-' || c == b'+' || c.is_ascii_digit() || c == b'.' => self.number(),
            Some(_) => match self.ident()?.as_str() {
                "True" => Ok(Py::Bool(true)),
                "False" => Ok(Py::Bool(false)),
                "None" => Ok(Py::None),
                other => Err(format!("{other} is not a literal")),
            },
            None => Err("unexpected end".into()),
        }
    }

    fn number(&mut self) -> R<Py> {
        let start = self.i;
        if matches!(self.s[self.i], b'-' | b'+') {
            self.i += 1;
        }
        while let Some(&c) = self.s.get(self.i) {
            let exponent_sign = matches!(c, b'-' | b'+')
                && self.i > start + 1
                && matches!(self.s[self.i - 1], b'e' | b'E');
            if c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_') || exponent_sign {
                self.i += 1;
            } else {
                break;
            }
        }
        let text: String = String::from_utf8_lossy(&self.s[start..self.i]).replace('_', "");
        if let Ok(i) = text.parse::<i128>() {
            return Ok(Py::Int(i));
        }
        if text.contains(['j', 'J', 'x', 'X', 'o', 'b']) {
            return Err(format!("number {text} is not supported"));
        }
        text.parse::<f64>()
            .map(|f| Py::Float(f, text.trim_start_matches('+').to_string()))
            .map_err(|_| format!("bad number {text}"))
    }

    fn string(&mut self) -> R<Py> {
        let q = self.s[self.i];
        self.i += 1;
        let mut out = Vec::new();
        loop {
            let Some(&c) = self.s.get(self.i) else {
                return Err("unterminated string".into());
            };
            self.i += 1;
            if c == q {
                break;
            }
            if c != b'\\' {
                out.push(c);
                continue;
            }
            let Some(&e) = self.s.get(self.i) else {
                return Err("unterminated escape".into());
            };
            self.i += 1;
            match e {
                b'n' => out.push(b'\n'),
                b't' => out.push(b'\t'),
                b'r' => out.push(b'\r'),
                b'\\' | b'\'' | b'"' => out.push(e),
                b'0' => out.push(0),
                _ => return Err(format!("escape \\{} is not supported", e as char)),
            }
        }
        let s = String::from_utf8(out).map_err(|_| "a string that is not UTF-8".to_string())?;
        // Adjacent literals concatenate.
        if matches!(self.peek(), Some(b'\'' | b'"')) {
            if let Py::Str(rest) = self.string()? {
                return Ok(Py::Str(s + &rest));
            }
        }
        Ok(Py::Str(s))
    }

    fn call(&mut self) -> R<Call> {
        let name = self.ident()?;
        if name.contains('.') {
            return Err(format!("{name}: only a plain function is supported"));
        }
        self.expect("(")?;
        let args = self.items(")")?.0;
        Ok(Call { name, args })
    }

    fn end(&mut self) -> R<()> {
        self.ws();
        if self.i == self.s.len() {
            Ok(())
        } else {
            Err(format!("unexpected text at byte {}", self.i))
        }
    }
}

/// Parses the Python literal at the start of `text` (leading whitespace skipped);
/// returns it and how many bytes it took. Text after it is left alone.
pub fn parse_literal_prefix(text: &str) -> R<(Py, usize)> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    let v = p.value()?;
    Ok((v, p.i))
}

/// Parses one `assert ...` line of an MBPP test list.
pub fn parse_assert(line: &str) -> R<Check> {
    let line = line.trim();
    let body = line
        .strip_prefix("assert ")
        .or_else(|| line.strip_prefix("assert("))
        .map(|b| {
            if line.starts_with("assert(") {
                format!("({b}")
            } else {
                b.to_string()
            }
        })
        .ok_or("not an assert")?;
    let mut p = Parser {
        s: body.as_bytes(),
        i: 0,
    };
    if p.eat("not ") {
        let call = p.call()?;
        p.end()?;
        return Ok(Check::Truth {
            call,
            expected: false,
        });
    }
    if p.eat("math.isclose(") {
        let call = p.call()?;
        p.expect(",")?;
        let expected = p.value()?;
        let mut rel_tol = 1e-9;
        if p.eat(",") {
            p.expect("rel_tol")?;
            p.expect("=")?;
            rel_tol = match p.value()? {
                Py::Float(f, _) => f,
                Py::Int(i) => i as f64,
                _ => return Err("rel_tol must be a number".into()),
            };
        }
        p.expect(")")?;
        p.end()?;
        return Ok(Check::Close {
            call,
            expected,
            rel_tol,
        });
    }
    // An extra pair of parentheses around the call is common: `assert (f(x)) == y`.
    let wrapped = p.eat("(");
    let call = p.call()?;
    if wrapped {
        p.expect(")")?;
    }
    if p.eat("==") {
        let expected = p.value()?;
        p.end()?;
        return Ok(Check::Equals { call, expected });
    }
    if p.eat("is ") || p.eat("!=") {
        return Err("only == comparisons are supported".into());
    }
    p.end()?;
    Ok(Check::Truth {
        call,
        expected: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mbpp_asserts_parse() {
        let c = parse_assert(r#"assert remove_Occ("hello","l") == "heo""#).unwrap();
        assert_eq!(
            c,
            Check::Equals {
                call: Call {
                    name: "remove_Occ".into(),
                    args: vec![Py::Str("hello".into()), Py::Str("l".into())]
                },
                expected: Py::Str("heo".into())
            }
        );
        let c =
            parse_assert("assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)").unwrap();
        let Check::Equals { call, expected } = c else {
            panic!()
        };
        assert_eq!(call.args.len(), 2);
        assert_eq!(expected, Py::Tuple(vec![Py::Int(4), Py::Int(5)]));
        let c = parse_assert("assert heap_queue_largest( [25, 35, 22],3)==[35, 25] ").unwrap();
        assert!(matches!(c, Check::Equals { .. }));
        assert_eq!(
            parse_assert("assert not is_not_prime(2)").unwrap(),
            Check::Truth {
                call: Call {
                    name: "is_not_prime".into(),
                    args: vec![Py::Int(2)]
                },
                expected: false
            }
        );
        let c = parse_assert("assert math.isclose(area(2.5), 19.63, rel_tol=0.001)").unwrap();
        assert!(matches!(c, Check::Close { rel_tol, .. } if rel_tol == 0.001));
        let c = parse_assert("assert f({'a': 1, 'b': -2.5e3}, {1, 2}, (1,), ()) == None").unwrap();
        let Check::Equals { call, expected } = c else {
            panic!()
        };
        assert_eq!(expected, Py::None);
        assert_eq!(call.args[2], Py::Tuple(vec![Py::Int(1)]));
        assert_eq!(call.args[1], Py::Set(vec![Py::Int(1), Py::Int(2)]));
        assert!(matches!(&call.args[0], Py::Dict(d) if d.len() == 2));
        assert!(parse_assert("assert f(x) == 1").is_err());
        assert!(parse_assert("assert set(f(1)) == set([1])").is_err());
        assert!(parse_assert("print(1)").is_err());
    }
}
