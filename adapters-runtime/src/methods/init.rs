//! Deterministic initialisation of new adapter weights (a seeded generator, so that a run with
//! the same config and name starts from the same weights), placed where the base model lives.

use candle_core::{DType, Device, Result, Shape, Tensor};

/// SplitMix64: small, fast and good enough for weight initialisation.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ GOLDEN_GAMMA)
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
        self.0 = self.0.wrapping_add(GOLDEN_GAMMA);
        mix(self.0)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        to_uniform(self.next_u64())
    }

    /// The next `n` draws as a stream any thread can index: `stream.uniform(i)` is what the
    /// `i`-th of `n` calls to [`Rng::uniform`] would have returned (SplitMix64 is a counter
    /// hashed), and the generator moves on past them. Large dropout masks fill in parallel with
    /// the numbers a serial loop would draw.
    pub fn take_stream(&mut self, n: usize) -> UniformStream {
        let start = self.0;
        self.0 = self.0.wrapping_add(GOLDEN_GAMMA.wrapping_mul(n as u64));
        UniformStream { start }
    }

    /// `n` draws of normal(0, std).
    pub fn normal_vec(&mut self, n: usize, std: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * std).collect()
    }

    pub fn normal(&mut self) -> f32 {
        let u1 = self.uniform().max(f32::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
    }
}

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

#[inline(always)]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[inline(always)]
fn to_uniform(bits: u64) -> f32 {
    (bits >> 40) as f32 / (1u64 << 24) as f32
}

/// A block of draws taken from an [`Rng`] by [`Rng::take_stream`].
#[derive(Clone, Copy, Debug)]
pub struct UniformStream {
    start: u64,
}

impl UniformStream {
    /// The `i`-th draw of the block, uniform in [0, 1).
    #[inline(always)]
    pub fn uniform(&self, i: usize) -> f32 {
        to_uniform(mix(self.start.wrapping_add(GOLDEN_GAMMA.wrapping_mul(i as u64 + 1))))
    }
}

/// Where a model's weights live and in what precision: adapters, heads and fusion layers are
/// created and loaded on the base model's device and dtype.
#[derive(Clone, Debug)]
pub struct Placement {
    pub device: Device,
    pub dtype: DType,
}

/// The CPU in f32: where the Python reference's numbers are matched to 1e-5.
impl Default for Placement {
    fn default() -> Self {
        Placement { device: Device::Cpu, dtype: DType::F32 }
    }
}

impl Placement {
    pub fn new(device: Device, dtype: DType) -> Self {
        Placement { device, dtype }
    }

    /// `t` on this device, in this dtype.
    pub fn place(&self, t: &Tensor) -> Result<Tensor> {
        t.to_device(&self.device)?.to_dtype(self.dtype)
    }
}

/// New weights: numbers drawn in f32 from a seeded generator (so a config and a name give the
/// same start on every device and in every dtype), then placed.
pub struct Init {
    rng: Rng,
    placement: Placement,
}

impl Init {
    pub fn new(rng: Rng, placement: Placement) -> Self {
        Init { rng, placement }
    }

    /// The generator, for initialisations that draw their own numbers.
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// `data` (f32, row-major) as a placed tensor of `shape`.
    pub fn tensor<S: Into<Shape>>(&self, data: Vec<f32>, shape: S) -> Result<Tensor> {
        Tensor::from_vec(data, shape, &self.placement.device)?.to_dtype(self.placement.dtype)
    }

    pub fn zeros<S: Into<Shape>>(&self, shape: S) -> Result<Tensor> {
        Tensor::zeros(shape, self.placement.dtype, &self.placement.device)
    }

    pub fn ones<S: Into<Shape>>(&self, shape: S) -> Result<Tensor> {
        Tensor::ones(shape, self.placement.dtype, &self.placement.device)
    }

    /// `scale` times the n x n identity.
    pub fn eye(&self, n: usize, scale: f64) -> Result<Tensor> {
        Tensor::eye(n, self.placement.dtype, &self.placement.device)? * scale
    }

    /// normal(0, std) of the given shape.
    pub fn normal(&mut self, shape: &[usize], std: f32) -> Result<Tensor> {
        let data = self.rng.normal_vec(shape.iter().product(), std);
        self.tensor(data, shape)
    }

    /// U(-bound, bound) of the given shape.
    pub fn uniform(&mut self, shape: &[usize], bound: f32) -> Result<Tensor> {
        let n = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| (self.rng.uniform() * 2.0 - 1.0) * bound).collect();
        self.tensor(data, shape)
    }

    /// PyTorch's `kaiming_uniform_(a = sqrt(5))` on a (out, in) weight: U(-1/sqrt(in), 1/sqrt(in)).
    pub fn kaiming_uniform(&mut self, shape: &[usize]) -> Result<Tensor> {
        let fan_in = shape.last().copied().unwrap_or(1).max(1);
        self.uniform(shape, 1.0 / (fan_in as f32).sqrt())
    }

    /// Truncated normal in [-2 std, 2 std] (Houlsby init).
    pub fn truncated_normal(&mut self, shape: &[usize], std: f32) -> Result<Tensor> {
        let n = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| loop {
                let v = self.rng.normal();
                if v.abs() <= 2.0 {
                    break v * std;
                }
            })
            .collect();
        self.tensor(data, shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream's draws are the serial draws, and the generator continues after them.
    #[test]
    fn a_stream_holds_the_draws_a_loop_would_take() {
        let (mut serial, mut streamed) = (Rng::new(5), Rng::new(5));
        let drawn: Vec<f32> = (0..1000).map(|_| serial.uniform()).collect();
        let stream = streamed.take_stream(1000);
        assert!((0..1000).all(|i| stream.uniform(i) == drawn[i]));
        assert_eq!(serial.next_u64(), streamed.next_u64());
    }
}
