//! MBPP's Python tests as Rust: the OLMo request files hold the Rust MBPP problems
//! (MultiPL-style translations of MBPP) with a reference solution but no tests, so the
//! tests of the same MBPP task (its Python `assert` lines) are written in Rust with the
//! types of the reference solution's signature, as MultiPL-E translates them: each
//! Python literal becomes the Rust literal of the parameter's (or the return value's)
//! type. A problem whose asserts or signature cannot be translated is left out, and so is
//! one whose reference solution fails its translated tests; the report says how many.

use super::pyliteral::{parse_assert, Call, Check, Py};

/// A Rust type, as far as the translation needs it.
#[derive(Debug, Clone, PartialEq)]
pub enum Ty {
    Int(String),
    Float(String),
    Bool,
    Char,
    /// `&str`.
    Str,
    String,
    Vec(Box<Ty>),
    /// `&[T]` (or `&mut [T]`).
    Slice(Box<Ty>, bool),
    /// `&T` (or `&mut T`) for any other T.
    Ref(Box<Ty>, bool),
    Tuple(Vec<Ty>),
    Option(Box<Ty>),
    Map(String, Box<Ty>, Box<Ty>),
    Set(String, Box<Ty>),
    /// A type parameter of the function: the literal's own type is written (ints as
    /// i64, floats as f64, strings as &str), and the compiler infers it.
    Generic(String),
}

const INTS: [&str; 12] = [
    "i8", "i16", "i32", "i64", "i128", "isize", "u8", "u16", "u32", "u64", "u128", "usize",
];

/// Parses a type (lifetimes ignored); traits and unknown names are refused.
pub fn parse_type(s: &str) -> Result<Ty, String> {
    parse_type_in(s, &[])
}

/// Parses a type of a function whose type parameters are `generics`.
fn parse_type_in(s: &str, generics: &[String]) -> Result<Ty, String> {
    let parse_type = |t: &str| parse_type_in(t, generics);
    let s = s.trim();
    if generics.iter().any(|g| g == s) {
        return Ok(Ty::Generic(s.to_string()));
    }
    if let Some(rest) = s.strip_prefix('&') {
        let rest = rest.trim_start();
        // A lifetime: `&'a T`.
        let rest = match rest.strip_prefix('\'') {
            Some(r) => r
                .trim_start_matches(|c: char| c.is_alphanumeric() || c == '_')
                .trim_start(),
            None => rest,
        };
        let (rest, mutable) = match rest.strip_prefix("mut ") {
            Some(r) => (r.trim_start(), true),
            None => (rest, false),
        };
        if rest == "str" {
            return Ok(Ty::Str);
        }
        if let Some(inner) = rest.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            return Ok(Ty::Slice(Box::new(parse_type(inner)?), mutable));
        }
        return Ok(Ty::Ref(Box::new(parse_type(rest)?), mutable));
    }
    if let Some(inner) = s.strip_prefix('(').and_then(|r| r.strip_suffix(')')) {
        let parts = split_top(inner, ',');
        return Ok(Ty::Tuple(
            parts
                .iter()
                .filter(|p| !p.trim().is_empty())
                .map(|p| parse_type(p))
                .collect::<Result<_, _>>()?,
        ));
    }
    if let Some(open) = s.find('<') {
        let head = s[..open].trim();
        let head = head.rsplit("::").next().unwrap_or(head);
        let inner = s[open + 1..]
            .strip_suffix('>')
            .ok_or_else(|| format!("type {s}"))?;
        let args: Vec<Ty> = split_top(inner, ',')
            .iter()
            .map(|p| parse_type(p))
            .collect::<Result<_, _>>()?;
        return match (head, args.as_slice()) {
            ("Vec", [t]) => Ok(Ty::Vec(Box::new(t.clone()))),
            ("Option", [t]) => Ok(Ty::Option(Box::new(t.clone()))),
            ("HashMap" | "BTreeMap", [k, v]) => Ok(Ty::Map(
                head.to_string(),
                Box::new(k.clone()),
                Box::new(v.clone()),
            )),
            ("HashSet" | "BTreeSet", [t]) => Ok(Ty::Set(head.to_string(), Box::new(t.clone()))),
            _ => Err(format!("type {s} is not supported")),
        };
    }
    match s {
        "bool" => Ok(Ty::Bool),
        "char" => Ok(Ty::Char),
        "String" => Ok(Ty::String),
        "f32" | "f64" => Ok(Ty::Float(s.to_string())),
        "()" => Ok(Ty::Tuple(Vec::new())),
        _ if INTS.contains(&s) => Ok(Ty::Int(s.to_string())),
        _ => Err(format!("type {s} is not supported")),
    }
}

