//! Text tokenization: a thin wrapper over `tokenizers::Tokenizer` with kvcat's error type.

use crate::{Error, Result};
use std::path::Path;

/// A tokenizer that round-trips text.
#[derive(Clone)]
pub struct Tokenizer {
    pub inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    /// Wraps a built `tokenizers::Tokenizer`.
    pub fn new(inner: tokenizers::Tokenizer) -> Self {
        Tokenizer { inner }
    }

    /// Loads an HF `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        tokenizers::Tokenizer::from_file(path)
            .map(Tokenizer::new)
            .map_err(|e| Error::Format {
                file: path.display().to_string(),
                reason: format!("cannot load tokenizer: {e}"),
            })
    }

    /// Saves as `tokenizer.json`.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.inner.save(path, false).map_err(|e| Error::Format {
            file: path.display().to_string(),
            reason: format!("cannot save tokenizer: {e}"),
        })
    }

    /// Token ids of `text`, without special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::invalid(format!("tokenizer: {e}")))?;
        Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
    }

    /// Text of `ids`, keeping special tokens out.
    pub fn decode(&self, ids: &[i64]) -> Result<String> {
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        self.inner
            .decode(&ids, true)
            .map_err(|e| Error::invalid(format!("tokenizer: {e}")))
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token string, if present.
    pub fn token_id(&self, token: &str) -> Option<i64> {
        self.inner.token_to_id(token).map(|i| i as i64)
    }
}
