//! NF4 with double quantization (Dettmers et al. 2023, QLoRA, 3): weights in blocks of 64,
//! each value the nearest of 16 levels placed at quantiles of a normal distribution, scaled
//! by the block's absolute maximum; the block scales themselves quantized to 8 bits in
//! blocks of 256 around their mean. About 4.13 bits a weight. QLoRA keeps a base given in
//! f32/f16 this way (a GGUF base keeps its own blocks).
//!
//! The second level here is linear 8-bit (a scale per 256 block scales, round to nearest)
//! where bitsandbytes uses its dynamic 8-bit float map: the paper's layout and bit count,
//! not its exact second-level rounding.

use crate::error::{Error, Result};

/// The NF4 levels (the QLoRA paper's Appendix E, as bitsandbytes stores them).
pub const LEVELS: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// Values per first-level block.
pub const BLOCK: usize = 64;
/// First-level scales per second-level block.
pub const SCALE_BLOCK: usize = 256;

/// An (n, k) matrix in NF4 with double-quantized scales, row-major, blocks running across
/// row ends.
#[derive(Debug, Clone)]
pub struct Nf4Matrix {
    n: usize,
    k: usize,
    /// Two 4-bit level indices a byte, the even element in the low nibble.
    codes: Vec<u8>,
    /// Each block's absmax minus `offset`, in units of its second-level scale.
    scales: Vec<i8>,
    /// One per SCALE_BLOCK block scales.
    scale_scales: Vec<f32>,
    /// The mean of the block absmaxes.
    offset: f32,
}

/// The index of the level nearest to `x` (in [-1, 1]).
fn nearest(x: f32) -> u8 {
    let mut best = 0;
    for (i, &l) in LEVELS.iter().enumerate() {
        if (x - l).abs() < (x - LEVELS[best]).abs() {
            best = i;
        }
    }
    best as u8
}

impl Nf4Matrix {
    /// Quantizes row-major f32 values of an (n, k) matrix.
    pub fn quantize(values: &[f32], n: usize, k: usize) -> Result<Self> {
        if values.len() != n * k {
            return Err(Error::TensorData {
                name: "nf4".into(),
                msg: format!("{} values for ({n}, {k})", values.len()),
            });
        }
        if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
            return Err(Error::TensorData {
                name: "nf4".into(),
                msg: format!("cannot quantize {bad}"),
            });
        }
        let absmax: Vec<f32> = values
            .chunks(BLOCK)
            .map(|b| b.iter().fold(0.0f32, |m, v| m.max(v.abs())))
            .collect();
        let offset = if absmax.is_empty() {
            0.0
        } else {
            (absmax.iter().map(|&a| a as f64).sum::<f64>() / absmax.len() as f64) as f32
        };
        let mut scales = Vec::with_capacity(absmax.len());
        let mut scale_scales = Vec::with_capacity(absmax.len().div_ceil(SCALE_BLOCK));
        for group in absmax.chunks(SCALE_BLOCK) {
            let m = group.iter().fold(0.0f32, |m, &a| m.max((a - offset).abs()));
            let s = if m > 0.0 { m / 127.0 } else { 1.0 };
            scale_scales.push(s);
            scales.extend(
                group
                    .iter()
                    .map(|&a| ((a - offset) / s).round().clamp(-127.0, 127.0) as i8),
            );
        }
        let mut codes = vec![0u8; values.len().div_ceil(2)];
        for (b, block) in values.chunks(BLOCK).enumerate() {
            // Normalise by the scale as it will be read back, so the levels land where the
            // dequantized scale puts them.
            let d = scales[b] as f32 * scale_scales[b / SCALE_BLOCK] + offset;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            for (j, &v) in block.iter().enumerate() {
                let i = b * BLOCK + j;
                let q = nearest((v * inv).clamp(-1.0, 1.0));
                codes[i / 2] |= q << (4 * (i % 2));
            }
        }
        Ok(Self {
            n,
            k,
            codes,
            scales,
            scale_scales,
            offset,
        })
    }

    /// (rows, columns).
    pub fn shape(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.codes.len() + self.scales.len() + 4 * self.scale_scales.len() + 4
    }

    /// The scale of first-level block `b`.
    #[inline(always)]
    fn scale(&self, b: usize) -> f32 {
        self.scales[b] as f32 * self.scale_scales[b / SCALE_BLOCK] + self.offset
    }

    /// Row `r` (< n) dequantized into `out` (k values). Panics if r >= n.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.n && out.len() == self.k);
        let start = r * self.k;
        for (i, o) in (start..).zip(out.iter_mut()) {
            let q = (self.codes[i / 2] >> (4 * (i % 2))) & 0x0f;
            *o = LEVELS[q as usize] * self.scale(i / BLOCK);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain decoder of the same layout: element by element from the definition.
    fn reference(m: &Nf4Matrix, i: usize) -> f32 {
        let byte = m.codes[i / 2];
        let q = if i.is_multiple_of(2) {
            byte & 15
        } else {
            byte >> 4
        };
        let b = i / BLOCK;
        let scale = m.scales[b] as f32 * m.scale_scales[b / SCALE_BLOCK] + m.offset;
        LEVELS[q as usize] * scale
    }

    fn values(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let x = ((i as u64 * 2654435761) % 10007) as f32 / 10007.0 - 0.5;
                x * (1.0 + (i / 640) as f32 * 0.3)
            })
            .collect()
    }

    #[test]
    fn rows_decode_as_the_reference_and_round_to_the_nearest_level() {
        // 37 x 100: blocks run across row ends; more than one second-level block.
        let (n, k) = (370, 100);
        let v = values(n * k);
        let m = Nf4Matrix::quantize(&v, n, k).unwrap();
        assert!(m.scale_scales.len() > 1);
        let mut row = vec![0.0; k];
        let mut worst = 0.0f32;
        for r in 0..n {
            m.dequantize_row(r, &mut row);
            for (c, &x) in row.iter().enumerate() {
                let i = r * k + c;
                assert_eq!(x, reference(&m, i));
                // Within half the widest gap between levels of the block's scale (plus the
                // scale's own 8-bit rounding).
                let absmax = v[i / BLOCK * BLOCK..((i / BLOCK + 1) * BLOCK).min(v.len())]
                    .iter()
                    .fold(0.0f32, |a, x| a.max(x.abs()));
                worst = worst.max((x - v[i]).abs() / absmax);
            }
        }
        assert!(worst < 0.17, "{worst}");
        assert!(m.bytes() * 8 < (n * k) * 42 / 10, "{} bytes", m.bytes());
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(Nf4Matrix::quantize(&[1.0, 2.0], 1, 3).is_err());
        assert!(Nf4Matrix::quantize(&[1.0, f32::NAN], 1, 2).is_err());
        let z = Nf4Matrix::quantize(&[0.0; 8], 2, 4).unwrap();
        let mut row = [1.0; 4];
        z.dequantize_row(1, &mut row);
        assert_eq!(row, [0.0; 4]);
    }
}
