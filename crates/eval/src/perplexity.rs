//! Perplexity as llama.cpp's `llama-perplexity` computes it (tools/perplexity): the text
//! is tokenized once; it is cut into floor(n_tokens / n_ctx) non-overlapping chunks of
//! n_ctx tokens, each run from an empty cache (its first token replaced by BOS when the
//! vocabulary adds one); only the second half of each chunk is scored, so every scored
//! token has at least n_ctx/2 tokens of context. PPL = exp(mean negative log-likelihood).

use ferrollama_model::llama::{Cache, Logits};
use ferrollama_model::Llama;

use crate::error::{Error, Result};

/// The outcome of a perplexity run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PerplexityReport {
    pub n_ctx: usize,
    pub n_tokens: usize,
    pub n_chunks: usize,
    /// Tokens scored (n_chunks * (n_ctx - n_ctx/2 - 1)).
    pub n_scored: usize,
    pub ppl: f64,
    /// Standard error of the estimate, as llama.cpp prints it after `+/-`.
    pub ppl_stderr: f64,
    /// Perplexity over the first i+1 chunks, as llama.cpp's `[i]` values.
    pub running_ppl: Vec<f64>,
    pub seconds: f64,
}

/// Scores `tokens` (already including a BOS if the vocabulary adds one) in chunks of
/// `n_ctx`. `bos` replaces the first token of every chunk when given. `progress` is told
/// after each chunk (chunks done, total, running perplexity).
pub fn perplexity(
    model: &Llama,
    tokens: &[u32],
    n_ctx: usize,
    bos: Option<u32>,
    mut progress: impl FnMut(usize, usize, f64),
) -> Result<PerplexityReport> {
    let start = std::time::Instant::now();
    let n_chunks = check_sizes(tokens, n_ctx)?;
    let (mut nll, mut nll2, mut count) = (0f64, 0f64, 0usize);
    let mut running_ppl = Vec::with_capacity(n_chunks);
    let mut cache = model.new_cache(n_ctx);
    for chunk in 0..n_chunks {
        let (logits, targets) = score_chunk(model, &mut cache, tokens, chunk, n_ctx, bos)?;
        for (i, &target) in targets.iter().enumerate() {
            let v = -(log_prob(logits.row(i), target) as f64);
            nll += v;
            nll2 += v * v;
        }
        count += targets.len();
        let running = (nll / count as f64).exp();
        running_ppl.push(running);
        progress(chunk + 1, n_chunks, running);
    }
    let mean = nll / count as f64;
    let ppl = mean.exp();
    let var = nll2 / count as f64 - mean * mean;
    let ppl_stderr = if var > 0.0 {
        (var / (count as f64 - 1.0)).sqrt() * ppl
    } else {
        0.0
    };
    Ok(PerplexityReport {
        n_ctx,
        n_tokens: tokens.len(),
        n_chunks,
        n_scored: count,
        ppl,
        ppl_stderr,
        running_ppl,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The number of chunks of `n_ctx` tokens `tokens` holds; at least two are needed.
pub(crate) fn check_sizes(tokens: &[u32], n_ctx: usize) -> Result<usize> {
    if n_ctx < 4 {
        return Err(Error::ContextTooSmall(n_ctx));
    }
    if tokens.len() < 2 * n_ctx {
        return Err(Error::TextTooShort {
            tokens: tokens.len(),
            needed: 2 * n_ctx,
            n_ctx,
        });
    }
    Ok(tokens.len() / n_ctx)
}

/// Runs chunk `chunk` from an empty cache (its first token replaced by `bos` when given):
/// the logits at positions n_ctx/2 .. n_ctx-1 (row i predicts token n_ctx/2 + i + 1, the
/// last row predicts nothing) and the tokens they are scored against.
pub(crate) fn score_chunk<'t>(
    model: &Llama,
    cache: &mut Cache,
    tokens: &'t [u32],
    chunk: usize,
    n_ctx: usize,
    bos: Option<u32>,
) -> Result<(Logits, &'t [u32])> {
    let first = n_ctx / 2;
    let mut input = tokens[chunk * n_ctx..(chunk + 1) * n_ctx].to_vec();
    if let Some(b) = bos {
        input[0] = b;
    }
    cache.reset();
    let logits = model.forward(&input, cache, n_ctx - first)?;
    Ok((
        logits,
        &tokens[chunk * n_ctx + first + 1..(chunk + 1) * n_ctx],
    ))
}

/// log-softmax of `row` at `target`, computed in f32 with the max subtracted.
fn log_prob(row: &[f32], target: u32) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = row.iter().map(|&x| (x - max).exp()).sum();
    row[target as usize] - max - sum.ln()
}
