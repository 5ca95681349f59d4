//! Packed training batches: a row holding several samples computes what the samples
//! compute one by one, and no sample's loss reaches another sample's tokens.

use candle_core::{Device, Tensor};
use ferrollama_model::{Config, Packing, TrainableLlama};

/// A small untied model: with the head apart from the embedding, the embedding's gradient
/// comes from token lookups alone, so it shows which tokens a loss depends on. Heads of
/// `head_dim` 8 take the attention's row loops, 32 its matrix-product path.
fn model(head_dim: usize) -> TrainableLlama {
    let mut c = Config::preset("260k").unwrap();
    c.vocab_size = 64;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.head_dim = head_dim;
    c.hidden_size = 4 * head_dim;
    c.intermediate_size = 48;
    c.num_hidden_layers = 2;
    c.tie_word_embeddings = false;
    TrainableLlama::init(c, 11, 32).unwrap()
}

fn ids(v: &[u32], b: usize, t: usize) -> Tensor {
    Tensor::from_slice(v, (b, t), &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn a_packed_row_computes_its_samples_one_by_one() {
    for head_dim in [8, 32] {
        let m = model(head_dim);
        let a = [5u32, 9, 13, 17, 21];
        let b = [40u32, 41, 42, 43];
        let pad = [0u32; 3];
        let row: Vec<u32> = [&a[..], &b[..], &pad[..]].concat();
        let packing = Packing::new(vec![vec![0, 5, 9]], 12).unwrap();
        let packed = values(&m.forward_packed(&ids(&row, 1, 12), &packing).unwrap());
        let alone_a = values(&m.forward(&ids(&a, 1, 5)).unwrap());
        let alone_b = values(&m.forward(&ids(&b, 1, 4)).unwrap());
        let vocab = 64;
        let worst = packed[..5 * vocab]
            .iter()
            .zip(&alone_a)
            .chain(packed[5 * vocab..9 * vocab].iter().zip(&alone_b))
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst < 1e-5,
            "head_dim {head_dim}: packed differs by {worst}"
        );
    }
}

/// The gradient of sample A's loss with respect to the embeddings of sample B's tokens
/// (ids A never uses) is exactly zero when they are packed, and not when the same row is
/// attended as one sequence (so the check can fail).
#[test]
fn packed_samples_cannot_see_each_other() {
    for head_dim in [8, 32] {
        let m = model(head_dim);
        // B first, A after it: unpacked, A's tokens would attend to B's.
        let b = [40u32, 41, 42, 43, 44, 45];
        let a = [5u32, 9, 13, 17, 21, 25];
        let row: Vec<u32> = [&b[..], &a[..]].concat();
        // A's loss: its tokens 6..11 predicting the next token of A.
        let scored: Vec<u32> = (6..11).collect();
        let targets = &a[1..];
        let embedding = |packing: &Packing| -> Vec<f32> {
            let loss = m
                .loss_on(&ids(&row, 1, 12), packing, &scored, targets)
                .unwrap();
            let grads = loss.backward().unwrap();
            let (_, var) = m
                .params()
                .find(|(n, _)| *n == "model.embed_tokens.weight")
                .unwrap();
            values(grads.get(var.as_tensor()).unwrap())
        };
        let hidden = 4 * head_dim;
        let rows_of = |g: &[f32], ids: &[u32]| -> Vec<f32> {
            ids.iter()
                .flat_map(|&i| g[i as usize * hidden..(i as usize + 1) * hidden].to_vec())
                .collect()
        };
        let packed = embedding(&Packing::new(vec![vec![0, 6]], 12).unwrap());
        assert!(
            rows_of(&packed, &b).iter().all(|&x| x == 0.0),
            "head_dim {head_dim}: A's loss reached B's embeddings"
        );
        assert!(rows_of(&packed, &a).iter().any(|&x| x != 0.0));
        let joined = embedding(&Packing::unpacked(1, 12));
        assert!(
            rows_of(&joined, &b).iter().any(|&x| x != 0.0),
            "head_dim {head_dim}: unpacked, A should depend on B"
        );
    }
}

#[test]
fn loss_on_every_token_is_the_plain_loss() {
    let m = model(8);
    let row: Vec<u32> = (0..2 * 8).map(|i| (i * 7 + 3) % 64).collect();
    let targets: Vec<u32> = row.iter().map(|&x| (x + 1) % 64).collect();
    let scored: Vec<u32> = (0..16).collect();
    let x = ids(&row, 2, 8);
    let plain = m.loss(&x, &targets).unwrap().to_scalar::<f32>().unwrap();
    let on = m
        .loss_on(&x, &Packing::unpacked(2, 8), &scored, &targets)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!((plain - on).abs() < 1e-6, "{plain} vs {on}");
}

#[test]
fn bad_selections_and_packings_are_errors() {
    let m = model(8);
    let x = ids(&[1, 2, 3, 4], 1, 4);
    let p = Packing::unpacked(1, 4);
    assert!(m.loss_on(&x, &p, &[], &[]).is_err());
    assert!(m.loss_on(&x, &p, &[4], &[1]).is_err());
    assert!(m.loss_on(&x, &p, &[0, 1], &[1]).is_err());
    assert!(m.loss_on(&x, &Packing::unpacked(2, 4), &[0], &[1]).is_err());
    assert!(m.loss_on(&x, &p, &[0], &[64]).is_err());
}
