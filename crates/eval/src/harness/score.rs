//! Scoring (context, continuation) pairs as lm-evaluation-harness's Hugging Face backend
//! does (`_encode_pair`, `_loglikelihood_tokens`), on our forward pass.
//!
//! Tokenization: trailing whitespace of the context moves to the continuation; the
//! continuation's tokens are those of `encode(context + continuation)` after the first
//! `len(encode(context))`; both encoded with the tokenizer's own special tokens (the
//! harness's default); an empty context becomes the BOS (else EOS) token. The summed log
//! probability of the continuation's tokens and whether each is the arg-max are returned.
//!
//! Speed: the choices of a question share their context, so the context runs once and
//! each continuation runs from a copy of its KV cache (copy-on-write); a one-token
//! continuation needs no pass of its own. Questions are batched: every context of a batch
//! in one forward pass, then every continuation in another. Each row of a forward pass
//! depends only on its own sequence, so results do not depend on the batch size.

use ferrollama_model::llama::{Cache, SeqBatch};
use ferrollama_model::Llama;
use ferrollama_tokenizer::Tokenizer;
use rayon::prelude::*;

use crate::error::{Error, Result};

/// A request in tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    pub context: Vec<u32>,
    pub continuation: Vec<u32>,
}

/// The harness's encoding of one (context, continuation) pair.
pub fn encode_pair(tok: &Tokenizer, context: &str, continuation: &str) -> Tokens {
    if context.is_empty() {
        let cont = tok.encode(continuation, false, true);
        let prefix = tok.bos().or(tok.eos()).unwrap_or(0);
        return match cont.first() {
            Some(&first) if first == prefix => Tokens {
                context: cont[..1].to_vec(),
                continuation: cont[1..].to_vec(),
            },
            _ => Tokens {
                context: vec![prefix],
                continuation: cont,
            },
        };
    }
    let trimmed = context.trim_end();
    let (context, continuation) = if trimmed.len() < context.len() {
        (
            trimmed,
            format!("{}{continuation}", &context[trimmed.len()..]),
        )
    } else {
        (context, continuation.to_string())
    };
    let whole = tok.encode(&format!("{context}{continuation}"), true, true);
    let ctx = tok.encode(context, true, true);
    let cont = whole.get(ctx.len()..).unwrap_or_default().to_vec();
    Tokens {
        context: ctx,
        continuation: cont,
    }
}

/// A text cut into the harness's rolling windows (`get_rolling_token_windows` with
/// `context_len=1`, then `make_disjoint_window`): the first window predicts the first
/// `max_len` tokens after the BOS (else EOS) token, each later one the next `max_len` with
/// as much preceding text as fits. Summed, their log-likelihoods are the text's.
pub fn rolling_windows(tok: &Tokenizer, text: &str, max_len: usize) -> Vec<Tokens> {
    let tokens = tok.encode(text, true, true);
    let prefix = tok.bos().or(tok.eos()).unwrap_or(0);
    token_windows(&tokens, prefix, max_len)
}

/// [`rolling_windows`] of a token list.
pub fn token_windows(tokens: &[u32], prefix: u32, max_len: usize) -> Vec<Tokens> {
    let max_len = max_len.max(1);
    let mut out = Vec::new();
    if tokens.is_empty() {
        return out;
    }
    let first = max_len.min(tokens.len());
    out.push(Tokens {
        context: vec![prefix],
        continuation: tokens[..first].to_vec(),
    });
    let mut predicted = first;
    while predicted < tokens.len() {
        let n = (tokens.len() - predicted).min(max_len);
        let end = predicted + n;
        // Input tokens[end - max_len - 1 .. end - 1]; the context is its part before the
        // predicted tokens.
        let start = end.saturating_sub(max_len + 1);
        out.push(Tokens {
            context: tokens[start..end - n].to_vec(),
            continuation: tokens[end - n..end].to_vec(),
        });
        predicted = end;
    }
    out
}

/// The log-likelihood of a continuation and whether greedy decoding would produce it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub loglikelihood: f64,
    pub is_greedy: bool,
}

/// Scores every document's requests, `batch_docs` documents per forward pass.
/// `max_len` is the longest input (the harness's `max_length`): longer inputs lose tokens
/// from the left of the context, as there. `progress` is told the documents done.
pub fn score(
    model: &Llama,
    docs: &[Vec<Tokens>],
    max_len: usize,
    batch_docs: usize,
    mut progress: impl FnMut(usize),
) -> Result<Vec<Vec<Scored>>> {
    let mut out = Vec::with_capacity(docs.len());
    let mut done = 0;
    for batch in docs.chunks(batch_docs.max(1)) {
        out.extend(score_batch(model, batch, max_len)?);
        done += batch.len();
        progress(done);
    }
    Ok(out)
}

/// One context run shared by the requests `members` (document, request) of a batch.
struct Group {
    context: Vec<u32>,
    members: Vec<(usize, usize)>,
}

