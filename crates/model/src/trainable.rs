//! The Llama decoder as a differentiable function of its weights, for training: the same
//! blocks as [`crate::Llama`], their weights named and shaped by [`crate::layout`], built
//! from candle's operations and the fused ops of [`crate::ops`] so that candle's autograd
//! differentiates it. RoPE rotates halves of each head, as Hugging Face checkpoints store
//! Q and K; weights read from a GGUF file (adjacent pairs) are permuted into that order at
//! load, and back on export, so the two paths compute the same function (the parity tests
//! in `tests/parity.rs` hold them together).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::hf::{permute_rope_rows, RopeLayout};
use crate::layout::{self, Part, TensorSpec};
use crate::lora::LoraConfig;
use crate::ops::frozen_quant::FrozenQuant;
use crate::ops::fused::{CausalAttention, CrossEntropy};
use crate::ops::lora_linear::{Frozen, LoraLinear};
use crate::ops::rope_heads::RopeHeads;
use crate::packing::Packing;
use crate::weights::WeightSource;

/// The weights of one block, one field per [`Part`] of a block, as [`crate::Llama`]'s
/// blocks hold them: the variables' tensors when trained, constants when frozen.
struct TrainBlock {
    attn_norm: Tensor,
    query: Weight,
    key: Weight,
    value: Weight,
    attn_output: Weight,
    ffn_norm: Tensor,
    gate: Weight,
    up: Weight,
    down: Weight,
    /// LoRA's (A, B) of the adapted projections.
    lora: Vec<(Part, Tensor, Tensor)>,
}

/// A base weight: f32 (trained, or frozen as a constant), or a frozen projection kept
/// quantized (QLoRA).
#[derive(Clone, Debug)]
pub enum Weight {
    Dense(Tensor),
    Quant(FrozenQuant),
}

impl Weight {
    /// x (n, in) times the weight (out, in) transposed.
    fn linear(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Dense(w) => linear(x, w),
            Self::Quant(q) => Ok(q.linear(x)?),
        }
    }

    /// The weight as an f32 tensor (a quantized one dequantized).
    pub fn to_dense(&self) -> Result<Tensor> {
        match self {
            Self::Dense(w) => Ok(w.clone()),
            Self::Quant(q) => {
                let (n, k) = q.shape();
                Ok(Tensor::from_vec(q.dequantize(), (n, k), &Device::Cpu)?)
            }
        }
    }

    fn dims2(&self) -> Result<(usize, usize)> {
        match self {
            Self::Dense(w) => Ok(w.dims2()?),
            Self::Quant(q) => Ok(q.shape()),
        }
    }

    /// The f32 tensor of a weight that is never quantized (norms, the embedding).
    fn dense(&self) -> Result<&Tensor> {
        match self {
            Self::Dense(w) => Ok(w),
            Self::Quant(_) => Err(Error::Internal(
                "a quantized weight where f32 is kept".into(),
            )),
        }
    }
}

/// An attached LoRA adapter: its shape and where its dropout masks come from.
struct Lora {
    config: LoraConfig,
    /// Seeds this forward pass's dropout masks; 0 = no dropout (evaluation).
    dropout_key: AtomicU64,
    /// Whether forward passes apply the adapter (off: the base model, PPO's reference,
    /// without a second copy of the weights).
    enabled: AtomicBool,
}

/// A Llama whose weights are candle variables.
pub struct TrainableLlama {
    pub config: Config,
    embed_tokens: Tensor,
    layers: Vec<TrainBlock>,
    norm: Tensor,
    /// `None` when the output projection is the embedding.
    lm_head: Option<Tensor>,
    /// Every weight of the base model by its layout name (the tensors above).
    weights: BTreeMap<String, Weight>,
    /// What training updates, by name: every weight, or with LoRA only the adapters' A
    /// and B. The map's order is the order gradients are reduced and the optimizer
    /// visits them, so results do not depend on hashing.
    params: BTreeMap<String, Var>,
    lora: Option<Lora>,
    /// (max_seq, head_dim), position-major: the cosine and sine of each position's angles,
    /// both halves of a head rotated by the same frequencies.
    cos_table: Arc<Vec<f32>>,
    sin_table: Arc<Vec<f32>>,
}

