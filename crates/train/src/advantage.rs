//! PPO's arithmetic on one batch of answers, as plain functions over numbers (the loss
//! itself, on tensors, is in [`crate::ppo`]): per-token rewards with the KL penalty,
//! generalized advantage estimation, whitening.
//!
//! For an answer of T tokens with policy log-probabilities lₜ, reference log-probabilities
//! l⁰ₜ and reward-model score R (Ouyang et al. 2022; Touvron et al. 2023, 3.2.3):
//! rₜ = -β (lₜ - l⁰ₜ), plus R at the last token. With values vₜ (v_T = 0):
//! δₜ = rₜ + γ vₜ₊₁ - vₜ, Âₜ = δₜ + γλ Âₜ₊₁ (Schulman et al. 2016), returns Âₜ + vₜ.

/// Per-token rewards of one answer: the KL penalty on every token, the score on the last.
pub fn token_rewards(score: f64, logp: &[f64], ref_logp: &[f64], kl_coef: f64) -> Vec<f64> {
    let mut r: Vec<f64> = logp
        .iter()
        .zip(ref_logp)
        .map(|(l, l0)| -kl_coef * (l - l0))
        .collect();
    if let Some(last) = r.last_mut() {
        *last += score;
    }
    r
}

/// Generalized advantage estimates and returns of one answer.
pub fn gae(rewards: &[f64], values: &[f64], gamma: f64, lam: f64) -> (Vec<f64>, Vec<f64>) {
    let n = rewards.len().min(values.len());
    let mut adv = vec![0.0; n];
    let mut next_value = 0.0;
    let mut running = 0.0;
    for t in (0..n).rev() {
        let delta = rewards[t] + gamma * next_value - values[t];
        running = delta + gamma * lam * running;
        adv[t] = running;
        next_value = values[t];
    }
    let returns = adv.iter().zip(values).map(|(a, v)| a + v).collect();
    (adv, returns)
}

/// `x` shifted to mean 0 and scaled to standard deviation 1 (population), in place; left
/// alone when it has fewer than two values or no spread.
pub fn whiten(x: &mut [f64]) {
    if x.len() < 2 {
        return;
    }
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    let std = var.sqrt();
    if std < 1e-12 || !std.is_finite() {
        x.iter_mut().for_each(|v| *v -= mean);
        return;
    }
    x.iter_mut().for_each(|v| *v = (*v - mean) / std);
}

/// The clipped surrogate loss of one token, PPO's (Schulman et al. 2017):
/// max(-Â ρ, -Â clip(ρ, 1 - ε, 1 + ε)) with ρ = exp(l_new - l_old). The reference the
/// tensor version is tested against.
pub fn clipped_policy_loss(logp_new: f64, logp_old: f64, adv: f64, clip: f64) -> f64 {
    let ratio = (logp_new - logp_old).exp();
    (-adv * ratio).max(-adv * ratio.clamp(1.0 - clip, 1.0 + clip))
}

/// The clipped value loss of one token: ½ max((v - G)², (v_old + clip(v - v_old, ±ε) - G)²).
pub fn clipped_value_loss(value: f64, value_old: f64, ret: f64, clip: f64) -> f64 {
    let clipped = value_old + (value - value_old).clamp(-clip, clip);
    0.5 * (value - ret).powi(2).max((clipped - ret).powi(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewards_charge_the_kl_and_pay_the_score_at_the_end() {
        let r = token_rewards(2.0, &[-1.0, -2.0], &[-1.5, -2.0], 0.1);
        assert!((r[0] + 0.05).abs() < 1e-12);
        assert!((r[1] - 2.0).abs() < 1e-12);
        assert!(token_rewards(1.0, &[], &[], 0.1).is_empty());
    }

    #[test]
    fn gae_matches_the_recursion_written_out() {
        let (r, v) = ([0.0, 0.0, 1.0], [0.5, 0.2, 0.1]);
        let (g, l) = (0.9, 0.8);
        let (adv, ret) = gae(&r, &v, g, l);
        let d2 = 1.0 - 0.1;
        let d1 = 0.0 + g * 0.1 - 0.2;
        let d0 = 0.0 + g * 0.2 - 0.5;
        let a2 = d2;
        let a1 = d1 + g * l * a2;
        let a0 = d0 + g * l * a1;
        for (x, y) in adv.iter().zip([a0, a1, a2]) {
            assert!((x - y).abs() < 1e-12);
        }
        assert!((ret[0] - (a0 + 0.5)).abs() < 1e-12);
        // λ = 1, γ = 1: the advantage is the rest of the rewards minus the value.
        let (adv, ret) = gae(&r, &v, 1.0, 1.0);
        assert!((adv[0] - 0.5).abs() < 1e-12 && (ret[0] - 1.0).abs() < 1e-12);
    }

    #[test]
    fn whitening_centres_and_scales() {
        let mut x = vec![1.0, 2.0, 3.0, 6.0];
        whiten(&mut x);
        let mean: f64 = x.iter().sum::<f64>() / 4.0;
        let var: f64 = x.iter().map(|v| v * v).sum::<f64>() / 4.0;
        assert!(mean.abs() < 1e-12 && (var - 1.0).abs() < 1e-12);
        let mut same = vec![2.0, 2.0];
        whiten(&mut same);
        assert_eq!(same, [0.0, 0.0]);
        let mut one = vec![5.0];
        whiten(&mut one);
        assert_eq!(one, [5.0]);
    }

    #[test]
    fn clipping_stops_the_ratio_past_its_band_in_the_advantages_direction() {
        // A positive advantage gains nothing past 1 + ε; a negative one nothing below 1 - ε.
        let up = clipped_policy_loss(0.5, 0.0, 1.0, 0.2);
        assert!((up + 1.2).abs() < 1e-12);
        let down = clipped_policy_loss(-0.5, 0.0, -1.0, 0.2);
        assert!((down - 0.8).abs() < 1e-12);
        // Inside the band the loss is -Â ρ.
        let inside = clipped_policy_loss(0.1, 0.0, 2.0, 0.2);
        assert!((inside + 2.0 * 0.1f64.exp()).abs() < 1e-12);
        // The pessimistic side is kept: moving against the advantage is never clipped.
        let against = clipped_policy_loss(-1.0, 0.0, 1.0, 0.2);
        assert!((against + (-1.0f64).exp()).abs() < 1e-12);
        assert!((clipped_value_loss(1.0, 0.0, 0.0, 0.2) - 0.5).abs() < 1e-12);
        assert!((clipped_value_loss(0.1, 0.0, 1.0, 0.2) - 0.5 * 0.81).abs() < 1e-12);
    }
}
