//! The packed-weights cache: a first load writes it, a second reads it (into huge pages,
//! or mapped) and computes the same logits bit for bit without reading the model's matrices, and a damaged or foreign
//! cache file is reported and rebuilt, never trusted (default model, Q4_1, and converted to bf16).

use std::path::{Path, PathBuf};

use ferrollama_gguf::{GgmlType, GgufFile};
use ferrollama_model::huge_pages::Placement;
use ferrollama_model::pack_cache::{CacheState, PackCache};
use ferrollama_model::{Config, GgufWeights, Llama};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferrollama-pack-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Loads through a cache in `dir`; returns the cache state and the logits of a prompt.
fn load_and_run(file: &GgufFile, model: &Path, dir: &Path) -> (CacheState, Vec<u32>) {
    load_placed(file, model, dir, Placement::HugePages)
}

fn load_placed(
    file: &GgufFile,
    model: &Path,
    dir: &Path,
    placement: Placement,
) -> (CacheState, Vec<u32>) {
    let cache = PackCache::open_with(dir, model, file.identity(), placement);
    let state = cache.state().clone();
    let cfg = Config::from_gguf(file).unwrap();
    let m = Llama::load(&GgufWeights::with_pack_cache(file, &cache), cfg, 64).unwrap();
    cache.finish().unwrap();
    (state, logits(&m))
}

fn logits(m: &Llama) -> Vec<u32> {
    let mut c = m.new_cache(64);
    let t = m.forward(&[504, 3575, 282, 4649, 314], &mut c, 1).unwrap();
    let v: Vec<f32> = t.into_vec();
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn second_load_maps_the_cache_and_computes_the_same() {
    round_trip(&ferrollama_assets::default_model().unwrap(), "roundtrip");
}

/// bf16 matrices have a kind of their own in the cache (pairs for `vdpbf16ps`).
#[test]
fn bf16_weights_round_trip_through_the_cache() {
    let model = ferrollama_assets::models_dir().join("SmolLM2-135M-Instruct.bf16-from-q4_1.gguf");
    let src = ferrollama_assets::default_model().unwrap();
    ferrollama_model::convert::requantize_once(&src, &model, GgmlType::BF16).unwrap();
    round_trip(&model, "roundtrip-bf16");
}

/// A first load writes the cache; a second reads it into huge pages, a third maps it: all
/// three compute the logits of a load without the cache.
fn round_trip(model: &Path, name: &str) {
    let file = GgufFile::open(model).unwrap();
    let plain = logits(
        &Llama::load(
            &GgufWeights::new(&file),
            Config::from_gguf(&file).unwrap(),
            64,
        )
        .unwrap(),
    );
    let dir = temp_dir(name);
    let (first, from_packing) = load_and_run(&file, model, &dir);
    assert_eq!(first, CacheState::Miss);
    let (second, from_cache) = load_and_run(&file, model, &dir);
    assert_eq!(second, CacheState::Hit);
    let (third, from_map) = load_placed(&file, model, &dir, Placement::Mapped);
    assert_eq!(third, CacheState::Hit);
    assert_eq!(from_packing, plain);
    assert_eq!(from_cache, plain);
    assert_eq!(from_map, plain);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn damaged_cache_files_are_rebuilt() {
    let model = ferrollama_assets::default_model().unwrap();
    let file = GgufFile::open(&model).unwrap();
    let dir = temp_dir("damaged");
    let (_, want) = load_and_run(&file, &model, &dir);
    let path = PackCache::open(&dir, &model, file.identity())
        .path()
        .to_path_buf();
    let good = std::fs::read(&path).unwrap();
    let key_len = u32::from_le_bytes(good[8..12].try_into().unwrap()) as usize;
    let entries = 12 + key_len + 4;
    let damages: Vec<(&str, Vec<u8>)> = vec![
        ("truncated header", good[..entries + 10].to_vec()),
        ("truncated data", good[..good.len() - 1000].to_vec()),
        ("wrong magic", [b"GGUF".as_slice(), &good[4..]].concat()),
        ("another key", {
            let mut b = good.clone();
            b[12] ^= 1;
            b
        }),
        ("a length that disagrees with the shape", {
            // The first entry's length field: after its name, kind, format, n, k, offset.
            let mut b = good.clone();
            let name_len = u16::from_le_bytes([b[entries], b[entries + 1]]) as usize;
            let len_at = entries + 2 + name_len + 2 + 24;
            b[len_at] ^= 0x40;
            b
        }),
        ("an offset past the end", {
            let mut b = good.clone();
            let name_len = u16::from_le_bytes([b[entries], b[entries + 1]]) as usize;
            let off_at = entries + 2 + name_len + 2 + 16;
            b[off_at + 7] = 0x7F;
            b
        }),
        ("empty", Vec::new()),
    ];
    for (what, bytes) in damages {
        std::fs::write(&path, &bytes).unwrap();
        let (state, got) = load_and_run(&file, &model, &dir);
        assert!(matches!(state, CacheState::Broken(_)), "{what}: {state:?}");
        assert_eq!(got, want, "{what}");
        // Rebuilt: the next load maps it again.
        assert_eq!(
            PackCache::open(&dir, &model, file.identity()).state(),
            &CacheState::Hit,
            "{what}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_edited_model_replaces_its_cache_and_a_deleted_one_loses_it() {
    let model = ferrollama_assets::default_model().unwrap();
    let dir = temp_dir("lifecycle");
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("copy.gguf");
    std::fs::copy(&model, &copy).unwrap();
    let cache_dir = dir.join("packed");
    {
        let file = GgufFile::open(&copy).unwrap();
        assert_eq!(load_and_run(&file, &copy, &cache_dir).0, CacheState::Miss);
    }
    let copy_cache = PackCache::open(&cache_dir, &copy, "").path().to_path_buf();
    assert!(copy_cache.exists());
    // Same path, another modification time: the old file is not trusted, then replaced.
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&copy)
        .unwrap()
        .set_modified(later)
        .unwrap();
    {
        let file = GgufFile::open(&copy).unwrap();
        let (state, _) = load_and_run(&file, &copy, &cache_dir);
        assert!(
            matches!(state, CacheState::Broken(ref why) if why.contains("another file")),
            "{state:?}"
        );
        assert_eq!(
            PackCache::open(&cache_dir, &copy, file.identity()).state(),
            &CacheState::Hit
        );
    }
    // The copy deleted: the next cache written in that directory removes its file.
    std::fs::remove_file(&copy).unwrap();
    let file = GgufFile::open(&model).unwrap();
    assert_eq!(load_and_run(&file, &model, &cache_dir).0, CacheState::Miss);
    assert!(!copy_cache.exists());
    assert!(PackCache::open(&cache_dir, &model, "").path().exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn two_loads_at_once_write_one_good_file() {
    let model = ferrollama_assets::default_model().unwrap();
    let dir = temp_dir("concurrent");
    let (_, want) = {
        let file = GgufFile::open(&model).unwrap();
        let cfg = Config::from_gguf(&file).unwrap();
        (
            CacheState::Miss,
            logits(&Llama::load(&GgufWeights::new(&file), cfg, 64).unwrap()),
        )
    };
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let file = GgufFile::open(&model).unwrap();
                let (_, got) = load_and_run(&file, &model, &dir);
                assert_eq!(got, want);
            });
        }
    });
    let file = GgufFile::open(&model).unwrap();
    let (state, got) = load_and_run(&file, &model, &dir);
    assert_eq!((state, got), (CacheState::Hit, want));
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
