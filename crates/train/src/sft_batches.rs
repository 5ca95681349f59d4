//! Fine-tuning samples laid into training rows: each sample's next-token targets scored
//! only where its mask says (the assistant's tokens), never across the boundary into the
//! next sample; several samples packed end to end into one row when packing is on (the
//! model restarts positions and attention at each start), one sample per row when not.
//! The order of samples is fixed by the seed and the epoch, so a step's rows are a
//! function of the step number and a resumed run sees the same batches.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use ferrollama_generate::chat::TrainingSample;
use ferrollama_model::Packing;

use crate::error::{Error, Result};

/// One training row: its tokens, where its samples start, and the positions scored with
/// the token each must predict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub tokens: Vec<u32>,
    pub starts: Vec<usize>,
    /// (position in the row, target id).
    pub targets: Vec<(u32, u32)>,
}

/// The scored (position, target) pairs of one sample placed at `offset`: position j
/// predicts token j + 1 when that token is scored.
fn sample_targets(s: &TrainingSample, offset: usize) -> impl Iterator<Item = (u32, u32)> + '_ {
    (1..s.tokens.len())
        .filter(|&j| s.scored[j])
        .map(move |j| ((offset + j - 1) as u32, s.tokens[j]))
}

/// Number of next-token targets a sample scores.
pub fn scored_targets(s: &TrainingSample) -> usize {
    sample_targets(s, 0).count()
}

/// Cuts samples longer than `seq_len` to their first `seq_len` tokens and drops those that
/// then score nothing (an answer wholly past the cut). Returns the kept samples and how
/// many were cut and dropped, which the caller reports.
pub fn fit_to_length(
    samples: Vec<TrainingSample>,
    seq_len: usize,
) -> (Vec<TrainingSample>, usize, usize) {
    let (mut cut, mut dropped) = (0, 0);
    let mut kept = Vec::with_capacity(samples.len());
    for mut s in samples {
        if s.tokens.len() > seq_len {
            s.tokens.truncate(seq_len);
            s.scored.truncate(seq_len);
            cut += 1;
        }
        if scored_targets(&s) == 0 {
            dropped += 1;
        } else {
            kept.push(s);
        }
    }
    (kept, cut, dropped)
}

/// The samples in `order` laid into rows of at most `seq_len` tokens: with `pack`, each
/// row takes samples while they fit (in order, never reordered); otherwise one per row.
pub fn lay_out(
    samples: &[TrainingSample],
    order: &[usize],
    seq_len: usize,
    pack: bool,
) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    for &i in order {
        let s = &samples[i];
        let fits = rows
            .last()
            .is_some_and(|r| pack && r.tokens.len() + s.tokens.len() <= seq_len);
        if !fits {
            rows.push(Row {
                tokens: Vec::with_capacity(seq_len),
                starts: Vec::new(),
                targets: Vec::new(),
            });
        }
        let Some(row) = rows.last_mut() else { continue };
        let offset = row.tokens.len();
        row.starts.push(offset);
        row.targets.extend(sample_targets(s, offset));
        row.tokens.extend_from_slice(&s.tokens);
    }
    rows
}

/// The order of the samples in epoch `epoch` of a run seeded with `seed`.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    order.shuffle(&mut rng);
    order
}

/// A forward pass's worth of rows as the model takes them: (b, t) token ids padded with
/// `pad` (a padding tail is a sample of its own, scored nowhere), the packing, and the
/// scored token indices (row-major) with their targets.
pub struct MicroBatch {
    pub tokens: Vec<u32>,
    pub rows: usize,
    pub t: usize,
    pub packing: Packing,
    pub scored: Vec<u32>,
    pub targets: Vec<u32>,
}

