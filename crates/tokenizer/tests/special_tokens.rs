//! Special-token partitioning and the end-of-generation set on the real vocabularies.

mod common;

use anyhow::{Context, Result};
use ferrollama_tokenizer::Tokenizer;

fn id(tok: &Tokenizer, text: &str) -> Result<u32> {
    tok.token_id(text)
        .with_context(|| format!("{text:?} is not a token"))
}

#[test]
fn smollm2_chat_markup() -> Result<()> {
    let tok = common::smollm2()?;
    let (start, end) = (id(&tok, "<|im_start|>")?, id(&tok, "<|im_end|>")?);
    let body = tok.encode("user\nHi", false, false);
    let mut expected = vec![start];
    expected.extend(&body);
    expected.push(end);
    expected.extend(tok.encode("\n", false, false));
    assert_eq!(
        tok.encode("<|im_start|>user\nHi<|im_end|>\n", true, true),
        expected
    );
    // Without parse_special the markup is plain text.
    let plain = tok.encode("<|im_start|>user\nHi<|im_end|>\n", true, false);
    assert!(
        !plain.contains(&start) && !plain.contains(&end),
        "{plain:?}"
    );
    assert_eq!(
        tok.decode(&plain, false)?,
        b"<|im_start|>user\nHi<|im_end|>\n"
    );
    Ok(())
}

#[test]
fn spm_specials_and_space_prefix_after_them() -> Result<()> {
    let tok = common::vocab("llama-spm")?;
    // After a special token the next text fragment gets the space prefix again.
    let hello = id(&tok, "▁Hello")?;
    assert_eq!(tok.encode("<s>Hello</s>", false, true), [1, hello, 2]);
    assert_eq!(tok.encode("<unk>", false, true), [0]);
    let plain = tok.encode("<s>Hello</s>", false, false);
    assert!(!plain.contains(&1) && !plain.contains(&2), "{plain:?}");
    Ok(())
}

#[test]
fn user_defined_tokens_match_without_parse_special() -> Result<()> {
    // mpt's vocabulary has user-defined runs of spaces.
    let tok = common::vocab("mpt")?;
    let spaces = id(&tok, "   ")?;
    assert!(tok.is_user_defined(spaces));
    let ids = tok.encode("a   b", false, false);
    assert!(ids.contains(&spaces), "{ids:?}");
    assert_eq!(tok.decode(&ids, false)?, b"a   b");
    Ok(())
}

#[test]
fn end_of_generation_sets() -> Result<()> {
    let smol = common::smollm2()?;
    // <|endoftext|>, <|im_end|> (eos), and <reponame>, which llama.cpp takes as FIM repo.
    assert_eq!(smol.eog_ids().collect::<Vec<_>>(), [0, 2, 4]);
    assert_eq!(smol.eot(), Some(2));
    assert_eq!((smol.bos(), smol.eos()), (Some(1), Some(2)));

    let l3 = common::vocab("llama-bpe")?;
    let eog: Vec<u32> = l3.eog_ids().collect();
    assert_eq!(eog, [128001, 128009]);
    assert!(l3.add_bos());
    assert_eq!(l3.encode("Hi", true, false)[0], 128000);

    let spm = common::vocab("llama-spm")?;
    assert_eq!(spm.eog_ids().collect::<Vec<_>>(), [2]);
    let gpt2 = common::vocab("gpt-2")?;
    assert_eq!(gpt2.eog_ids().collect::<Vec<_>>(), [50256]);
    assert!(!gpt2.add_bos());
    Ok(())
}
