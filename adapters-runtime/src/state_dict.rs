//! The one strict loader for saved weights (adapters, heads, fusion layers): every tensor the
//! module expects must be in the file with its shape, nothing unknown may be, and nothing is
//! assigned unless everything checks out.

use std::collections::{HashMap, HashSet};

use candle_core::{Tensor, Var};

use crate::error::{AdapterError, Result};

/// What a tensor name of a file refers to.
pub(crate) enum Resolved {
    /// The expected parameter with this key.
    Param(String),
    /// A second name of a parameter loaded under its first name (or a tied weight): skipped.
    Ignored,
    /// Nothing this module has.
    Unknown,
}

/// The module a file is loaded into: its parameters by key, and how the file's names map to them.
pub(crate) struct Expected<'a> {
    /// The weights file, for error messages.
    pub origin: &'a str,
    /// What the tensors belong to (`adapter x`, `head x`, `fusion a,b`), for error messages.
    pub owner: String,
    pub params: HashMap<String, Var>,
}

impl Expected<'_> {
    /// Checks `weights` against the parameters and, only if every check passes, assigns them.
    /// `resolve` maps a file name to a parameter key; `missing` makes the error for the first
    /// (sorted) parameter the file lacks.
    pub(crate) fn load(&self, weights: &HashMap<String, Tensor>, resolve: impl Fn(&str) -> Resolved, missing: impl Fn(&str) -> AdapterError) -> Result<()> {
        let mut staged: Vec<(&Var, &Tensor)> = Vec::with_capacity(weights.len());
        let mut seen = HashSet::new();
        for (key, tensor) in weights {
            let var = match resolve(key) {
                Resolved::Param(k) => match self.params.get_key_value(&k) {
                    Some((k, var)) => {
                        seen.insert(k.as_str());
                        var
                    }
                    None => return Err(self.unexpected(key)),
                },
                Resolved::Ignored => continue,
                Resolved::Unknown => return Err(self.unexpected(key)),
            };
            if var.dims() != tensor.dims() {
                return Err(AdapterError::ShapeMismatch {
                    file: self.origin.into(),
                    tensor: key.clone(),
                    expected: var.dims().to_vec(),
                    found: tensor.dims().to_vec(),
                });
            }
            staged.push((var, tensor));
        }
        let mut absent: Vec<&String> = self.params.keys().filter(|k| !seen.contains(k.as_str())).collect();
        absent.sort();
        if let Some(first) = absent.first() {
            return Err(missing(first));
        }
        // Files hold f32 on the host; the module lives where the base model does.
        for (var, tensor) in staged {
            var.set(&tensor.to_device(var.device())?.to_dtype(var.dtype())?)?;
        }
        Ok(())
    }

    fn unexpected(&self, key: &str) -> AdapterError {
        AdapterError::UnexpectedTensor { file: self.origin.into(), tensor: key.into(), adapter: self.owner.clone() }
    }
}

/// `key` as the module names it: itself, or without its first segment (files saved from an
/// AdapterModel carry the base model's prefix, `bert.`).
pub(crate) fn with_or_without_root(key: &str, has: impl Fn(&str) -> bool) -> Option<String> {
    if has(key) {
        return Some(key.to_string());
    }
    key.split_once('.').map(|(_, rest)| rest).filter(|rest| has(rest)).map(String::from)
}