/// Splits at `sep` outside brackets.
fn split_top(s: &str, sep: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut depth = 0i32;
    for c in s.chars() {
        match c {
            '<' | '(' | '[' | '{' => depth += 1,
            '>' | ')' | ']' | '}' => depth -= 1,
            _ => {}
        }
        if c == sep && depth == 0 {
            out.push(String::new());
        } else if let Some(last) = out.last_mut() {
            last.push(c);
        }
    }
    out
}

/// The Rust text of a type (for typed empty collections).
fn text(t: &Ty) -> String {
    match t {
        Ty::Int(n) | Ty::Float(n) => n.clone(),
        Ty::Bool => "bool".into(),
        Ty::Char => "char".into(),
        Ty::Str => "&str".into(),
        Ty::String => "String".into(),
        Ty::Vec(t) => format!("Vec<{}>", text(t)),
        Ty::Slice(t, m) => format!("&{}[{}]", if *m { "mut " } else { "" }, text(t)),
        Ty::Ref(t, m) => format!("&{}{}", if *m { "mut " } else { "" }, text(t)),
        Ty::Tuple(ts) => format!(
            "({}{})",
            ts.iter().map(text).collect::<Vec<_>>().join(", "),
            if ts.len() == 1 { "," } else { "" }
        ),
        Ty::Option(t) => format!("Option<{}>", text(t)),
        Ty::Map(h, k, v) => format!("std::collections::{h}<{}, {}>", text(k), text(v)),
        Ty::Set(h, t) => format!("std::collections::{h}<{}>", text(t)),
        Ty::Generic(_) => "_".into(),
    }
}

/// A function's signature in Rust source.
#[derive(Debug, Clone, PartialEq)]
pub struct Signature {
    pub name: String,
    pub params: Vec<Ty>,
    pub ret: Ty,
    /// From `fn` (or `pub fn`) to the `{` opening the body, as written.
    pub header: String,
    /// Where the header starts in the source.
    pub at: usize,
}

/// The top-level functions of `code` (lines starting `fn` or `pub fn`) whose types the
/// translation knows; generic ones are skipped.
pub fn signatures(code: &str) -> Vec<Signature> {
    let mut out = Vec::new();
    let mut offset = 0;
    for line in code.split_inclusive('\n') {
        let at = offset;
        offset += line.len();
        let rest = line.strip_prefix("pub ").unwrap_or(line);
        let Some(rest) = rest.strip_prefix("fn ") else {
            continue;
        };
        let Some(body) = code[at..].find('{') else {
            continue;
        };
        let header = code[at..at + body + 1].to_string();
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let after = rest[name.len()..].trim_start();
        // (Type parameters hold no parentheses, so the first one opens the parameters.)
        let Some(generics) = type_parameters(after) else {
            continue;
        };
        if let Ok((params, ret)) = parse_header(&header, &generics) {
            out.push(Signature {
                name,
                params,
                ret,
                header,
                at,
            });
        }
    }
    out
}

/// The type parameters of `fn name<...>(` (lifetimes skipped); None for const generics,
/// bounds with parentheses, or no parameter list after them.
fn type_parameters(after: &str) -> Option<Vec<String>> {
    let Some(inner) = after.strip_prefix('<') else {
        return after.starts_with('(').then(Vec::new);
    };
    let mut depth = 1;
    let close = inner.char_indices().find_map(|(i, c)| {
        match c {
            '<' => depth += 1,
            '>' => depth -= 1,
            _ => {}
        }
        (depth == 0).then_some(i)
    })?;
    let list = &inner[..close];
    if list.contains('(') || !inner[close + 1..].trim_start().starts_with('(') {
        return None;
    }
    let mut names = Vec::new();
    for p in split_top(list, ',') {
        let p = p.trim();
        if p.is_empty() || p.starts_with('\'') {
            continue;
        }
        if p.starts_with("const ") {
            return None;
        }
        names.push(p.split(':').next().unwrap_or(p).trim().to_string());
    }
    Some(names)
}

