//! Multi-head self-attention with grouped-query heads (Ainslie et al. 2023): each KV head
//! serves `n_rep` consecutive query heads, as in llama.cpp's broadcast.

use candle_core::{DType, Device, Module, Tensor};
use ferrollama_kernels::attention::{decode_attention, Heads};

use crate::config::Config;
use crate::error::Result;
use crate::kv::LayerKv;
use crate::linear::Linear;
use crate::mask::causal_mask;
use crate::rope::Rope;
use crate::weights::WeightSource;

/// Attention weights of one block.
pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
}

impl Attention {
    /// Loads `{prefix}.q_proj` and friends.
    pub fn load(w: &dyn WeightSource, prefix: &str, cfg: &Config) -> Result<Self> {
        let h = cfg.hidden_size;
        let (q, kv) = (
            cfg.num_attention_heads * cfg.head_dim,
            cfg.num_key_value_heads * cfg.head_dim,
        );
        Ok(Self {
            q_proj: Linear::load(w, &format!("{prefix}.q_proj.weight"), (q, h))?,
            k_proj: Linear::load(w, &format!("{prefix}.k_proj.weight"), (kv, h))?,
            v_proj: Linear::load(w, &format!("{prefix}.v_proj.weight"), (kv, h))?,
            o_proj: Linear::load(w, &format!("{prefix}.o_proj.weight"), (h, q))?,
            n_head: cfg.num_attention_heads,
            n_kv_head: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
        })
    }

    /// `x` (1, seq_len, hidden) at positions index_pos.. -> (1, seq_len, hidden); appends
    /// the new keys and values to `cache`. `mask` is (seq_len, index_pos + seq_len) or
    /// `None` for a single query, which may see every cached key.
    pub fn forward(
        &self,
        x: &Tensor,
        rope: &Rope,
        index_pos: usize,
        cache: &mut LayerKv,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (q, k, v) = self.project(x)?;
        let out = self.attend(q, k, v, rope, index_pos, cache, mask)?;
        Ok(self.o_proj.forward(&out)?)
    }

    /// Several sequences in one pass: `x` (1, total, hidden) holds `lens[i]` consecutive
    /// rows for sequence i, which follow what `caches[i]` holds. The projections run
    /// batched (the weights are read once for every sequence); attention runs per sequence
    /// over its own cache, causally within its rows.
    pub fn forward_multi(
        &self,
        x: &Tensor,
        rope: &Rope,
        lens: &[usize],
        caches: &mut [&mut LayerKv],
    ) -> Result<Tensor> {
        let (q, k, v) = self.project(x)?;
        let mut offset = 0;
        let mut outs = Vec::with_capacity(lens.len());
        for (&n, cache) in lens.iter().zip(caches.iter_mut()) {
            let rows = |t: &Tensor| t.narrow(1, offset, n);
            let pos = cache.len();
            let mask = if n > 1 {
                Some(causal_mask(n, pos, x.device())?)
            } else {
                None
            };
            outs.push(self.attend(
                rows(&q)?,
                rows(&k)?,
                rows(&v)?,
                rope,
                pos,
                cache,
                mask.as_ref(),
            )?);
            offset += n;
        }
        Ok(self.o_proj.forward(&Tensor::cat(&outs, 1)?)?)
    }

    /// Q, K and V projections, each (1, seq_len, heads * head_dim).
    fn project(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        Ok((
            self.q_proj.forward(x)?,
            self.k_proj.forward(x)?,
            self.v_proj.forward(x)?,
        ))
    }