/// Checks a selection of tokens of a batch (b, t): at least one, each with its target,
/// each inside the batch.
fn check_scored(tokens: &Tensor, scored: &[u32], targets: &[u32]) -> Result<()> {
    let (b, t) = tokens.dims2()?;
    if scored.is_empty() || scored.len() != targets.len() {
        return Err(Error::Scoring(format!(
            "{} selected tokens with {} targets; a selection needs at least one",
            scored.len(),
            targets.len()
        )));
    }
    if let Some(&i) = scored.iter().find(|&&i| i as usize >= b * t) {
        return Err(Error::Scoring(format!(
            "token {i} is outside the {b} x {t} batch"
        )));
    }
    Ok(())
}

/// Standard deviation of the initial weights (GPT-2's, as llama2.c and nanoGPT use).
const INIT_STD: f64 = 0.02;

impl TrainableLlama {
    /// A model of shape `config` with weights drawn from N(0, 0.02) by a ChaCha RNG seeded
    /// with `seed` (the output projections of attention and the MLP, which add to the
    /// residual stream, scaled down by sqrt(2 * layers), as GPT-2 does); norms start at 1.
    pub fn init(config: Config, seed: u64, max_seq: usize) -> Result<Self> {
        config.check().map_err(Error::Config)?;
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let residual_std = INIT_STD / (2.0 * config.num_hidden_layers as f64).sqrt();
        let mut specs = layout::tensors(&config);
        specs.sort_by_key(init_order);
        let mut tensors = BTreeMap::new();
        for spec in specs {
            let n: usize = spec.shape.iter().product();
            let data: Vec<f32> = if spec.part.is_norm() {
                vec![1.0; n]
            } else if spec.part.writes_residual() {
                normal_samples(&mut rng, n, residual_std)
            } else {
                normal_samples(&mut rng, n, INIT_STD)
            };
            tensors.insert(spec.name, Tensor::from_vec(data, spec.shape, &Device::Cpu)?);
        }
        Self::from_tensors(config, tensors, max_seq)
    }

    /// A model with the given weights (in the rotate-half order of Q and K rows), which
    /// must be exactly the tensors `config`'s layout calls for.
    pub fn from_tensors(
        config: Config,
        mut tensors: BTreeMap<String, Tensor>,
        max_seq: usize,
    ) -> Result<Self> {
        config.check().map_err(Error::Config)?;
        let mut params = BTreeMap::new();
        let mut weights = BTreeMap::new();
        for TensorSpec { name, shape, .. } in layout::tensors(&config) {
            let t = tensors
                .remove(&name)
                .ok_or_else(|| Error::MissingTensor { name: name.clone() })?;
            if t.dims() != shape.as_slice() {
                return Err(Error::Shape {
                    file: "the weights".into(),
                    name,
                    found: t.dims().to_vec(),
                    expected: shape,
                });
            }
            let var = Var::from_tensor(&t.to_dtype(DType::F32)?)?;
            weights.insert(name.clone(), Weight::Dense(var.as_tensor().clone()));
            params.insert(name, var);
        }
        if let Some(name) = tensors.into_keys().next() {
            return Err(Error::UnexpectedTensor { name });
        }
        Self::with_weights(config, weights, params, max_seq)
    }

    fn with_weights(
        config: Config,
        weights: BTreeMap<String, Weight>,
        params: BTreeMap<String, Var>,
        max_seq: usize,
    ) -> Result<Self> {
        let (cos, sin) = rotate_half_tables(&config, max_seq);
        let placeholder = Tensor::zeros(0, DType::F32, &Device::Cpu)?;
        let mut model = Self {
            embed_tokens: placeholder.clone(),
            layers: Vec::new(),
            norm: placeholder,
            lm_head: None,
            config,
            weights,
            params,
            lora: None,
            cos_table: Arc::new(cos),
            sin_table: Arc::new(sin),
        };
        model.assemble(&BTreeMap::new())?;
        Ok(model)
    }

    /// A checkpoint for QLoRA: the projections of every block stay quantized
    /// ([`FrozenQuant`]): as the GGUF file stores them (Q4_0, Q4_1, Q8_0, K-quants, ...; one
    /// its quantizer left in f32 stays f32), or, when all are given in f32/f16/bf16 (a
    /// Hugging Face directory, an f16 GGUF), quantized to NF4 with double quantization;
    /// the embedding, norms and head are f32. Everything is frozen,
    /// so [`Self::attach_lora`] must give it something to train. Types the kernels do not
    /// hold (IQ types) are refused.
    pub fn open_quantized(path: &std::path::Path, max_seq: usize) -> Result<Self> {
        crate::weights::with_checkpoint(path, |w, config| {
            Self::from_source_quantized(w, config, max_seq)
        })
    }

