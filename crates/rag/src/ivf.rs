//! An inverted-file index for approximate nearest neighbours (IVF, as FAISS's `IndexIVFFlat`):
//! unit vectors grouped into lists around centroids by spherical k-means; a query compares
//! itself with the centroids, then exactly with the vectors of its `nprobe` nearest lists
//! only. Recall falls as `nprobe` shrinks; `nprobe` = all lists is the exact scan.

use rayon::prelude::*;

/// Vectors a training run samples, per list.
const SAMPLE_PER_LIST: usize = 64;
/// Lloyd iterations of a training run.
const ITERATIONS: usize = 10;

use ferrollama_embed::cluster::SplitMix;

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn unit(v: &mut [f32]) {
    let n = dot(v, v).sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// The list of each row of `vectors` (rows of `dim`), on all threads.
pub fn assign(centroids: &[f32], dim: usize, vectors: &[f32]) -> Vec<u32> {
    vectors
        .par_chunks_exact(dim.max(1))
        .map(|x| nearest_lists(centroids, dim, x, 1)[0])
        .collect()
}

/// The number of lists for `n` vectors: about the square root, at least 1.
pub fn default_lists(n: usize) -> usize {
    ((n as f64).sqrt().round() as usize).max(1)
}

/// Centroids (`lists` x `dim`, unit length) trained on a seeded sample of `vectors` (rows
/// of `dim`, unit length): `lists` distinct sample points to start, then Lloyd iterations
/// by cosine; a list left empty restarts at a sample point.
pub fn train(vectors: &[f32], dim: usize, lists: usize, seed: u64) -> Vec<f32> {
    let n = vectors.len() / dim.max(1);
    let lists = lists.clamp(1, n.max(1));
    if n == 0 {
        return Vec::new();
    }
    let mut rng = SplitMix(seed);
    // A sample without repeats (a partial Fisher-Yates shuffle of the row indices).
    let mut rows: Vec<usize> = (0..n).collect();
    let take = (lists * SAMPLE_PER_LIST).min(n);
    for i in 0..take {
        let j = i + (rng.next_u64() % (n - i) as u64) as usize;
        rows.swap(i, j);
    }
    let sample = &rows[..take];
    let row = |i: usize| &vectors[i * dim..(i + 1) * dim];
    let mut centroids: Vec<f32> = sample[..lists]
        .iter()
        .flat_map(|&i| row(i).to_vec())
        .collect();
    let mut assignment = vec![0usize; take];
    for _ in 0..ITERATIONS {
        assignment
            .par_iter_mut()
            .zip(sample.par_iter())
            .for_each(|(a, &i)| *a = nearest_lists(&centroids, dim, row(i), 1)[0] as usize);
        let mut sums = vec![0f32; lists * dim];
        let mut counts = vec![0usize; lists];
        for (&a, &i) in assignment.iter().zip(sample) {
            counts[a] += 1;
            sums[a * dim..(a + 1) * dim]
                .iter_mut()
                .zip(row(i))
                .for_each(|(s, x)| *s += x);
        }
        for l in 0..lists {
            let c = &mut sums[l * dim..(l + 1) * dim];
            if counts[l] == 0 {
                c.copy_from_slice(row(sample[(rng.next_u64() % take as u64) as usize]));
            }
            unit(c);
        }
        centroids = sums;
    }
    centroids
}

/// The `nprobe` lists whose centroids are nearest `q` (by dot product), nearest first.
pub fn nearest_lists(centroids: &[f32], dim: usize, q: &[f32], nprobe: usize) -> Vec<u32> {
    let mut scored: Vec<(u32, f32)> = centroids
        .chunks_exact(dim.max(1))
        .enumerate()
        .map(|(l, c)| (l as u32, dot(c, q)))
        .collect();
    let by = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let nprobe = nprobe.clamp(1, scored.len().max(1));
    if scored.len() > nprobe {
        scored.select_nth_unstable_by(nprobe - 1, by);
        scored.truncate(nprobe);
    }
    scored.sort_by(by);
    scored.into_iter().map(|(l, _)| l).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `clusters` groups of unit vectors around random centres in `dim` dimensions.
    fn clustered(n: usize, dim: usize, clusters: usize, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix(seed);
        let mut uniform = move || rng.unit() as f32 * 2.0 - 1.0;
        let centres: Vec<Vec<f32>> = (0..clusters)
            .map(|_| (0..dim).map(|_| uniform()).collect())
            .collect();
        let mut out = Vec::with_capacity(n * dim);
        for i in 0..n {
            let mut v: Vec<f32> = centres[i % clusters]
                .iter()
                .map(|c| c + 0.35 * uniform())
                .collect();
            unit(&mut v);
            out.extend(v);
        }
        out
    }

    fn exact_top(vectors: &[f32], dim: usize, q: &[f32], k: usize) -> Vec<usize> {
        let mut s: Vec<(usize, f32)> = vectors
            .chunks_exact(dim)
            .enumerate()
            .map(|(i, v)| (i, dot(v, q)))
            .collect();
        s.sort_by(|a, b| b.1.total_cmp(&a.1));
        s.into_iter().take(k).map(|x| x.0).collect()
    }

    #[test]
    fn probing_a_few_lists_finds_most_true_neighbours_and_all_lists_find_all() {
        let (n, dim) = (4000, 32);
        let data = clustered(n, dim, 40, 7);
        let lists = default_lists(n);
        assert_eq!(lists, 63);
        let centroids = train(&data, dim, lists, 1);
        assert_eq!(centroids.len(), lists * dim);
        let assignment: Vec<u32> = data
            .chunks_exact(dim)
            .map(|v| nearest_lists(&centroids, dim, v, 1)[0])
            .collect();
        let recall = |nprobe: usize| {
            let (mut hit, mut total) = (0, 0);
            for qi in (0..n).step_by(40) {
                let q = &data[qi * dim..(qi + 1) * dim];
                let probe = nearest_lists(&centroids, dim, q, nprobe);
                let mut cand: Vec<(usize, f32)> = (0..n)
                    .filter(|&i| probe.contains(&assignment[i]))
                    .map(|i| (i, dot(&data[i * dim..(i + 1) * dim], q)))
                    .collect();
                cand.sort_by(|a, b| b.1.total_cmp(&a.1));
                let got: Vec<usize> = cand.into_iter().take(10).map(|x| x.0).collect();
                let want = exact_top(&data, dim, q, 10);
                hit += want.iter().filter(|w| got.contains(w)).count();
                total += 10;
            }
            hit as f64 / total as f64
        };
        let few = recall(8);
        assert!(few > 0.9, "recall@10 probing 8 of 63 lists: {few}");
        assert_eq!(recall(lists), 1.0);
        // Seeded: the same centroids again.
        assert_eq!(train(&data, dim, lists, 1), centroids);
        assert!(train(&[], dim, 4, 1).is_empty());
    }
}
