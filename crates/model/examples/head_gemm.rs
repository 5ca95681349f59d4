//! Times the three matrix products of the 15m preset's output projection (2048 x 288 rows
//! against a 32000 x 288 vocabulary) on candle's CPU matmul.
use candle_core::{Device, Tensor};
use std::time::Instant;

fn time(name: &str, f: impl Fn() -> Tensor) {
    f();
    let n = 5;
    let s = Instant::now();
    for _ in 0..n {
        std::hint::black_box(f());
    }
    let dt = s.elapsed().as_secs_f64() / n as f64;
    let fl = 2.0 * 2048.0 * 288.0 * 32000.0 / 1e9;
    println!("{name}: {:.1} ms {:.1} GFLOP/s", dt * 1e3, fl / dt);
}

fn main() -> candle_core::Result<()> {
    let d = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (2048, 288), &d)?;
    let w = Tensor::randn(0f32, 1.0, (32000, 288), &d)?;
    let g = Tensor::randn(0f32, 1.0, (2048, 32000), &d)?;
    time("fwd x@w.T", || x.matmul(&w.t().unwrap()).unwrap());
    time("dX g@w", || g.matmul(&w).unwrap());
    time("dW g.T@x", || g.t().unwrap().matmul(&x).unwrap());
    split();
    Ok(())
}

/// dst (m, n) = a (m, k) . b (k, n), with arbitrary strides, on this thread.
#[allow(clippy::too_many_arguments)]
unsafe fn mm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    drs: isize,
    a: *const f32,
    acs: isize,
    ars: isize,
    b: *const f32,
    bcs: isize,
    brs: isize,
) {
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            drs,
            false,
            a,
            acs,
            ars,
            b,
            bcs,
            brs,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

pub fn split() {
    let (n, h, v) = (2048usize, 288usize, 32000usize);
    let x: Vec<f32> = (0..n * h).map(|i| (i % 7) as f32 * 0.1).collect();
    let w: Vec<f32> = (0..v * h).map(|i| (i % 5) as f32 * 0.1).collect();
    let g: Vec<f32> = (0..n * v).map(|i| (i % 3) as f32 * 0.1).collect();
    let fl = 2.0 * 2048.0 * 288.0 * 32000.0 / 1e9;
    struct P(*mut f32);
    unsafe impl Send for P {}
    unsafe impl Sync for P {}
    // fwd: y (n, v) = x . w^T, split over v (columns)
    let mut y = vec![0f32; n * v];
    for _ in 0..3 {
        let s = Instant::now();
        let yp = P(y.as_mut_ptr());
        let half = v / 2;
        rayon::join(
            || unsafe {
                let yp = &yp;
                mm(
                    n,
                    half,
                    h,
                    yp.0,
                    v as isize,
                    x.as_ptr(),
                    1,
                    h as isize,
                    w.as_ptr(),
                    h as isize,
                    1,
                )
            },
            || unsafe {
                let yp = &yp;
                mm(
                    n,
                    v - half,
                    h,
                    yp.0.add(half),
                    v as isize,
                    x.as_ptr(),
                    1,
                    h as isize,
                    w.as_ptr().add(half * h),
                    h as isize,
                    1,
                )
            },
        );
        let dt = s.elapsed().as_secs_f64();
        println!("split fwd: {:.1} ms {:.1} GFLOP/s", dt * 1e3, fl / dt);
    }
    // dX (n, h) = g (n, v) . w (v, h), split over n
    let mut dx = vec![0f32; n * h];
    for _ in 0..3 {
        let s = Instant::now();
        let p = P(dx.as_mut_ptr());
        let half = n / 2;
        rayon::join(
            || unsafe {
                let p = &p;
                mm(
                    half,
                    h,
                    v,
                    p.0,
                    h as isize,
                    g.as_ptr(),
                    1,
                    v as isize,
                    w.as_ptr(),
                    1,
                    h as isize,
                )
            },
            || unsafe {
                let p = &p;
                mm(
                    n - half,
                    h,
                    v,
                    p.0.add(half * h),
                    h as isize,
                    g.as_ptr().add(half * v),
                    1,
                    v as isize,
                    w.as_ptr(),
                    1,
                    h as isize,
                )
            },
        );
        let dt = s.elapsed().as_secs_f64();
        println!("split dX: {:.1} ms {:.1} GFLOP/s", dt * 1e3, fl / dt);
    }
    // dW (v, h) = g^T (v, n) . x (n, h), split over v
    let mut dw = vec![0f32; v * h];
    for _ in 0..3 {
        let s = Instant::now();
        let p = P(dw.as_mut_ptr());
        let half = v / 2;
        rayon::join(
            || unsafe {
                let p = &p;
                mm(
                    half,
                    h,
                    n,
                    p.0,
                    h as isize,
                    g.as_ptr(),
                    v as isize,
                    1,
                    x.as_ptr(),
                    1,
                    h as isize,
                )
            },
            || unsafe {
                let p = &p;
                mm(
                    v - half,
                    h,
                    n,
                    p.0.add(half * h),
                    h as isize,
                    g.as_ptr().add(half),
                    v as isize,
                    1,
                    x.as_ptr(),
                    1,
                    h as isize,
                )
            },
        );
        let dt = s.elapsed().as_secs_f64();
        println!("split dW: {:.1} ms {:.1} GFLOP/s", dt * 1e3, fl / dt);
    }
}
