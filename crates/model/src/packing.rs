//! Several samples in one row of a training batch ("packing", as Llama 2's fine-tuning
//! concatenates its prompts and answers): each sample's RoPE positions restart at 0 and its
//! tokens attend only to earlier tokens of the same sample, so a packed row computes
//! exactly what its samples would one by one, and no sample can see another.

use crate::error::{Error, Result};

/// Where samples start in each row of a (rows, t) batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packing {
    t: usize,
    /// Per row, the start of each sample: strictly increasing, the first 0, all < t.
    starts: Vec<Vec<usize>>,
}

impl Packing {
    /// Checks `starts` against rows of `t` tokens.
    pub fn new(starts: Vec<Vec<usize>>, t: usize) -> Result<Self> {
        for (r, row) in starts.iter().enumerate() {
            let increasing = row.windows(2).all(|w| w[0] < w[1]);
            if row.first() != Some(&0) || !increasing || row.last().is_some_and(|&s| s >= t) {
                return Err(Error::Packing(format!(
                    "row {r}: sample starts {row:?} must begin at 0, increase, and stay below {t}"
                )));
            }
        }
        Ok(Self { t, starts })
    }

    /// One sample per row: the unpacked batch.
    pub fn unpacked(rows: usize, t: usize) -> Self {
        Self {
            t,
            starts: vec![vec![0]; rows],
        }
    }

    pub fn rows(&self) -> usize {
        self.starts.len()
    }

    pub fn seq_len(&self) -> usize {
        self.t
    }

    /// Whether every row holds a single sample.
    pub fn is_unpacked(&self) -> bool {
        self.starts.iter().all(|r| r.len() == 1)
    }

    /// The samples of row `r` as (start, length).
    pub fn segments(&self, r: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
        let row = &self.starts[r];
        row.iter().enumerate().map(move |(i, &s)| {
            let end = row.get(i + 1).copied().unwrap_or(self.t);
            (s, end - s)
        })
    }

    /// The RoPE position of every token, row-major: its offset in its sample.
    pub fn positions(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.rows() * self.t);
        for r in 0..self.rows() {
            for (_, len) in self.segments(r) {
                out.extend(0..len as u32);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_restart_at_each_sample() {
        let p = Packing::new(vec![vec![0, 3], vec![0]], 5).unwrap();
        assert_eq!(p.positions(), [0, 1, 2, 0, 1, 0, 1, 2, 3, 4]);
        assert_eq!(p.segments(0).collect::<Vec<_>>(), [(0, 3), (3, 2)]);
        assert!(!p.is_unpacked());
        assert!(Packing::unpacked(2, 5).is_unpacked());
    }

    #[test]
    fn bad_starts_are_errors() {
        for bad in [vec![1], vec![0, 0], vec![0, 5], vec![], vec![0, 3, 2]] {
            assert!(Packing::new(vec![bad.clone()], 5).is_err(), "{bad:?}");
        }
    }
}
