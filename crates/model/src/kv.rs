//! The keys and values of one attention layer for one sequence. Unlike candle's
//! `KvCache` it can be cut back to a shorter prefix, which is what lets a server reuse the
//! cached prompt prefix a new request shares with an earlier one.

use candle_core::{Storage, Tensor};

use crate::error::{Error, Result};

/// Keys and values shaped (1, n_kv_head, positions, head_dim), allocated at full capacity
/// on first use.
#[derive(Debug, Clone)]
pub struct LayerKv {
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: usize,
    capacity: usize,
}

/// The sequence axis of the cached tensors.
const SEQ_DIM: usize = 2;

impl LayerKv {
    /// An empty store for `capacity` positions.
    pub fn new(capacity: usize) -> Self {
        Self {
            k: None,
            v: None,
            len: 0,
            capacity,
        }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps the first `len` positions (no-op when already shorter). The memory stays
    /// allocated for the positions that follow.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Forgets every position and frees the memory.
    pub fn reset(&mut self) {
        *self = Self::new(self.capacity);
    }

    /// Appends `k` and `v` (1, n_kv_head, n, head_dim); returns every position held so far.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let n = k.dim(SEQ_DIM)?;
        if self.len + n > self.capacity {
            return Err(Error::Cache(format!(
                "{} positions exceed the KV cache of {}",
                self.len + n,
                self.capacity
            )));
        }
        let k_all = Self::store(&mut self.k, k, self.capacity)?;
        let v_all = Self::store(&mut self.v, v, self.capacity)?;
        k_all.slice_set(k, SEQ_DIM, self.len)?;
        v_all.slice_set(v, SEQ_DIM, self.len)?;
        self.len += n;
        Ok((
            k_all.narrow(SEQ_DIM, 0, self.len)?,
            v_all.narrow(SEQ_DIM, 0, self.len)?,
        ))
    }

    /// Appends positions `self.len()..upto` of `src`, which holds the same tokens there
    /// (a shared prompt prefix): a copy instead of a computation.
    pub fn extend_from(&mut self, src: &LayerKv, upto: usize) -> Result<()> {
        let from = self.len;
        if upto <= from {
            return Ok(());
        }
        let (Some(k), Some(v)) = (&src.k, &src.v) else {
            return Err(Error::Cache("copying from an empty KV cache".into()));
        };
        if upto > src.len {
            return Err(Error::Cache(format!(
                "copying {upto} positions from a KV cache holding {}",
                src.len
            )));
        }
        let part = |t: &Tensor| t.narrow(SEQ_DIM, from, upto - from)?.contiguous();
        self.append(&part(k)?, &part(v)?)?;
        Ok(())
    }

    /// Calls `f` with the cached keys and values as f32 slices laid out
    /// (n_kv_head, capacity, head_dim), the number of positions held, and the capacity.
    pub fn with_data<R>(&self, f: impl FnOnce(&[f32], &[f32], usize, usize) -> R) -> Result<R> {
        let (Some(k), Some(v)) = (&self.k, &self.v) else {
            return Err(Error::Cache("the KV cache is empty".into()));
        };
        let (ks, kl) = k.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        match (&*ks, &*vs) {
            (Storage::Cpu(kc), Storage::Cpu(vc)) => {
                let kd = &kc.as_slice::<f32>()?[kl.start_offset()..];
                let vd = &vc.as_slice::<f32>()?[vl.start_offset()..];
                Ok(f(kd, vd, self.len, self.capacity))
            }
            _ => Err(Error::Cache("the KV cache is not in CPU memory".into())),
        }
    }

    fn store(slot: &mut Option<Tensor>, like: &Tensor, capacity: usize) -> Result<Tensor> {
        if let Some(t) = slot {
            return Ok(t.clone());
        }
        let mut shape = like.dims().to_vec();
        shape[SEQ_DIM] = capacity;
        let t = Tensor::zeros(shape, like.dtype(), like.device())?;
        *slot = Some(t.clone());
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn rows(start: f32, n: usize) -> Tensor {
        let data: Vec<f32> = (0..n * 2).map(|i| start + i as f32).collect();
        Tensor::from_vec(data, (1, 1, n, 2), &Device::Cpu).unwrap()
    }

    #[test]
    fn append_truncate_and_overwrite() {
        let mut kv = LayerKv::new(4);
        kv.append(&rows(0.0, 3), &rows(100.0, 3)).unwrap();
        kv.truncate(1);
        let (k, v) = kv.append(&rows(50.0, 2), &rows(150.0, 2)).unwrap();
        assert_eq!(kv.len(), 3);
        let k: Vec<f32> = k.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(k, [0.0, 1.0, 50.0, 51.0, 52.0, 53.0]);
        let v: Vec<f32> = v.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(v, [100.0, 101.0, 150.0, 151.0, 152.0, 153.0]);
    }

    #[test]
    fn extend_from_copies_a_shared_prefix() {
        let mut a = LayerKv::new(4);
        a.append(&rows(0.0, 3), &rows(100.0, 3)).unwrap();
        let mut b = LayerKv::new(4);
        b.append(&rows(0.0, 1), &rows(100.0, 1)).unwrap();
        b.extend_from(&a, 3).unwrap();
        assert_eq!(b.len(), 3);
        let (k, _) = b.append(&rows(7.0, 1), &rows(7.0, 1)).unwrap();
        let k: Vec<f32> = k.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(k, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 7.0, 8.0]);
        assert!(
            b.extend_from(&a, 2).is_ok(),
            "nothing to copy below its own length"
        );
        assert_eq!(b.len(), 4);
        let mut c = LayerKv::new(8);
        assert!(
            c.extend_from(&a, 4).is_err(),
            "beyond what the source holds"
        );
        assert!(c.extend_from(&LayerKv::new(2), 1).is_err());
    }

    #[test]
    fn overflow_is_an_error_and_keeps_the_contents() {
        let mut kv = LayerKv::new(2);
        kv.append(&rows(0.0, 2), &rows(0.0, 2)).unwrap();
        assert!(kv.append(&rows(9.0, 1), &rows(9.0, 1)).is_err());
        assert_eq!(kv.len(), 2);
        kv.reset();
        assert!(kv.is_empty());
    }
}