    /// Attention of projected queries over the cache plus the new keys and values; returns
    /// (1, seq_len, n_head * head_dim), before the output projection.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        rope: &Rope,
        index_pos: usize,
        cache: &mut LayerKv,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b_sz, seq_len, _) = q.dims3()?;
        if (b_sz, seq_len) == (1, 1) {
            return self.attend_one(q, k, v, rope, index_pos, cache);
        }
        let (n_head, n_kv_head, head_dim) = (self.n_head, self.n_kv_head, self.head_dim);
        let heads = |t: Tensor, n: usize| -> Result<Tensor> {
            // (b, seq_len, n * head_dim) -> (b, n, seq_len, head_dim)
            Ok(t.reshape((b_sz, seq_len, n, head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = rope.apply(&heads(q, n_head)?, index_pos)?;
        let k = rope.apply(&heads(k, n_kv_head)?, index_pos)?;
        let v = heads(v, n_kv_head)?;
        // llama.cpp keeps K and V in f16 and multiplies them with Q and the attention
        // probabilities rounded to f16; rounding at the same places keeps our activations
        // closest to its own (on the f16 model: max logit difference 0.025, from 0.031).
        let k = k.to_dtype(DType::F16)?.to_dtype(DType::F32)?;
        let v = v.to_dtype(DType::F16)?.to_dtype(DType::F32)?;
        // (b, n_kv_head, kv_len, head_dim)
        let (k, v) = cache.append(&k, &v)?;
        let kv_len = k.dim(2)?;

        // Group the query heads by the KV head they share, so one matmul serves each group:
        // (b, n_kv_head, n_rep * seq_len, head_dim).
        let n_rep = n_head / n_kv_head;
        let q = q.to_dtype(DType::F16)?.to_dtype(DType::F32)?.reshape((
            b_sz,
            n_kv_head,
            n_rep * seq_len,
            head_dim,
        ))?;
        let scale = 1.0 / (head_dim as f64).sqrt();
        // (b, n_kv_head, n_rep * seq_len, kv_len)
        let scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?;
        let scores = match mask {
            Some(m) => scores
                .reshape((b_sz, n_kv_head, n_rep, seq_len, kv_len))?
                .broadcast_add(m)?
                .reshape((b_sz, n_kv_head, n_rep * seq_len, kv_len))?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?
            .to_dtype(DType::F16)?
            .to_dtype(DType::F32)?;
        // (b, n_kv_head, n_rep * seq_len, head_dim) -> (b, seq_len, n_head * head_dim)
        let out = probs.matmul(&v.contiguous()?)?;
        let out = out
            .reshape((b_sz, n_head, seq_len, head_dim))?
            .transpose(1, 2)?
            .reshape((b_sz, seq_len, n_head * head_dim))?;
        Ok(out)
    }
}

impl Attention {
    /// [`Self::attend`] for one new token: RoPE and the cache append stay tensor
    /// operations; scores, softmax and the weighted sum run fused in
    /// [`decode_attention`].
    fn attend_one(
        &self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        rope: &Rope,
        index_pos: usize,
        cache: &mut LayerKv,
    ) -> Result<Tensor> {
        let (n_head, n_kv_head, hd) = (self.n_head, self.n_kv_head, self.head_dim);
        // (1, 1, n * hd) -> (1, n, 1, hd) is the same memory: no copy.
        let q = rope.apply(&q.reshape((1, n_head, 1, hd))?, index_pos)?;
        let k = rope.apply(&k.reshape((1, n_kv_head, 1, hd))?, index_pos)?;
        let f16_round = |t: Tensor| t.to_dtype(DType::F16)?.to_dtype(DType::F32);
        cache.append(
            &f16_round(k)?,
            &f16_round(v.reshape((1, n_kv_head, 1, hd))?)?,
        )?;
        let q: Vec<f32> = f16_round(q)?.flatten_all()?.to_vec1()?;
        let heads = Heads {
            n_head,
            n_kv_head,
            head_dim: hd,
        };
        let out = cache.with_data(|k, v, len, cap| decode_attention(heads, &q, k, v, len, cap))?;
        Ok(Tensor::from_vec(out, (1, 1, n_head * hd), &Device::Cpu)?)
    }
}

/// Plain reference attention for one head group (tests): `q` rows attend causally.
pub fn attention_reference(
    q: &[Vec<f32>],
    k: &[Vec<f32>],
    v: &[Vec<f32>],
    index_pos: usize,
) -> Vec<Vec<f32>> {
    let scale = 1.0 / (q[0].len() as f32).sqrt();
    q.iter()
        .enumerate()
        .map(|(i, qi)| {
            let visible = index_pos + i + 1;
            let s: Vec<f32> = k[..visible]
                .iter()
                .map(|kj| qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale)
                .collect();
            let m = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = s.iter().map(|x| (x - m).exp()).collect();
            let z: f32 = e.iter().sum();
            (0..v[0].len())
                .map(|d| e.iter().zip(v).map(|(p, vj)| p * vj[d]).sum::<f32>() / z)
                .collect()
        })
        .collect()
}