fn parse_header(header: &str, generics: &[String]) -> Result<(Vec<Ty>, Ty), String> {
    let open = header.find('(').ok_or("no (")?;
    let mut depth = 0;
    let mut close = None;
    for (i, c) in header[open..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    close = Some(open + i);
                    break;
                }
            }
            _ => {}
        }
    }
    let close = close.ok_or("no )")?;
    let params = split_top(&header[open + 1..close], ',')
        .iter()
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (_, ty) = p.split_once(':').ok_or_else(|| format!("parameter {p}"))?;
            parse_type_in(ty, generics)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let tail = header[close + 1..].trim_end_matches('{').trim();
    // A where clause only bounds the parameters.
    let tail = tail.split(" where").next().unwrap_or(tail).trim();
    let tail = tail.strip_prefix("where").map_or(tail, |_| "");
    let ret = match tail.strip_prefix("->") {
        Some(t) => parse_type_in(t, generics)?,
        None => Ty::Tuple(Vec::new()),
    };
    Ok((params, ret))
}

fn float_text(s: &str) -> String {
    let mut t = s.to_string();
    if t.starts_with('.') {
        t.insert(0, '0');
    }
    if t.starts_with("-.") {
        t.insert(1, '0');
    }
    if t.ends_with('.') {
        t.push('0');
    }
    if !t.contains(['.', 'e', 'E']) {
        t.push_str(".0");
    }
    t
}

/// The Rust expression of a Python literal as a value of type `t`.
pub fn emit(v: &Py, t: &Ty) -> Result<String, String> {
    let list = |items: &[Py], elem: &Ty| -> Result<String, String> {
        Ok(items
            .iter()
            .map(|x| emit(x, elem))
            .collect::<Result<Vec<_>, _>>()?
            .join(", "))
    };
    let no = || Err(format!("{v:?} as {}", text(t)));
    match (t, v) {
        (Ty::Int(n), Py::Int(i)) => {
            if n.starts_with('u') && *i < 0 {
                return no();
            }
            Ok(format!("{i}{n}"))
        }
        (Ty::Float(n), Py::Int(i)) => Ok(format!("{i}.0{n}")),
        (Ty::Float(n), Py::Float(_, s)) => Ok(format!("{}{n}", float_text(s))),
        (Ty::Bool, Py::Bool(b)) => Ok(b.to_string()),
        (Ty::Char, Py::Str(s)) if s.chars().count() == 1 => {
            Ok(format!("{:?}", s.chars().next().unwrap_or(' ')))
        }
        (Ty::Str, Py::Str(s)) => Ok(format!("{s:?}")),
        (Ty::String, Py::Str(s)) => Ok(format!("String::from({s:?})")),
        (Ty::Vec(e), Py::List(xs) | Py::Tuple(xs)) => {
            if xs.is_empty() {
                Ok(format!("Vec::<{}>::new()", text(e)))
            } else {
                Ok(format!("vec![{}]", list(xs, e)?))
            }
        }
        (Ty::Slice(e, m), Py::List(xs) | Py::Tuple(xs)) => {
            let amp = if *m { "&mut " } else { "&" };
            if xs.is_empty() {
                Ok(format!("{amp}Vec::<{}>::new()[..]", text(e)))
            } else {
                Ok(format!("{amp}[{}][..]", list(xs, e)?))
            }
        }
        (Ty::Ref(inner, m), _) => Ok(format!(
            "{}{}",
            if *m { "&mut " } else { "&" },
            emit(v, inner)?
        )),
        (Ty::Tuple(ts), Py::Tuple(xs) | Py::List(xs)) if ts.len() == xs.len() && !ts.is_empty() => {
            let parts = xs
                .iter()
                .zip(ts)
                .map(|(x, t)| emit(x, t))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(format!(
                "({}{})",
                parts.join(", "),
                if parts.len() == 1 { "," } else { "" }
            ))
        }
        (Ty::Generic(_), _) => natural(v),
        (Ty::Tuple(ts), Py::None) if ts.is_empty() => Ok("()".into()),
        (Ty::Option(_), Py::None) => Ok("None".into()),
        (Ty::Option(inner), _) => Ok(format!("Some({})", emit(v, inner)?)),
        (Ty::Set(h, e), Py::Set(xs) | Py::List(xs) | Py::Tuple(xs)) => Ok(format!(
            "std::collections::{h}::<{}>::from([{}])",
            text(e),
            list(xs, e)?
        )),
        (Ty::Set(h, e), Py::Dict(d)) if d.is_empty() => {
            Ok(format!("std::collections::{h}::<{}>::new()", text(e)))
        }
        (Ty::Map(h, k, val), Py::Dict(pairs)) => {
            let items = pairs
                .iter()
                .map(|(a, b)| Ok(format!("({}, {})", emit(a, k)?, emit(b, val)?)))
                .collect::<Result<Vec<_>, String>>()?;
            Ok(format!(
                "std::collections::{h}::<{}, {}>::from([{}])",
                text(k),
                text(val),
                items.join(", ")
            ))
        }
        _ => no(),
    }
}

