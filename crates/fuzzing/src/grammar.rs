//! Grammars and JSON Schemas arrive in request bodies and files.

use std::sync::{Arc, OnceLock};

use ferrollama_grammar::{matches, parse, schema_to_gbnf, Constraint, Vocabulary};

use crate::parts;

/// Most tokens an input is followed for (each step costs a mask).
const MAX_STEPS: usize = 48;

/// A GBNF grammar, NUL, then text: the grammar parsed; the text matched against it whole,
/// and fed byte token by byte token, the mask at each step agreeing with the one-token
/// check for the token taken.
pub fn gbnf(data: &[u8]) {
    let texts = parts::texts(data, 2);
    let Ok(grammar) = parse(&texts[0]) else {
        return;
    };
    let feed = texts.get(1).map_or("", String::as_str);
    let _ = matches(&grammar, feed);
    let Ok(mut c) = Constraint::new(Arc::new(grammar), vocabulary()) else {
        return;
    };
    for &b in feed.as_bytes().iter().take(MAX_STEPS) {
        let Ok(mask) = c.mask() else { return };
        let id = u32::from(b);
        let Ok(allowed) = c.allows(id) else { return };
        assert_eq!(
            mask.allows(id),
            allowed,
            "mask and one-token check disagree"
        );
        if !allowed || c.accept(id).is_err() {
            return;
        }
    }
    let _ = c.is_complete();
}

/// A JSON Schema: what it compiles to must be a grammar the parser takes, and following
/// it (always the first token allowed) must never fail.
pub fn json_schema(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(gbnf) = schema_to_gbnf(text) else {
        return;
    };
    let grammar = match parse(&gbnf) {
        Ok(g) => g,
        Err(e) => panic!("the schema's grammar does not parse: {e}\n{gbnf}"),
    };
    let Ok(mut c) = Constraint::new(Arc::new(grammar), vocabulary()) else {
        return;
    };
    for _ in 0..MAX_STEPS {
        if c.is_finished() {
            return;
        }
        let Ok(mask) = c.mask() else { return };
        let Some(id) = (0..vocabulary().len() as u32).find(|&i| mask.allows(i)) else {
            return;
        };
        if id == EOS {
            return;
        }
        c.accept(id).expect("a token the mask allowed is accepted");
    }
}

/// The end-of-generation id of the small vocabulary.
const EOS: u32 = 256;

/// Every single byte (ids 0-255, so a byte is its own id), an end-of-generation token and
/// a few longer pieces as a real vocabulary has them.
fn vocabulary() -> Arc<Vocabulary> {
    static CELL: OnceLock<Arc<Vocabulary>> = OnceLock::new();
    Arc::clone(CELL.get_or_init(|| {
        let mut pieces: Vec<Option<Vec<u8>>> = (0..=255u8).map(|b| Some(vec![b])).collect();
        pieces.push(None);
        for p in [
            "{\"", "\": ", "true", "null", "  ", "\n", "é", "😀", "ab", "123",
        ] {
            pieces.push(Some(p.as_bytes().to_vec()));
        }
        Arc::new(Vocabulary::new(pieces, &[EOS]))
    }))
}
