//! JSON Schema to grammar: valid instances match, invalid ones do not.

use ferrollama_grammar::{matches, parse, schema_to_gbnf, Grammar};
use proptest::prelude::*;
use serde_json::{json, Value};

/// From schema text: the order of `properties` as written is the order asked for
/// (`json!` would sort them).
fn grammar(schema: &str) -> Grammar {
    let text = schema_to_gbnf(schema).unwrap();
    parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn check(g: &Grammar, ok: &[&str], bad: &[&str]) {
    for t in ok {
        assert!(matches(g, t).unwrap(), "should match: {t}");
    }
    for t in bad {
        assert!(!matches(g, t).unwrap(), "should not match: {t}");
    }
}

#[test]
fn objects_keep_order_required_and_optional() {
    let g = grammar(
        r#"{
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string"}}
        },
        "required": ["name"],
        "additionalProperties": false
    }"#,
    );
    check(
        &g,
        &[
            r#"{"name": "Ada"}"#,
            r#"{"name":"Ada","age":36}"#,
            r#"{"name": "Ada", "tags": ["x", "y"]}"#,
            "{\n  \"name\": \"A\\\"da\",\n  \"age\": -1,\n  \"tags\": []\n}",
        ],
        &[
            r#"{}"#,
            r#"{"age": 36}"#,
            r#"{"age": 36, "name": "Ada"}"#,
            r#"{"name": "Ada", "extra": 1}"#,
            r#"{"name": "Ada", "age": 3.5}"#,
            r#"{"name": "Ada",}"#,
            r#"{"name": "Ada""#,
        ],
    );
}

#[test]
fn all_optional_properties_may_all_be_left_out() {
    let g = grammar(
        r#"{
        "properties": {"a": {"type": "boolean"}, "b": {"type": "null"}, "c": {"type": "number"}}
    }"#,
    );
    check(
        &g,
        &[
            "{}",
            r#"{"b": null}"#,
            r#"{"a": true, "c": 1.5e3}"#,
            r#"{"c": 0}"#,
        ],
        &[r#"{, "b": null}"#, r#"{"b": null,}"#, r#"{"c": 01}"#],
    );
}

#[test]
fn enums_consts_unions_and_lengths() {
    let g = grammar(
        r#"{
        "type": "object",
        "properties": {
            "pos": {"enum": ["NOUN", "VERB", 3, null]},
            "v": {"const": {"k": [1, "two"]}},
            "u": {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 2}]},
            "t": {"type": ["boolean", "null"]},
            "s": {"type": "string", "minLength": 2, "maxLength": 3}
        },
        "required": ["pos", "v", "u", "t", "s"]
    }"#,
    );
    check(
        &g,
        &[
            r#"{"pos": "NOUN", "v": {"k":[1,"two"]}, "u": 7, "t": null, "s": "ab"}"#,
            r#"{"pos": null, "v": {"k":[1,"two"]}, "u": "xy", "t": true, "s": "abc"}"#,
        ],
        &[
            r#"{"pos": "ADJ", "v": {"k":[1,"two"]}, "u": 7, "t": null, "s": "ab"}"#,
            r#"{"pos": 3, "v": {"k": [1, "two"]}, "u": 7, "t": null, "s": "ab"}"#,
            r#"{"pos": 3, "v": {"k":[1,"two"]}, "u": "xyz", "t": null, "s": "ab"}"#,
            r#"{"pos": 3, "v": {"k":[1,"two"]}, "u": 7, "t": 1, "s": "ab"}"#,
            r#"{"pos": 3, "v": {"k":[1,"two"]}, "u": 7, "t": null, "s": "a"}"#,
            r#"{"pos": 3, "v": {"k":[1,"two"]}, "u": 7, "t": null, "s": "abcd"}"#,
        ],
    );
}

