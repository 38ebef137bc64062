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

    /// A broken internal invariant (a bug in this library; please report it).
    #[error("internal error: {0}")]
    Internal(String),

    #[error(transparent)]
    Candle(candle_core::Error),
}

/// A typed error raised where candle's `Result` is the return type (forward passes, module
/// construction) travels wrapped; converting back unwraps it, so callers match the variant.
impl From<candle_core::Error> for AdapterError {
    fn from(e: candle_core::Error) -> Self {
        match e {
            candle_core::Error::WrappedContext { wrapped, context } => match wrapped.downcast::<AdapterError>() {
                Ok(typed) => *typed,
                Err(other) => AdapterError::Candle(candle_core::Error::WrappedContext { wrapped: other, context }),
            },
            other => AdapterError::Candle(other),
        }
    }
}

impl AdapterError {
    /// This error as a candle error, for code that returns candle's `Result` (a model's
    /// forward); the model API gives it back as this variant.
    pub fn into_candle(self) -> candle_core::Error {
        // The one candle variant that keeps a `std::error::Error`, so `From` can downcast it.
        candle_core::Error::WrappedContext { wrapped: Box::new(self), context: String::new() }
    }
}

/// An input the active adapters cannot run on, as a candle error (see [`AdapterError::into_candle`]).
pub(crate) fn invalid_input(message: impl Into<String>) -> candle_core::Error {
    AdapterError::InvalidInput(message.into()).into_candle()
}

/// A broken invariant, as a candle error.
pub(crate) fn internal(message: impl Into<String>) -> candle_core::Error {
    AdapterError::Internal(message.into()).into_candle()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_errors_survive_a_trip_through_candle() {
        assert!(matches!(AdapterError::from(invalid_input("bad rows")), AdapterError::InvalidInput(m) if m == "bad rows"));
        assert!(matches!(AdapterError::from(internal("broken")), AdapterError::Internal(m) if m == "broken"));
        assert!(matches!(AdapterError::from(candle_core::Error::Msg("candle's own".into())), AdapterError::Candle(_)));
    }
}
