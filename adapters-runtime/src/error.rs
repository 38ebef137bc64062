//! The one error type of the runtime: every fallible path names what is at fault.

use std::path::PathBuf;

/// Errors raised by adapter configuration, files and the model API.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("unknown adapter method `{name}`; known: {known}")]
    UnknownMethod { name: String, known: String },

    #[error("bad adapter config string `{input}`: {reason}")]
    ConfigString { input: String, reason: String },

    #[error("bad adapter config in {file}: key `{key}`: {reason}")]
    ConfigKey { file: String, key: String, reason: String },

    #[error("invalid adapter config: {0}")]
    InvalidConfig(String),

    #[error("no adapter named `{0}` in this model")]
    NoSuchAdapter(String),

    #[error("an adapter named `{0}` already exists; delete it first or load under another name")]
    AdapterExists(String),

    #[error("adapter `{adapter}` ({method}) adds nothing to this model: {reason}")]
    NothingToAdd { adapter: String, method: String, reason: String },

    #[error("adapter `{adapter}` does not support {operation}: {reason}")]
    Unsupported { adapter: String, operation: String, reason: String },

    #[error("adapter setup `{setup}`: {reason}")]
    Setup { setup: String, reason: String },

    #[error("input does not suit the active adapters: {0}")]
    InvalidInput(String),

    /// Two tensors that cannot be compared, or hold a NaN or an infinity (`compare`).
    #[error("cannot compare tensors: {0}")]
    Compare(String),

    #[error("{file}: tensor `{tensor}` is missing")]
    MissingTensor { file: String, tensor: String },

    #[error("{file}: tensor `{tensor}` does not belong to adapter `{adapter}` on this model")]
    UnexpectedTensor { file: String, tensor: String, adapter: String },

    #[error("{file}: tensor `{tensor}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch { file: String, tensor: String, expected: Vec<usize>, found: Vec<usize> },

    #[error("{file}: {reason}")]
    File { file: String, reason: String },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl AdapterError {
    pub(crate) fn file(file: impl std::fmt::Display, reason: impl std::fmt::Display) -> Self {
        AdapterError::File { file: file.to_string(), reason: reason.to_string() }
    }
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        AdapterError::Io { path: path.into(), source }
    }
}

/// Result alias used across the runtime.
pub type Result<T> = std::result::Result<T, AdapterError>;
