//! Safetensors checkpoints: one file, shards named by an index, and damaged files, which
//! must end in errors naming the file, never a panic.

use std::path::PathBuf;

use ferrollama_gguf::safetensors::{write_safetensors, SafetensorsDir, StDtype, StOwned};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferrollama-st-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn tensor(name: &str, values: &[f32]) -> StOwned {
    StOwned {
        name: name.into(),
        dtype: StDtype::F32,
        shape: vec![values.len()],
        data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

#[test]
fn single_file_round_trips() {
    let d = dir("single");
    write_safetensors(
        &d.join("model.safetensors"),
        &[tensor("a", &[1.0, 2.0]), tensor("b", &[3.0])],
    )
    .unwrap();
    let st = SafetensorsDir::open(&d).unwrap();
    let a = st.tensor("a").unwrap();
    assert_eq!(
        (a.dtype, a.shape.clone(), a.data.len()),
        (StDtype::F32, vec![2], 8)
    );
    assert!(st.contains("b") && !st.contains("c"));
    assert!(st
        .tensor("c")
        .unwrap_err()
        .to_string()
        .contains("tensor `c` is missing"));
}

#[test]
fn shards_are_found_through_the_index() {
    let d = dir("sharded");
    write_safetensors(
        &d.join("model-00001-of-00002.safetensors"),
        &[tensor("a", &[1.0])],
    )
    .unwrap();
    write_safetensors(
        &d.join("model-00002-of-00002.safetensors"),
        &[tensor("b", &[2.0, 3.0])],
    )
    .unwrap();
    let index = r#"{"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#;
    std::fs::write(d.join("model.safetensors.index.json"), index).unwrap();
    let st = SafetensorsDir::open(&d).unwrap();
    assert_eq!(
        st.tensor("b").unwrap().data,
        [2f32.to_le_bytes(), 3f32.to_le_bytes()].concat()
    );
    let mut names: Vec<&str> = st.names().collect();
    names.sort();
    assert_eq!(names, ["a", "b"]);
}

#[test]
fn damaged_files_are_errors() {
    let d = dir("damaged");
    let path = d.join("model.safetensors");
    write_safetensors(&path, &[tensor("a", &[1.0, 2.0, 3.0])]).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    for len in 0..bytes.len() {
        std::fs::write(&path, &bytes[..len]).unwrap();
        let e = SafetensorsDir::open(&d)
            .err()
            .expect("a truncated file was accepted")
            .to_string();
        assert!(e.contains("model.safetensors"), "{e}");
    }
    // A header length far beyond the file.
    let mut b = bytes.clone();
    b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&path, &b).unwrap();
    assert!(SafetensorsDir::open(&d).is_err());
    let with_header = |header: &[u8], data: usize| {
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header);
        b.extend(std::iter::repeat_n(0u8, data));
        b
    };
    // Offsets past the data, and a shape that disagrees with the offsets.
    std::fs::write(
        &path,
        with_header(
            br#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,99]}}"#,
            12,
        ),
    )
    .unwrap();
    assert!(SafetensorsDir::open(&d).is_err());
    std::fs::write(
        &path,
        with_header(
            br#"{"a":{"dtype":"F32","shape":[5],"data_offsets":[0,12]}}"#,
            12,
        ),
    )
    .unwrap();
    assert!(SafetensorsDir::open(&d).is_err());
    // An integer tensor: readable file, unsupported type named.
    std::fs::write(
        &path,
        with_header(
            br#"{"i":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}}"#,
            4,
        ),
    )
    .unwrap();
    let e = SafetensorsDir::open(&d)
        .unwrap()
        .tensor("i")
        .unwrap_err()
        .to_string();
    assert!(e.contains("f32, f16 and bf16 are supported"), "{e}");
}

#[test]
fn index_naming_files_outside_the_directory_is_refused() {
    let d = dir("escape");
    std::fs::write(
        d.join("model.safetensors.index.json"),
        r#"{"weight_map": {"a": "../secret.safetensors"}}"#,
    )
    .unwrap();
    let e = SafetensorsDir::open(&d).err().unwrap().to_string();
    assert!(e.contains("plain file name"), "{e}");
    std::fs::write(d.join("model.safetensors.index.json"), "{not json").unwrap();
    assert!(SafetensorsDir::open(&d)
        .err()
        .unwrap()
        .to_string()
        .contains("not valid JSON"));
}
