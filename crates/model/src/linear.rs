//! A projection y = x W^T. Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K to Q6_K and f16 weights
//! are repacked eight rows at a time at load and go through our own kernels (candle's Q4_1
//! dot product has no SIMD path, its Q8_0 product was a fifth of a batched decode step for
//! the output projection alone, its K-quant products work row by row, and its f16 product
//! ran at half llama.cpp's speed); every other type (the IQ types, ...) through candle's QMatMul.
//! f16 weights are multiplied with f16-rounded activations and bf16 weights with
//! bf16-rounded ones (AVX-512 BF16's `vdpbf16ps` where the CPU has it), as llama.cpp does.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{CpuStorage, CustomOp1, Layout, Module, Shape, Tensor};

pub use ferrollama_kernels::partial::ActivationKind;
use ferrollama_kernels::partial::Prepared;
use ferrollama_kernels::{
    KFormat, PackedBf16, PackedF16, PackedKMatrix, PackedMatrix, WeightFormat,
};

use crate::error::{Error, Result};
use crate::weights::WeightSource;

/// Weights of one projection.
pub enum Linear {
    Candle(QMatMul),
    Quant(Arc<QuantMatrix>),
}

/// Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K to Q6_K or f16 weights in the kernels' interleaved layout (shared
/// with the embedding when the output projection is tied to it: the embedding reads its
/// rows here).
pub enum QuantMatrix {
    Blocks(PackedMatrix),
    K(PackedKMatrix),
    F16(PackedF16),
    Bf16(PackedBf16),
}

impl QuantMatrix {
    /// Row `r` (< n) dequantized into `out` (k values).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        match self {
            Self::Blocks(p) => p.dequantize_row(r, out),
            Self::K(p) => p.dequantize_row(r, out),
            Self::F16(p) => p.dequantize_row(r, out),
            Self::Bf16(p) => p.dequantize_row(r, out),
        }
    }

    /// (output rows, input width).
    pub fn shape(&self) -> (usize, usize) {
        match self {
            Self::Blocks(p) => p.shape(),
            Self::K(p) => p.shape(),
            Self::F16(p) => p.shape(),
            Self::Bf16(p) => p.shape(),
        }
    }

    /// Output rows per group of the packed layout (8, or 16 for f16 and bf16).
    pub fn lanes(&self) -> usize {
        match self {
            Self::F16(_) => ferrollama_kernels::packed_f16::LANES,
            Self::Bf16(_) => ferrollama_kernels::packed_bf16::LANES,
            _ => ferrollama_kernels::packed::LANES,
        }
    }

    /// Row groups of [`QuantMatrix::lanes`] outputs.
    pub fn groups(&self) -> usize {
        match self {
            Self::Blocks(p) => p.groups(),
            Self::K(p) => p.groups(),
            Self::F16(p) => p.groups(),
            Self::Bf16(p) => p.groups(),
        }
    }

    /// What the activations are turned into for this matrix: matrices of one kind can
    /// share them.
    pub fn activation_kind(&self) -> ActivationKind {
        match self {
            Self::Blocks(_) => ActivationKind::Q8_1,
            Self::K(_) => ActivationKind::Q8K,
            Self::F16(_) => ActivationKind::F16,
            Self::Bf16(_) => ActivationKind::Bf16,
        }
    }

    /// Prepares `m` activation rows for [`QuantMatrix::tiles`] (see `ferrollama_kernels::partial`).
    pub fn prepare(&self, x: &[f32], m: usize, p: &mut Prepared) {
        match self {
            Self::Blocks(w) => w.prepare(x, m, p),
            Self::K(w) => w.prepare(x, m, p),
            Self::F16(w) => w.prepare(x, m, p),
            Self::Bf16(w) => w.prepare(x, m, p),
        }
    }

    /// Outputs of row groups `groups` for the `m` rows last prepared: `emit(row, first
    /// output, values)`, the bits of [`QuantMatrix`]'s whole product.
    pub fn tiles(
        &self,
        p: &Prepared,
        m: usize,
        groups: std::ops::Range<usize>,
        emit: &mut impl FnMut(usize, usize, &[f32]),
    ) {
        match self {
            Self::Blocks(w) => w.tiles(p, m, groups, emit),
            Self::K(w) => w.tiles(p, m, groups, emit),
            Self::F16(w) => w.tiles(p, m, groups, emit),
            Self::Bf16(w) => w.tiles(p, m, groups, emit),
        }
    }

    fn matmul(&self, x: &[f32], m: usize, y: &mut [f32]) {
        match self {
            Self::Blocks(p) => p.matmul(x, m, y),
            Self::K(p) => p.matmul(x, m, y),
            Self::F16(p) => p.matmul(x, m, y),
            Self::Bf16(p) => p.matmul(x, m, y),
        }
    }
}

