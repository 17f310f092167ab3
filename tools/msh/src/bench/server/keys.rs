//! What the load generator draws: keys (uniform or zipfian), request kinds and
//! Poisson inter-arrival times, from one seeded generator so runs are repeatable.

/// A small, fast, seeded generator (xorshift64*): the benchmark needs repeatable
/// draws, not cryptographic ones.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Exponentially distributed with the given mean (Poisson arrivals).
    pub fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
}

/// How keys are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyDistribution {
    /// Every key equally likely.
    Uniform,
    /// Zipf with exponent 0.99 (YCSB's): a few keys are hot.
    Zipf,
}

/// Zipf's exponent, as YCSB uses it.
const ZIPF_THETA: f64 = 0.99;

/// Draws keys in `0..keys`.
#[derive(Debug, Clone)]
pub enum KeySampler {
    Uniform {
        keys: u64,
    },
    /// The cumulative distribution over ranks; rank r is key r.
    Zipf {
        cdf: Vec<f64>,
    },
}

impl KeySampler {
    pub fn new(distribution: KeyDistribution, keys: u64) -> Self {
        assert!(keys > 0, "a dataset has at least one key");
        match distribution {
            KeyDistribution::Uniform => KeySampler::Uniform { keys },
            KeyDistribution::Zipf => {
                let mut total = 0.0;
                let mut cdf: Vec<f64> = (1..=keys)
                    .map(|rank| {
                        total += 1.0 / (rank as f64).powf(ZIPF_THETA);
                        total
                    })
                    .collect();
                for c in &mut cdf {
                    *c /= total;
                }
                KeySampler::Zipf { cdf }
            }
        }
    }

    pub fn sample(&self, rng: &mut Rng) -> u64 {
        match self {
            KeySampler::Uniform { keys } => rng.next_u64() % keys,
            KeySampler::Zipf { cdf } => {
                let u = rng.unit();
                (cdf.partition_point(|&c| c < u) as u64).min(cdf.len() as u64 - 1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_is_skewed_and_uniform_is_not() {
        let keys = 10_000;
        let mut rng = Rng::new(1);
        let draws = 200_000;
        let count_first = |sampler: &KeySampler, rng: &mut Rng| {
            (0..draws)
                .filter(|_| sampler.sample(rng) < keys / 100)
                .count() as f64
                / draws as f64
        };
        // The first 1% of ranks: ~1% of uniform draws, over a third of zipf(0.99)'s.
        let uniform = count_first(&KeySampler::new(KeyDistribution::Uniform, keys), &mut rng);
        let zipf = count_first(&KeySampler::new(KeyDistribution::Zipf, keys), &mut rng);
        assert!((0.005..0.02).contains(&uniform), "uniform {uniform}");
        assert!(zipf > 0.35, "zipf {zipf}");
        let sampler = KeySampler::new(KeyDistribution::Zipf, keys);
        assert!((0..draws).all(|_| sampler.sample(&mut rng) < keys));
    }

    #[test]
    fn exponential_has_its_mean() {
        let mut rng = Rng::new(7);
        let n = 100_000;
        let mean = (0..n).map(|_| rng.exponential(5.0)).sum::<f64>() / n as f64;
        assert!((4.8..5.2).contains(&mean), "{mean}");
    }
}
