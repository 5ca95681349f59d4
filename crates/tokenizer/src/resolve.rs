//! llama.cpp's load-time decisions (`llama_vocab::impl::load`): default special ids per
//! model, token attributes from types, and its text-based detection of end-of-turn, FIM and
//! end-of-generation tokens (which also marks those tokens as control tokens).

use std::collections::BTreeSet;

use crate::vocab::{ModelKind, SpecialIds, TokenType, Vocab};
use crate::LookupMap;

/// Token attribute bits, as llama.cpp's `llama_token_attr`.
pub(crate) mod attr {
    pub const UNKNOWN: u16 = 1 << 0;
    pub const UNUSED: u16 = 1 << 1;
    pub const NORMAL: u16 = 1 << 2;
    pub const CONTROL: u16 = 1 << 3;
    pub const USER_DEFINED: u16 = 1 << 4;
    pub const BYTE: u16 = 1 << 5;
    pub const LSTRIP: u16 = 1 << 7;
    pub const RSTRIP: u16 = 1 << 8;
}

/// Texts llama.cpp takes as end-of-turn when no `eot_token_id` is given (in its order).
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];
/// Texts llama.cpp always counts as end of generation.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// The resolved special tokens and attributes of a vocabulary.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    pub attrs: Vec<u16>,
    pub ids: SpecialIds,
    pub eog: BTreeSet<u32>,
    /// Control, user-defined and unknown tokens, longest text first: the order in which
    /// they are cut out of raw text.
    pub special_cache: Vec<u32>,
}

/// Applies llama.cpp's defaults and detections. `token_to_id` maps each text to its last id.
pub(crate) fn resolve(v: &Vocab, token_to_id: &LookupMap<String, u32>) -> Resolved {
    let n = v.tokens.len();
    let mut attrs: Vec<u16> = match &v.token_types {
        Some(types) => types.iter().take(n).map(|&t| type_attr(t)).collect(),
        None => vec![attr::NORMAL; n],
    };
    let mut ids = special_ids(v, n);
    let find = |texts: &[&str]| texts.iter().find_map(|t| token_to_id.get(*t).copied());
    let detect = |slot: &mut Option<u32>, texts: &[&str], attrs: &mut Vec<u16>| {
        if slot.is_none() {
            *slot = find(texts);
            if let Some(id) = *slot {
                attrs[id as usize] |= attr::CONTROL;
            }
        }
    };
    // llama.cpp walks a hash map and takes the first match it meets; we take the first text
    // of each list that the vocabulary has (this matters only when several are present).
    detect(&mut ids.eot, EOT_TEXTS, &mut attrs);
    detect(&mut ids.eom, EOM_TEXTS, &mut attrs);
    detect(&mut ids.fim_pre, FIM_PRE_TEXTS, &mut attrs);
    detect(&mut ids.fim_suf, FIM_SUF_TEXTS, &mut attrs);
    detect(&mut ids.fim_mid, FIM_MID_TEXTS, &mut attrs);
    detect(&mut ids.fim_pad, FIM_PAD_TEXTS, &mut attrs);
    detect(&mut ids.fim_rep, FIM_REP_TEXTS, &mut attrs);
    detect(&mut ids.fim_sep, FIM_SEP_TEXTS, &mut attrs);

    // Control tokens named "unused" are unused.
    for (text, &id) in token_to_id {
        let a = &mut attrs[id as usize];
        if *a & attr::CONTROL != 0 && text.contains("unused") {
            *a |= attr::UNUSED;
        }
    }

    let mut eog: BTreeSet<u32> = [ids.fim_pad, ids.fim_rep, ids.fim_sep]
        .into_iter()
        .flatten()
        .collect();
    for text in EOG_TEXTS {
        if let Some(&id) = token_to_id.get(*text) {
            eog.insert(id);
            attrs[id as usize] |= attr::CONTROL;
        }
    }
    // gpt-oss: these are always rendered.
    for text in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
        if let Some(&id) = token_to_id.get(text) {
            attrs[id as usize] = attr::USER_DEFINED;
        }
    }
    eog.extend([ids.eos, ids.eot, ids.eom].into_iter().flatten());
    adjust_eog(v, &mut eog, &mut attrs);

    let mut special_cache: Vec<u32> = (0..n as u32)
        .filter(|&id| {
            attrs[id as usize] & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0
        })
        .collect();
    // llama.cpp's sort is not stable; equal lengths keep id order here.
    special_cache.sort_by_key(|&id| std::cmp::Reverse(v.tokens[id as usize].len()));

    strip_attrs(v, token_to_id, &special_cache, &mut attrs);
    Resolved {
        attrs,
        ids,
        eog,
        special_cache,
    }
}

