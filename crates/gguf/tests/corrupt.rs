//! Hostile and damaged GGUF bytes: each must end in an error naming what is wrong, never a
//! panic or an allocation sized by an unchecked field.

use ferrollama_gguf::{GgmlType, Gguf, GgufFile, GgufWriter, TensorToWrite, Value, ValueType};

/// A small valid file: a few metadata types and two tensors.
fn sample() -> Vec<u8> {
    let dir = tempdir();
    let path = dir.join("sample.gguf");
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into()));
    w.set("llama.block_count", Value::U32(2));
    w.set("a.f", Value::F32(0.5));
    w.set("a.b", Value::Bool(true));
    w.set(
        "a.arr",
        Value::Array(
            ValueType::String,
            vec![Value::String("x".into()), Value::String("yz".into())],
        ),
    );
    w.set(
        "a.nested",
        Value::Array(
            ValueType::Array,
            vec![Value::Array(ValueType::I64, vec![Value::I64(-3)])],
        ),
    );
    w.add_tensor(TensorToWrite {
        name: "t.f32".into(),
        dims: vec![3, 2],
        ggml_type: GgmlType::F32,
    });
    w.add_tensor(TensorToWrite {
        name: "t.q8".into(),
        dims: vec![32],
        ggml_type: GgmlType::Q8_0,
    });
    w.write(&path, |i, _| {
        Ok(if i == 0 {
            (0..24).collect()
        } else {
            vec![7; 34]
        })
    })
    .unwrap();
    std::fs::read(&path).unwrap()
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "ferrollama-gguf-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn err(bytes: &[u8]) -> String {
    match Gguf::parse(bytes, "bad.gguf") {
        Ok(_) => panic!("corrupt bytes were accepted"),
        Err(e) => e.to_string(),
    }
}

/// Offset of the first occurrence of `needle`.
fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).position(|w| w == needle).unwrap()
}

#[test]
fn valid_file_round_trips() {
    let bytes = sample();
    let g = Gguf::parse(&bytes, "ok.gguf").unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(g.get_u64("llama.block_count").unwrap(), 2);
    assert_eq!(g.get_f32("a.f").unwrap(), 0.5);
    assert!(g.get_bool("a.b").unwrap());
    assert_eq!(g.get_str_array("a.arr").unwrap(), vec!["x", "yz"]);
    assert_eq!(
        g.get("a.nested").unwrap().as_array().unwrap()[0]
            .as_array()
            .unwrap()[0],
        Value::I64(-3)
    );
    let t = g.tensor_info("t.f32").unwrap();
    assert_eq!(
        (t.dims.clone(), t.size, t.shape()),
        (vec![3, 2], 24, vec![2, 3])
    );

    let path = tempdir().join("mapped.gguf");
    std::fs::write(&path, &bytes).unwrap();
    let f = GgufFile::open(&path).unwrap();
    let (_, data) = f.tensor("t.f32").unwrap();
    assert_eq!(data, (0..24).collect::<Vec<u8>>().as_slice());
    assert_eq!(f.tensor("t.q8").unwrap().1, &[7u8; 34][..]);
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = sample();
    // Every prefix shorter than the last tensor's end must be rejected.
    let needed = bytes.len() - (32 - 34 % 32);
    for len in 0..needed {
        let e = err(&bytes[..len]);
        assert!(e.starts_with("bad.gguf: "), "{e}");
    }
}

#[test]
fn bad_magic_and_version() {
    let mut bytes = sample();
    bytes[0] = b'X';
    assert!(err(&bytes).contains("not a GGUF file"));
    let mut bytes = sample();
    bytes[4..8].copy_from_slice(&9u32.to_le_bytes());
    assert!(err(&bytes).contains("version 9"));
}

