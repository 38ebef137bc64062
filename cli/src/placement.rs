//! `--device` and `--dtype`: where and in what precision the CLI computes.

use adapters_runtime::methods::init::Placement;
use candle_core::{DType, Device};
use clap::{Args, ValueEnum};

/// The compute precision. Outputs are written as f32 whatever it is.
#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum ComputeDType {
    #[default]
    F32,
    F16,
    Bf16,
}

impl From<ComputeDType> for DType {
    fn from(d: ComputeDType) -> DType {
        match d {
            ComputeDType::F32 => DType::F32,
            ComputeDType::F16 => DType::F16,
            ComputeDType::Bf16 => DType::BF16,
        }
    }
}

#[derive(Args, Clone, Debug)]
pub struct PlacementArgs {
    /// Compute precision; outputs are always written as f32.
    #[arg(long, value_enum, default_value_t = ComputeDType::F32)]
    dtype: ComputeDType,
    /// `cpu`, `cuda`, `cuda:N` or `metal` (cuda and metal need a build with `--features cuda` or
    /// `--features metal`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// A GGUF `--model`: dequantize its weights to --dtype instead of keeping them quantized
    /// (exact outputs of the dequantized model; more memory).
    #[arg(long)]
    dequantize: bool,
}

impl PlacementArgs {
    pub fn placement(&self) -> Result<Placement, String> {
        Ok(Placement::new(parse_device(&self.device)?, self.dtype.into()))
    }

    /// Where, in what precision and (for GGUF bases) in what form to load a model.
    pub fn load_options(&self) -> Result<adapters_models::LoadOptions, String> {
        let gguf = if self.dequantize { adapters_models::GgufWeights::Dequantized } else { adapters_models::GgufWeights::Quantized };
        Ok(adapters_models::LoadOptions { placement: self.placement()?, gguf, ..Default::default() })
    }
}

fn parse_device(text: &str) -> Result<Device, String> {
    let unavailable = |e: candle_core::Error| format!("--device {text}: not available: {e}");
    match text {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(0).map_err(unavailable),
        "metal" => Device::new_metal(0).map_err(unavailable),
        _ => match text.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(ordinal)) => Device::new_cuda(ordinal).map_err(unavailable),
            _ => Err(format!("--device {text}: expected cpu, cuda, cuda:N or metal")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::parse_device;

    #[test]
    fn device_names() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert!(parse_device("gpu").unwrap_err().contains("expected cpu, cuda, cuda:N or metal"));
        assert!(parse_device("cuda:x").unwrap_err().contains("expected"));
        // This build has no CUDA: the error names the device instead of panicking.
        if !cfg!(feature = "cuda") {
            assert!(parse_device("cuda:1").unwrap_err().starts_with("--device cuda:1: not available"));
        }
    }
}