    /// [`Self::open_quantized`] of any weight source.
    pub fn from_source_quantized(
        w: &dyn WeightSource,
        mut config: Config,
        max_seq: usize,
    ) -> Result<Self> {
        use crate::ops::frozen_quant::FrozenMatrix;
        use candle_core::quantized::GgmlDType;
        config.tie_word_embeddings = !w.contains(&layout::global_name(Part::Head));
        let float = |t: GgmlDType| matches!(t, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
        let specs = layout::tensors(&config);
        // A quantized file is kept as it is (a projection its quantizer left in f32 stays
        // f32); a base given in floats goes to NF4.
        let mut all_float = true;
        for spec in specs
            .iter()
            .filter(|s| crate::lora::module(s.part).is_some())
        {
            all_float &= float(w.get(&spec.name)?.dtype());
        }
        let mut weights = BTreeMap::new();
        for spec in specs {
            let weight = if crate::lora::module(spec.part).is_some() {
                let (rows, cols) = (spec.shape[0], spec.shape[1]);
                let q = w.get(&spec.name)?;
                let matrix = match q.dtype() {
                    ty if float(ty) && !all_float => {
                        let t = q.dequantize(&Device::Cpu)?.to_dtype(DType::F32)?;
                        let t = match layout::rotary_heads(&config, spec.part) {
                            Some(heads) => {
                                let map = crate::ops::frozen_quant::rope_row_map(rows, heads);
                                let idx = Tensor::from_vec(map, rows, &Device::Cpu)?;
                                t.index_select(&idx, 0)?
                            }
                            None => t,
                        };
                        weights.insert(spec.name, Weight::Dense(t));
                        continue;
                    }
                    ty if float(ty) => {
                        let v = q
                            .dequantize(&Device::Cpu)?
                            .flatten_all()?
                            .to_vec1::<f32>()?;
                        FrozenMatrix::Nf4(Arc::new(crate::nf4::Nf4Matrix::quantize(
                            &v, rows, cols,
                        )?))
                    }
                    ty => match crate::linear::Linear::load(w, &spec.name, (rows, cols))? {
                        crate::linear::Linear::Quant(m) => FrozenMatrix::Packed(m),
                        crate::linear::Linear::Candle(_) => {
                            return Err(Error::UnsupportedType {
                                action: "keep quantized for QLoRA",
                                ty: format!("{ty:?} (`{}`)", spec.name),
                            })
                        }
                    },
                };
                let rows_map = layout::rotary_heads(&config, spec.part)
                    .map(|heads| Arc::new(crate::ops::frozen_quant::rope_row_map(rows, heads)));
                Weight::Quant(FrozenQuant {
                    matrix,
                    rows: rows_map,
                })
            } else {
                let t = w.get(&spec.name)?.dequantize(&Device::Cpu)?;
                Weight::Dense(t.to_dtype(DType::F32)?)
            };
            weights.insert(spec.name, weight);
        }
        Self::with_weights(config, weights, BTreeMap::new(), max_seq)
    }

    /// Points the blocks, embedding, norm and head at `self.weights`, with the adapter
    /// matrices of `adapters` (by their names) on the projections they adapt.
    fn assemble(&mut self, adapters: &BTreeMap<String, Tensor>) -> Result<()> {
        let w = &self.weights;
        let get =
            |name: String| -> Result<&Weight> { w.get(&name).ok_or(Error::MissingTensor { name }) };
        let block = |l: usize| -> Result<TrainBlock> {
            let v = |part| get(layout::layer_name(l, part)).cloned();
            let d =
                |part| -> Result<Tensor> { Ok(get(layout::layer_name(l, part))?.dense()?.clone()) };
            let lora = crate::lora::TARGETS
                .iter()
                .filter_map(|&(part, _)| {
                    let (a, b) = crate::lora::matrix_names(&layout::layer_name(l, part));
                    Some((part, adapters.get(&a)?.clone(), adapters.get(&b)?.clone()))
                })
                .collect();
            Ok(TrainBlock {
                attn_norm: d(Part::AttnNorm)?,
                query: v(Part::Query)?,
                key: v(Part::Key)?,
                value: v(Part::Value)?,
                attn_output: v(Part::AttnOutput)?,
                ffn_norm: d(Part::FfnNorm)?,
                gate: v(Part::Gate)?,
                up: v(Part::Up)?,
                down: v(Part::Down)?,
                lora,
            })
        };
        let layers = (0..self.config.num_hidden_layers)
            .map(block)
            .collect::<Result<Vec<_>>>()?;
        let global =
            |part| -> Result<Tensor> { Ok(get(layout::global_name(part))?.dense()?.clone()) };
        self.embed_tokens = global(Part::Embedding)?;
        self.norm = global(Part::FinalNorm)?;
        self.lm_head = if self.config.tie_word_embeddings {
            None
        } else {
            Some(global(Part::Head)?)
        };
        self.layers = layers;
        Ok(())
    }

    /// Freezes the base model and attaches a LoRA adapter to `lora.targets` of every
    /// block: from then on only the adapters' matrices are trained (and listed by
    /// [`Self::params`]). `init` gives their values (a saved adapter, by this crate's
    /// names; see [`crate::lora::read_peft_dir`]); without it they start as PEFT starts
    /// them, A drawn with `seed` and B zero.
    pub fn attach_lora(
        &mut self,
        lora: LoraConfig,
        seed: u64,
        init: Option<BTreeMap<String, Tensor>>,
    ) -> Result<()> {
        lora.check()?;
        if self.lora.is_some() {
            return Err(Error::Config("a LoRA adapter is attached already".into()));
        }
        let mut params = BTreeMap::new();
        let mut adapters = BTreeMap::new();
        let mut add = |name: String, a: Tensor, b: Tensor| -> Result<()> {
            let (an, bn) = crate::lora::matrix_names(&name);
            let (a, b) = (Var::from_tensor(&a)?, Var::from_tensor(&b)?);
            adapters.insert(an.clone(), a.as_tensor().clone());
            adapters.insert(bn.clone(), b.as_tensor().clone());
            params.insert(an, a);
            params.insert(bn, b);
            Ok(())
        };
        match init {
            None => {
                let mut rng = crate::lora::init_rng(seed);
                for l in 0..self.config.num_hidden_layers {
                    for &part in &lora.targets {
                        let name = layout::layer_name(l, part);
                        let (out, inp) = self.weights[&name].dims2()?;
                        let (a, b) = crate::lora::init_matrices(&mut rng, lora.rank, out, inp)?;
                        add(name, a, b)?;
                    }
                }
            }
            Some(tensors) => {
                let config = &self.config;
                let shape = |_, part| {
                    let s = layout::shape(config, part);
                    (s[0], s[1])
                };
                let layers = config.num_hidden_layers;
                for (l, part, a, b) in crate::lora::take_matrices(&lora, layers, shape, tensors)? {
                    add(layout::layer_name(l, part), a, b)?;
                }
            }
        }
        // The base becomes constants (only once the adapter is whole): no gradient is
        // computed for them, and their matrix products skip the weight-gradient half of
        // the backward pass.
        for w in self.weights.values_mut() {
            if let Weight::Dense(t) = w {
                *t = t.detach();
            }
        }
        // Heads added beside the model (a reward model's score) stay trained.
        for (name, v) in std::mem::take(&mut self.params) {
            if !self.weights.contains_key(&name) {
                params.insert(name, v);
            }
        }
        self.params = params;
        self.assemble(&adapters)?;
        self.lora = Some(Lora {
            config: lora,
            dropout_key: AtomicU64::new(0),
            enabled: AtomicBool::new(true),
        });
        Ok(())
    }

    /// Adds a trained tensor beside the model's own weights (a reward model's score head,
    /// `score.weight` as Hugging Face's LlamaForSequenceClassification names it): listed
    /// by [`Self::params`] under `name`, so the optimizer, checkpoints and resume carry it;
    /// the model's forward passes do not use it. A name the model has is refused.
    pub fn add_head(&mut self, name: &str, init: &Tensor) -> Result<Var> {
        if self.weights.contains_key(name) || self.params.contains_key(name) {
            return Err(Error::Config(format!("`{name}` is taken")));
        }
        let v = Var::from_tensor(init)?;
        self.params.insert(name.to_string(), v.clone());
        Ok(v)
    }

    /// The final hidden states (after the last RMSNorm) of some rows of a packed batch,
    /// (rows, hidden): `rows` are indices into its b * t tokens, row-major (a reward model
    /// scores each sequence at its last token).
    pub fn hidden_rows(&self, tokens: &Tensor, packing: &Packing, rows: &[u32]) -> Result<Tensor> {
        check_scored(tokens, rows, rows)?;
        let x = self.final_hidden(tokens, Some(packing))?;
        let idx = Tensor::from_slice(rows, rows.len(), &Device::Cpu)?;
        Ok(x.index_select(&idx, 0)?)
    }

    /// The attached adapter's shape, if any.
    pub fn lora_config(&self) -> Option<&LoraConfig> {
        self.lora.as_ref().map(|l| &l.config)
    }

    /// Seeds the LoRA dropout masks of the next forward passes (0: no dropout, as when
    /// evaluating). Masks depend only on the key, the block and the projection, so a
    /// step replays exactly.
    pub fn set_dropout_key(&self, key: u64) {
        if let Some(l) = &self.lora {
            l.dropout_key.store(key, Ordering::Relaxed);
        }
    }

    /// Turns the attached adapter on or off for the next forward passes (no effect without
    /// one): off, the model computes as its frozen base, the reference PPO's KL penalty and
    /// DPO measure against.
    pub fn set_adapter_enabled(&self, on: bool) {
        if let Some(l) = &self.lora {
            l.enabled.store(on, Ordering::Relaxed);
        }
    }

    /// Next-token logits (rows, vocab) of final hidden states (rows, hidden), as
    /// [`Self::hidden_rows`] gives them: the output projection alone.
    pub fn vocab_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        linear(hidden, self.head())
    }

