//! Opening a model through the packed-weights cache: the first open packs, writes the
//! cache and (placed in huge pages) loads again from the file it wrote; later opens read
//! it, placed either way. Every open computes the same logits, bit for bit, as a model
//! packed in memory without a cache (the tiny committed model: nothing is fetched).

use std::path::{Path, PathBuf};

use ferrollama_generate::{Bundle, OpenOptions};
use ferrollama_model::huge_pages::Placement;

fn tiny() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/data/tiny/tiny-260k-q8_0.gguf"
    ))
}

fn logits(path: &Path, opts: &OpenOptions) -> Vec<u32> {
    let b = Bundle::open(path, opts).unwrap();
    assert!(b.warnings.is_empty(), "{:?}", b.warnings);
    let mut cache = b.model.new_cache(16);
    let out = b.model.forward(&[1, 25, 77, 3, 42], &mut cache, 2).unwrap();
    out.into_vec().iter().map(|x| x.to_bits()).collect()
}

#[test]
fn every_placement_and_every_open_computes_the_same() {
    let dir = std::env::temp_dir().join(format!("ferrollama-bundle-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let plain = logits(&tiny(), &OpenOptions::default());
    for placement in [Placement::HugePages, Placement::Mapped] {
        let opts = OpenOptions {
            pack_cache_dir: Some(dir.clone()),
            placement,
            ..OpenOptions::default()
        };
        // First open (a miss, the file written), then a hit.
        assert_eq!(logits(&tiny(), &opts), plain, "{placement:?}, first open");
        let files = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(files, 1, "one cache file, no temporaries left");
        assert_eq!(logits(&tiny(), &opts), plain, "{placement:?}, second open");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
