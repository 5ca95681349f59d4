//! llama.cpp's own example grammars (tests/data/llama-cpp-grammars, MIT) parse and accept
//! the texts they describe.

use ferrollama_grammar::{matches, parse, Grammar};

fn load(name: &str) -> Grammar {
    let path = format!(
        "{}/tests/data/llama-cpp-grammars/{name}.gbnf",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap();
    parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn check(name: &str, ok: &[&str], bad: &[&str]) {
    let g = load(name);
    for t in ok {
        assert!(matches(&g, t).unwrap(), "{name} should match {t:?}");
    }
    for t in bad {
        assert!(!matches(&g, t).unwrap(), "{name} should not match {t:?}");
    }
}

#[test]
fn arithmetic() {
    check(
        "arithmetic",
        &["1+2=3\n", "(a +2)*b= c\nx=1\n"],
        &["1+2=3", "1++2=3\n"],
    );
}

#[test]
fn c() {
    check(
        "c",
        &[
            "int main(){int x = 1;while(x<10){x = x+1;}return x;}",
            "float f(int a){/* c */return -a*2;}",
        ],
        &["int main(){x = ;}"],
    );
}

#[test]
fn chess() {
    check(
        "chess",
        &[
            "1. e4 e5\n2. Nf3 Nc6\n",
            "1. d4 Nf6\n2. c4 e6\n3. Nc3 Bb4+\n4. O-O-O exd8=Q#\n",
        ],
        &["1. e4 e5\n", "1. e9 e5\n2. Nf3 Nc6\n"],
    );
}

#[test]
fn english() {
    check(
        "english",
        &["Hello, world! [x] {y} \\ `z`"],
        &["Héllo", " leading space"],
    );
}

#[test]
fn japanese() {
    check("japanese", &["こんにちは 世界、カタカナ"], &["hello"]);
}

#[test]
fn json() {
    let ok = [
        r#"{"a": [1, -2.5e3, "x\n\"y\"", true, null, {}], "b": {"c": []}}"#,
        "{\n  \"k\": \"v\"\n}",
    ];
    check("json", &ok, &[r#"{"a": 1,}"#, r#"{'a': 1}"#, r#"[1]"#]);
    check("json_arr", &["[\n{\"a\": 1},\n\"x\"]"], &["[{\"a\": 1}]"]);
}

#[test]
fn list() {
    check(
        "list",
        &["- eggs\n- milk\n"],
        &["- eggs", "* eggs\n", "- a\u{2028}b\n"],
    );
}
