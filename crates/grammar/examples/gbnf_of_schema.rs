//! Prints the GBNF grammar of a JSON Schema file: `cargo run --example gbnf_of_schema -- FILE`.
fn main() {
    let path = std::env::args().nth(1).expect("usage: gbnf_of_schema FILE");
    let text = std::fs::read_to_string(&path).expect("readable file");
    match ferrollama_grammar::schema_to_gbnf(&text) {
        Ok(g) => print!("{g}"),
        Err(e) => eprintln!("{e}"),
    }
}