    /// A weight as the model computes with it: the base weight, plus the adapter's
    /// s · B A when one adapts it (the merged weight).
    pub fn effective_weight(&self, name: &str) -> Result<Tensor> {
        let base = self
            .weights
            .get(name)
            .ok_or_else(|| Error::MissingTensor {
                name: name.to_string(),
            })?
            .to_dense()?;
        let Some(lora) = &self.lora else {
            return Ok(base);
        };
        let (an, bn) = crate::lora::matrix_names(name);
        match (self.params.get(&an), self.params.get(&bn)) {
            (Some(a), Some(b)) => {
                let delta = (b.as_tensor().matmul(a.as_tensor())? * lora.config.scale())?;
                Ok((base + delta)?.detach())
            }
            _ => Ok(base),
        }
    }

    /// Every base weight's name, in the layout's order.
    pub fn weight_names(&self) -> impl Iterator<Item = &str> {
        self.weights.keys().map(String::as_str)
    }

    /// The weights of a checkpoint the inference path reads (a GGUF file of any type the
    /// project computes with, or a Hugging Face directory), dequantized to f32. `config`
    /// comes from the same source; whether the head is tied follows the source (a
    /// checkpoint with its own `lm_head` trains it).
    pub fn from_source(w: &dyn WeightSource, mut config: Config, max_seq: usize) -> Result<Self> {
        config.tie_word_embeddings = !w.contains(&layout::global_name(Part::Head));
        let mut tensors = BTreeMap::new();
        for spec in layout::tensors(&config) {
            let t = w
                .get(&spec.name)?
                .dequantize(&Device::Cpu)?
                .to_dtype(DType::F32)?;
            // Sources give Q and K rows in GGUF's pair order; training rotates halves.
            let t = match (layout::rotary_heads(&config, spec.part), t.dims2()) {
                (Some(heads), Ok((rows, cols))) => {
                    let bytes: Vec<u8> = t
                        .flatten_all()?
                        .to_vec1::<f32>()?
                        .iter()
                        .flat_map(|x| x.to_le_bytes())
                        .collect();
                    let hf = permute_rope_rows(&bytes, heads, cols * 4, RopeLayout::GgufToHf)?;
                    let values: Vec<f32> = hf
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect();
                    Tensor::from_vec(values, (rows, cols), &Device::Cpu)?
                }
                _ => t,
            };
            tensors.insert(spec.name, t);
        }
        Self::from_tensors(config, tensors, max_seq)
    }