#[test]
fn absurd_tensor_and_metadata_counts() {
    let mut bytes = sample();
    bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(err(&bytes).contains("tensor count"), "{}", err(&bytes));
    let mut bytes = sample();
    bytes[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(err(&bytes).contains("metadata count"));
}

#[test]
fn absurd_string_and_array_lengths() {
    let bytes = sample();
    // The key length of the first metadata entry.
    let mut b = bytes.clone();
    b[24..32].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
    assert!(err(&b).contains("truncated"), "{}", err(&b));
    // The length of the array `a.arr` sits after its key, its type and its element type.
    let mut b = bytes.clone();
    let at = find(&b, b"a.arr") + 5 + 4 + 4;
    b[at..at + 8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    assert!(err(&b).contains("length of array `a.arr`"), "{}", err(&b));
}

#[test]
fn unknown_value_and_tensor_types() {
    let mut b = sample();
    let at = find(&b, b"a.f") + 3;
    b[at..at + 4].copy_from_slice(&77u32.to_le_bytes());
    assert!(err(&b).contains("unknown value type 77"));

    let mut b = sample();
    // t.q8: name, n_dims (4), one dim (8), then the type.
    let at = find(&b, b"t.q8") + 4 + 4 + 8;
    b[at..at + 4].copy_from_slice(&4u32.to_le_bytes());
    assert!(
        err(&b).contains("unknown or unsupported ggml type 4"),
        "{}",
        err(&b)
    );
}

#[test]
fn offset_past_end_and_misaligned() {
    let mut b = sample();
    let at = find(&b, b"t.q8") + 4 + 4 + 8 + 4;
    b[at..at + 8].copy_from_slice(&(1u64 << 32).to_le_bytes());
    assert!(err(&b).contains("runs past the end"), "{}", err(&b));
    b[at..at + 8].copy_from_slice(&(u64::MAX - 31).to_le_bytes());
    assert!(err(&b).contains("runs past the end"), "{}", err(&b));
    b[at..at + 8].copy_from_slice(&3u64.to_le_bytes());
    assert!(err(&b).contains("not a multiple of the alignment"));
}

#[test]
fn shape_that_is_not_whole_blocks_or_overflows() {
    let mut b = sample();
    let at = find(&b, b"t.q8") + 4 + 4;
    b[at..at + 8].copy_from_slice(&33u64.to_le_bytes());
    assert!(err(&b).contains("not whole q8_0 blocks"), "{}", err(&b));

    let mut b = sample();
    let at = find(&b, b"t.f32") + 5 + 4;
    b[at..at + 8].copy_from_slice(&(1u64 << 62).to_le_bytes());
    assert!(err(&b).contains("overflow"), "{}", err(&b));

    let mut b = sample();
    let at = find(&b, b"t.f32") + 5;
    b[at..at + 4].copy_from_slice(&9u32.to_le_bytes());
    assert!(err(&b).contains("9 dimensions"));
}

#[test]
fn wrong_metadata_types_are_named() {
    let g = Gguf::parse(&sample(), "ok.gguf").unwrap();
    let e = g.get_u64("general.architecture").unwrap_err().to_string();
    assert!(
        e.contains("`general.architecture` should be a non-negative integer"),
        "{e}"
    );
    let e = g.get_str("missing.key").unwrap_err().to_string();
    assert_eq!(e, "ok.gguf: metadata key `missing.key` is missing");
}

#[test]
fn random_corruption_never_panics() {
    let bytes = sample();
    let mut state = 0x9E3779B97F4A7C15u64;
    for _ in 0..5000 {
        let mut b = bytes.clone();
        for _ in 0..4 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let at = (state % b.len() as u64) as usize;
            b[at] = (state >> 32) as u8;
        }
        let _ = Gguf::parse(&b, "fuzz.gguf");
    }
}

/// Byte arrays are one byte each on disk and a `Value` each in memory: past
/// `MAX_ARRAY_ELEMENTS` in one file the parse stops, before the 32-fold blow-up.
#[test]
fn too_many_array_elements_are_refused_before_they_are_built() {
    let n = ferrollama_gguf::reader::MAX_ARRAY_ELEMENTS + 1;
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes()); // tensors
    b.extend_from_slice(&1u64.to_le_bytes()); // metadata keys
    b.extend_from_slice(&5u64.to_le_bytes());
    b.extend_from_slice(b"a.big");
    b.extend_from_slice(&9u32.to_le_bytes()); // array
    b.extend_from_slice(&0u32.to_le_bytes()); // of u8
    b.extend_from_slice(&n.to_le_bytes());
    b.resize(b.len() + n as usize, 1);
    let e = err(&b);
    assert!(e.contains("array elements in the file"), "{e}");
}
