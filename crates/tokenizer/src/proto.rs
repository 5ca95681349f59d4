//! Just enough of the protobuf wire format (<https://protobuf.dev/programming-guides/encoding/>)
//! to read and write a SentencePiece `ModelProto`: varints, fixed32/64 and length-delimited
//! fields. Every length is checked against the bytes left, so a truncated or hostile file
//! gives an error naming the field, never a panic or an allocation it asks for.

use crate::error::{Error, Result};

/// A field's value as the wire carries it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Wire<'a> {
    /// Wire type 0.
    Varint(u64),
    /// Wire type 1.
    Fixed64(u64),
    /// Wire type 2: strings, bytes, sub-messages.
    Bytes(&'a [u8]),
    /// Wire type 5.
    Fixed32(u32),
}

impl Wire<'_> {
    fn describe(&self) -> &'static str {
        match self {
            Wire::Varint(_) => "wire type 0 (varint)",
            Wire::Fixed64(_) => "wire type 1 (fixed64)",
            Wire::Bytes(_) => "wire type 2 (length-delimited)",
            Wire::Fixed32(_) => "wire type 5 (fixed32)",
        }
    }
}

/// One field read from a message, with what is needed to name it in errors.
pub(crate) struct Field<'a, 'p> {
    /// The field number.
    pub number: u32,
    /// The value, as the wire carries it.
    pub value: Wire<'a>,
    path: &'p str,
    names: &'static [(u32, &'static str)],
}

impl<'a> Field<'a, '_> {
    /// The field's path, e.g. `trainer_spec.model_type` or `pieces[3].field 9`.
    pub fn path(&self) -> String {
        join(self.path, self.names, self.number)
    }

    /// An error about this field.
    pub fn error(&self, msg: impl Into<String>) -> Error {
        Error::SpmModel {
            field: self.path(),
            msg: msg.into(),
        }
    }

    fn wrong_type(&self, expected: &str) -> Error {
        self.error(format!(
            "has {}, expected {expected}",
            self.value.describe()
        ))
    }

    /// A length-delimited value (string, bytes or sub-message).
    pub fn bytes(&self) -> Result<&'a [u8]> {
        match self.value {
            Wire::Bytes(b) => Ok(b),
            _ => Err(self.wrong_type("wire type 2 (length-delimited)")),
        }
    }

    /// A `string` field: length-delimited and valid UTF-8.
    pub fn string(&self) -> Result<&'a str> {
        std::str::from_utf8(self.bytes()?)
            .map_err(|e| self.error(format!("is not valid UTF-8 ({e})")))
    }

    /// A varint field (`int32`, `enum`, `bool`, ...), as its raw 64 bits.
    pub fn varint(&self) -> Result<u64> {
        match self.value {
            Wire::Varint(v) => Ok(v),
            _ => Err(self.wrong_type("wire type 0 (varint)")),
        }
    }

    /// An `int32` field: protobuf keeps the low 32 bits (negatives are sign-extended on the wire).
    pub fn int32(&self) -> Result<i32> {
        Ok(self.varint()? as u32 as i32)
    }

    /// A `bool` field: any non-zero varint is true.
    pub fn bool(&self) -> Result<bool> {
        Ok(self.varint()? != 0)
    }

    /// A `float` field (fixed32).
    pub fn f32(&self) -> Result<f32> {
        match self.value {
            Wire::Fixed32(v) => Ok(f32::from_bits(v)),
            _ => Err(self.wrong_type("wire type 5 (fixed32)")),
        }
    }
}

fn join(path: &str, names: &[(u32, &str)], number: u32) -> String {
    let name = names
        .iter()
        .find(|(n, _)| *n == number)
        .map_or_else(|| format!("field {number}"), |(_, s)| s.to_string());
    if path.is_empty() {
        name
    } else {
        format!("{path}.{name}")
    }
}

/// Reads the fields of one message in order. `path` names the message in errors (`""` for
/// the top level) and `names` its known fields.
pub(crate) struct Reader<'a, 'p> {
    buf: &'a [u8],
    pos: usize,
    path: &'p str,
    names: &'static [(u32, &'static str)],
}

