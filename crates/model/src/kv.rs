//! The keys and values of one attention layer for one sequence. Unlike candle's
//! `KvCache` it can be cut back to a shorter prefix, which is what lets a server reuse the
//! cached prompt prefix a new request shares with an earlier one.

use std::sync::{Arc, RwLock, RwLockReadGuard};

use candle_core::Tensor;

use crate::error::{Error, Result};

/// Keys and values laid out (n_kv_head, capacity, head_dim), allocated at full capacity on
/// first use. Clones share the memory (a cheap handle): an append writes the positions
/// after the appending handle's own length, so a clone that holds more positions sees
/// those change. Callers copy a shared prefix ([`LayerKv::extend_from`]) or append to
/// clones one after another, each attending before the next appends (the harness scoring
/// several continuations of one context).
#[derive(Debug, Clone)]
pub struct LayerKv {
    data: Option<Arc<RwLock<KvData>>>,
    len: usize,
    capacity: usize,
}

#[derive(Debug)]
struct KvData {
    k: Vec<f32>,
    v: Vec<f32>,
    n_kv_head: usize,
    head_dim: usize,
}

/// The cached keys and values, read-locked: (n_kv_head, capacity, head_dim) each.
pub struct KvRead<'a> {
    guard: RwLockReadGuard<'a, KvData>,
    capacity: usize,
}

impl KvRead<'_> {
    pub fn keys(&self) -> &[f32] {
        &self.guard.k
    }

    pub fn values(&self) -> &[f32] {
        &self.guard.v
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

impl LayerKv {
    /// An empty store for `capacity` positions.
    pub fn new(capacity: usize) -> Self {
        Self {
            data: None,
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

    /// Whether `self` and `other` share their memory (clones of one cache).
    pub fn shares_memory_with(&self, other: &LayerKv) -> bool {
        match (&self.data, &other.data) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// Appends `k` and `v` (1, n_kv_head, n, head_dim).
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<()> {
        let (_, n_kv_head, n, head_dim) = k.dims4()?;
        if v.dims() != k.dims() {
            return Err(Error::Cache(format!(
                "keys {:?} and values {:?} differ in shape",
                k.dims(),
                v.dims()
            )));
        }
        let k: Vec<f32> = k.flatten_all()?.to_vec1()?;
        let v: Vec<f32> = v.flatten_all()?.to_vec1()?;
        self.append_with(n, n_kv_head, head_dim, |ks, vs, at, cap| {
            for g in 0..n_kv_head {
                let dst = (g * cap + at) * head_dim..(g * cap + at + n) * head_dim;
                let src = g * n * head_dim..(g + 1) * n * head_dim;
                ks[dst.clone()].copy_from_slice(&k[src.clone()]);
                vs[dst].copy_from_slice(&v[src]);
            }
        })
    }

    /// Appends `n` positions that `fill(keys, values, first, capacity)` writes in place:
    /// positions first..first + n of each KV head, the memory laid out (n_kv_head,
    /// capacity, head_dim). The memory is allocated on first use (for good).
    pub fn append_with(
        &mut self,
        n: usize,
        n_kv_head: usize,
        head_dim: usize,
        fill: impl FnOnce(&mut [f32], &mut [f32], usize, usize),
    ) -> Result<()> {
        if self.len + n > self.capacity {
            return Err(Error::Cache(format!(
                "{} positions exceed the KV cache of {}",
                self.len + n,
                self.capacity
            )));
        }
        let capacity = self.capacity;
        let data = self.data.get_or_insert_with(|| {
            let size = n_kv_head * capacity * head_dim;
            Arc::new(RwLock::new(KvData {
                k: vec![0.0; size],
                v: vec![0.0; size],
                n_kv_head,
                head_dim,
            }))
        });
        let mut d = data.write().unwrap_or_else(|p| p.into_inner());
        if (d.n_kv_head, d.head_dim) != (n_kv_head, head_dim) {
            return Err(Error::Cache(format!(
                "appending {n_kv_head} heads of {head_dim} to a cache of {} heads of {}",
                d.n_kv_head, d.head_dim
            )));
        }
        let KvData { k, v, .. } = &mut *d;
        fill(k, v, self.len, capacity);
        self.len += n;
        Ok(())
    }

    /// Appends positions `self.len()..upto` of `src`, which holds the same tokens there
    /// (a shared prompt prefix): a copy instead of a computation.
    pub fn extend_from(&mut self, src: &LayerKv, upto: usize) -> Result<()> {
        let from = self.len;
        if upto <= from {
            return Ok(());
        }
        let Some(data) = &src.data else {
            return Err(Error::Cache("copying from an empty KV cache".into()));
        };
        if upto > src.len {
            return Err(Error::Cache(format!(
                "copying {upto} positions from a KV cache holding {}",
                src.len
            )));
        }
        if self.shares_memory_with(src) {
            // The same memory: the positions are already there.
            self.len = upto;
            return Ok(());
        }
        let s = data.read().unwrap_or_else(|p| p.into_inner());
        let (n, hd, src_cap) = (upto - from, s.head_dim, src.capacity);
        self.append_with(n, s.n_kv_head, hd, |ks, vs, at, cap| {
            for g in 0..s.n_kv_head {
                let dst = (g * cap + at) * hd..(g * cap + at + n) * hd;
                let from = (g * src_cap + from) * hd..(g * src_cap + upto) * hd;
                ks[dst.clone()].copy_from_slice(&s.k[from.clone()]);
                vs[dst].copy_from_slice(&s.v[from]);
            }
        })
    }

    /// The cached keys and values, read-locked; an error while nothing was appended.
    pub fn read(&self) -> Result<KvRead<'_>> {
        let data = self
            .data
            .as_ref()
            .ok_or_else(|| Error::Cache("the KV cache is empty".into()))?;
        Ok(KvRead {
            guard: data.read().unwrap_or_else(|p| p.into_inner()),
            capacity: self.capacity,
        })
    }

    /// Calls `f` with the cached keys and values as f32 slices laid out
    /// (n_kv_head, capacity, head_dim), the number of positions held, and the capacity.
    pub fn with_data<R>(&self, f: impl FnOnce(&[f32], &[f32], usize, usize) -> R) -> Result<R> {
        let r = self.read()?;
        Ok(f(r.keys(), r.values(), self.len, self.capacity))
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

    /// The keys and values held (one KV head), in order.
    fn held(kv: &LayerKv) -> (Vec<f32>, Vec<f32>) {
        kv.with_data(|k, v, len, _| (k[..len * 2].to_vec(), v[..len * 2].to_vec()))
            .unwrap()
    }

    #[test]
    fn append_truncate_and_overwrite() {
        let mut kv = LayerKv::new(4);
        kv.append(&rows(0.0, 3), &rows(100.0, 3)).unwrap();
        kv.truncate(1);
        kv.append(&rows(50.0, 2), &rows(150.0, 2)).unwrap();
        assert_eq!(kv.len(), 3);
        let (k, v) = held(&kv);
        assert_eq!(k, [0.0, 1.0, 50.0, 51.0, 52.0, 53.0]);
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
        b.append(&rows(7.0, 1), &rows(7.0, 1)).unwrap();
        assert_eq!(held(&b).0, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 7.0, 8.0]);
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
