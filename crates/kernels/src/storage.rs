//! Where packed weights live: in memory packed at load, or in a region of a shared buffer
//! (ferrollama-model maps a cache file of packed weights, so a second load neither reads
//! the model's tensors nor repacks them, and processes share the pages).

use std::ops::Range;
use std::sync::Arc;

use crate::packed::PackError;

/// A shared, immutable buffer, such as a memory-mapped file.
pub type SharedBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// The bytes of one packed matrix.
pub enum Storage {
    Owned(Vec<u8>),
    Shared {
        bytes: SharedBytes,
        range: Range<usize>,
    },
}

impl Storage {
    /// `range` of `bytes`; an error if it lies outside.
    pub fn shared(bytes: SharedBytes, range: Range<usize>) -> Result<Self, PackError> {
        let len = (*bytes).as_ref().len();
        if range.start > range.end || range.end > len {
            return Err(PackError::OutOfBuffer {
                start: range.start,
                end: range.end,
                len,
            });
        }
        Ok(Self::Shared { bytes, range })
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Owned(v) => v,
            Self::Shared { bytes, range } => &(**bytes).as_ref()[range.clone()],
        }
    }

    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the bytes are a region of a shared buffer.
    pub fn is_shared(&self) -> bool {
        matches!(self, Self::Shared { .. })
    }
}

#[cfg(test)]
mod tests {
    use half::f16;

    use super::*;
    use crate::{KFormat, PackedF16, PackedKMatrix, PackedMatrix, WeightFormat};

    /// `parts` laid out one after another in one shared buffer from offset 64, as a cache
    /// file holds them; returns the buffer and each part's range.
    fn shared(parts: &[&[u8]]) -> (SharedBytes, Vec<Range<usize>>) {
        let mut buf = vec![0xAAu8; 64];
        let mut ranges = Vec::new();
        for p in parts {
            ranges.push(buf.len()..buf.len() + p.len());
            buf.extend_from_slice(p);
        }
        (Arc::new(buf), ranges)
    }

    fn bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 37 % 251) as u8).collect()
    }

    #[test]
    fn shared_matrices_compute_as_owned_ones() {
        let (n, k, m) = (13, 256, 3);
        let x: Vec<f32> = (0..m * k).map(|i| (i % 17) as f32 / 8.0 - 1.0).collect();
        let q4 = PackedMatrix::pack(WeightFormat::Q4_1, &bytes(n * 8 * 20), n, k).unwrap();
        let kq = PackedKMatrix::pack(KFormat::Q6K, &bytes(n * 210), n, k).unwrap();
        let f16s: Vec<u8> = (0..n * k)
            .flat_map(|i| f16::from_f32((i % 9) as f32 / 4.0).to_le_bytes())
            .collect();
        let hf = PackedF16::pack(&f16s, n, k).unwrap();
        let (buf, r) = shared(&[q4.packed_bytes(), kq.packed_bytes(), hf.packed_bytes()]);
        let share = |i: usize| Storage::shared(buf.clone(), r[i].clone()).unwrap();
        let q4s = PackedMatrix::from_packed(WeightFormat::Q4_1, n, k, share(0)).unwrap();
        let kqs = PackedKMatrix::from_packed(KFormat::Q6K, n, k, share(1)).unwrap();
        let hfs = PackedF16::from_packed(n, k, share(2)).unwrap();
        assert!(q4s.is_shared() && kqs.is_shared() && hfs.is_shared() && !q4.is_shared());
        // Compared as bits: the arbitrary bytes make some scales NaN.
        let run = |f: &dyn Fn(&mut [f32])| {
            let mut y = vec![0f32; m * n];
            f(&mut y);
            y.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        };
        assert_eq!(
            run(&|y| q4.matmul(&x, m, y)),
            run(&|y| q4s.matmul(&x, m, y))
        );
        assert_eq!(
            run(&|y| kq.matmul(&x, m, y)),
            run(&|y| kqs.matmul(&x, m, y))
        );
        assert_eq!(
            run(&|y| hf.matmul(&x, m, y)),
            run(&|y| hfs.matmul(&x, m, y))
        );
    }

    #[test]
    fn wrong_regions_are_errors() {
        let (buf, _) = shared(&[&bytes(2000)]);
        assert!(Storage::shared(buf.clone(), 2000..2065).is_err());
        let s = |r: Range<usize>| Storage::shared(buf.clone(), r).unwrap();
        // One packed Q8_0 group of 8 rows x 32 is 8 x 34 bytes; one short is an error.
        assert!(PackedMatrix::from_packed(WeightFormat::Q8_0, 8, 32, s(64..64 + 272)).is_ok());
        assert!(PackedMatrix::from_packed(WeightFormat::Q8_0, 8, 32, s(64..64 + 271)).is_err());
        assert!(PackedKMatrix::from_packed(KFormat::Q4K, 1, 256, s(64..64 + 1183)).is_err());
        // f16: 16 rows x 2 inputs x 2 bytes, aligned or not.
        assert!(PackedF16::from_packed(1, 2, s(64..128)).is_ok());
        assert!(PackedF16::from_packed(1, 2, s(65..129)).is_err());
        // Shapes whose sizes overflow, or an empty row width, are errors, not panics.
        assert!(
            PackedMatrix::from_packed(WeightFormat::Q8_0, usize::MAX, 1 << 40, s(64..64)).is_err()
        );
        assert!(PackedKMatrix::from_packed(KFormat::Q2K, usize::MAX, 1 << 40, s(64..64)).is_err());
        assert!(PackedF16::from_packed(usize::MAX, usize::MAX, s(64..64)).is_err());
        assert!(PackedMatrix::from_packed(WeightFormat::Q8_0, 8, 0, s(64..64)).is_err());
        assert!(PackedMatrix::pack(WeightFormat::Q4_0, &[], 3, 0).is_err());
        assert!(PackedKMatrix::pack(KFormat::Q4K, &[], 3, 0).is_err());
        assert!(PackedMatrix::pack(WeightFormat::Q4_0, &[], usize::MAX, 1 << 40).is_err());
    }
}
