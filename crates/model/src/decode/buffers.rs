//! The buffers the pool's threads share during a phase, and each thread's own.

use std::cell::UnsafeCell;
use std::ops::Range;

use ferrollama_kernels::partial::Prepared;

/// One thread's buffers.
pub(super) struct Scratch {
    pub prepared: Prepared,
    /// Normalized (or gathered) input rows.
    pub rows: Vec<f32>,
    /// Attention scores of one head (the context).
    pub scores: Vec<f32>,
    /// One rotated query head.
    pub query: Vec<f32>,
}

/// Per-thread buffers, each entry used by one pool thread index at a time.
pub(super) struct PerThread<T = Scratch>(pub Vec<UnsafeCell<T>>);

// SAFETY: entry i is only reached through `get(i)` by the one call of a phase that runs
// as thread index i (the pool runs each index once per phase; serially when busy).
unsafe impl<T: Send> Sync for PerThread<T> {}

impl<T> PerThread<T> {
    /// # Safety
    /// No other live reference to entry `i` may exist (one phase call per index).
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn get(&self, i: usize) -> &mut T {
        // SAFETY: upheld by the caller (see above).
        unsafe { &mut *self.0[i].get() }
    }
}

/// A buffer that the threads of a phase write in disjoint parts, or all read.
#[derive(Clone, Copy)]
pub(super) struct Shared {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: phases write disjoint ranges only, and never read what another thread of the same
// phase writes (see each phase).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    pub fn new(v: &mut [f32]) -> Self {
        Self {
            ptr: v.as_mut_ptr(),
            len: v.len(),
        }
    }

    /// # Safety
    /// No other thread touches `r` while the slice lives.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn part(&self, r: Range<usize>) -> &mut [f32] {
        assert!(
            r.start <= r.end && r.end <= self.len,
            "{r:?} outside {}",
            self.len
        );
        // SAFETY: inside the buffer (asserted); exclusive by the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(r.start), r.len()) }
    }

    /// # Safety
    /// No thread writes `r` while the slice lives.
    pub unsafe fn read(&self, r: Range<usize>) -> &[f32] {
        assert!(
            r.start <= r.end && r.end <= self.len,
            "{r:?} outside {}",
            self.len
        );
        // SAFETY: inside the buffer (asserted); not written meanwhile by the contract.
        unsafe { std::slice::from_raw_parts(self.ptr.add(r.start), r.len()) }
    }
}