/// A literal in the type Rust would pick for it (for a type parameter): ints i64, floats
/// f64, strings &str, lists `vec![]`, tuples as tuples.
fn natural(v: &Py) -> Result<String, String> {
    let all = |xs: &[Py]| -> Result<Vec<String>, String> { xs.iter().map(natural).collect() };
    match v {
        Py::Int(i) => Ok(format!("{i}i64")),
        Py::Float(_, s) => Ok(format!("{}f64", float_text(s))),
        Py::Bool(b) => Ok(b.to_string()),
        Py::Str(s) => Ok(format!("{s:?}")),
        Py::List(xs) if !xs.is_empty() => Ok(format!("vec![{}]", all(xs)?.join(", "))),
        Py::Tuple(xs) if !xs.is_empty() => {
            let parts = all(xs)?;
            Ok(format!(
                "({}{})",
                parts.join(", "),
                if parts.len() == 1 { "," } else { "" }
            ))
        }
        other => Err(format!("{other:?} for a type parameter")),
    }
}

fn snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() && i > 0 && !out.ends_with('_') {
            out.push('_');
        }
        out.extend(c.to_lowercase());
    }
    out
}

/// The function of `sigs` a Python test calls `name`: the same name lower-cased or in
/// snake case, or the only function there is.
pub fn find<'a>(sigs: &'a [Signature], name: &str) -> Option<&'a Signature> {
    let lower = name.to_lowercase();
    let snake = snake(name);
    sigs.iter()
        .find(|s| s.name == name || s.name == lower || s.name == snake)
        .or(if sigs.len() == 1 { sigs.first() } else { None })
}

fn call_text(call: &Call, sig: &Signature) -> Result<String, String> {
    if call.args.len() != sig.params.len() {
        return Err(format!(
            "{} takes {} arguments, the test passes {}",
            sig.name,
            sig.params.len(),
            call.args.len()
        ));
    }
    let args = call
        .args
        .iter()
        .zip(&sig.params)
        .map(|(a, t)| emit(a, t))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(format!("{}({})", sig.name, args.join(", ")))
}

