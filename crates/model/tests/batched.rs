//! Several sequences decoded in one batched forward give each the logits it gets alone,
//! and a cache cut back to a prefix continues as a fresh one (default model, Q4_1).

use ferrollama_gguf::GgufFile;
use ferrollama_model::llama::{Cache, Logits, SeqBatch};
use ferrollama_model::{Config, GgufWeights, Llama};

fn model() -> Llama {
    let file = GgufFile::open(ferrollama_assets::default_model().unwrap()).unwrap();
    let cfg = Config::from_gguf(&file).unwrap();
    Llama::load(&GgufWeights::new(&file), cfg, 256).unwrap()
}

fn to_vec(t: Logits) -> Vec<f32> {
    t.into_vec()
}

/// Several sequences in one batched forward, the logits after each one's last token.
fn forward_multi(
    m: &Llama,
    seqs: &[&[u32]],
    caches: &mut [&mut Cache],
) -> ferrollama_model::Result<Logits> {
    let batch: Vec<SeqBatch> = seqs
        .iter()
        .map(|t| SeqBatch {
            tokens: t,
            outputs: 1,
            adapter: None,
        })
        .collect();
    m.forward_batch(&batch, caches)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn batched_decode_matches_one_sequence_at_a_time() {
    let m = model();
    let vocab = m.config.vocab_size;
    let prompts: [&[u32]; 3] = [
        &[504, 3575, 282, 4649, 314],
        &[1, 2, 3],
        &[9906, 11, 910, 3],
    ];
    let steps: [[u32; 3]; 3] = [[28, 29, 30], [400, 401, 402], [7, 8, 9]];

    let mut alone = Vec::new();
    for (p, s) in prompts.iter().zip(&steps) {
        let mut c = m.new_cache(64);
        m.forward(p, &mut c, 1).unwrap();
        alone.push(
            s.iter()
                .map(|&t| to_vec(m.forward(&[t], &mut c, 1).unwrap()))
                .collect::<Vec<_>>(),
        );
    }

    let mut caches: Vec<_> = prompts
        .iter()
        .map(|p| {
            let mut c = m.new_cache(64);
            m.forward(p, &mut c, 1).unwrap();
            c
        })
        .collect();
    for step in 0..3 {
        let tokens: Vec<[u32; 1]> = steps.iter().map(|s| [s[step]]).collect();
        let seqs: Vec<&[u32]> = tokens.iter().map(|t| t.as_slice()).collect();
        let mut refs: Vec<_> = caches.iter_mut().collect();
        let logits = to_vec(forward_multi(&m, &seqs, &mut refs).unwrap());
        for (i, row) in logits.chunks(vocab).enumerate() {
            let d = max_diff(row, &alone[i][step]);
            // The batched matmul may sum in another order; nothing more may differ.
            assert!(d < 1e-2, "sequence {i} step {step}: max difference {d}");
        }
    }
    for (c, p) in caches.iter().zip(&prompts) {
        assert_eq!(c.seq_len(), p.len() + 3);
    }
}

#[test]
fn prompt_chunks_and_single_tokens_mix_in_one_batch() {
    let m = model();
    let vocab = m.config.vocab_size;
    let (a, b): (&[u32], &[u32]) = (&[504, 3575, 282, 4649, 314], &[9906, 11, 910]);
    let alone = |p: &[u32], more: &[u32]| {
        let mut c = m.new_cache(64);
        m.forward(p, &mut c, 1).unwrap();
        to_vec(m.forward(more, &mut c, 1).unwrap())
    };
    // Sequence a decodes its next token while b's prompt is fed whole, and c's in part.
    let want = [alone(a, &[28]), alone(&b[..1], &b[1..])];
    let mut ca = m.new_cache(64);
    m.forward(a, &mut ca, 1).unwrap();
    let mut cb = m.new_cache(64);
    m.forward(&b[..1], &mut cb, 1).unwrap();
    let mut cc = m.new_cache(64);
    let logits = to_vec(
        forward_multi(
            &m,
            &[&[28], &b[1..], &a[..3]],
            &mut [&mut ca, &mut cb, &mut cc],
        )
        .unwrap(),
    );
    let c_alone = to_vec(m.forward(&a[..3], &mut m.new_cache(64), 1).unwrap());
    let rows: Vec<&[f32]> = logits.chunks(vocab).collect();
    assert!(max_diff(rows[0], &want[0]) < 1e-2);
    assert!(max_diff(rows[1], &want[1]) < 1e-2);
    assert!(max_diff(rows[2], &c_alone) < 1e-2);
    assert_eq!((ca.seq_len(), cb.seq_len(), cc.seq_len()), (6, 3, 3));
}

#[test]
fn a_prompt_fed_in_pieces_gives_the_same_bits_as_fed_whole() {
    // What makes a prefix cache invisible: same seed, same text, cached or not.
    let m = model();
    let prompt = [504u32, 3575, 282, 4649, 314, 260, 1345, 28, 29, 30, 31];
    let whole = to_vec(m.forward(&prompt, &mut m.new_cache(32), 1).unwrap());
    for split in [1, 3, 6, 10] {
        let mut c = m.new_cache(32);
        m.forward(&prompt[..split], &mut c, 1).unwrap();
        let pieces = to_vec(m.forward(&prompt[split..], &mut c, 1).unwrap());
        assert!(
            pieces == whole,
            "split at {split}: max diff {}",
            max_diff(&pieces, &whole)
        );
    }
}

#[test]
fn truncated_cache_continues_like_a_fresh_one() {
    let m = model();
    let prompt = [504u32, 3575, 282, 4649, 314, 260, 1345];
    let mut fresh = m.new_cache(32);
    let want = to_vec(m.forward(&prompt, &mut fresh, 1).unwrap());

    let mut reused = m.new_cache(32);
    m.forward(&[504, 3575, 282, 999, 998, 997], &mut reused, 1)
        .unwrap();
    reused.truncate(3);
    assert_eq!(reused.seq_len(), 3);
    let got = to_vec(m.forward(&prompt[3..], &mut reused, 1).unwrap());
    assert!(got == want, "max diff {}", max_diff(&got, &want));
}

#[test]
fn decode_refuses_a_full_context_and_mismatched_batches() {
    let m = model();
    let mut c = m.new_cache(2);
    m.forward(&[1, 2], &mut c, 1).unwrap();
    assert!(forward_multi(&m, &[&[3]], &mut [&mut c]).is_err());
    let mut d = m.new_cache(8);
    assert!(forward_multi(&m, &[&[3], &[4]], &mut [&mut d]).is_err());
    assert!(forward_multi(&m, &[&[]], &mut [&mut d]).is_err());
    assert!(forward_multi(&m, &[&[u32::MAX]], &mut [&mut d]).is_err());
}

#[test]
fn hidden_states_cover_every_token() {
    let m = model();
    let mut c = m.new_cache(64);
    let h = m.hidden_states(&[504, 3575, 282], &mut c).unwrap();
    assert_eq!((h.rows(), h.width()), (3, m.config.hidden_size));
    assert!(m.hidden_states(&[], &mut m.new_cache(4)).is_err());
}

/// Timing of one batched decode step at 1, 4 and 16 sequences (not a test of speed:
/// `cargo test --release -p ferrollama-model --test batched -- --ignored --nocapture`).
#[test]
#[ignore]
fn decode_step_timing() {
    let m = model();
    let sizes: Vec<usize> = std::env::var("DECODE_SEQS")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 4, 16]);
    for n in sizes {
        let mut caches: Vec<_> = (0..n)
            .map(|i| {
                let mut c = m.new_cache(256);
                let p: Vec<u32> = (0..40).map(|t| (t * 7 + i as u32) % 1000 + 10).collect();
                m.forward(&p, &mut c, 1).unwrap();
                c
            })
            .collect();
        let start = std::time::Instant::now();
        let steps = std::env::var("DECODE_STEPS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10u32);
        for s in 0..steps {
            let toks: Vec<[u32; 1]> = (0..n).map(|i| [(s * 13 + i as u32) % 900 + 20]).collect();
            let seqs: Vec<&[u32]> = toks.iter().map(|t| t.as_slice()).collect();
            let mut refs: Vec<_> = caches.iter_mut().collect();
            forward_multi(&m, &seqs, &mut refs).unwrap();
        }
        let ms = start.elapsed().as_secs_f64() * 1e3 / f64::from(steps);
        println!(
            "{n:>2} sequences: {ms:.1} ms/step, {:.0} tok/s",
            n as f64 * 1e3 / ms
        );
    }
}
