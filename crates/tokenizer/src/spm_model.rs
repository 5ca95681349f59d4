//! SentencePiece `tokenizer.model` files (the `ModelProto` of google/sentencepiece
//! `src/sentencepiece_model.proto`) to and from [`Vocab`], mapped as llama.cpp's
//! `convert_hf_to_gguf.py` (`_create_vocab_sentencepiece`) maps them onto GGUF metadata.
//! Only BPE models (`trainer_spec.model_type = BPE`) can be run; Unigram ones are refused.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::proto::{Reader, Writer};
use crate::tokenizer::Tokenizer;
use crate::vocab::{ModelKind, SpecialIds, TokenType, Vocab};

/// `ModelProto.SentencePiece.Type` values.
mod piece_type {
    pub const NORMAL: u64 = 1;
    pub const UNKNOWN: u64 = 2;
    pub const CONTROL: u64 = 3;
    pub const USER_DEFINED: u64 = 4;
    pub const UNUSED: u64 = 5;
    pub const BYTE: u64 = 6;
}

/// `TrainerSpec.ModelType` values.
const UNIGRAM: u64 = 1;
const BPE: u64 = 2;

const UNIGRAM_REFUSED: &str = "is UNIGRAM (1); only BPE (2) models are supported \
    (llama.cpp runs Unigram models with its `t5` tokenizer, which ferrollama does not implement)";

const MODEL_FIELDS: &[(u32, &str)] = &[
    (1, "pieces"),
    (2, "trainer_spec"),
    (3, "normalizer_spec"),
    (4, "self_test_data"),
    (5, "denormalizer_spec"),
];
const PIECE_FIELDS: &[(u32, &str)] = &[(1, "piece"), (2, "score"), (3, "type")];
const TRAINER_FIELDS: &[(u32, &str)] = &[
    (3, "model_type"),
    (4, "vocab_size"),
    (25, "split_digits"),
    (35, "byte_fallback"),
    (40, "unk_id"),
    (41, "bos_id"),
    (42, "eos_id"),
    (43, "pad_id"),
    (45, "unk_piece"),
    (46, "bos_piece"),
    (47, "eos_piece"),
    (48, "pad_piece"),
];
const NORMALIZER_FIELDS: &[(u32, &str)] = &[
    (1, "name"),
    (3, "add_dummy_prefix"),
    (4, "remove_extra_whitespaces"),
    (5, "escape_whitespaces"),
];

/// One `ModelProto.SentencePiece`.
struct Piece {
    text: String,
    score: f32,
    kind: u64,
}

/// The fields of a `ModelProto` that matter to llama.cpp, with the proto's defaults.
struct Model {
    pieces: Vec<Piece>,
    model_type: u64,
    ids: [i32; 4],
    add_dummy_prefix: bool,
}

/// Parses a `ModelProto`. A sub-message given twice is merged, as protobuf does.
fn parse(bytes: &[u8]) -> Result<Model> {
    // Defaults of sentencepiece_model.proto: UNIGRAM, unk 0, bos 1, eos 2, pad -1, dummy prefix on.
    let mut m = Model {
        pieces: Vec::new(),
        model_type: UNIGRAM,
        ids: [0, 1, 2, -1],
        add_dummy_prefix: true,
    };
    let mut r = Reader::new(bytes, "", MODEL_FIELDS);
    while let Some(f) = r.next_field()? {
        match f.number {
            1 => {
                let path = format!("pieces[{}]", m.pieces.len());
                m.pieces.push(parse_piece(f.bytes()?, &path)?);
            }
            2 => parse_trainer(f.bytes()?, &mut m)?,
            3 => parse_normalizer(f.bytes()?, &mut m)?,
            _ => {}
        }
    }
    Ok(m)
}

