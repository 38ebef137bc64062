//! Files: atomic writes, and reading weight files in either format the Python library writes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::error::{AdapterError, Result};

/// Files that are saved together (an adapter's weights and config, its head's): each is first
/// written to a temporary file beside its target, and only when every one is written are they
/// renamed into place. A failure while writing any of them removes the temporary files and
/// leaves every file already at a target exactly as it was.
#[derive(Default)]
pub struct FileBatch {
    /// (temporary file, target) in the order they were added.
    staged: Vec<(PathBuf, PathBuf)>,
}

impl FileBatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes `bytes` to the temporary file of `path`.
    pub fn add(&mut self, path: &Path, bytes: &[u8]) -> Result<()> {
        let tmp = temp_path(path);
        if let Err(e) = std::fs::write(&tmp, bytes) {
            let _ = std::fs::remove_file(&tmp);
            return Err(AdapterError::io(&tmp, e));
        }
        self.staged.push((tmp, path.to_path_buf()));
        Ok(())
    }

    /// Serialises named tensors as safetensors, with the `{"format": "pt"}` metadata the Python
    /// library writes, to the temporary file of `path`.
    pub fn add_safetensors(&mut self, path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let bytes = safetensors_bytes(tensors).map_err(|e| AdapterError::file(path.display(), e))?;
        self.add(path, &bytes)
    }

    /// Moves every staged file to its target (renames within one folder).
    pub fn commit(mut self) -> Result<()> {
        while !self.staged.is_empty() {
            let (tmp, target) = self.staged.remove(0);
            if let Err(e) = std::fs::rename(&tmp, &target) {
                // This one and the ones not yet moved are removed (`Drop` takes the rest).
                let _ = std::fs::remove_file(&tmp);
                return Err(AdapterError::io(&target, e));
            }
        }
        Ok(())
    }
}

impl Drop for FileBatch {
    /// A batch dropped before `commit` (an error on the way) leaves no temporary files behind.
    fn drop(&mut self) {
        for (tmp, _) in &self.staged {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so a
/// crash never leaves a half-written file where a good one was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut batch = FileBatch::new();
    batch.add(path, bytes)?;
    batch.commit()
}

/// The temporary file `path` is written to before it is renamed into place: a hidden name in the
/// same folder, unique to this process.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Named tensors as the bytes of a safetensors file, with the `{"format": "pt"}` metadata the
/// Python library writes.
pub fn safetensors_bytes(tensors: &HashMap<String, Tensor>) -> std::result::Result<Vec<u8>, safetensors::SafeTensorError> {
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(tensors, Some(metadata))
}

/// Saves named tensors as safetensors, atomically, with the `{"format": "pt"}` metadata the
/// Python library writes.
pub fn save_safetensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let mut batch = FileBatch::new();
    batch.add_safetensors(path, tensors)?;
    batch.commit()
}

/// Reads every tensor of a safetensors file or a torch pickle (`.bin`) file, as f32 on `device`.
pub fn read_weights(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let origin = path.display().to_string();
    let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
    let tensors: Vec<(String, Tensor)> = if is_safetensors {
        candle_core::safetensors::load(path, device)
            .map_err(|e| AdapterError::file(&origin, format!("not a readable safetensors file: {e}")))?
            .into_iter()
            .collect()
    } else {
        candle_core::pickle::read_all(path).map_err(|e| AdapterError::file(&origin, format!("not a readable torch weight file: {e}")))?
    };
    tensors
        .into_iter()
        .map(|(name, t)| {
            let t = t
                .to_device(device)
                .and_then(|t| t.to_dtype(candle_core::DType::F32))
                .map_err(|e| AdapterError::file(&origin, format!("tensor `{name}`: {e}")))?;
            Ok((name, t))
        })
        .collect()
}

/// Finds the weight file of a saved module: the safetensors name first, then the pickle name.
pub fn find_weights(dir: &Path, safetensors_name: &str, pickle_name: &str) -> Result<std::path::PathBuf> {
    for name in [safetensors_name, pickle_name] {
        let path = dir.join(name);
        if path.is_file() {
            return Ok(path);
        }
    }
    Err(AdapterError::file(dir.display(), format!("holds neither `{safetensors_name}` nor `{pickle_name}`")))
}