    /// The checkpoint at `path` (see [`crate::weights::with_checkpoint`]) as a trainable
    /// model whose RoPE tables cover `max_seq` positions.
    pub fn open(path: &std::path::Path, max_seq: usize) -> Result<Self> {
        crate::weights::with_checkpoint(path, |w, config| Self::from_source(w, config, max_seq))
    }

    /// Trainable tensors in their fixed order, by layout name.
    pub fn params(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.params.iter().map(|(n, v)| (n.as_str(), v))
    }

    /// Number of trainable scalars.
    pub fn num_parameters(&self) -> usize {
        self.params.values().map(|v| v.elem_count()).sum()
    }

    /// The longest sequence the RoPE tables cover.
    pub fn max_seq(&self) -> usize {
        self.cos_table.len() / self.config.head_dim.max(1)
    }

    /// Logits (b, t, vocab) for token ids (b, t), causal attention within each row.
    pub fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
        let (b, t) = tokens.dims2()?;
        let x = self.final_hidden(tokens, None)?;
        Ok(linear(&x, self.head())?.reshape((b, t, self.config.vocab_size))?)
    }

    /// Logits (b, t, vocab) for token ids (b, t) holding the samples `packing` places:
    /// positions restart and attention stays within each sample.
    pub fn forward_packed(&self, tokens: &Tensor, packing: &Packing) -> Result<Tensor> {
        let (b, t) = tokens.dims2()?;
        let x = self.final_hidden(tokens, Some(packing))?;
        Ok(linear(&x, self.head())?.reshape((b, t, self.config.vocab_size))?)
    }

    /// Mean next-token loss over some tokens of a packed batch: `scored` are indices into
    /// its b * t tokens (row-major), `targets` the id each must predict. Tokens outside
    /// `scored` (prompts, the last token of each sample, padding) add nothing, and the
    /// head is computed for the scored rows alone.
    pub fn loss_on(
        &self,
        tokens: &Tensor,
        packing: &Packing,
        scored: &[u32],
        targets: &[u32],
    ) -> Result<Tensor> {
        check_scored(tokens, scored, targets)?;
        let x = self.final_hidden(tokens, Some(packing))?;
        let rows = Tensor::from_slice(scored, scored.len(), &Device::Cpu)?;
        let x = x.index_select(&rows, 0)?;
        Ok(crate::ops::head_loss::head_loss(&x, self.head(), targets)?)
    }

    /// The summed next-token loss (negative log-likelihood) of each of several groups of
    /// tokens of one packed batch, from one forward pass: each group is (scored token
    /// indices into the b * t tokens, row-major; their targets), typically one sample's
    /// answer. Preference training (DPO, reward ranking) compares these per sample; an
    /// empty group is an error, as in [`TrainableLlama::loss_on`].
    pub fn summed_losses_on(
        &self,
        tokens: &Tensor,
        packing: &Packing,
        groups: &[(Vec<u32>, Vec<u32>)],
    ) -> Result<Vec<Tensor>> {
        for (scored, targets) in groups {
            check_scored(tokens, scored, targets)?;
        }
        let x = self.final_hidden(tokens, Some(packing))?;
        groups
            .iter()
            .map(|(scored, targets)| {
                let rows = Tensor::from_slice(scored, scored.len(), &Device::Cpu)?;
                let mean = crate::ops::head_loss::head_loss(
                    &x.index_select(&rows, 0)?,
                    self.head(),
                    targets,
                )?;
                Ok((mean * scored.len() as f64)?)
            })
            .collect()
    }

    /// Mean next-token loss of token ids (b, t) against `targets` (b * t ids), with the
    /// output projection and the cross-entropy fused (`head_loss`): the same value as
    /// `cross_entropy` of `forward`, without keeping the logits.
    pub fn loss(&self, tokens: &Tensor, targets: &[u32]) -> Result<Tensor> {
        let x = self.final_hidden(tokens, None)?;
        Ok(crate::ops::head_loss::head_loss(&x, self.head(), targets)?)
    }

    /// The output projection's weights (the embedding when tied).
    fn head(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    /// A block's projection `part` of rows `x`, with its LoRA update when adapted:
    /// x Wᵀ + s · (dropout(x) Aᵀ) Bᵀ.
    fn project(
        &self,
        x: &Tensor,
        w: &Weight,
        block: &TrainBlock,
        l: usize,
        part: Part,
    ) -> Result<Tensor> {
        let (Some(lora), Some((_, a, b))) = (&self.lora, block.lora.iter().find(|t| t.0 == part))
        else {
            return w.linear(x);
        };
        if !lora.enabled.load(Ordering::Relaxed) {
            return w.linear(x);
        }
        let key = lora.dropout_key.load(Ordering::Relaxed);
        let p = lora.config.dropout;
        let mask = (p > 0.0 && key != 0).then(|| {
            let n = x.elem_count();
            let mut rng = ChaCha20Rng::seed_from_u64(key ^ ((l as u64) << 8 | part as u64));
            let keep = (1.0 / (1.0 - p)) as f32;
            let mask: Vec<f32> = (0..n)
                .map(|_| if rng.random::<f64>() < p { 0.0 } else { keep })
                .collect();
            Arc::new(mask)
        });
        let op = LoraLinear {
            w: match w {
                Weight::Dense(t) => Frozen::Dense(t.clone()),
                Weight::Quant(q) => Frozen::Quant(q.clone()),
            },
            scale: lora.config.scale() as f32,
            mask,
        };
        Ok(op.apply(x, a, b)?)
    }

    /// The normed last hidden states (b * t, hidden) for token ids (b, t), packed or not.
    fn final_hidden(&self, tokens: &Tensor, packing: Option<&Packing>) -> Result<Tensor> {
        let (b, t) = tokens.dims2()?;
        if t > self.max_seq() {
            return Err(Error::ContextExceeded {
                tokens: t,
                limit: self.max_seq(),
            });
        }
        let packing = match packing {
            Some(p) if p.rows() != b || p.seq_len() != t => {
                return Err(Error::Packing(format!(
                    "laid out for {} x {}, the tokens are {b} x {t}",
                    p.rows(),
                    p.seq_len()
                )))
            }
            Some(p) if !p.is_unpacked() => Some(p),
            _ => None,
        };
        let positions = packing.map(|p| Arc::new(p.positions()));
        let ids = tokens.flatten_all()?;
        let vocab = self.config.vocab_size;
        if let Some(&id) = ids
            .to_vec1::<u32>()?
            .iter()
            .find(|&&id| id as usize >= vocab)
        {
            return Err(Error::TokenOutOfVocabulary { id, vocab });
        }
        let eps = self.config.rms_norm_eps;
        // (b * t, hidden)
        let mut x = self.embed_tokens.index_select(&ids, 0)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let n = rms_norm(&x, &layer.attn_norm, eps)?;
            x = (x + self.attention(layer, l, &n, b, t, packing, &positions)?)?;
            let n = rms_norm(&x, &layer.ffn_norm, eps)?;
            let gate = self.project(&n, &layer.gate, layer, l, Part::Gate)?;
            let up = self.project(&n, &layer.up, layer, l, Part::Up)?;
            let m = crate::ops::swiglu::swiglu(&gate, &up)?;
            let m = self.project(&m, &layer.down, layer, l, Part::Down)?;
            x = (x + m)?;
        }
        rms_norm(&x, &self.norm, eps)
    }

    /// Self-attention of one block on normed rows `x` (b * t, h), grouped-query heads;
    /// with `packing`, each sample on its own (`positions` are the packing's).
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer: &TrainBlock,
        l: usize,
        x: &Tensor,
        b: usize,
        t: usize,
        packing: Option<&Packing>,
        positions: &Option<Arc<Vec<u32>>>,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let (nh, nkv, hd) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        // (b, heads, t, hd)
        let rotated = |w: &Weight, part: Part, heads: usize| -> Result<Tensor> {
            let op = RopeHeads {
                batch: b,
                heads,
                d: hd,
                cos: self.cos_table.clone(),
                sin: self.sin_table.clone(),
                positions: positions.clone(),
            };
            Ok(op.apply(&self.project(x, w, layer, l, part)?)?)
        };
        let q = rotated(&layer.query, Part::Query, nh)?;
        let k = rotated(&layer.key, Part::Key, nkv)?;
        let v = self
            .project(x, &layer.value, layer, l, Part::Value)?
            .reshape((b, t, nkv, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let op = CausalAttention {
            scale: 1.0 / (hd as f32).sqrt(),
        };
        // (b, nh, t, hd)
        let y = match packing {
            None => q.apply_op3(&k, &v, op)?,
            // Each sample's queries, keys and values cut out and attended alone: no
            // operation reads across samples, so none carries a gradient across.
            Some(p) => {
                let mut rows = Vec::with_capacity(b);
                for r in 0..b {
                    let pick = |x: &Tensor| x.narrow(0, r, 1);
                    let (q, k, v) = (pick(&q)?, pick(&k)?, pick(&v)?);
                    let mut samples = Vec::new();
                    for (s, len) in p.segments(r) {
                        let cut = |x: &Tensor| x.narrow(2, s, len)?.contiguous();
                        samples.push(cut(&q)?.apply_op3(&cut(&k)?, &cut(&v)?, op)?);
                    }
                    rows.push(Tensor::cat(&samples, 2)?);
                }
                Tensor::cat(&rows, 0)?
            }
        };
        // (b, nh, t, hd) -> (b * t, nh * hd)
        let y = y.transpose(1, 2)?.reshape((b * t, nh * hd))?;
        self.project(&y, &layer.attn_output, layer, l, Part::AttnOutput)
    }
}

