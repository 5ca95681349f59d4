//! Python's `random.Random` as far as the harness uses it: the Mersenne Twister (MT19937)
//! seeded from an integer the way CPython seeds it (`init_by_array` over the integer's
//! 32-bit words), `getrandbits`, `_randbelow` and `sample`. lm-evaluation-harness picks
//! few-shot examples with `random.Random(seed).sample(docs, k)`, one generator per task
//! drawn from in document order; the same draws give the same prompts here.

const N: usize = 624;
const M: usize = 397;

/// CPython's `random.Random`.
pub struct PyRandom {
    state: [u32; N],
    index: usize,
}

impl PyRandom {
    /// `random.Random(seed)` for a non-negative integer seed.
    pub fn new(seed: u64) -> Self {
        let mut key: Vec<u32> = Vec::new();
        let mut s = seed;
        while s > 0 {
            key.push(s as u32);
            s >>= 32;
        }
        if key.is_empty() {
            key.push(0);
        }
        let mut r = Self {
            state: [0; N],
            index: N,
        };
        r.init_by_array(&key);
        r
    }

    fn init_genrand(&mut self, s: u32) {
        self.state[0] = s;
        for i in 1..N {
            let prev = self.state[i - 1];
            self.state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        self.index = N;
    }

    fn init_by_array(&mut self, key: &[u32]) {
        self.init_genrand(19_650_218);
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..N.max(key.len()) {
            let prev = self.state[i - 1];
            self.state[i] = (self.state[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                self.state[0] = self.state[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            let prev = self.state[i - 1];
            self.state[i] = (self.state[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_566_083_941))
                .wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                self.state[0] = self.state[N - 1];
                i = 1;
            }
        }
        self.state[0] = 0x8000_0000;
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            for k in 0..N {
                let y = (self.state[k] & 0x8000_0000) | (self.state[(k + 1) % N] & 0x7fff_ffff);
                let mag = if y & 1 == 1 { 0x9908_b0df } else { 0 };
                self.state[k] = self.state[(k + M) % N] ^ (y >> 1) ^ mag;
            }
            self.index = 0;
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `getrandbits(k)` for `k <= 64`: whole 32-bit words, least significant first, the
    /// last one shifted down to the bits still wanted.
    pub fn getrandbits(&mut self, k: u32) -> u64 {
        if k == 0 {
            return 0;
        }
        if k <= 32 {
            return (self.next_u32() >> (32 - k)) as u64;
        }
        let low = self.next_u32() as u64;
        let high = (self.next_u32() >> (64 - k)) as u64;
        low | (high << 32)
    }

    /// `_randbelow(n)`: uniform in `0..n` by rejection on `n.bit_length()` bits.
    pub fn randbelow(&mut self, n: u64) -> u64 {
        let k = 64 - n.leading_zeros();
        let mut r = self.getrandbits(k);
        while r >= n {
            r = self.getrandbits(k);
        }
        r
    }

    /// `sample(range(n), k)`: `k` distinct indices below `n` in CPython's order (a pool
    /// for small populations, a set of draws for large ones).
    pub fn sample(&mut self, n: usize, k: usize) -> Vec<usize> {
        let k = k.min(n);
        let mut setsize = 21usize;
        if k > 5 {
            // 4 ** ceil(log(3k, 4)), computed as CPython does, in floating point.
            let exp = ((k as f64 * 3.0).ln() / 4f64.ln()).ceil() as u32;
            setsize += 4usize.pow(exp);
        }
        let mut result = Vec::with_capacity(k);
        if n <= setsize {
            let mut pool: Vec<usize> = (0..n).collect();
            for i in 0..k {
                let j = self.randbelow((n - i) as u64) as usize;
                result.push(pool[j]);
                pool[j] = pool[n - i - 1];
            }
        } else {
            let mut selected = std::collections::HashSet::new();
            for _ in 0..k {
                let mut j = self.randbelow(n as u64) as usize;
                while selected.contains(&j) {
                    j = self.randbelow(n as u64) as usize;
                }
                selected.insert(j);
                result.push(j);
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PY_WORDS_1234: [u64; 3] = [4150886329, 3342196574, 1892932127];
    const PY_SAMPLE_1234: [usize; 5] = [99, 56, 14, 0, 11];
    const PY_SAMPLE_0: [usize; 10] = [6, 9, 0, 2, 4, 3, 5, 1, 8, 7];
    const PY_SAMPLE_7_LARGE: [usize; 30] = [
        331, 970, 154, 404, 666, 49, 74, 840, 548, 96, 374, 596, 59, 931, 519, 219, 38, 88, 444,
        428, 71, 246, 92, 564, 434, 60, 846, 579, 126, 228,
    ];
    const PY_SAMPLE_7_POOL: [usize; 10] = [20, 9, 25, 41, 3, 4, 34, 6, 23, 37];

    /// Values printed by CPython 3.11: `r = random.Random(1234); [r.getrandbits(32) for _ in
    /// range(3)]`, `random.Random(1234).sample(range(100), 5)`,
    /// `random.Random(0).sample(range(10), 10)`, `random.Random(2**40 + 7).randrange(1000)`,
    /// `random.Random(7).sample(range(1000), 30)` and `random.Random(7).sample(range(50), 10)`.
    #[test]
    fn matches_cpython() {
        let mut r = PyRandom::new(1234);
        let words: Vec<u64> = (0..3).map(|_| r.getrandbits(32)).collect();
        assert_eq!(words, PY_WORDS_1234);
        assert_eq!(PyRandom::new(1234).sample(100, 5), PY_SAMPLE_1234);
        assert_eq!(PyRandom::new(0).sample(10, 10), PY_SAMPLE_0);
        assert_eq!(PyRandom::new((1 << 40) + 7).randbelow(1000), 628);
        assert_eq!(PyRandom::new(7).sample(1000, 30), PY_SAMPLE_7_LARGE);
        assert_eq!(PyRandom::new(7).sample(50, 10), PY_SAMPLE_7_POOL);
    }
}