impl MicroBatch {
    /// Rows padded to the longest of them.
    pub fn new(rows: &[&Row], pad: u32) -> Result<Self> {
        let t = rows.iter().map(|r| r.tokens.len()).max().unwrap_or(0);
        if rows.is_empty() || t == 0 {
            return Err(Error::Internal("an empty micro-batch".into()));
        }
        let mut tokens = Vec::with_capacity(rows.len() * t);
        let mut starts = Vec::with_capacity(rows.len());
        let (mut scored, mut targets) = (Vec::new(), Vec::new());
        for (r, row) in rows.iter().enumerate() {
            let mut s = row.starts.clone();
            if row.tokens.len() < t {
                s.push(row.tokens.len());
            }
            starts.push(s);
            tokens.extend_from_slice(&row.tokens);
            tokens.resize((r + 1) * t, pad);
            for &(pos, target) in &row.targets {
                scored.push((r * t) as u32 + pos);
                targets.push(target);
            }
        }
        Ok(Self {
            tokens,
            rows: rows.len(),
            t,
            packing: Packing::new(starts, t)?,
            scored,
            targets,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(tokens: &[u32], scored_from: usize) -> TrainingSample {
        TrainingSample {
            tokens: tokens.to_vec(),
            scored: (0..tokens.len()).map(|i| i >= scored_from).collect(),
        }
    }

    #[test]
    fn targets_stay_inside_their_sample() {
        let a = sample(&[1, 10, 11, 2], 2); // prompt 1 10, answer 11 EOS
        let b = sample(&[1, 20, 21], 1);
        let rows = lay_out(&[a, b], &[0, 1], 8, true);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].starts, [0, 4]);
        // A: position 1 predicts 11, 2 predicts EOS; B: 4 predicts 20, 5 predicts 21.
        // Position 3 (A's EOS) predicts nothing: B's BOS is not A's to learn.
        assert_eq!(rows[0].targets, [(1, 11), (2, 2), (4, 20), (5, 21)]);
    }

    #[test]
    fn rows_take_samples_while_they_fit() {
        let s: Vec<_> = [3, 4, 2, 5]
            .iter()
            .map(|&n| sample(&vec![7; n], 1))
            .collect();
        let rows = lay_out(&s, &[0, 1, 2, 3], 8, true);
        let lens: Vec<usize> = rows.iter().map(|r| r.tokens.len()).collect();
        assert_eq!(lens, [7, 2 + 5]);
        let unpacked = lay_out(&s, &[3, 2, 1, 0], 8, false);
        assert_eq!(unpacked.len(), 4);
        assert_eq!(unpacked[0].tokens.len(), 5);
    }

    #[test]
    fn long_samples_are_cut_and_unscored_ones_dropped() {
        let s = vec![
            sample(&[1, 2, 3, 4, 5, 6], 2),
            sample(&[1, 2, 3, 4, 5, 6], 5),
        ];
        let (kept, cut, dropped) = fit_to_length(s, 4);
        assert_eq!((kept.len(), cut, dropped), (1, 2, 1));
        assert_eq!(kept[0].tokens, [1, 2, 3, 4]);
    }

    #[test]
    fn micro_batches_pad_into_a_sample_of_their_own() {
        let s = vec![sample(&[1, 2, 3], 1), sample(&[1, 2, 3, 4, 5], 3)];
        let rows = lay_out(&s, &[0, 1], 5, false);
        let mb = MicroBatch::new(&rows.iter().collect::<Vec<_>>(), 0).unwrap();
        assert_eq!((mb.rows, mb.t), (2, 5));
        assert_eq!(mb.tokens, [1, 2, 3, 0, 0, 1, 2, 3, 4, 5]);
        assert_eq!(mb.packing.positions(), [0, 1, 2, 0, 1, 0, 1, 2, 3, 4]);
        assert_eq!(mb.scored, [0, 1, 7, 8]);
        assert_eq!(mb.targets, [2, 3, 4, 5]);
    }

    #[test]
    fn epoch_orders_are_seeded_permutations() {
        let a = epoch_order(50, 7, 0);
        assert_eq!(a, epoch_order(50, 7, 0));
        assert_ne!(a, epoch_order(50, 7, 1));
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    }
}
