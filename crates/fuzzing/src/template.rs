//! Chat templates are programs that come with model files; the messages they format come
//! from whoever talks to the server. Both are hostile here.

use ferrollama_generate::chat::{render_template_with, ChatFormat};
use ferrollama_generate::Message;

use crate::parts;
use crate::tokenizer::smollm2;

/// NUL-separated text: the template, then role and content of each message. Rendered with
/// and without the generation prompt, and split into training spans as `sft` does.
pub fn chat_template(data: &[u8]) {
    let texts = parts::texts(data, 64);
    let Some((source, rest)) = texts.split_first() else {
        return;
    };
    let messages: Vec<Message> = rest
        .chunks(2)
        .map(|p| Message::new(&p[0], p.get(1).map_or("", String::as_str)))
        .collect();
    let tok = smollm2();
    for add_generation_prompt in [true, false] {
        let _ = render_template_with(source, &messages, tok, add_generation_prompt);
    }
    let format = ChatFormat::Template(source.clone());
    if let Ok(sample) = format.encode_for_training(&messages, tok) {
        assert_eq!(sample.tokens.len(), sample.scored.len());
    }
    let _ = ChatFormat::Llama2.encode(&messages, tok);
}
