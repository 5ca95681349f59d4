//! The behaviour every store shares, run on each.

use ferrollama_rag::store::NewChunk;
use ferrollama_rag::{Store, StoreMeta};

pub fn meta(model: &str, dim: usize) -> StoreMeta {
    StoreMeta {
        model: model.into(),
        dim,
        chunk_tokens: 128,
        overlap: 32,
    }
}

pub fn chunk(text: &str, v: [f32; 3]) -> NewChunk {
    NewChunk {
        start: 0,
        end: text.len(),
        text: text.into(),
        embedding: v.to_vec(),
    }
}

/// What every store does: `open` opens the same store again (empty the first time).
pub fn conformance(open: &dyn Fn() -> Box<dyn Store>) {
    {
        let mut s = open();
        assert!(s.meta().unwrap().is_none());
        s.set_meta(&meta("enc", 3)).unwrap();
        s.put_document(
            "a.txt",
            "h1",
            &[
                chunk("Water boils at one hundred degrees.", [1.0, 0.0, 0.0]),
                chunk("Ice melts when it is warmed.", [1e-30, 1.0, 0.0]),
            ],
        )
        .unwrap();
        s.put_document(
            "b.txt",
            "h2",
            &[chunk(
                "Photosynthesis makes sugar from light.",
                [0.0, 0.0, 2.0],
            )],
        )
        .unwrap();
        assert_eq!(s.stats().unwrap().chunks, 3);
        // Nearest by cosine: the length of a stored vector does not matter.
        let n = s.nearest(&[0.1, 0.0, 1.0], 2).unwrap();
        let texts: Vec<String> = s
            .chunks(&n.iter().map(|x| x.0).collect::<Vec<_>>())
            .unwrap()
            .into_iter()
            .map(|c| c.text)
            .collect();
        assert_eq!(texts[0], "Photosynthesis makes sugar from light.");
        assert!((n[0].1 - 1.0 / 1.01f32.sqrt()).abs() < 1e-6);
        // Products too small for f32 are no error (PostgreSQL's `real` raises one).
        let tiny = s.nearest(&[1e-30, 1.0, 1e-25], 1).unwrap();
        assert_eq!(
            s.chunks(&[tiny[0].0]).unwrap()[0].text,
            "Ice melts when it is warmed."
        );
        // BM25 with Porter stemming: "boiling" finds "boils"; FTS5 syntax is not syntax.
        let m = s.matching("boiling water? NEAR(\"x\" OR", 5).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(s.chunks(&[m[0].0]).unwrap()[0].source, "a.txt");
        assert!(m[0].1 > 0.0);
        assert!(s.matching("?!", 5).unwrap().is_empty());
        // Replacing a document drops its old chunks from both indexes.
        s.put_document(
            "a.txt",
            "h3",
            &[chunk("Steam is water as a gas.", [1.0, 1.0, 0.0])],
        )
        .unwrap();
        assert!(s.matching("boils", 5).unwrap().is_empty());
        assert_eq!(s.matching("steam", 5).unwrap().len(), 1);
        assert_eq!(s.nearest(&[1.0, 0.0, 0.0], 10).unwrap().len(), 2);
    }
    let mut s = open();
    assert_eq!(s.meta().unwrap().unwrap(), meta("enc", 3));
    let docs = s.documents().unwrap();
    assert_eq!(docs.len(), 2);
    assert_eq!((docs[0].sha256.as_str(), docs[0].chunks), ("h3", 1));
    // Another encoder is refused while chunks are stored.
    let e = s.set_meta(&meta("other", 3)).unwrap_err().to_string();
    assert!(e.contains("enc") && e.contains("other"), "{e}");
    s.remove_document("a.txt").unwrap();
    s.remove_document("b.txt").unwrap();
    assert_eq!(s.stats().unwrap().chunks, 0);
    assert!(s.matching("steam", 5).unwrap().is_empty());
    assert!(s.nearest(&[1.0, 0.0, 0.0], 3).unwrap().is_empty());
    // Empty, it takes another encoder.
    s.set_meta(&meta("other", 3)).unwrap();
}