/// The trainable model's current weights as a source for the inference path (f32, Q and K
/// rows permuted into GGUF's pair order): `Llama::load(&trainable, ...)` runs what is being
/// trained, for checks and for rollouts of the policy being trained.
impl WeightSource for TrainableLlama {
    fn get(&self, hf_name: &str) -> Result<candle_core::quantized::QTensor> {
        let w = self.effective_weight(hf_name)?;
        let shape = w.dims().to_vec();
        let mut bytes: Vec<u8> = w
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let heads = layout::parse(hf_name).and_then(|(p, _)| layout::rotary_heads(&self.config, p));
        if let (Some(heads), [_, cols]) = (heads, shape.as_slice()) {
            bytes = permute_rope_rows(&bytes, heads, cols * 4, RopeLayout::HfToGguf)?;
        }
        crate::weights::qtensor_from_bytes(
            &bytes,
            candle_core::quantized::GgmlDType::F32,
            shape,
            hf_name,
        )
    }

    fn contains(&self, hf_name: &str) -> bool {
        self.weights.contains_key(hf_name)
    }

    fn file(&self) -> &str {
        "the trainable model"
    }
}

/// x (n, in) times w (out, in) transposed: (n, out).
fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    Ok(crate::ops::matmul::linear(x, w)?)
}

