//! Rotary position embeddings as Llama-family models apply them (`rotate_half`: the two halves
//! of each head's dimensions rotate together), with the `llama3` frequency scaling, and
//! grouped-query attention's key/value repetition. Written with differentiable ops: candle's
//! fused `rope` has no backward, and LoRA on the queries trains through this.

use candle_core::{DType, Device, Result, Tensor, D};

/// `rope_scaling` of a Llama-family `config.json`.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct RopeScaling {
    /// `llama3` (`rope_type`, or `type` in older files); `default` means none.
    #[serde(alias = "type")]
    pub rope_type: String,
    #[serde(default = "one")]
    pub factor: f64,
    #[serde(default = "one")]
    pub low_freq_factor: f64,
    #[serde(default = "four")]
    pub high_freq_factor: f64,
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
}

fn one() -> f64 {
    1.0
}
fn four() -> f64 {
    4.0
}

/// The inverse frequencies of one head's dimension pairs.
#[derive(Clone, Debug)]
pub struct RotaryEmbedding {
    inv_freq: Tensor,
}

impl RotaryEmbedding {
    /// `1 / theta^(2i / head_dim)` in f32 (as `transformers` computes it), scaled as
    /// `scaling` says. An unknown `rope_type` is an error naming it.
    pub fn new(head_dim: usize, theta: f64, scaling: Option<&RopeScaling>, device: &Device) -> Result<Self> {
        let mut inv_freq: Vec<f32> = (0..head_dim).step_by(2).map(|i| 1.0 / (theta as f32).powf(i as f32 / head_dim as f32)).collect();
        match scaling.map(|s| s.rope_type.as_str()) {
            None | Some("default") => {}
            Some("llama3") => {
                let s = scaling.expect("matched Some");
                let Some(old_context) = s.original_max_position_embeddings else {
                    return Err(crate::error::invalid_input("rope_scaling `llama3` needs original_max_position_embeddings"));
                };
                llama3_scaling(&mut inv_freq, s, old_context as f64);
            }
            Some(other) => {
                return Err(crate::error::invalid_input(format!("rope_scaling type `{other}` is not supported; supported: default, llama3")));
            }
        }
        Ok(RotaryEmbedding { inv_freq: Tensor::new(inv_freq, device)? })
    }

    /// `(cos, sin)` for `position_ids` `[batch, seq]`: `[batch, 1, seq, head_dim]` in `dtype`
    /// (computed in f32, as `transformers` does before casting).
    pub fn cos_sin(&self, position_ids: &Tensor, dtype: DType) -> Result<(Tensor, Tensor)> {
        let positions = position_ids.to_dtype(DType::F32)?.unsqueeze(2)?; // [b, s, 1]
        let freqs = positions.broadcast_mul(&self.inv_freq.reshape((1, 1, ()))?)?; // [b, s, d/2]
        let emb = Tensor::cat(&[&freqs, &freqs], D::Minus1)?.unsqueeze(1)?;
        Ok((emb.cos()?.to_dtype(dtype)?, emb.sin()?.to_dtype(dtype)?))
    }
}

/// `transformers`' `_compute_llama3_parameters`: low frequencies divided by `factor`, high ones
/// kept, the band between interpolated.
fn llama3_scaling(inv_freq: &mut [f32], s: &RopeScaling, old_context: f64) {
    let low_freq_wavelen = old_context / s.low_freq_factor;
    let high_freq_wavelen = old_context / s.high_freq_factor;
    for f in inv_freq.iter_mut() {
        let freq = f64::from(*f);
        let wavelen = 2.0 * std::f64::consts::PI / freq;
        let scaled = if wavelen > low_freq_wavelen { freq / s.factor } else { freq };
        *f = if wavelen < high_freq_wavelen || wavelen > low_freq_wavelen {
            scaled as f32
        } else {
            let smooth = (old_context / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
            ((1.0 - smooth) * scaled / s.factor + smooth * scaled) as f32
        };
    }
}

/// `x * cos + rotate_half(x) * sin` for `x` `[batch, heads, seq, head_dim]`.
pub fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let (first, second) = (x.narrow(D::Minus1, 0, half)?, x.narrow(D::Minus1, half, half)?);
    let rotated = Tensor::cat(&[&second.neg()?, &first], D::Minus1)?;
    x.broadcast_mul(cos)?.add(&rotated.broadcast_mul(sin)?)
}

/// Grouped-query attention: each of the `[batch, kv_heads, seq, head_dim]` heads repeated
/// `times` times in place, to `[batch, kv_heads * times, seq, head_dim]`.
pub fn repeat_kv(x: &Tensor, times: usize) -> Result<Tensor> {
    if times == 1 {
        return Ok(x.clone());
    }
    let (b, h, s, d) = x.dims4()?;
    x.unsqueeze(2)?.broadcast_as((b, h, times, s, d))?.reshape((b, h * times, s, d))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The three bands of llama3 scaling on a head of 8 (wavelengths 6.3, 63, 628, 6283 against
    /// 16 and 64): kept, interpolated, divided.
    #[test]
    fn llama3_scaling_keeps_high_divides_low_and_interpolates_between() {
        let s =
            RopeScaling { rope_type: "llama3".into(), factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: Some(64) };
        let plain = RotaryEmbedding::new(8, 10000.0, None, &Device::Cpu).unwrap().inv_freq.to_vec1::<f32>().unwrap();
        let scaled = RotaryEmbedding::new(8, 10000.0, Some(&s), &Device::Cpu).unwrap().inv_freq.to_vec1::<f32>().unwrap();
        assert_eq!(scaled[0], plain[0]);
        assert!(scaled[1] < plain[1] && scaled[1] > plain[1] / 8.0, "{scaled:?}");
        assert!((scaled[2] - plain[2] / 8.0).abs() < 1e-9 && (scaled[3] - plain[3] / 8.0).abs() < 1e-9);
    }

    #[test]
    fn rotation_keeps_the_norm_and_position_zero_is_identity() {
        let rope = RotaryEmbedding::new(4, 10000.0, None, &Device::Cpu).unwrap();
        let x = Tensor::new(&[[[[1f32, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]]]], &Device::Cpu).unwrap();
        let (cos, sin) = rope.cos_sin(&Tensor::new(&[[0u32, 5]], &Device::Cpu).unwrap(), DType::F32).unwrap();
        let y = apply_rotary(&x, &cos, &sin).unwrap();
        let rows: Vec<Vec<f32>> = y.squeeze(0).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
        assert_eq!(rows[0], vec![1.0, 2.0, 3.0, 4.0]);
        let norm: f32 = rows[1].iter().map(|v| v * v).sum();
        assert!((norm - 30.0).abs() < 1e-4 && rows[1] != rows[0]);
    }
}
