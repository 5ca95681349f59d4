//! Arguments shared by several subcommands.

use std::path::PathBuf;

use ferrollama_sampling::SamplingParams;

/// Which model to load.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// A GGUF file; the default model (SmolLM2-135M-Instruct Q4_1) is fetched on first use.
    #[arg(short, long)]
    pub model: Option<PathBuf>,
    /// Context size in tokens (default: the model's, at most 4096).
    #[arg(short = 'c', long)]
    pub ctx: Option<usize>,
    /// Repack a GGUF file's weights at every load instead of reading the packed copy that
    /// the first load writes to the cache (`$FERROLLAMA_HOME/packed`, or
    /// `~/.cache/ferrollama/models/packed`); the weights then stay in 4 KiB pages.
    #[arg(long)]
    pub no_pack_cache: bool,
    /// Map the packed weights' cache file (pages shared by every process running the model)
    /// instead of reading it into a private copy in huge pages (faster generation: the
    /// default where the kernel offers transparent huge pages).
    #[arg(long)]
    pub map_weights: bool,
    /// A LoRA adapter directory in PEFT's layout (adapter_config.json +
    /// adapter_model.safetensors), applied without merging, its update scaled by SCALE
    /// (default 1); repeatable, the updates add up.
    #[arg(long = "lora", value_name = "DIR[:SCALE]")]
    pub lora: Vec<String>,
}

impl ModelArgs {
    /// The `--lora` adapters as (directory, scale).
    pub fn adapters(&self) -> anyhow::Result<Vec<(PathBuf, f64)>> {
        self.lora.iter().map(|s| parse_adapter(s)).collect()
    }

    /// Refuses `--lora` for a command that has no use for it, rather than ignoring it.
    pub fn no_adapters(&self, command: &str) -> anyhow::Result<()> {
        if self.lora.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("`{command}` does not take --lora")
        }
    }
}

/// `DIR` or `DIR:SCALE` (a suffix that is not a number belongs to the path).
pub fn parse_adapter(s: &str) -> anyhow::Result<(PathBuf, f64)> {
    let (dir, scale) = match s.rsplit_once(':') {
        Some((d, x)) if !d.is_empty() => match x.parse::<f64>() {
            Ok(v) => (d, v),
            Err(_) => (s, 1.0),
        },
        _ => (s, 1.0),
    };
    if !scale.is_finite() {
        anyhow::bail!("--lora {s}: the scale must be a finite number");
    }
    let dir = PathBuf::from(dir);
    if !dir.join("adapter_config.json").exists() {
        anyhow::bail!("--lora {}: no adapter_config.json there", dir.display());
    }
    Ok((dir, scale))
}

/// Sampling settings; the defaults are llama.cpp's.
#[derive(clap::Args, Debug, Clone)]
pub struct SamplingArgs {
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// 0 = off.
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// 1.0 = off.
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// 0.0 = off.
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Hugging Face repetition penalty; 1.0 = off.
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Tokens the penalties look back over (-1 = all).
    #[arg(long, default_value_t = 64, allow_negative_numbers = true)]
    pub repeat_last_n: i64,
    #[arg(long, default_value_t = 0.0)]
    pub presence_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// Same seed, same text.
    #[arg(long, default_value_t = 0x5EED)]
    pub seed: u64,
}

impl SamplingArgs {
    /// The sampler settings these arguments describe.
    pub fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            seed: self.seed,
        }
    }
}

/// Constrained output: a grammar or a JSON Schema the text must follow.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct GrammarArgs {
    /// Only text this GBNF grammar accepts (llama.cpp's format; its example grammars work).
    #[arg(long, value_name = "FILE", conflicts_with = "json_schema")]
    pub grammar: Option<PathBuf>,
    /// Only JSON this JSON Schema accepts (properties in the schema's order; unsupported
    /// keywords such as `pattern` are an error, not ignored).
    #[arg(long, value_name = "FILE")]
    pub json_schema: Option<PathBuf>,
}

impl GrammarArgs {
    /// Where the grammar comes from, if one was asked for.
    pub fn source(&self) -> anyhow::Result<Option<ferrollama_generate::GrammarSource>> {
        use anyhow::Context;
        use ferrollama_generate::GrammarSource;
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
        };
        Ok(match (&self.grammar, &self.json_schema) {
            (Some(g), _) => Some(GrammarSource::Gbnf(read(g)?)),
            (None, Some(s)) => Some(GrammarSource::JsonSchema(read(s)?)),
            (None, None) => None,
        })
    }

    /// The constraint for `tok`'s vocabulary, if one was asked for.
    pub fn constraint(
        &self,
        tok: &ferrollama_tokenizer::Tokenizer,
    ) -> anyhow::Result<Option<ferrollama_grammar::Constraint>> {
        use anyhow::Context;
        let Some(source) = self.source()? else {
            return Ok(None);
        };
        let what = match (&self.grammar, &self.json_schema) {
            (Some(p), _) | (None, Some(p)) => p.display().to_string(),
            _ => String::new(),
        };
        let vocab = ferrollama_generate::grammar_vocabulary(tok);
        let c = ferrollama_generate::constraint(&source, &vocab)
            .with_context(|| format!("grammar from {what}"))?;
        Ok(Some(c))
    }
}
