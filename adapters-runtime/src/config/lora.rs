//! `LoRAConfig`: LoRA, IA3, DoRA (and the VeRA fields, kept for files), as AdapterHub writes it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{AdapterError, Result};

fn lora_arch() -> Option<String> {
    Some("lora".into())
}
fn default_true() -> bool {
    true
}
fn default_r() -> usize {
    8
}
fn default_alpha() -> f64 {
    8.0
}
fn default_matrices() -> Vec<String> {
    vec!["q".into(), "v".into()]
}
fn default_mode() -> String {
    "add".into()
}
fn default_init() -> String {
    "lora".into()
}

/// Every field of the Python `LoRAConfig` with its defaults (`lora` preset).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoRAConfig {
    #[serde(default = "lora_arch")]
    pub architecture: Option<String>,
    #[serde(default = "default_true")]
    pub selfattn_lora: bool,
    #[serde(default)]
    pub intermediate_lora: bool,
    #[serde(default)]
    pub output_lora: bool,
    #[serde(default)]
    pub leave_out: Vec<usize>,
    #[serde(default = "default_r")]
    pub r: usize,
    /// Python declares an int; some files carry floats, so both are read.
    #[serde(default = "default_alpha", serialize_with = "write_int_if_whole")]
    pub alpha: f64,
    #[serde(default)]
    pub dropout: f64,
    #[serde(default = "default_matrices")]
    pub attn_matrices: Vec<String>,
    #[serde(default = "default_mode")]
    pub composition_mode: String,
    #[serde(default = "default_init")]
    pub init_weights: String,
    #[serde(default)]
    pub init_weights_seed: Option<u64>,
    #[serde(default)]
    pub use_gating: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub vera_d: Option<f64>,
    #[serde(default)]
    pub vera_b: Option<f64>,
    #[serde(default)]
    pub dtype: Option<String>,
    /// A PEFT adapter's own layout, which AdapterHub's keys cannot express; never written to
    /// AdapterHub files (see [`PeftLayout`]).
    #[serde(skip)]
    pub peft: Option<PeftLayout>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// Where a PEFT adapter sits and how each module is built, when that is more than AdapterHub's
/// locations x layers with one rank: modules by slot path (as the model's LoRA slots name
/// them), each with its own rank and alpha (PEFT's `rank_pattern` / `alpha_pattern`); IA3 on a
/// module's input (`feedforward_modules`); and DoRA as PEFT computes it. When set, it replaces
/// the location flags and `leave_out` for placing modules.
///
/// Modules built from a layout compute as PEFT does where the two libraries differ: DoRA is
/// `m / ||W + s B A||_row * (W x + s B A x) + b` (the Python library's DoRA scales the bias too
/// and leaves `s` out of the norm), and merging IA3 on an output scales the bias as well.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PeftLayout {
    pub modules: BTreeMap<String, PeftModule>,
    /// Whether the config's AdapterHub fields (locations, `leave_out`, `r`, `alpha`) describe the
    /// same modules with the same outputs, so it can be written as an AdapterHub file.
    pub expressible: bool,
}

/// One module of a [`PeftLayout`].
#[derive(Clone, Debug, PartialEq)]
pub struct PeftModule {
    pub r: usize,
    /// The scaling numerator: `alpha / r` scales LoRA (rsLoRA's `alpha / sqrt(r)` is stored as
    /// `alpha * sqrt(r)`); IA3 ignores it.
    pub alpha: f64,
    /// IA3 on the module's input (PEFT's `feedforward_modules`): `W (x * l) + b`.
    pub scales_input: bool,
}

fn write_int_if_whole<S: serde::Serializer>(v: &f64, s: S) -> std::result::Result<S::Ok, S::Error> {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        s.serialize_i64(*v as i64)
    } else {
        s.serialize_f64(*v)
    }
}

/// Which kind of module a LoRA config builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoraKind {
    /// `composition_mode = "add"`: W x + s * B A x.
    LoRA,
    /// `composition_mode = "add"` with `use_dora`.
    DoRA,
    /// `composition_mode = "scale"`: (W x + b) * (B * alpha).
    IA3,
}

impl LoRAConfig {
    pub fn kind(&self) -> LoraKind {
        match (self.composition_mode.as_str(), self.use_dora) {
            ("scale", _) => LoraKind::IA3,
            (_, true) => LoraKind::DoRA,
            _ => LoraKind::LoRA,
        }
    }

    /// Checks what the Python library checks when it builds the modules.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, reason: String| Err(AdapterError::InvalidConfig(format!("`{key}`: {reason}")));
        if self.r == 0 {
            return bad("r", "must be at least 1".into());
        }
        for m in &self.attn_matrices {
            if !["q", "k", "v"].contains(&m.as_str()) {
                return bad("attn_matrices", format!("`{m}` is not one of q, k, v"));
            }
        }
        match self.composition_mode.as_str() {
            "add" => {}
            "scale" => {
                if self.r > 1 {
                    return bad("r", "composition_mode \"scale\" (IA3) needs r == 1".into());
                }
                if self.use_dora {
                    return bad("use_dora", "IA3 (composition_mode \"scale\") does not support DoRA".into());
                }
                if self.dropout > 0.0 {
                    return bad("dropout", "IA3 does not support dropout".into());
                }
            }
            other => return bad("composition_mode", format!("`{other}` is not \"add\" or \"scale\"")),
        }
        if !["lora", "bert", "ia3", "vera"].contains(&self.init_weights.as_str()) {
            return bad("init_weights", format!("`{}` is not lora, bert, ia3 or vera", self.init_weights));
        }
        if self.is_vera() && self.composition_mode != "add" {
            return bad("composition_mode", "VeRA only supports composition_mode \"add\"".into());
        }
        Ok(())
    }

    /// VeRA (and DVoRA with `use_dora`): `vera_d` or `vera_b` is set.
    pub fn is_vera(&self) -> bool {
        self.vera_d.is_some() || self.vera_b.is_some()
    }

    /// Whether this config places a module on a linear with the given location.
    pub fn targets(&self, location: crate::mixin::LoraLocation) -> bool {
        use crate::mixin::LoraLocation::*;
        match location {
            Query => self.selfattn_lora && self.attn_matrices.iter().any(|m| m == "q"),
            Key => self.selfattn_lora && self.attn_matrices.iter().any(|m| m == "k"),
            Value => self.selfattn_lora && self.attn_matrices.iter().any(|m| m == "v"),
            SelfAttn => self.selfattn_lora && self.attn_matrices.iter().any(|m| matches!(m.as_str(), "q" | "k" | "v")),
            Intermediate => self.intermediate_lora,
            Output => self.output_lora,
            // The Python library never adapts these; only a PEFT layout places modules there.
            AttnOutput | Gate => false,
        }
    }
}
