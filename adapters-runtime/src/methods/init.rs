//! Deterministic initialisation of new adapter weights (a seeded generator, so that a run with
//! the same config and name starts from the same weights).

use candle_core::{Device, Result, Tensor};

/// SplitMix64: small, fast and good enough for weight initialisation.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// A seed derived from a name (FNV-1a), for adapters without `init_weights_seed`.
    pub fn from_name(name: &str, salt: u64) -> Self {
        let mut hash = 0xcbf2_9ce4_8422_2325u64 ^ salt;
        for b in name.bytes() {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        Rng::new(hash)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    pub fn normal(&mut self) -> f32 {
        let u1 = self.uniform().max(f32::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
    }
}

/// normal(0, std) of the given shape.
pub fn normal(rng: &mut Rng, shape: &[usize], std: f32) -> Result<Tensor> {
    let n = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| rng.normal() * std).collect();
    Tensor::from_vec(data, shape, &Device::Cpu)
}

/// U(-bound, bound) of the given shape.
pub fn uniform(rng: &mut Rng, shape: &[usize], bound: f32) -> Result<Tensor> {
    let n = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| (rng.uniform() * 2.0 - 1.0) * bound).collect();
    Tensor::from_vec(data, shape, &Device::Cpu)
}

/// PyTorch's `kaiming_uniform_(a = sqrt(5))` on a (out, in) weight: U(-1/sqrt(in), 1/sqrt(in)).
pub fn kaiming_uniform(rng: &mut Rng, shape: &[usize]) -> Result<Tensor> {
    let fan_in = shape.last().copied().unwrap_or(1).max(1);
    let bound = 1.0 / (fan_in as f32).sqrt();
    let n = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| (rng.uniform() * 2.0 - 1.0) * bound).collect();
    Tensor::from_vec(data, shape, &Device::Cpu)
}

/// Truncated normal in [-2 std, 2 std] (Houlsby init).
pub fn truncated_normal(rng: &mut Rng, shape: &[usize], std: f32) -> Result<Tensor> {
    let n = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|_| loop {
            let v = rng.normal();
            if v.abs() <= 2.0 {
                break v * std;
            }
        })
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu)
}
