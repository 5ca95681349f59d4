//! Times forward and backward of the 15m preset's output projection with cross-entropy.
use candle_core::{Device, Tensor, Var};
use std::time::Instant;

fn main() -> candle_core::Result<()> {
    let d = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2048, 288), &d)?)?;
    let w = Var::from_tensor(&Tensor::randn(0f32, 0.02, (32000, 288), &d)?)?;
    let y = Tensor::from_vec(
        (0..2048u32).map(|i| (i * 7919) % 32000).collect::<Vec<_>>(),
        2048,
        &d,
    )?;
    for _ in 0..4 {
        let t0 = Instant::now();
        let targets = y.to_vec1::<u32>()?;
        let loss = ferrollama_model::ops::head_loss::head_loss(&x, &w, &targets)?;
        let t1 = Instant::now();
        let g = loss.backward()?;
        let t2 = Instant::now();
        std::hint::black_box(g.get(&w));
        println!("fwd {:?} bwd {:?}", t1 - t0, t2 - t1);
    }
    Ok(())
}