fn parse_piece(bytes: &[u8], path: &str) -> Result<Piece> {
    let mut p = Piece {
        text: String::new(),
        score: 0.0,
        kind: piece_type::NORMAL,
    };
    let mut r = Reader::new(bytes, path, PIECE_FIELDS);
    while let Some(f) = r.next_field()? {
        match f.number {
            1 => p.text = f.string()?.to_string(),
            2 => p.score = f.f32()?,
            // An enum value the proto does not define is kept as an unknown field by protobuf,
            // leaving the default NORMAL.
            3 => {
                p.kind = Some(f.varint()?)
                    .filter(|k| (1..=6).contains(k))
                    .unwrap_or(piece_type::NORMAL)
            }
            _ => {}
        }
    }
    Ok(p)
}

fn parse_trainer(bytes: &[u8], m: &mut Model) -> Result<()> {
    let mut r = Reader::new(bytes, "trainer_spec", TRAINER_FIELDS);
    while let Some(f) = r.next_field()? {
        match f.number {
            3 => m.model_type = f.varint()?,
            40..=43 => m.ids[(f.number - 40) as usize] = f.int32()?,
            // Named fields we do not use must still have their declared wire type.
            4 | 25 | 35 => {
                f.varint()?;
            }
            45..=48 => {
                f.string()?;
            }
            _ => {}
        }
    }
    Ok(())
}

fn parse_normalizer(bytes: &[u8], m: &mut Model) -> Result<()> {
    let mut r = Reader::new(bytes, "normalizer_spec", NORMALIZER_FIELDS);
    while let Some(f) = r.next_field()? {
        match f.number {
            3 => m.add_dummy_prefix = f.bool()?,
            1 => {
                f.string()?;
            }
            4 | 5 => {
                f.varint()?;
            }
            _ => {}
        }
    }
    Ok(())
}

impl Vocab {
    /// Reads a SentencePiece `tokenizer.model` as llama.cpp's converter does: pieces,
    /// scores and types (user-defined pieces become normal tokens, as the converter makes
    /// them), `add_space_prefix` from `normalizer_spec.add_dummy_prefix` and the unk, bos,
    /// eos and pad ids of `trainer_spec` (a negative id means none).
    ///
    /// Like llama.cpp, the normalizer's rules (`name`, `precompiled_charsmap`) and
    /// `remove_extra_whitespaces` are ignored, so only models trained with
    /// `normalization_rule_name=identity` and `remove_extra_whitespaces=false` (as Llama's
    /// was) tokenize exactly as the `sentencepiece` library does.
    pub fn from_sentencepiece_bytes(bytes: &[u8]) -> Result<Vocab> {
        let m = parse(bytes)?;
        let err = |field: &str, msg: String| Error::SpmModel {
            field: field.to_string(),
            msg,
        };
        match m.model_type {
            BPE => {}
            UNIGRAM => return Err(err("trainer_spec.model_type", UNIGRAM_REFUSED.into())),
            t => {
                return Err(err(
                    "trainer_spec.model_type",
                    format!(
                    "is {t} (WORD = 3, CHAR = 4, or unknown); only BPE (2) models are supported"
                ),
                ))
            }
        }
        if m.pieces.is_empty() {
            return Err(Error::EmptyVocab);
        }
        let mut seen: HashMap<&str, usize> = HashMap::with_capacity(m.pieces.len());
        for (i, p) in m.pieces.iter().enumerate() {
            if p.text.is_empty() {
                return Err(err(
                    &format!("pieces[{i}].piece"),
                    "is empty (sentencepiece refuses such a model)".into(),
                ));
            }
            if let Some(first) = seen.insert(&p.text, i) {
                return Err(err(
                    &format!("pieces[{i}].piece"),
                    format!(
                        "{:?} repeats pieces[{first}] (sentencepiece refuses such a model)",
                        p.text
                    ),
                ));
            }
        }
        let id = |v: i32| u32::try_from(v).ok();
        let types = m.pieces.iter().map(|p| match p.kind {
            piece_type::UNKNOWN => TokenType::Unknown,
            piece_type::CONTROL => TokenType::Control,
            piece_type::UNUSED => TokenType::Unused,
            piece_type::BYTE => TokenType::Byte,
            _ => TokenType::Normal,
        });
        Ok(Vocab {
            model: ModelKind::Spm,
            pre: Some("default".to_string()),
            token_types: Some(types.collect()),
            scores: Some(m.pieces.iter().map(|p| p.score).collect()),
            tokens: m.pieces.into_iter().map(|p| p.text).collect(),
            merges: Vec::new(),
            special: SpecialIds {
                unk: id(m.ids[0]),
                bos: id(m.ids[1]),
                eos: id(m.ids[2]),
                pad: id(m.ids[3]),
                ..SpecialIds::default()
            },
            add_bos: None,
            add_eos: None,
            add_space_prefix: Some(m.add_dummy_prefix),
            name: None,
        })
    }
}

