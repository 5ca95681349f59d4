//! What sentence vectors are used for: nearest neighbours by cosine, and k-means
//! clustering (spherical: unit vectors, centroids renormalized, assignment by cosine), as
//! the sources cluster a list of questions by their embeddings.

use crate::cosine;

/// The `k` texts nearest to text `i` by cosine (itself left out), nearest first; ties
/// to the lower index.
pub fn nearest(vectors: &[Vec<f32>], i: usize, k: usize) -> Vec<(usize, f32)> {
    let Some(v) = vectors.get(i) else {
        return Vec::new();
    };
    let mut all: Vec<(usize, f32)> = vectors
        .iter()
        .enumerate()
        .filter(|&(j, _)| j != i)
        .map(|(j, w)| (j, cosine(v, w)))
        .collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    all.truncate(k);
    all
}

/// A clustering: each vector's cluster, and the clusters' unit centroids.
#[derive(Debug, Clone, PartialEq)]
pub struct Clusters {
    pub assignment: Vec<usize>,
    pub centroids: Vec<Vec<f32>>,
    /// Lloyd iterations the kept start ran (at most 100; fewer when it settled).
    pub iterations: usize,
}

/// Spherical k-means of `vectors` into `k` clusters (at most `vectors.len()`): ten
/// k-means++ starts drawn from `seed` (as scikit-learn's `n_init`), the one whose points lie
/// closest to their centroids (the largest summed cosine) kept. Deterministic for a seed.
pub fn kmeans(vectors: &[Vec<f32>], k: usize, seed: u64) -> Clusters {
    let mut best: Option<(f64, Clusters)> = None;
    for start in 0..10u64 {
        let c = kmeans_once(
            vectors,
            k,
            seed.wrapping_add(start.wrapping_mul(0x9e37_79b9)),
        );
        let fit: f64 = vectors
            .iter()
            .zip(&c.assignment)
            .map(|(v, &a)| c.centroids.get(a).map_or(0.0, |m| cosine(v, m) as f64))
            .sum();
        if best.as_ref().is_none_or(|(f, _)| fit > *f) {
            best = Some((fit, c));
        }
    }
    best.map(|(_, c)| c).unwrap_or(Clusters {
        assignment: vec![0; vectors.len()],
        centroids: Vec::new(),
        iterations: 0,
    })
}

/// One k-means++ start and its Lloyd iterations.
fn kmeans_once(vectors: &[Vec<f32>], k: usize, seed: u64) -> Clusters {
    let n = vectors.len();
    let k = k.min(n);
    if k == 0 {
        return Clusters {
            assignment: vec![0; n],
            centroids: Vec::new(),
            iterations: 0,
        };
    }
    let unit = |v: &[f32]| -> Vec<f32> {
        let mut u = v.to_vec();
        crate::normalize(&mut u);
        u
    };
    let points: Vec<Vec<f32>> = vectors.iter().map(|v| unit(v)).collect();
    // k-means++: each next centre drawn with probability proportional to its squared
    // distance (on the sphere, 2 - 2 cos) to the nearest centre so far.
    let mut rng = SplitMix(seed);
    let mut centroids = vec![points[(rng.next_u64() % n as u64) as usize].clone()];
    while centroids.len() < k {
        let d: Vec<f64> = points
            .iter()
            .map(|p| {
                centroids
                    .iter()
                    .map(|c| (2.0 - 2.0 * cosine(p, c) as f64).max(0.0))
                    .fold(f64::INFINITY, f64::min)
            })
            .collect();
        let total: f64 = d.iter().sum();
        let pick = if total > 0.0 {
            let mut r = rng.unit() * total;
            d.iter()
                .position(|&x| {
                    r -= x;
                    r < 0.0
                })
                .unwrap_or(n - 1)
        } else {
            centroids.len()
        };
        centroids.push(points[pick.min(n - 1)].clone());
    }
    let assign = |centroids: &[Vec<f32>]| -> Vec<usize> {
        points
            .iter()
            .map(|p| {
                let mut best = (0, f32::NEG_INFINITY);
                for (c, centre) in centroids.iter().enumerate() {
                    let s = cosine(p, centre);
                    if s > best.1 {
                        best = (c, s);
                    }
                }
                best.0
            })
            .collect()
    };
    let mut assignment = assign(&centroids);
    let mut iterations = 0;
    while iterations < 100 {
        iterations += 1;
        let dim = points[0].len();
        let mut sums = vec![vec![0f64; dim]; k];
        for (p, &c) in points.iter().zip(&assignment) {
            sums[c].iter_mut().zip(p).for_each(|(s, &x)| *s += x as f64);
        }
        for (c, sum) in sums.iter().enumerate() {
            // An emptied cluster keeps its centre.
            if sum.iter().any(|&x| x != 0.0) {
                centroids[c] = unit(&sum.iter().map(|&x| x as f32).collect::<Vec<_>>());
            }
        }
        let next = assign(&centroids);
        if next == assignment {
            break;
        }
        assignment = next;
    }
    Clusters {
        assignment,
        centroids,
        iterations,
    }
}

/// splitmix64: a small seeded generator (the clustering's only randomness; the RAG
/// index's sampling uses it too).
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three tight groups around the axes of a 3-d space.
    fn blobs() -> Vec<Vec<f32>> {
        let mut v = Vec::new();
        for axis in 0..3 {
            for j in 0..5 {
                let mut p = vec![0.05 * j as f32; 3];
                p[axis] = 1.0;
                v.push(p);
            }
        }
        v
    }

    #[test]
    fn kmeans_finds_separated_groups_for_any_seed() {
        let v = blobs();
        for seed in 0..20 {
            let c = kmeans(&v, 3, seed);
            for g in 0..3 {
                let first = c.assignment[g * 5];
                assert!(
                    c.assignment[g * 5..g * 5 + 5].iter().all(|&a| a == first),
                    "seed {seed}: {c:?}"
                );
            }
            let mut ids: Vec<usize> = (0..3).map(|g| c.assignment[g * 5]).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), 3, "seed {seed}");
            assert_eq!(c, kmeans(&v, 3, seed));
        }
        assert_eq!(kmeans(&v, 99, 1).centroids.len(), 15);
        assert!(kmeans(&[], 3, 1).assignment.is_empty());
    }

    #[test]
    fn neighbours_are_the_most_similar_first() {
        let v = blobs();
        let n = nearest(&v, 0, 4);
        assert_eq!(n.len(), 4);
        assert!(n.iter().all(|&(j, _)| (1..5).contains(&j)), "{n:?}");
        assert!(n.windows(2).all(|w| w[0].1 >= w[1].1));
        assert!(nearest(&v, 99, 3).is_empty());
    }
}
