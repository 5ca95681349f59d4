//! The causal attention mask for a block of queries appended after cached keys.

use candle_core::{Device, Tensor};

use crate::error::Result;

/// Mask (seq_len, index_pos + seq_len): 0 where query i (at position index_pos + i) may see
/// key j, minus infinity where j lies in its future.
pub fn causal_mask(seq_len: usize, index_pos: usize, device: &Device) -> Result<Tensor> {
    let total = index_pos + seq_len;
    let values: Vec<f32> = (0..seq_len)
        .flat_map(|i| {
            (0..total).map(move |j| {
                if j > index_pos + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(values, (seq_len, total), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causal_mask_rectangular_values() {
        let m: Vec<Vec<f32>> = causal_mask(2, 3, &Device::Cpu).unwrap().to_vec2().unwrap();
        let inf = f32::NEG_INFINITY;
        assert_eq!(
            m,
            vec![vec![0.0, 0.0, 0.0, 0.0, inf], vec![0.0, 0.0, 0.0, 0.0, 0.0]]
        );
    }
}