/// The body of `fn main` checking `tests` (Python assert lines) against the function of
/// `sigs` they call.
pub fn translate(tests: &[String], sigs: &[Signature]) -> Result<String, String> {
    let mut lines = Vec::new();
    for t in tests {
        let check = parse_assert(t)?;
        let (Check::Equals { call, .. } | Check::Truth { call, .. } | Check::Close { call, .. }) =
            &check;
        let sig = find(sigs, &call.name).ok_or_else(|| format!("no function for {}", call.name))?;
        let c = call_text(call, sig)?;
        lines.push(match &check {
            Check::Equals { expected, .. } => {
                format!("    assert_eq!({c}, {});", emit(expected, &sig.ret)?)
            }
            Check::Truth { expected, .. } if sig.ret == Ty::Bool => {
                format!("    assert!({}{c});", if *expected { "" } else { "!" })
            }
            Check::Truth { .. } => return Err(format!("{} does not return bool", sig.name)),
            Check::Close {
                expected, rel_tol, ..
            } => {
                let Ty::Float(_) = sig.ret else {
                    return Err(format!("{} does not return a float", sig.name));
                };
                format!(
                    "    {{ let got = {c}; let want = {}; assert!((got - want).abs() <= {}{} * got.abs().max(want.abs())); }}",
                    emit(expected, &sig.ret)?,
                    float_text(&rel_tol.to_string()),
                    text(&sig.ret)
                )
            }
        });
    }
    Ok(lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_parse() {
        assert_eq!(parse_type("&str").unwrap(), Ty::Str);
        assert_eq!(parse_type("&'a str").unwrap(), Ty::Str);
        assert_eq!(
            parse_type("&[i32]").unwrap(),
            Ty::Slice(Box::new(Ty::Int("i32".into())), false)
        );
        assert_eq!(
            parse_type("Vec<(String, f64)>").unwrap(),
            Ty::Vec(Box::new(Ty::Tuple(vec![
                Ty::String,
                Ty::Float("f64".into())
            ])))
        );
        assert!(matches!(
            parse_type("std::collections::HashMap<char, usize>").unwrap(),
            Ty::Map(..)
        ));
        assert!(parse_type("T").is_err());
        assert_eq!(
            parse_type_in("&[T]", &["T".into()]).unwrap(),
            Ty::Slice(Box::new(Ty::Generic("T".into())), false)
        );
        assert!(parse_type("impl Iterator<Item = u8>").is_err());
    }

    #[test]
    fn an_mbpp_problem_translates() {
        let code = "use std::collections::HashSet;\n\npub fn remove_occ(s: &str, ch: char) -> String {\n    s.to_string()\n}\n\nfn helper<'a, T: Ord + Clone>(x: &'a [T], n: usize) -> Vec<T> where T: Copy { x }\nfn fixed<const N: usize>(x: [u8; N]) {\n}\n";
        let sigs = signatures(code);
        assert_eq!(sigs.len(), 2, "{sigs:?}");
        assert_eq!(
            translate(&["assert helper([25, 35], 1) == [35]".to_string()], &sigs).unwrap(),
            "    assert_eq!(helper(&[25i64, 35i64][..], 1usize), vec![35i64]);"
        );
        assert_eq!(
            sigs[0].header,
            "pub fn remove_occ(s: &str, ch: char) -> String {"
        );
        assert_eq!(&code[sigs[0].at..sigs[0].at + 6], "pub fn");
        let body = translate(
            &[r#"assert remove_Occ("hello","l") == "heo""#.to_string()],
            &sigs,
        )
        .unwrap();
        assert_eq!(
            body,
            r#"    assert_eq!(remove_occ("hello", 'l'), String::from("heo"));"#
        );
        let sigs = signatures("fn similar(a: &[i64], b: &Vec<i64>) -> Vec<i64> {\n}\n");
        let body = translate(&["assert similar((3, 4),[]) == (4, 5)".to_string()], &sigs).unwrap();
        assert_eq!(
            body,
            "    assert_eq!(similar(&[3i64, 4i64][..], &Vec::<i64>::new()), vec![4i64, 5i64]);"
        );
        let sigs = signatures("fn area(r: f64) -> f64 {\n}\n");
        let body = translate(
            &["assert math.isclose(area(2), .5, rel_tol=0.001)".to_string()],
            &sigs,
        )
        .unwrap();
        assert!(
            body.contains("let want = 0.5f64") && body.contains("area(2.0f64)"),
            "{body}"
        );
        // Negative numbers are not unsigned; a missing function is an error.
        let sigs = signatures("fn f(n: u32) -> bool {\n}\n");
        assert!(translate(&["assert f(-1) == True".to_string()], &sigs).is_err());
        assert_eq!(
            translate(&["assert not f(1)".to_string()], &sigs).unwrap(),
            "    assert!(!f(1u32));"
        );
    }
}