impl Linear {
    /// Loads the weight `name`, which must have shape (n, k): n outputs, k inputs.
    pub fn load(w: &dyn WeightSource, name: &str, (n, k): (usize, usize)) -> Result<Self> {
        if let Some(m) = cached(w, name, (n, k)) {
            return Ok(Self::Quant(m));
        }
        let q = w.get(name)?;
        if q.shape().dims() != [n, k] {
            return Err(Error::Shape {
                file: w.file().to_string(),
                name: name.into(),
                found: q.shape().dims().to_vec(),
                expected: vec![n, k],
            });
        }
        let linear = Self::from_qtensor(q).map_err(|e| match e {
            Error::TensorData { msg, .. } => Error::TensorData {
                name: name.into(),
                msg,
            },
            e => e,
        })?;
        if let Self::Quant(m) = &linear {
            w.offer_packed(name, m);
        }
        Ok(linear)
    }

    /// Wraps a weight tensor of shape (n, k).
    pub fn from_qtensor(q: QTensor) -> Result<Self> {
        Self::from_arc(Arc::new(q))
    }

    /// Wraps a shared tensor (the tied embedding used as output projection).
    pub fn from_arc(q: Arc<QTensor>) -> Result<Self> {
        let (n, k) = q.shape().dims2()?;
        if let Some(format) = block_format(q.dtype()) {
            let packed = PackedMatrix::pack(format, &q.data()?, n, k).map_err(Error::from)?;
            return Ok(Self::Quant(Arc::new(QuantMatrix::Blocks(packed))));
        }
        match q.dtype() {
            GgmlDType::Q2K | GgmlDType::Q3K | GgmlDType::Q4K | GgmlDType::Q5K | GgmlDType::Q6K => {
                let packed = pack_k(q.dtype(), &q.data()?, n, k)?;
                Ok(Self::Quant(Arc::new(packed)))
            }
            GgmlDType::F16 => {
                let packed = PackedF16::pack(&q.data()?, n, k).map_err(Error::from)?;
                Ok(Self::Quant(Arc::new(QuantMatrix::F16(packed))))
            }
            GgmlDType::BF16 => {
                let packed = PackedBf16::pack(&q.data()?, n, k).map_err(Error::from)?;
                Ok(Self::Quant(Arc::new(QuantMatrix::Bf16(packed))))
            }
            _ => Ok(Self::Candle(QMatMul::from_arc(q)?)),
        }
    }
}

/// The packed matrix `key` of shape (n, k) from the source's cache, if it has one of that
/// shape (a cache of another shape is not this model's: ignored).
pub(crate) fn cached(
    w: &dyn WeightSource,
    key: &str,
    shape: (usize, usize),
) -> Option<Arc<QuantMatrix>> {
    w.packed(key).filter(|m| m.shape() == shape)
}