impl<'a, 'p> Reader<'a, 'p> {
    /// A reader over the bytes of one message.
    pub fn new(buf: &'a [u8], path: &'p str, names: &'static [(u32, &'static str)]) -> Self {
        Reader {
            buf,
            pos: 0,
            path,
            names,
        }
    }

    /// The next field, or `None` at the end of the message.
    pub fn next_field(&mut self) -> Result<Option<Field<'a, 'p>>> {
        if self.pos == self.buf.len() {
            return Ok(None);
        }
        let (at, path) = (self.pos, self.path);
        let here = || {
            if path.is_empty() {
                format!("field tag at byte {at}")
            } else {
                format!("{path} (field tag at byte {at})")
            }
        };
        let tag = self
            .varint()
            .map_err(|msg| Error::SpmModel { field: here(), msg })?;
        let number = u32::try_from(tag >> 3)
            .ok()
            .filter(|&n| n != 0 && n < (1 << 29));
        let Some(number) = number else {
            return Err(Error::SpmModel {
                field: here(),
                msg: format!("field number {} is invalid", tag >> 3),
            });
        };
        let names = self.names;
        let err = |msg: String| Error::SpmModel {
            field: join(path, names, number),
            msg,
        };
        let value = match tag & 7 {
            0 => Wire::Varint(self.varint().map_err(err)?),
            1 => Wire::Fixed64(u64::from_le_bytes(
                self.take(8).map_err(err)?.try_into().unwrap_or([0; 8]),
            )),
            2 => {
                let len = self.varint().map_err(err)?;
                let left = self.buf.len() - self.pos;
                match usize::try_from(len).ok().filter(|&l| l <= left) {
                    Some(l) => Wire::Bytes(self.take(l).map_err(err)?),
                    None => return Err(err(format!("length {len} exceeds the {left} bytes left"))),
                }
            }
            5 => Wire::Fixed32(u32::from_le_bytes(
                self.take(4).map_err(err)?.try_into().unwrap_or([0; 4]),
            )),
            3 | 4 => {
                return Err(err(format!(
                    "uses wire type {} (group), which SentencePiece models never contain",
                    tag & 7
                )))
            }
            w => return Err(err(format!("has invalid wire type {w}"))),
        };
        Ok(Some(Field {
            number,
            value,
            path: self.path,
            names: self.names,
        }))
    }

    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let left = self.buf.len() - self.pos;
        if n > left {
            return Err(format!("needs {n} bytes but only {left} are left"));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn varint(&mut self) -> std::result::Result<u64, String> {
        let mut v = 0u64;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err("truncated varint".to_string());
            };
            self.pos += 1;
            if i == 9 && b > 1 {
                return Err("varint overflows 64 bits".to_string());
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint overflows 64 bits".to_string())
    }
}

/// Writes one message's fields.
#[derive(Default)]
pub(crate) struct Writer {
    /// The encoded fields so far.
    pub buf: Vec<u8>,
}

impl Writer {
    fn raw_varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    fn tag(&mut self, number: u32, wire: u8) {
        self.raw_varint(u64::from(number) << 3 | u64::from(wire));
    }

    /// A varint field (`enum`, unsigned).
    pub fn varint(&mut self, number: u32, v: u64) {
        self.tag(number, 0);
        self.raw_varint(v);
    }

    /// An `int32` field; negatives take ten bytes, sign-extended as protobuf requires.
    pub fn int32(&mut self, number: u32, v: i32) {
        self.varint(number, i64::from(v) as u64);
    }

    /// A `bool` field.
    pub fn bool(&mut self, number: u32, v: bool) {
        self.varint(number, u64::from(v));
    }

    /// A `float` field.
    pub fn f32(&mut self, number: u32, v: f32) {
        self.tag(number, 5);
        self.buf.extend_from_slice(&v.to_bits().to_le_bytes());
    }