impl Tokenizer {
    /// Loads a SentencePiece BPE `tokenizer.model` (see [`Vocab::from_sentencepiece_bytes`]).
    pub fn from_sentencepiece_model(path: impl AsRef<Path>) -> Result<Tokenizer> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            file: path.display().to_string(),
            source,
        })?;
        Tokenizer::from_sentencepiece_bytes(&bytes)
    }

    /// Loads a SentencePiece BPE model from the bytes of a `tokenizer.model`.
    pub fn from_sentencepiece_bytes(bytes: &[u8]) -> Result<Tokenizer> {
        Tokenizer::from_vocab(Vocab::from_sentencepiece_bytes(bytes)?)
    }

    /// This SPM vocabulary as a SentencePiece `tokenizer.model`: a BPE `ModelProto` with
    /// identity normalization and whitespace kept, `byte_fallback` set when the vocabulary
    /// has byte tokens, `split_digits`, `add_dummy_prefix` = [`Tokenizer::add_space_prefix`]
    /// and the resolved unk/bos/eos/pad ids. User-defined tokens are written with `▁` for
    /// spaces. Not stored: `add_bos`/`add_eos` (no such field) and user-defined types, which
    /// [`Vocab::from_sentencepiece_bytes`] reads back as normal, as llama.cpp's converter does.
    ///
    /// The unk token is written as UNKNOWN whatever its type, other unknown-typed tokens as
    /// CONTROL (sentencepiece allows one unknown piece). Fails for byte-level BPE vocabularies
    /// and where sentencepiece would refuse the file: repeated piece texts, byte tokens that
    /// are not `<0xNN>` or cover only some bytes.
    pub fn to_sentencepiece_model(&self) -> Result<Vec<u8>> {
        if self.vocab.model != ModelKind::Spm {
            return Err(Error::SpmExport("only SentencePiece (`llama`) vocabularies can be written; this one is byte-level BPE (`gpt2`)".into()));
        }
        let (kinds, unk) = self.piece_types()?;
        let texts: Vec<String> = self
            .vocab
            .tokens
            .iter()
            .zip(&kinds)
            .map(|(t, &k)| {
                if k == piece_type::USER_DEFINED {
                    t.replace(' ', "\u{2581}")
                } else {
                    t.clone()
                }
            })
            .collect();
        let mut seen: HashMap<&str, usize> = HashMap::with_capacity(texts.len());
        for (i, t) in texts.iter().enumerate() {
            if let Some(first) = seen.insert(t, i) {
                return Err(Error::SpmExport(format!(
                    "tokens {first} and {i} are both {t:?}; sentencepiece needs unique pieces"
                )));
            }
        }
        let byte_fallback = byte_fallback(&texts, &kinds)?;
        let mut model = Writer::default();
        for (i, text) in texts.iter().enumerate() {
            let mut p = Writer::default();
            p.bytes(1, text.as_bytes());
            p.f32(2, self.scores.get(i).copied().unwrap_or(0.0));
            if kinds[i] != piece_type::NORMAL {
                p.varint(3, kinds[i]);
            }
            model.bytes(1, &p.buf);
        }
        let mut trainer = Writer::default();
        trainer.varint(3, BPE);
        trainer.int32(4, i32::try_from(texts.len()).unwrap_or(i32::MAX));
        trainer.bool(25, true);
        trainer.bool(35, byte_fallback);
        let as_id = |id: Option<u32>| id.and_then(|i| i32::try_from(i).ok()).unwrap_or(-1);
        let ids = [Some(unk), self.ids.bos, self.ids.eos, self.ids.pad];
        for (k, id) in ids.into_iter().enumerate() {
            trainer.int32(40 + k as u32, as_id(id));
        }
        // sentencepiece finds its special ids by these texts (`bos_id()` is the id of `bos_piece`).
        for (k, id) in ids.into_iter().enumerate() {
            if let Some(text) = id.and_then(|i| texts.get(i as usize)) {
                trainer.bytes(45 + k as u32, text.as_bytes());
            }
        }
        model.bytes(2, &trainer.buf);
        let mut normalizer = Writer::default();
        normalizer.bytes(1, b"identity");
        normalizer.bool(3, self.add_space_prefix);
        normalizer.bool(4, false);
        normalizer.bool(5, true);
        model.bytes(3, &normalizer.buf);
        Ok(model.buf)
    }

    /// The piece type of every token, and the one token that is UNKNOWN (sentencepiece
    /// allows exactly one): the resolved unk token. Other tokens typed unknown (older
    /// converters padded vocabularies with them) become CONTROL, which llama.cpp treats alike
    /// when encoding: both are matched in text only when parsing specials.
    fn piece_types(&self) -> Result<(Vec<u64>, u32)> {
        let n = self.vocab.tokens.len();
        let mut kinds: Vec<u64> = match &self.vocab.token_types {
            Some(t) => t.iter().take(n).map(|&t| piece_type_of(t)).collect(),
            None => vec![piece_type::NORMAL; n],
        };
        let first_unknown = kinds
            .iter()
            .position(|&k| k == piece_type::UNKNOWN)
            .map(|i| i as u32);
        let Some(unk) = self.ids.unk.filter(|&u| (u as usize) < n).or(first_unknown) else {
            return Err(Error::SpmExport("no unknown token: sentencepiece needs one (give the vocabulary an unknown_token_id)".into()));
        };
        for k in kinds.iter_mut().filter(|k| **k == piece_type::UNKNOWN) {
            *k = piece_type::CONTROL;
        }
        kinds[unk as usize] = piece_type::UNKNOWN;
        Ok((kinds, unk))
    }
}

