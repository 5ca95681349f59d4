//! JSON Schema to GBNF, in the manner of llama.cpp's `json_schema_to_grammar`: the same
//! primitive rules (strings, numbers, whitespace as `space`), objects with their properties
//! in the schema's order, arrays with `minItems`/`maxItems`, `enum`, `const`, `anyOf`,
//! `oneOf`, local `$ref`s (recursion allowed).
//!
//! A keyword that constrains values but is not implemented here (`pattern`, `format`,
//! `minimum`, ...) is an error naming it: a schema quietly enforced only in part is how a
//! caller gets JSON that its validator then rejects. Annotations (`title`, `description`,
//! `default`, `examples`, ...) are ignored. Objects allow no properties beyond those
//! listed unless `additionalProperties` says so (OpenAI's structured outputs require
//! `false` anyway).

use std::collections::{HashMap, HashSet};

use crate::error::{Error, Result};
use crate::json::Json;

/// Whitespace between tokens: none, a space, or up to two line breaks and an indent.
const SPACE: &str = r#"| " " | "\n"{1,2} [ \t]{0,20}"#;

/// The building blocks, each with the rules it uses.
const PRIMITIVES: &[(&str, &str, &[&str])] = &[
    ("space", SPACE, &[]),
    ("boolean", r#"("true" | "false") space"#, &["space"]),
    ("null", r#""null" space"#, &["space"]),
    (
        "char",
        r#"[^"\\\x00-\x1F] | [\\] (["\\/bfnrt] | "u" [0-9a-fA-F]{4})"#,
        &[],
    ),
    ("string", r#""\"" char* "\"" space"#, &["char", "space"]),
    ("integral-part", r#"[0] | [1-9] [0-9]{0,15}"#, &[]),
    ("decimal-part", r#"[0-9]{1,16}"#, &[]),
    (
        "integer",
        r#"("-"? integral-part) space"#,
        &["integral-part", "space"],
    ),
    (
        "number",
        r#"("-"? integral-part) ("." decimal-part)? ([eE] [-+]? integral-part)? space"#,
        &["integral-part", "decimal-part", "space"],
    ),
    (
        "array",
        r#""[" space ( value ("," space value)* )? "]" space"#,
        &["value", "space"],
    ),
    (
        "object",
        r#""{" space ( string ":" space value ("," space string ":" space value)* )? "}" space"#,
        &["string", "value", "space"],
    ),
    (
        "value",
        r#"object | array | string | number | boolean | null"#,
        &["object", "array", "string", "number", "boolean", "null"],
    ),
];

/// Keywords that only describe; they never change what is valid.
const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "default",
    "examples",
    "$schema",
    "$id",
    "$comment",
    "deprecated",
    "readOnly",
    "writeOnly",
    "$defs",
    "definitions",
    "strict",
];

/// The GBNF grammar of the JSON texts the schema in `text` accepts (root rule `root`).
pub fn schema_to_gbnf(text: &str) -> Result<String> {
    let schema = Json::parse(text).map_err(|e| err("#", format!("not JSON: {e}")))?;
    schema_json_to_gbnf(&schema)
}

/// [`schema_to_gbnf`] of a parsed schema.
pub fn schema_json_to_gbnf(schema: &Json) -> Result<String> {
    let mut c = Converter {
        root: schema,
        rules: Vec::new(),
        names: HashSet::new(),
        refs: HashMap::new(),
    };
    let top = c.visit(schema, "root-value", "#")?;
    let root = c.without_trailing_space(&top);
    c.add("root", root);
    let mut out = String::new();
    // `root` first, as people read grammars top down.
    for (name, body) in c
        .rules
        .iter()
        .rev()
        .take(1)
        .chain(c.rules.iter().rev().skip(1).rev())
    {
        out.push_str(&format!("{name} ::= {body}\n"));
    }
    // The one way a schema the converter accepts can still give no usable grammar:
    // `$ref`s that reach themselves before any JSON text (`{"$ref": "#"}`, two
    // definitions that are each other's `anyOf` branch), which is left recursion. Said
    // here, about the schema, rather than later about a rule the user never wrote.
    if let Err(e) = crate::parse(&out) {
        return Err(err(
            "#",
            format!("its `$ref`s loop back on themselves before any JSON text ({e})"),
        ));
    }
    Ok(out)
}

struct Converter<'a> {
    root: &'a Json,
    rules: Vec<(String, String)>,
    names: HashSet<String>,
    /// `$ref` targets already given a rule (possibly still being written: recursion).
    refs: HashMap<String, String>,
}

fn err(path: &str, message: impl Into<String>) -> Error {
    Error::Schema {
        path: path.to_string(),
        message: message.into(),
    }
}

/// A GBNF string literal for `s`.
pub fn literal(s: &str) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7F => {
                out.push_str(&format!("\\x{:02X}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl<'a> Converter<'a> {
    /// The body for `root`: the top value without the whitespace every value rule allows
    /// after itself, so that a model cannot pad a finished answer with blank lines. Only
    /// a body that is one sequence ending in `space` is changed; anything else is
    /// referred to as it is.
    fn without_trailing_space(&self, top: &str) -> String {
        let mut name = top.to_string();
        // Follow rules that only name another rule (a `$ref`).
        for _ in 0..self.rules.len() {
            match self.rules.iter().find(|(n, _)| *n == name) {
                Some((_, body)) if self.rules.iter().any(|(n, _)| n == body) => name = body.clone(),
                _ => break,
            }
        }
        let body = match self.rules.iter().find(|(n, _)| *n == name) {
            Some((_, b)) => b.as_str(),
            None => PRIMITIVES.iter().find(|p| p.0 == name).map_or("", |p| p.1),
        };
        match body.strip_suffix(" space") {
            Some(seq) if !has_top_level_alternative(body) => seq.to_string(),
            _ => top.to_string(),
        }
    }

    /// Adds a rule under a name not yet used (based on `name`); returns that name.
    fn add(&mut self, name: &str, body: String) -> String {
        let mut base: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        if base.is_empty() {
            base.push('r');
        }
        let mut unique = base.clone();
        let mut n = 1;
        while self.names.contains(&unique) {
            unique = format!("{base}-{n}");
            n += 1;
        }
        self.names.insert(unique.clone());
        self.rules.push((unique.clone(), body));
        unique
    }

    /// Makes sure primitive `name` (and what it uses) is defined; returns its name.
    fn primitive(&mut self, name: &str) -> String {
        if !self.names.contains(name) {
            if let Some(&(n, body, deps)) = PRIMITIVES.iter().find(|p| p.0 == name) {
                self.names.insert(n.to_string());
                self.rules.push((n.to_string(), body.to_string()));
                for d in deps {
                    self.primitive(d);
                }
            }
        }
        name.to_string()
    }

    /// The name of a rule for `schema` (found at `path`).
    fn visit(&mut self, schema: &'a Json, name: &str, path: &str) -> Result<String> {
        let obj = match schema {
            Json::Bool(true) => return Ok(self.primitive("value")),
            Json::Bool(false) => return Err(err(path, "`false` accepts nothing")),
            Json::Object(_) => schema,
            _ => return Err(err(path, "a schema must be an object or a boolean")),
        };
        if let Some(r) = obj.get("$ref") {
            return self.reference(r, path);
        }
        if let Some(v) = obj.get("const") {
            let body = format!("{} space", literal(&v.compact()));
            self.primitive("space");
            return Ok(self.add(name, body));
        }
        if let Some(v) = obj.get("enum") {
            let Json::Array(items) = v else {
                return Err(err(path, "`enum` must be an array"));
            };
            if items.is_empty() {
                return Err(err(path, "an empty `enum` accepts nothing"));
            }
            let alts: Vec<String> = items.iter().map(|i| literal(&i.compact())).collect();
            self.primitive("space");
            return Ok(self.add(name, format!("({}) space", alts.join(" | "))));
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(v) = obj.get(key) {
                let Json::Array(items) = v else {
                    return Err(err(path, format!("`{key}` must be an array")));
                };
                let mut alts = Vec::new();
                for (i, s) in items.iter().enumerate() {
                    alts.push(self.visit(
                        s,
                        &format!("{name}-{i}"),
                        &format!("{path}/{key}/{i}"),
                    )?);
                }
                if alts.is_empty() {
                    return Err(err(path, format!("an empty `{key}` accepts nothing")));
                }
                return Ok(self.add(name, alts.join(" | ")));
            }
        }
        if let Some(v) = obj.get("allOf") {
            match v {
                Json::Array(items) if items.len() == 1 => {
                    return self.visit(&items[0], name, &format!("{path}/allOf/0"))
                }
                _ => {
                    return Err(err(
                        path,
                        "`allOf` with more than one schema is not supported",
                    ))
                }
            }
        }
        let types: Vec<&str> = match obj.get("type") {
            None => {
                if obj.get("properties").is_some() || obj.get("additionalProperties").is_some() {
                    vec!["object"]
                } else if obj.get("items").is_some() {
                    vec!["array"]
                } else {
                    self.check_keywords(obj, &[], path)?;
                    return Ok(self.primitive("value"));
                }
            }
            Some(Json::String(t)) => vec![t.as_str()],
            Some(Json::Array(ts)) => ts
                .iter()
                .map(|t| match t {
                    Json::String(t) => Ok(t.as_str()),
                    _ => Err(err(path, "`type` entries must be strings")),
                })
                .collect::<Result<_>>()?,
            Some(_) => return Err(err(path, "`type` must be a string or an array")),
        };
        let mut alts = Vec::new();
        for t in &types {
            let n = if types.len() == 1 {
                name.to_string()
            } else {
                format!("{name}-{t}")
            };
            alts.push(self.typed(obj, t, &n, path)?);
        }
        if alts.len() == 1 {
            return Ok(alts.remove(0));
        }
        Ok(self.add(name, alts.join(" | ")))
    }

    /// Refuses keywords that constrain values but are not implemented.
    fn check_keywords(&self, obj: &Json, known: &[&str], path: &str) -> Result<()> {
        let Json::Object(members) = obj else {
            return Ok(());
        };
        for (k, _) in members {
            if k == "type" || known.contains(&k.as_str()) || ANNOTATIONS.contains(&k.as_str()) {
                continue;
            }
            return Err(err(path, format!("keyword `{k}` is not supported here")));
        }
        Ok(())
    }

    fn typed(&mut self, obj: &'a Json, t: &str, name: &str, path: &str) -> Result<String> {
        match t {
            "null" | "boolean" | "number" | "integer" => {
                self.check_keywords(obj, &[], path)?;
                Ok(self.primitive(t))
            }
            "string" => {
                self.check_keywords(obj, &["minLength", "maxLength"], path)?;
                let min = count(obj, "minLength", path)?;
                let max = count(obj, "maxLength", path)?;
                if min.is_none() && max.is_none() {
                    return Ok(self.primitive("string"));
                }
                self.primitive("char");
                self.primitive("space");
                let min = min.unwrap_or(0);
                let rep = match max {
                    Some(m) if m < min => return Err(err(path, "maxLength < minLength")),
                    Some(m) => format!("{{{min},{m}}}"),
                    None => format!("{{{min},}}"),
                };
                Ok(self.add(name, format!(r#""\"" char{rep} "\"" space"#)))
            }
            "array" => self.array(obj, name, path),
            "object" => self.object(obj, name, path),
            other => Err(err(path, format!("unknown type `{other}`"))),
        }
    }

    fn array(&mut self, obj: &'a Json, name: &str, path: &str) -> Result<String> {
        self.check_keywords(obj, &["items", "minItems", "maxItems"], path)?;
        let item = match obj.get("items") {
            None => self.primitive("value"),
            Some(s) => self.visit(s, &format!("{name}-item"), &format!("{path}/items"))?,
        };
        let min = count(obj, "minItems", path)?.unwrap_or(0);
        let max = count(obj, "maxItems", path)?;
        self.primitive("space");
        let body = match max {
            Some(m) if m < min => return Err(err(path, "maxItems < minItems")),
            Some(0) => r#""[" space "]" space"#.to_string(),
            _ => {
                let more = match max {
                    Some(m) => format!("{{{},{}}}", min.saturating_sub(1), m - 1),
                    None => format!("{{{},}}", min.saturating_sub(1)),
                };
                let list = format!(r#"{item} ("," space {item}){more}"#);
                if min == 0 {
                    format!(r#""[" space ({list})? "]" space"#)
                } else {
                    format!(r#""[" space {list} "]" space"#)
                }
            }
        };
        Ok(self.add(name, body))
    }

    fn object(&mut self, obj: &'a Json, name: &str, path: &str) -> Result<String> {
        self.check_keywords(
            obj,
            &["properties", "required", "additionalProperties"],
            path,
        )?;
        let props: Vec<(&'a String, &'a Json)> = match obj.get("properties") {
            None => Vec::new(),
            Some(Json::Object(p)) => p.iter().map(|(k, v)| (k, v)).collect(),
            Some(_) => return Err(err(path, "`properties` must be an object")),
        };
        let required: HashSet<&str> = match obj.get("required") {
            None => HashSet::new(),
            Some(Json::Array(r)) => r
                .iter()
                .filter_map(|v| match v {
                    Json::String(s) => Some(s.as_str()),
                    _ => None,
                })
                .collect(),
            Some(_) => return Err(err(path, "`required` must be an array")),
        };
        for r in &required {
            if !props.iter().any(|(k, _)| k.as_str() == *r) {
                return Err(err(
                    path,
                    format!("required property `{r}` is not in `properties`"),
                ));
            }
        }
        let extra = match obj.get("additionalProperties") {
            None | Some(Json::Bool(false)) if !props.is_empty() => None,
            None | Some(Json::Bool(true)) => Some(self.primitive("value")),
            Some(Json::Bool(false)) => None,
            Some(s) => Some(self.visit(
                s,
                &format!("{name}-additional"),
                &format!("{path}/additionalProperties"),
            )?),
        };
        self.primitive("space");
        let extra_kv = match &extra {
            Some(v) => {
                let s = self.primitive("string");
                Some(self.add(
                    &format!("{name}-additional-kv"),
                    format!(r#"{s} ":" space {v}"#),
                ))
            }
            None => None,
        };
        if props.is_empty() {
            let body = match extra_kv {
                Some(kv) => format!(r#""{{" space ({kv} ("," space {kv})*)? "}}" space"#),
                None => r#""{" space "}" space"#.to_string(),
            };
            return Ok(self.add(name, body));
        }
        let mut kvs = Vec::new();
        for (key, schema) in &props {
            let value = self.visit(
                schema,
                &format!("{name}-{key}"),
                &format!("{path}/properties/{key}"),
            )?;
            let body = format!(
                r#"{} space ":" space {value}"#,
                literal(&Json::String((*key).clone()).compact())
            );
            kvs.push((
                self.add(&format!("{name}-{key}-kv"), body),
                required.contains(key.as_str()),
            ));
        }
        // Properties in order, optional ones may be left out: `first_i` is what may follow
        // when nothing has been written yet, `rest_i` what follows after a property.
        let tail =
            match &extra_kv {
                Some(kv) if !required.is_empty() => format!(r#"("," space {kv})*"#),
                Some(_) => return Err(err(
                    path,
                    "additionalProperties together with only optional properties is not supported",
                )),
                None => String::new(),
            };
        let mut first = String::new();
        let mut rest = tail;
        for (i, (kv, req)) in kvs.iter().enumerate().rev() {
            let this = if rest.is_empty() {
                kv.clone()
            } else {
                format!("{kv} {rest}")
            };
            let either = |a: String, b: &str| {
                if b.is_empty() {
                    format!("({a})?")
                } else {
                    format!("({a} | {b})")
                }
            };
            let (new_first, new_rest) = if *req {
                (this.clone(), format!(r#""," space {this}"#))
            } else {
                (
                    either(this.clone(), &first),
                    either(format!(r#""," space {this}"#), &rest),
                )
            };
            first = self.add(&format!("{name}-from-{i}"), new_first);
            rest = self.add(&format!("{name}-after-{i}"), new_rest);
        }
        Ok(self.add(name, format!(r#""{{" space {first} "}}" space"#)))
    }

    /// A rule for a local `$ref` (`#`, `#/$defs/...`, `#/definitions/...`, any pointer).
    fn reference(&mut self, r: &Json, path: &str) -> Result<String> {
        let Json::String(r) = r else {
            return Err(err(path, "`$ref` must be a string"));
        };
        let r = r.as_str();
        if let Some(name) = self.refs.get(r) {
            return Ok(name.clone());
        }
        let Some(pointer) = r.strip_prefix('#') else {
            return Err(err(
                path,
                format!("only local references (`#/...`) are supported, not `{r}`"),
            ));
        };
        let target = self
            .root
            .pointer(pointer)
            .ok_or_else(|| err(path, format!("`$ref` {r} points at nothing")))?;
        let base = pointer.rsplit('/').next().unwrap_or("ref");
        // Reserve the name first so a recursive schema refers back to it.
        let name = self.add(&format!("ref-{base}"), String::new());
        self.refs.insert(r.to_string(), name.clone());
        let inner = self.visit(target, &format!("{name}-value"), r)?;
        if let Some(rule) = self.rules.iter_mut().find(|(n, _)| *n == name) {
            rule.1 = inner;
        }
        Ok(name)
    }
}

/// Whether a GBNF body has a `|` outside literals, classes and groups.
fn has_top_level_alternative(body: &str) -> bool {
    let (mut depth, mut in_lit, mut in_class, mut escaped) = (0i32, false, false, false);
    for ch in body.chars() {
        if escaped {
            escaped = false;
            continue;
        }
        match ch {
            '\\' if in_lit || in_class => escaped = true,
            '"' if !in_class => in_lit = !in_lit,
            '[' if !in_lit => in_class = true,
            ']' if in_class => in_class = false,
            '(' if !in_lit && !in_class => depth += 1,
            ')' if !in_lit && !in_class => depth -= 1,
            '|' if !in_lit && !in_class && depth == 0 => return true,
            _ => {}
        }
    }
    false
}

/// A non-negative integer keyword.
fn count(obj: &Json, key: &str, path: &str) -> Result<Option<u32>> {
    match obj.get(key) {
        None => Ok(None),
        Some(v) => match v {
            Json::Number(n) => n.as_u64(),
            _ => None,
        }
        .and_then(|n| u32::try_from(n).ok())
        .map(Some)
        .ok_or_else(|| err(path, format!("`{key}` must be a non-negative integer"))),
    }
}