fn score_batch(model: &Llama, docs: &[Vec<Tokens>], max_len: usize) -> Result<Vec<Vec<Scored>>> {
    // Truncate as the harness does, then group each document's requests by context.
    let mut groups: Vec<Group> = Vec::new();
    let mut conts: Vec<Vec<Vec<u32>>> = Vec::with_capacity(docs.len());
    for (d, reqs) in docs.iter().enumerate() {
        let first_group = groups.len();
        let mut doc_conts = Vec::with_capacity(reqs.len());
        for (r, t) in reqs.iter().enumerate() {
            let (ctx, cont) = truncate(t, max_len)?;
            match groups[first_group..].iter_mut().find(|g| g.context == ctx) {
                Some(g) => g.members.push((d, r)),
                None => groups.push(Group {
                    context: ctx,
                    members: vec![(d, r)],
                }),
            }
            doc_conts.push(cont);
        }
        conts.push(doc_conts);
    }
    let mut results: Vec<Vec<Scored>> = docs
        .iter()
        .map(|r| {
            vec![
                Scored {
                    loglikelihood: 0.0,
                    is_greedy: true
                };
                r.len()
            ]
        })
        .collect();
    if groups.is_empty() {
        return Ok(results);
    }

    // Every context, its last row's logits predicting each continuation's first token.
    let mut caches: Vec<Cache> = groups
        .iter()
        .map(|g| {
            let longest = g
                .members
                .iter()
                .map(|&(d, r)| conts[d][r].len())
                .max()
                .unwrap_or(0);
            model.new_cache(g.context.len() + longest)
        })
        .collect();
    let seqs: Vec<SeqBatch> = groups
        .iter()
        .map(|g| SeqBatch {
            tokens: &g.context,
            outputs: 1,
            adapter: None,
        })
        .collect();
    let mut refs: Vec<&mut Cache> = caches.iter_mut().collect();
    let first_rows = model.forward_batch(&seqs, &mut refs)?;
    for (gi, g) in groups.iter().enumerate() {
        for &(d, r) in &g.members {
            if let Some(&t) = conts[d][r].first() {
                let (lp, greedy) = log_prob(first_rows.row(gi), t);
                results[d][r] = Scored {
                    loglikelihood: lp,
                    is_greedy: greedy,
                };
            }
        }
    }

    // Continuations longer than one token run from a copy of their context's cache.
    let mut runs: Vec<(usize, usize, usize)> = Vec::new(); // (group, doc, request)
    for (gi, g) in groups.iter().enumerate() {
        for &(d, r) in &g.members {
            if conts[d][r].len() > 1 {
                runs.push((gi, d, r));
            }
        }
    }
    if runs.is_empty() {
        return Ok(results);
    }
    let mut run_caches: Vec<Cache> = runs.iter().map(|&(gi, _, _)| caches[gi].clone()).collect();
    drop(caches);
    let seqs: Vec<SeqBatch> = runs
        .iter()
        .map(|&(_, d, r)| {
            let c = &conts[d][r];
            SeqBatch {
                tokens: &c[..c.len() - 1],
                outputs: c.len() - 1,
                adapter: None,
            }
        })
        .collect();
    let mut refs: Vec<&mut Cache> = run_caches.iter_mut().collect();
    let rows = model.forward_batch(&seqs, &mut refs)?;
    // Each row's log-softmax is a pass over the vocabulary: rows in parallel, summed per
    // request in order afterwards (the same sums for any thread count).
    let targets: Vec<u32> = runs
        .iter()
        .flat_map(|&(_, d, r)| conts[d][r][1..].iter().copied())
        .collect();
    let probs: Vec<(f64, bool)> = (0..targets.len())
        .into_par_iter()
        .map(|i| log_prob(rows.row(i), targets[i]))
        .collect();
    let mut row = 0;
    for &(_, d, r) in &runs {
        let s = &mut results[d][r];
        for _ in 1..conts[d][r].len() {
            let (lp, greedy) = probs[row];
            s.loglikelihood += lp;
            s.is_greedy &= greedy;
            row += 1;
        }
    }
    Ok(results)
}

/// `(context + continuation)[-(max_len + 1):]`, split back into its two parts.
fn truncate(t: &Tokens, max_len: usize) -> Result<(Vec<u32>, Vec<u32>)> {
    let total = t.context.len() + t.continuation.len();
    if t.continuation.len() > max_len {
        return Err(Error::ContinuationTooLong {
            tokens: t.continuation.len(),
            max_len,
        });
    }
    let skip = total.saturating_sub(max_len + 1);
    let context = t.context[skip.min(t.context.len())..].to_vec();
    if context.is_empty() {
        return Err(Error::ContinuationTooLong {
            tokens: t.continuation.len(),
            max_len,
        });
    }
    Ok((context, t.continuation.clone()))
}

/// log softmax(logits)[target] in f64, and whether `target` is the first arg-max.
fn log_prob(logits: &[f32], target: u32) -> (f64, bool) {
    let mut best = 0;
    let mut max = f32::NEG_INFINITY;
    for (i, &x) in logits.iter().enumerate() {
        if x > max {
            max = x;
            best = i;
        }
    }
    let max64 = max as f64;
    let sum: f64 = logits.iter().map(|&x| (x as f64 - max64).exp()).sum();
    let lp = logits
        .get(target as usize)
        .map_or(f64::NEG_INFINITY, |&x| x as f64 - max64 - sum.ln());
    (lp, best == target as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolling_windows_are_the_harness_windows() {
        // lm_eval.utils: [make_disjoint_window(w) for w in
        //   get_rolling_token_windows(list(range(10)), -1, 4, 1)] with -1 read as 99.
        let w = token_windows(&(0..10).collect::<Vec<_>>(), 99, 4);
        let pairs: Vec<(Vec<u32>, Vec<u32>)> =
            w.into_iter().map(|t| (t.context, t.continuation)).collect();
        assert_eq!(
            pairs,
            [
                (vec![99], vec![0, 1, 2, 3]),
                (vec![3], vec![4, 5, 6, 7]),
                (vec![5, 6, 7], vec![8, 9])
            ]
        );
        assert_eq!(token_windows(&[0, 1, 2], 99, 4).len(), 1);
        assert!(token_windows(&[], 99, 4).is_empty());
    }
}