fn piece_type_of(t: TokenType) -> u64 {
    match t {
        TokenType::Undefined | TokenType::Normal => piece_type::NORMAL,
        TokenType::Unknown => piece_type::UNKNOWN,
        TokenType::Control => piece_type::CONTROL,
        TokenType::UserDefined => piece_type::USER_DEFINED,
        TokenType::Unused => piece_type::UNUSED,
        TokenType::Byte => piece_type::BYTE,
    }
}

/// Whether the model has byte fallback: byte tokens must then be `<0xNN>` for all 256 bytes.
fn byte_fallback(texts: &[String], kinds: &[u64]) -> Result<bool> {
    let mut found = [false; 256];
    let mut any = false;
    for (t, _) in texts
        .iter()
        .zip(kinds)
        .filter(|(_, &k)| k == piece_type::BYTE)
    {
        // sentencepiece knows exactly the 256 texts `<0x%02X>`: upper-case hex only.
        let upper_hex = |h: &&str| {
            h.len() == 2
                && h.bytes()
                    .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c))
        };
        let hex = t
            .strip_prefix("<0x")
            .and_then(|h| h.strip_suffix('>'))
            .filter(upper_hex);
        match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
            Some(b) => found[usize::from(b)] = true,
            None => {
                return Err(Error::SpmExport(format!(
                    "byte token {t:?} is not of the form <0xNN>"
                )))
            }
        }
        any = true;
    }
    let missing = found.iter().filter(|&&f| !f).count();
    if any && missing > 0 {
        return Err(Error::SpmExport(format!(
            "byte tokens cover only {} of the 256 bytes; sentencepiece's byte fallback needs all",
            256 - missing
        )));
    }
    Ok(any)
}
