//! The harness's Jinja: templates are rendered with jinja2 under `StrictUndefined` and
//! `keep_trailing_newline=True`, with a `regex_replace` filter and Python's string and
//! list methods available on values (`question.strip()`, `choices.label.index(answerKey)`).
//! minijinja with Python-compatible methods renders the same text.

use minijinja::value::{Value, ValueKind};
use minijinja::{Environment, Error as JinjaError, ErrorKind, State, UndefinedBehavior};
use serde_json::Value as Json;

use super::docs::Doc;

/// A Jinja environment configured as the harness's.
pub struct Templates {
    env: Environment<'static>,
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

impl Templates {
    pub fn new() -> Self {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(true);
        env.set_unknown_method_callback(python_method);
        env.add_filter("regex_replace", regex_replace);
        Self { env }
    }

    /// `utils.apply_template(template, doc)`: the template rendered with the document's
    /// fields as variables.
    pub fn render(&self, template: &str, doc: &Doc) -> Result<String, String> {
        self.env
            .render_str(template, Value::from_serialize(doc))
            .map_err(|e| describe(template, &e))
    }

    /// A template that is one `{{ expression }}` evaluated to its value (a list of choices,
    /// a number) rather than to its printed form; `None` when the template is not a single
    /// expression. The harness prints the value and reads it back with `ast.literal_eval`;
    /// taking the value itself gives the same result without Python's printing rules.
    pub fn evaluate(&self, template: &str, doc: &Doc) -> Option<Result<Json, String>> {
        let inner = single_expression(template)?;
        let expr = match self.env.compile_expression(inner) {
            Ok(e) => e,
            Err(e) => return Some(Err(describe(template, &e))),
        };
        Some(
            expr.eval(Value::from_serialize(doc))
                .map_err(|e| describe(template, &e))
                .and_then(|v| serde_json::to_value(&v).map_err(|e| e.to_string())),
        )
    }
}

/// The expression of a template that is exactly `{{ ... }}` around one expression.
fn single_expression(template: &str) -> Option<&str> {
    let t = template.trim();
    let inner = t.strip_prefix("{{")?.strip_suffix("}}")?;
    // `{{ a }} and {{ b }}` is two expressions with text between.
    if inner.contains("{{") || inner.contains("}}") || inner.contains("{%") {
        return None;
    }
    Some(inner.trim_start_matches('-').trim_end_matches('-'))
}

fn describe(template: &str, e: &JinjaError) -> String {
    let mut msg = format!("template {template:?}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    msg
}

/// `re.sub(pattern, repl, string, count)` as the harness's filter.
fn regex_replace(
    s: String,
    pattern: String,
    repl: String,
    count: Option<usize>,
) -> Result<String, JinjaError> {
    let re = fancy_regex::Regex::new(&pattern).map_err(|e| {
        JinjaError::new(
            ErrorKind::InvalidOperation,
            format!("regex {pattern:?}: {e}"),
        )
    })?;
    // Python's `\1` group references become the regex crate's `${1}`.
    let repl = python_replacement(&repl);
    let limit = count.unwrap_or(0);
    Ok(re.replacen(&s, limit, repl.as_str()).into_owned())
}

fn python_replacement(repl: &str) -> String {
    let mut out = String::new();
    let mut chars = repl.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(char::is_ascii_digit) => {
                let mut n = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    n.push(*d);
                    chars.next();
                }
                out.push_str(&format!("${{{n}}}"));
            }
            '$' => out.push_str("$$"),
            _ => out.push(c),
        }
    }
    out
}

/// Python methods minijinja-contrib's compatibility layer does not cover (`list.index`,
/// `str.index`), then everything it does.
fn python_method(
    state: &State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, JinjaError> {
    if method == "index" {
        let [needle] = args else {
            return Err(JinjaError::new(
                ErrorKind::InvalidOperation,
                "index() takes one argument",
            ));
        };
        let not_found = || {
            JinjaError::new(
                ErrorKind::InvalidOperation,
                format!("{needle} is not in {value}"),
            )
        };
        if let Some(s) = value.as_str() {
            let n = needle.as_str().ok_or_else(not_found)?;
            let byte = s.find(n).ok_or_else(not_found)?;
            return Ok(Value::from(s[..byte].chars().count()));
        }
        if value.kind() == ValueKind::Seq {
            let pos = value
                .try_iter()?
                .position(|v| &v == needle)
                .ok_or_else(not_found)?;
            return Ok(Value::from(pos));
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(json: &str) -> Doc {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn renders_harness_templates() {
        let t = Templates::new();
        let arc = doc(
            r#"{"question":"Why?","choices":{"text":["a","b"],"label":["A","B"]},"answerKey":"B"}"#,
        );
        assert_eq!(
            t.render("Question: {{question}}\nAnswer:", &arc).unwrap(),
            "Question: Why?\nAnswer:"
        );
        assert_eq!(
            t.render("{{choices.label.index(answerKey)}}", &arc)
                .unwrap(),
            "1"
        );
        assert_eq!(
            t.evaluate("{{choices.text}}", &arc).unwrap().unwrap(),
            serde_json::json!(["a", "b"])
        );
        let mmlu = doc(r#"{"question":"  What?\n","choices":["x","y","z","w"]}"#);
        assert_eq!(
            t.render("{{question.strip()}}\nA. {{choices[0]}}", &mmlu)
                .unwrap(),
            "What?\nA. x"
        );
        let lambada = doc(r#"{"text":"the cat sat"}"#);
        assert_eq!(
            t.render("{{text.split(' ')[:-1]|join(' ')}}", &lambada)
                .unwrap(),
            "the cat"
        );
        assert_eq!(
            t.render("{{' '+text.split(' ')[-1]}}", &lambada).unwrap(),
            " sat"
        );
        // Trailing newlines survive, as with keep_trailing_newline.
        assert_eq!(t.render("{{text}}\n", &lambada).unwrap(), "the cat sat\n");
        assert_eq!(
            t.render("{{ text | regex_replace('(c)at', '\\\\1ow') }}", &lambada)
                .unwrap(),
            "the cow sat"
        );
    }

    #[test]
    fn undefined_fields_are_errors() {
        let t = Templates::new();
        let err = t.render("{{nope}}", &doc("{}")).unwrap_err();
        assert!(err.contains("nope") || err.contains("undefined"), "{err}");
    }
}