#[test]
fn arrays_count_their_items() {
    let g =
        grammar(r#"{"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 3}"#);
    check(
        &g,
        &["[1,2]", "[1, 2, 3]"],
        &["[]", "[1]", "[1,2,3,4]", "[1,,2]", "[1,2,]"],
    );
    let g = grammar(r#"{"type": "array", "maxItems": 0}"#);
    check(&g, &["[]", "[ ]"], &["[1]"]);
    let g = grammar(r#"{"type": "array", "items": {"type": "string"}}"#);
    check(&g, &["[]", r#"["a"]"#, r#"["a", "b", "c"]"#], &["[1]"]);
}

#[test]
fn recursive_references() {
    let g = grammar(
        r##"{
        "$ref": "#/$defs/node",
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "label": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}
                },
                "required": ["label", "children"]
            }
        }
    }"##,
    );
    check(
        &g,
        &[
            r#"{"label": "adverb", "children": [{"label": "in", "children": []}, {"label": "ly", "children": []}]}"#,
        ],
        &[r#"{"label": "adverb", "children": [{"label": "in"}]}"#],
    );
}

#[test]
fn unsupported_and_invalid_schemas_are_errors() {
    let e = |s: Value| schema_to_gbnf(&s.to_string()).unwrap_err().to_string();
    assert_eq!(
        e(json!({"type": "string", "pattern": "^a+$"})),
        "JSON schema at #: keyword `pattern` is not supported here"
    );
    assert!(
        e(json!({"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}}))
            .contains("#/properties/n: keyword `minimum`")
    );
    assert!(e(json!({"$ref": "https://example.com/s.json"})).contains("only local references"));
    assert!(e(json!({"$ref": "#/$defs/missing"})).contains("points at nothing"));
    assert!(e(json!({"type": "object", "properties": {}, "required": ["x"]})).contains("`x`"));
    assert!(
        e(json!({"type": "array", "minItems": 3, "maxItems": 2})).contains("maxItems < minItems")
    );
    assert!(e(json!({"enum": []})).contains("accepts nothing"));
    assert!(e(json!(false)).contains("accepts nothing"));
    assert!(e(json!({"type": "decimal"})).contains("unknown type"));
    // References that reach themselves before any text (found by the json_schema fuzz
    // target): an error about the schema, not a grammar that then fails to parse.
    for looping in [
        json!({"$ref": "#"}),
        json!({"$defs": {"a": {"anyOf": [{"$ref": "#/$defs/b"}, {"type": "null"}]},
                         "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}),
    ] {
        assert!(e(looping).contains("loop back on themselves"));
    }
    // Annotations are not errors.
    assert!(schema_to_gbnf(r#"{"type": "string", "title": "T", "description": "d"}"#).is_ok());
    assert!(schema_to_gbnf("{")
        .unwrap_err()
        .to_string()
        .contains("not JSON"));
}

/// Any JSON value within the primitive rules' limits (numbers of at most 16 digits).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(|n| json!(n)),
        (-1000i32..1000).prop_map(|n| json!(n as f64 / 8.0)),
        "[^\u{0}-\u{1f}]{0,8}".prop_map(Value::String),
        "[\\\\\"\n\t\u{1}é€😀]{0,4}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z\"]{0,4}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// The schema `{}` accepts every JSON text serde_json writes, compact or pretty.
    #[test]
    fn any_value_matches_the_empty_schema(v in json_value()) {
        let g = grammar(r#"{}"#);
        let compact = serde_json::to_string(&v).unwrap();
        let pretty = serde_json::to_string_pretty(&v).unwrap();
        prop_assert!(matches(&g, &compact).unwrap(), "{}", compact);
        prop_assert!(matches(&g, &pretty).unwrap(), "{}", pretty);
        // Cut short, it is not complete.
        if compact.len() > 1 {
            let mut end = compact.len() - 1;
            while !compact.is_char_boundary(end) { end -= 1; }
            let cut = &compact[..end];
            // A number cut short is still a number ("12" from "123"); anything else is not.
            if !matches!(v, Value::Number(_)) {
                prop_assert!(!matches(&g, cut).unwrap(), "{}", cut);
            }
        }
    }
}

#[test]
fn a_finished_top_value_takes_no_trailing_whitespace() {
    let g = grammar(
        r#"{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}"#,
    );
    check(
        &g,
        &[r#"{"a": 1}"#, "{\n  \"a\": 1\n}"],
        &["{\"a\": 1} ", "{\"a\": 1}\n\n"],
    );
    let g = grammar(r#"{"type": "string"}"#);
    check(&g, &[r#""x""#], &["\"x\" "]);
    // Through a reference too.
    let g = grammar(
        r##"{"$ref": "#/$defs/n", "$defs": {"n": {"type": "array", "items": {"$ref": "#/$defs/n"}}}}"##,
    );
    check(&g, &["[[], [[]]]"], &["[] "]);
}