    /// A length-delimited field (string, bytes or an encoded sub-message).
    pub fn bytes(&mut self, number: u32, v: &[u8]) {
        self.tag(number, 2);
        self.raw_varint(v.len() as u64);
        self.buf.extend_from_slice(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: &[(u32, &str)] = &[(1, "a"), (2, "b")];

    fn fields(buf: &[u8]) -> Result<Vec<(u32, Wire<'_>)>> {
        let mut r = Reader::new(buf, "m", NAMES);
        let mut out = Vec::new();
        while let Some(f) = r.next_field()? {
            out.push((f.number, f.value));
        }
        Ok(out)
    }

    fn message(e: Error) -> String {
        e.to_string()
    }

    #[test]
    fn writer_output_reads_back() -> Result<()> {
        let mut w = Writer::default();
        w.varint(1, 300);
        w.int32(2, -1);
        w.f32(3, -2.5);
        w.bytes(4, b"hi");
        w.bool(5, true);
        let got = fields(&w.buf)?;
        assert_eq!(
            got,
            [
                (1, Wire::Varint(300)),
                (2, Wire::Varint(u64::MAX)),
                (3, Wire::Fixed32((-2.5f32).to_bits())),
                (4, Wire::Bytes(b"hi")),
                (5, Wire::Varint(1))
            ]
        );
        // 300 = 0b10_0101100 → ac 02; -1 takes ten bytes.
        assert_eq!(&w.buf[..3], [0x08, 0xac, 0x02]);
        assert_eq!(w.buf[3..14].len(), 11);
        Ok(())
    }

    #[test]
    fn int32_keeps_low_bits() -> Result<()> {
        let mut w = Writer::default();
        w.int32(1, -7);
        let mut r = Reader::new(&w.buf, "", NAMES);
        let f = r.next_field()?.ok_or(Error::EmptyVocab)?;
        assert_eq!(f.int32()?, -7);
        Ok(())
    }

    #[test]
    fn length_beyond_the_message_is_an_error_naming_the_field() {
        // Field 2, length-delimited, length 2^62.
        let buf = [0x12, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40];
        let e = message(fields(&buf).unwrap_err());
        assert!(
            e.contains("m.b") && e.contains("exceeds the 0 bytes left"),
            "{e}"
        );
    }

    #[test]
    fn truncated_and_overlong_varints_are_errors() {
        let e = message(fields(&[0x08, 0x80]).unwrap_err());
        assert!(e.contains("m.a") && e.contains("truncated varint"), "{e}");
        let e = message(
            fields(&[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
            ])
            .unwrap_err(),
        );
        assert!(e.contains("overflows"), "{e}");
        let e = message(fields(&[0x80]).unwrap_err());
        assert!(e.contains("field tag at byte 0"), "{e}");
    }

    #[test]
    fn bad_wire_types_and_field_numbers_are_errors() {
        for (buf, want) in [
            (&[0x0b][..], "group"),
            (&[0x0e][..], "invalid wire type 6"),
            (&[0x00][..], "field number 0"),
            (&[0x0d, 1, 2][..], "needs 4 bytes"),
        ] {
            let e = message(fields(buf).unwrap_err());
            assert!(e.contains(want), "{buf:?}: {e}");
        }
    }

    #[test]
    fn typed_getters_reject_the_wrong_wire_type() -> Result<()> {
        let buf = [0x08, 0x01];
        let mut r = Reader::new(&buf, "m", NAMES);
        let f = r.next_field()?.ok_or(Error::EmptyVocab)?;
        let e = message(f.string().unwrap_err());
        assert!(
            e.contains("m.a") && e.contains("wire type 0 (varint), expected wire type 2"),
            "{e}"
        );
        assert!(f.f32().is_err());
        assert!(f.bool()?);
        Ok(())
    }

    #[test]
    fn invalid_utf8_string_is_an_error() -> Result<()> {
        let buf = [0x12, 0x01, 0xff];
        let mut r = Reader::new(&buf, "", NAMES);
        let f = r.next_field()?.ok_or(Error::EmptyVocab)?;
        assert!(
            message(f.string().unwrap_err()).starts_with("tokenizer.model: b: is not valid UTF-8")
        );
        Ok(())
    }
}