fn type_attr(t: TokenType) -> u16 {
    match t {
        TokenType::Undefined => 0,
        TokenType::Normal => attr::NORMAL,
        TokenType::Unknown => attr::UNKNOWN,
        TokenType::Control => attr::CONTROL,
        TokenType::UserDefined => attr::USER_DEFINED,
        TokenType::Unused => attr::UNUSED,
        TokenType::Byte => attr::BYTE,
    }
}

/// Model defaults (SPM: bos 1, eos 2, unk 0; BPE: bos = eos = 11), dropped when out of
/// range, then overridden by in-range ids from the file.
fn special_ids(v: &Vocab, n: usize) -> SpecialIds {
    let mut ids = match v.model {
        ModelKind::Spm => SpecialIds {
            bos: Some(1),
            eos: Some(2),
            unk: Some(0),
            ..SpecialIds::default()
        },
        ModelKind::Bpe => SpecialIds {
            bos: Some(11),
            eos: Some(11),
            ..SpecialIds::default()
        },
    };
    let given = &v.special;
    let pairs = [
        (&mut ids.bos, given.bos),
        (&mut ids.eos, given.eos),
        (&mut ids.eot, given.eot),
        (&mut ids.eom, given.eom),
        (&mut ids.unk, given.unk),
        (&mut ids.sep, given.sep),
        (&mut ids.pad, given.pad),
        (&mut ids.mask, given.mask),
        (&mut ids.fim_pre, given.fim_pre),
        (&mut ids.fim_suf, given.fim_suf),
        (&mut ids.fim_mid, given.fim_mid),
        (&mut ids.fim_pad, given.fim_pad),
        (&mut ids.fim_rep, given.fim_rep),
        (&mut ids.fim_sep, given.fim_sep),
    ];
    for (slot, from_file) in pairs {
        if slot.is_some_and(|id| id as usize >= n) {
            *slot = None;
        }
        if let Some(id) = from_file.filter(|&id| (id as usize) < n) {
            *slot = Some(id);
        }
    }
    ids
}

/// llama.cpp's two exceptions: `<|end|>` is not end of generation when `<|return|>` and
/// `<|call|>` (or `<|calls|>` and `<|flush|>`) are; `</s>` is a normal token in vocabularies
/// with `<|tool_response>` or `<|plamo:eos|>`.
fn adjust_eog(v: &Vocab, eog: &mut BTreeSet<u32>, attrs: &mut [u16]) {
    let text_of = |id: u32| v.tokens.get(id as usize).map(String::as_str);
    let has = |eog: &BTreeSet<u32>, t: &str| eog.iter().any(|&id| text_of(id) == Some(t));
    let end = eog
        .iter()
        .copied()
        .find(|&id| text_of(id) == Some("<|end|>"));
    let call = has(eog, "<|call|>") || has(eog, "<|calls|>");
    if let Some(end) = end {
        if call && (has(eog, "<|return|>") || has(eog, "<|flush|>")) {
            eog.remove(&end);
            attrs[end as usize] = attr::USER_DEFINED;
        }
    }
    let s = eog.iter().copied().find(|&id| text_of(id) == Some("</s>"));
    if let Some(s) = s {
        if has(eog, "<|tool_response>") || has(eog, "<|plamo:eos|>") {
            eog.remove(&s);
            attrs[s as usize] = attr::NORMAL;
        }
    }
}

/// Per-model strip attributes llama.cpp sets by name: Phi-3's special tokens swallow the
/// whitespace after them (except `<unk>`, `<s>`, `<|endoftext|>`).
fn strip_attrs(
    v: &Vocab,
    token_to_id: &LookupMap<String, u32>,
    special_cache: &[u32],
    attrs: &mut [u16],
) {
    let name = v.name.as_deref().unwrap_or("").to_lowercase();
    if !(name.contains("phi-3") || name.contains("phi3")) {
        return;
    }
    for &id in special_cache {
        attrs[id as usize] |= attr::RSTRIP;
    }
    if let Some(&id) = token_to_id.get("</s>") {
        attrs[id as usize] |= attr::RSTRIP;
    }
    for t in ["<unk>", "<s>", "<|endoftext|>"] {
        if let Some(&id) = token_to_id.get(t) {
            attrs[id as usize] &= !attr::RSTRIP;
        }
    }
}