/// RMSNorm over the last dimension, then the learned gain.
fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(crate::ops::norm::rms_norm(x, w, eps)?)
}

/// [`crate::rope::angle_tables`] laid out for rotate-half RoPE: (max_seq, head_dim), each
/// position's half-width row twice.
fn rotate_half_tables(cfg: &Config, max_seq: usize) -> (Vec<f32>, Vec<f32>) {
    let half = cfg.head_dim / 2;
    let (cos, sin) = crate::rope::angle_tables(cfg, max_seq);
    let twice = |table: Vec<f32>| -> Vec<f32> {
        table
            .chunks_exact(half.max(1))
            .flat_map(|row| row.iter().chain(row).copied())
            .collect()
    };
    (twice(cos), twice(sin))
}

/// The order weights are drawn in at initialisation: the embedding, final norm and head,
/// then each block's norms before its projections. It is the order of earlier versions,
/// kept so that a seed gives the same model (and the same published demo run) as before.
fn init_order(spec: &TensorSpec) -> (usize, usize) {
    const ORDER: [Part; 12] = [
        Part::Embedding,
        Part::FinalNorm,
        Part::Head,
        Part::AttnNorm,
        Part::FfnNorm,
        Part::Query,
        Part::Key,
        Part::Value,
        Part::AttnOutput,
        Part::Gate,
        Part::Up,
        Part::Down,
    ];
    let rank = ORDER
        .iter()
        .position(|&p| p == spec.part)
        .unwrap_or(ORDER.len());
    (spec.layer.map_or(0, |l| l + 1), rank)
}

/// `n` samples of N(0, std) by the Box-Muller transform, in a fixed order.
fn normal_samples(rng: &mut ChaCha20Rng, n: usize, std: f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
        let u2: f64 = rng.random();
        let r = (-2.0 * u1.ln()).sqrt() * std;
        let a = std::f64::consts::TAU * u2;
        out.push((r * a.cos()) as f32);
        if out.len() < n {
            out.push((r * a.sin()) as f32);
        }
    }
    out
}

/// Mean cross-entropy of logits (n, vocab) against target ids (n).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    Ok(logits
        .contiguous()?
        .apply_op2(targets, CrossEntropy::default())?)
}
