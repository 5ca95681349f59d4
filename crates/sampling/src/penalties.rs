//! Penalties on tokens already seen: Hugging Face's repetition penalty (Keskar et al. 2019)
//! and OpenAI's presence and frequency penalties.

use std::collections::HashMap;

use crate::params::SamplingParams;

/// Applies the penalties of `p` to `logits` for the tokens in `history` (its last
/// `repeat_last_n`).
pub fn apply_penalties(logits: &mut [f32], history: &[u32], p: &SamplingParams) {
    let off = p.repeat_penalty == 1.0 && p.presence_penalty == 0.0 && p.frequency_penalty == 0.0;
    if off || p.repeat_last_n == 0 {
        return;
    }
    let window = match p.repeat_last_n {
        n if n < 0 => history,
        n => &history[history.len().saturating_sub(n as usize)..],
    };
    let mut counts: HashMap<u32, u32> = HashMap::new();
    for &t in window {
        *counts.entry(t).or_default() += 1;
    }
    for (&t, &count) in &counts {
        let Some(l) = logits.get_mut(t as usize) else {
            continue;
        };
        *l = if *l > 0.0 {
            *l / p.repeat_penalty
        } else {
            *l * p.repeat_penalty
        };
        *l -= p.frequency_penalty * count as f32 + p.presence_penalty;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_penalty_has_hugging_face_semantics() {
        let p = SamplingParams {
            repeat_penalty: 2.0,
            ..SamplingParams::greedy()
        };
        let mut logits = vec![4.0, -4.0, 1.0];
        apply_penalties(&mut logits, &[0, 1, 1], &p);
        assert_eq!(logits, vec![2.0, -8.0, 1.0]);
    }

    #[test]
    fn presence_and_frequency_count_occurrences_in_window() {
        let p = SamplingParams {
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            repeat_last_n: 3,
            ..SamplingParams::greedy()
        };
        let mut logits = vec![0.0; 3];
        // Token 2 falls outside the window of 3.
        apply_penalties(&mut logits, &[2, 0, 1, 1], &p);
        assert_eq!(logits, vec![-0.75, -1.0, 0.0]);
    }

    #[test]
    fn out_of_range_history_ids_are_ignored() {
        let p = SamplingParams {
            repeat_penalty: 2.0,
            ..SamplingParams::greedy()
        };
        let mut logits = vec![1.0];
        apply_penalties(&mut logits, &[7], &p);
        assert_eq!(logits, vec![1.0]);
    }
}