/// Our 32-value block format for a ggml type, if we have one.
fn block_format(dtype: GgmlDType) -> Option<WeightFormat> {
    Some(match dtype {
        GgmlDType::Q4_0 => WeightFormat::Q4_0,
        GgmlDType::Q4_1 => WeightFormat::Q4_1,
        GgmlDType::Q5_0 => WeightFormat::Q5_0,
        GgmlDType::Q5_1 => WeightFormat::Q5_1,
        GgmlDType::Q8_0 => WeightFormat::Q8_0,
        _ => return None,
    })
}

/// Repacks row-major Q2_K to Q6_K bytes of an (n, k) matrix.
fn pack_k(dtype: GgmlDType, bytes: &[u8], n: usize, k: usize) -> Result<QuantMatrix> {
    let format = match dtype {
        GgmlDType::Q2K => KFormat::Q2K,
        GgmlDType::Q3K => KFormat::Q3K,
        GgmlDType::Q4K => KFormat::Q4K,
        GgmlDType::Q5K => KFormat::Q5K,
        _ => KFormat::Q6K,
    };
    PackedKMatrix::pack(format, bytes, n, k)
        .map(QuantMatrix::K)
        .map_err(Error::from)
}

impl Linear {
    /// The packed matrix, if this projection runs on our kernels.
    pub fn quant(&self) -> Option<&Arc<QuantMatrix>> {
        match self {
            Self::Quant(m) => Some(m),
            Self::Candle(_) => None,
        }
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Candle(m) => m.forward(x),
            Self::Quant(m) => x.contiguous()?.apply_op1_no_bwd(m.as_ref()),
        }
    }
}

impl CustomOp1 for QuantMatrix {
    fn name(&self) -> &'static str {
        "quant-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(all) = storage else {
            candle_core::bail!("quantized matmul expects f32 activations")
        };
        let (start, end) = layout.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("quantized matmul expects contiguous activations".into())
        })?;
        let x = &all[start..end];
        let dims = layout.shape().dims();
        let (n, width) = self.shape();
        let k = *dims.last().unwrap_or(&0);
        if k != width {
            candle_core::bail!("quantized matmul: input width {k}, weights expect {width}")
        }
        let m = x.len() / k.max(1);
        let mut y = vec![0f32; m * n];
        self.matmul(x, m, &mut y);
        let mut out_dims = dims.to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = n;
        }
        Ok((CpuStorage::F32(y), Shape::from(out_dims)))
    }
}

/// Several projections of the same input (Q, K and V; gate and up), computed as one product
/// when their weights share a packed format: stacked row-wise, the input is quantized once
/// and the threads start once per step instead of once per projection. Each output row is
/// computed exactly as the separate projection would compute it.
pub struct Stacked {
    /// Output width of each part, in order.
    widths: Vec<usize>,
    inner: StackedInner,
}

enum StackedInner {
    One(Linear),
    Separate(Vec<Linear>),
}

