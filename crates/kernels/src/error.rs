//! What the kernels refuse: matrices whose bytes do not fit their shape, and views that
//! reach outside their buffer. Every case is checked before any byte is read.

/// A kernel error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// Row-major weights of `format` and shape (n, k) need another number of bytes (or k
    /// is not a whole number of blocks).
    #[error("a {format} matrix of shape ({n}, {k}) cannot hold {bytes} bytes")]
    RowBytes {
        format: String,
        n: usize,
        k: usize,
        bytes: usize,
    },
    /// Repacked weights of `format` and shape (n, k) need another number of bytes (or
    /// another alignment).
    #[error("a packed {format} matrix of shape ({n}, {k}) cannot have {bytes} bytes (or they are misaligned)")]
    PackedBytes {
        format: String,
        n: usize,
        k: usize,
        bytes: usize,
    },
    /// A view of bytes `start..end` of a buffer of `len` bytes.
    #[error("bytes {start}..{end} lie outside a buffer of {len}")]
    OutOfBuffer {
        start: usize,
        end: usize,
        len: usize,
    },
}
