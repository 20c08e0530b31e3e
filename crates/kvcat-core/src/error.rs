//! The library error type: one enum with structured variants, so callers can tell
//! *which* file, tensor, field or name was wrong and what was expected.

use std::path::PathBuf;

/// Every fallible operation in kvcat's library crates returns this error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A configuration field is missing or has a bad value.
    #[error("{file}: field `{field}`: {reason}")]
    Config {
        file: String,
        field: String,
        reason: String,
    },
    /// A field of a configuration, named by its key path (`optim.lr`, `budget.values[0]`),
    /// has a bad value; `reason` says what was expected and what was found.
    #[error("field `{field}`: {reason}")]
    Field { field: String, reason: String },
    /// An error with what was being done when it happened: the file, field, step or item
    /// it concerns. Prints as `context: source`.
    #[error("{context}: {source}")]
    Context {
        context: String,
        #[source]
        source: Box<Error>,
    },
    /// A file is not in the expected format (corrupt header, bad magic, truncated data).
    #[error("{file}: {reason}")]
    Format { file: String, reason: String },
    /// A tensor in a checkpoint has the wrong shape.
    #[error("{file}: tensor `{tensor}` has shape {got:?}, expected {expected:?}")]
    Shape {
        file: String,
        tensor: String,
        expected: Vec<i64>,
        got: Vec<i64>,
    },
    /// Tensors the model declares were not found in the checkpoint.
    #[error("{file}: missing tensors: {}", .names.join(", "))]
    MissingTensors { file: String, names: Vec<String> },
    /// A checkpoint holds a feature kvcat does not support (tensor type, architecture).
    #[error("{file}: unsupported {what}: {value} (supported: {supported})")]
    Unsupported {
        file: String,
        what: String,
        value: String,
        supported: String,
    },
    /// A registry lookup failed.
    #[error("unknown {kind} `{name}`; known {}: {}", plural(.kind), .known.join(", "))]
    UnknownName {
        kind: &'static str,
        name: String,
        known: Vec<String>,
    },
    /// Two plugins registered the same name.
    #[error("duplicate {kind} name `{name}` registered twice")]
    DuplicateName { kind: &'static str, name: String },
    /// A plugin's parameter table did not parse.
    #[error("{kind} `{name}`: bad parameters: {reason}")]
    Params {
        kind: &'static str,
        name: String,
        reason: String,
    },
    /// A budget is outside its allowed range.
    #[error("invalid budget `{value}`: {reason}")]
    Budget { value: String, reason: String },
    /// An input token id is outside the vocabulary; `index` counts from the start of the
    /// token sequence that was run (callers that read ids from a file name the file field).
    #[error(
        "token id {id} at index {index} of the input is outside the vocabulary (allowed: 0 \
         to {}, the model's vocab_size {vocab} minus one)",
        .vocab - 1
    )]
    TokenOutOfRange { id: i64, index: i64, vocab: i64 },
    /// Another process holds the lock of a directory this one must write alone.
    #[error(
        "{path} is locked by another kvcat process ({holder}); wait for it to finish, or use \
         another --out (shards of one grid each need their own directory; `kvcat merge` joins them)"
    )]
    Locked { path: PathBuf, holder: String },
    /// Any other invalid argument, with a message that says what and why.
    #[error("{0}")]
    Invalid(String),
    /// A failure inside libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// The plural of a registry kind: `policy` → `policies`, `compressor` → `compressors`.
fn plural(kind: &str) -> String {
    match kind.strip_suffix('y') {
        Some(stem) => format!("{stem}ies"),
        None => format!("{kind}s"),
    }
}

/// Shorthand for `std::result::Result<T, kvcat_core::Error>`.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    /// An [`Error::Invalid`] from anything printable.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
    /// An [`Error::Field`]: `field` (a key path) has a bad value, for `reason`.
    pub fn field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Field {
            field: field.into(),
            reason: reason.into(),
        }
    }
    /// This error inside an [`Error::Context`] saying what was being done.
    pub fn context(self, context: impl Into<String>) -> Self {
        Error::Context {
            context: context.into(),
            source: Box::new(self),
        }
    }
}

/// `.context(..)` and `.with_context(..)` for results whose error converts into [`Error`]:
/// wraps the error in an [`Error::Context`] naming what was being done.
pub trait ResultExt<T> {
    /// Wraps the error with `context`.
    fn context(self, context: impl Into<String>) -> Result<T>;
    /// Wraps the error with the context `f` gives (built only on error).
    fn with_context<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T>;
}

impl<T, E: Into<Error>> ResultExt<T> for std::result::Result<T, E> {
    fn context(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|e| e.into().context(context))
    }
    fn with_context<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| e.into().context(f()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn field_and_context_messages() {
        let e = Error::field("optim.lr", "must be > 0, got -1");
        assert_eq!(e.to_string(), "field `optim.lr`: must be > 0, got -1");
        let r: Result<()> = Err(e);
        let e = r.context("in train.toml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "in train.toml: field `optim.lr`: must be > 0, got -1"
        );
        assert!(std::error::Error::source(&e).is_some());
    }
}
