//! A projection y = x W^T whose weights stay as stored. Q4_1 goes through our own kernel
//! (candle's Q4_1 dot product has no SIMD path); every other type through candle's QMatMul.
//! f16/bf16 weights are kept in f16 and multiplied with f16 activations, as llama.cpp does.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{CpuStorage, CustomOp1, Layout, Module, Shape, Tensor};

use crate::error::{Error, Result};
use crate::weights::WeightSource;

/// Weights of one projection.
pub enum Linear {
    Candle(QMatMul),
    Q4_1(Arc<Q4_1Matrix>),
}

/// Q4_1 weight rows for [`ferrollama_kernels::matmul_q4_1`].
pub struct Q4_1Matrix {
    data: Vec<u8>,
    /// Output features (rows).
    n: usize,
    /// Input features.
    k: usize,
}

impl Linear {
    /// Loads the weight `name`, which must have shape (n, k): n outputs, k inputs.
    pub fn load(w: &dyn WeightSource, name: &str, (n, k): (usize, usize)) -> Result<Self> {
        let q = w.get(name)?;
        if q.shape().dims() != [n, k] {
            return Err(Error::Shape {
                file: w.file().to_string(),
                name: name.into(),
                found: q.shape().dims().to_vec(),
                expected: vec![n, k],
            });
        }
        Self::from_qtensor(q)
    }

    /// Wraps a weight tensor of shape (n, k).
    pub fn from_qtensor(q: QTensor) -> Result<Self> {
        Ok(match q.dtype() {
            GgmlDType::Q4_1 => {
                let (n, k) = q.shape().dims2()?;
                Self::Q4_1(Arc::new(Q4_1Matrix {
                    data: q.data()?.into_owned(),
                    n,
                    k,
                }))
            }
            GgmlDType::F16 | GgmlDType::BF16 => {
                Self::Candle(QMatMul::TensorF16(q.dequantize_f16(&q.device())?))
            }
            _ => Self::Candle(QMatMul::from_qtensor(q)?),
        })
    }

    /// Wraps a shared tensor (the tied embedding used as output projection).
    pub fn from_arc(q: Arc<QTensor>) -> Result<Self> {
        match q.dtype() {
            GgmlDType::Q4_1 | GgmlDType::F16 | GgmlDType::BF16 => Self::from_qtensor(QTensor::new(
                candle_core::quantized::QStorage::from_data(q.data()?, &q.device(), q.dtype())?,
                q.shape().clone(),
            )?),
            _ => Ok(Self::Candle(QMatMul::from_arc(q)?)),
        }
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Candle(m) => m.forward(x),
            Self::Q4_1(m) => x.contiguous()?.apply_op1_no_bwd(m.as_ref()),
        }
    }
}

impl CustomOp1 for Q4_1Matrix {
    fn name(&self) -> &'static str {
        "q4_1-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(all) = storage else {
            candle_core::bail!("q4_1 matmul expects f32 activations")
        };
        let (start, end) = layout.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("q4_1 matmul expects contiguous activations".into())
        })?;
        let x = &all[start..end];
        let dims = layout.shape().dims();
        let k = *dims.last().unwrap_or(&0);
        if k != self.k {
            candle_core::bail!("q4_1 matmul: input width {k}, weights expect {}", self.k)
        }
        let m = x.len() / k.max(1);
        let mut y = vec![0f32; m * self.n];
        ferrollama_kernels::matmul_q4_1(&self.data, self.n, self.k, x, m, &mut y);
        let mut out_dims = dims.to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = self.n;
        }
        Ok((CpuStorage::F32(y), Shape::from(out_dims)))
    }
}
