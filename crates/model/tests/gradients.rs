//! candle's autograd through our model, checked against central finite differences: for
//! each weight tensor, the gradient's projection on a random direction equals the
//! loss's slope along it.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use ferrollama_model::trainable::{cross_entropy, TrainableLlama};
use ferrollama_model::Config;

fn tiny() -> Config {
    let mut c = Config::preset("260k").unwrap();
    c.vocab_size = 50;
    c.hidden_size = 16;
    c.intermediate_size = 24;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.head_dim = 4;
    c
}

fn loss(model: &TrainableLlama, x: &Tensor, y: &Tensor) -> Tensor {
    let logits = model.forward(x).unwrap();
    let (b, t, v) = logits.dims3().unwrap();
    cross_entropy(&logits.reshape((b * t, v)).unwrap(), y).unwrap()
}

#[test]
fn gradients_match_finite_differences() {
    let cfg = tiny();
    let model = TrainableLlama::init(cfg.clone(), 7, 16).unwrap();
    // Larger weights than the 0.02 init, so every path carries a measurable slope.
    let scaled: BTreeMap<String, Tensor> = model
        .params()
        .map(|(n, v)| {
            let t = v.as_tensor();
            let t = if t.rank() == 2 {
                (t * 10.0).unwrap()
            } else {
                t.clone()
            };
            (n.to_string(), t)
        })
        .collect();
    let model = TrainableLlama::from_tensors(cfg, scaled, 16).unwrap();
    let ids: Vec<u32> = (0..2 * 9).map(|i| (i * 7 + 3) % 50).collect();
    let x = Tensor::from_vec(ids[..16].to_vec(), (2, 8), &Device::Cpu).unwrap();
    let y = Tensor::from_vec(ids[2..18].to_vec(), 16, &Device::Cpu).unwrap();
    let grads = loss(&model, &x, &y).backward().unwrap();
    let mut worst = 0.0f64;
    for (k, (name, var)) in model.params().enumerate() {
        let g = grads.get(var.as_tensor()).unwrap();
        let original = var.as_tensor().copy().unwrap();
        // A fixed pseudo-random direction of unit length.
        let n = original.elem_count();
        let d: Vec<f32> = (0..n)
            .map(|i| (((i * 2654435761 + k * 97) % 1000) as f32 / 500.0) - 1.0)
            .collect();
        let norm = d.iter().map(|x| x * x).sum::<f32>().sqrt();
        let d = Tensor::from_vec(d, original.shape(), &Device::Cpu).unwrap() / norm as f64;
        let d = d.unwrap();
        let analytic = (g * &d)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        let eps = 1e-2;
        var.set(&(&original + (&d * eps).unwrap()).unwrap())
            .unwrap();
        let up = loss(&model, &x, &y).to_scalar::<f32>().unwrap() as f64;
        var.set(&(&original - (&d * eps).unwrap()).unwrap())
            .unwrap();
        let down = loss(&model, &x, &y).to_scalar::<f32>().unwrap() as f64;
        var.set(&original).unwrap();
        let numeric = (up - down) / (2.0 * eps);
        let err = (analytic - numeric).abs() / analytic.abs().max(numeric.abs()).max(1e-2);
        worst = worst.max(err);
        assert!(
            err < 2e-2,
            "{name}: autograd {analytic:.6}, finite difference {numeric:.6}"
        );
    }
    eprintln!("worst relative error {worst:.2e}");
}