impl Stacked {
    /// Loads the weights `names`, of shapes (widths[i], k).
    pub fn load(
        w: &dyn WeightSource,
        names: &[String],
        widths: &[usize],
        k: usize,
    ) -> Result<Self> {
        let key = names.join("+");
        if let Some(m) = cached(w, &key, (widths.iter().sum(), k)) {
            return Ok(Self {
                widths: widths.to_vec(),
                inner: StackedInner::One(Linear::Quant(m)),
            });
        }
        // Parts of different formats (Q4_K_M's Q, K with a Q6_K V) are cached one by one.
        let parts: Option<Vec<_>> = names
            .iter()
            .zip(widths)
            .map(|(name, &n)| cached(w, name, (n, k)).map(Linear::Quant))
            .collect();
        if let Some(parts) = parts {
            return Ok(Self {
                widths: widths.to_vec(),
                inner: StackedInner::Separate(parts),
            });
        }
        let mut parts = Vec::with_capacity(names.len());
        for (name, &n) in names.iter().zip(widths) {
            let q = w.get(name)?;
            if q.shape().dims() != [n, k] {
                return Err(Error::Shape {
                    file: w.file().to_string(),
                    name: name.clone(),
                    found: q.shape().dims().to_vec(),
                    expected: vec![n, k],
                });
            }
            parts.push(q);
        }
        let dtype = parts[0].dtype();
        let stackable = matches!(
            dtype,
            GgmlDType::Q4_0
                | GgmlDType::Q4_1
                | GgmlDType::Q5_0
                | GgmlDType::Q5_1
                | GgmlDType::Q8_0
                | GgmlDType::Q2K
                | GgmlDType::Q3K
                | GgmlDType::Q4K
                | GgmlDType::Q5K
                | GgmlDType::Q6K
                | GgmlDType::F16
                | GgmlDType::BF16
        ) && parts.iter().all(|q| q.dtype() == dtype);
        let inner = if stackable {
            let mut bytes = Vec::new();
            for q in &parts {
                bytes.extend_from_slice(&q.data()?);
            }
            drop(parts);
            let n: usize = widths.iter().sum();
            let matrix = match dtype {
                GgmlDType::Q2K
                | GgmlDType::Q3K
                | GgmlDType::Q4K
                | GgmlDType::Q5K
                | GgmlDType::Q6K => Ok(pack_k(dtype, &bytes, n, k)?),
                GgmlDType::F16 => PackedF16::pack(&bytes, n, k).map(QuantMatrix::F16),
                GgmlDType::BF16 => PackedBf16::pack(&bytes, n, k).map(QuantMatrix::Bf16),
                _ => match block_format(dtype) {
                    Some(format) => {
                        PackedMatrix::pack(format, &bytes, n, k).map(QuantMatrix::Blocks)
                    }
                    None => unreachable!("{dtype:?} is not stackable"),
                },
            }
            .map_err(Error::from)?;
            let matrix = Arc::new(matrix);
            w.offer_packed(&key, &matrix);
            StackedInner::One(Linear::Quant(matrix))
        } else {
            let mut separate = Vec::with_capacity(parts.len());
            for (q, name) in parts.into_iter().zip(names) {
                let linear = Linear::from_qtensor(q)?;
                if let Linear::Quant(m) = &linear {
                    w.offer_packed(name, m);
                }
                separate.push(linear);
            }
            StackedInner::Separate(separate)
        };
        Ok(Self {
            widths: widths.to_vec(),
            inner,
        })
    }

    /// The parts as packed matrices, each with its first row in the stacked output and
    /// its rows: one matrix for all when stacked (the same matrix, at its offsets), None
    /// when some part does not run on our kernels.
    pub fn quant_parts(&self) -> Option<Vec<(Arc<QuantMatrix>, usize, usize)>> {
        let mut at = 0;
        let mut out = Vec::with_capacity(self.widths.len());
        for (i, &n) in self.widths.iter().enumerate() {
            let m = match &self.inner {
                StackedInner::One(l) => l.quant()?.clone(),
                StackedInner::Separate(parts) => parts.get(i)?.quant()?.clone(),
            };
            let first = match &self.inner {
                StackedInner::One(_) => at,
                StackedInner::Separate(_) => 0,
            };
            out.push((m, first, n));
            at += n;
        }
        Some(out)
    }

    /// All parts side by side, (.., sum of widths), when they were stacked into one product.
    pub fn forward_stacked(&self, x: &Tensor) -> candle_core::Result<Option<Tensor>> {
        match &self.inner {
            StackedInner::One(linear) => Ok(Some(linear.forward(x)?)),
            StackedInner::Separate(_) => Ok(None),
        }
    }

    /// The projections of `x` (.., k): one tensor (.., widths[i]) per part.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        match &self.inner {
            StackedInner::Separate(parts) => parts.iter().map(|p| p.forward(x)).collect(),
            StackedInner::One(linear) => {
                let y = linear.forward(x)?;
                let last = y.rank() - 1;
                let mut at = 0;
                self.widths
                    .iter()
                    .map(|&n| {
                        let part = y.narrow(last, at, n)?.contiguous();
                        at += n;
                        part
                    })
                    .collect()
            }
        }
    }
}
