//! A `tokenizers::Tokenizer` rebuilt from GGUF metadata (`tokenizer.ggml.*`).
//!
//! Supported: `tokenizer.ggml.model = "gpt2"`, i.e. GPT-2-style byte-level BPE with
//! - `tokenizer.ggml.tokens` (id → token string) and `tokenizer.ggml.merges` (`"a b"` pairs, by
//!   priority) as the BPE model;
//! - the pre-tokenizer chosen by `tokenizer.ggml.pre` (llama.cpp's names): the GPT-2 split
//!   regex, preceded for the StarCoder/SmolLM family by splitting every digit on its own;
//!   then the byte-to-unicode mapping, with no added prefix space;
//! - a byte-level decoder, so decode(encode(text)) == text;
//! - tokens of type control (`tokenizer.ggml.token_type` = 3) as added *special* tokens
//!   (matched before BPE, skipped when decoding), user-defined ones (4) as added tokens.
//!
//! No BOS is added automatically; callers prepend `bos_token_id` when they want it.

use super::gguf::{GgufFile, Value};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use std::collections::BTreeMap;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper};

/// `tokenizer.ggml.model` values kvcat rebuilds.
pub const SUPPORTED_MODELS: &str = "gpt2 (byte-level BPE)";
/// `tokenizer.ggml.pre` values kvcat rebuilds.
pub const SUPPORTED_PRE: &str = "default, gpt2, gpt-2, mpt, olmo, jais (GPT-2 regex); \
     smollm, starcoder, refact, command-r, codeshell (single digits, then the GPT-2 regex)";

/// llama.cpp's token types (`llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// The pre-tokenizer for llama.cpp's pre-tokenizer name `pre`, if kvcat knows it.
fn pre_tokenizer(pre: &str) -> Option<PreTokenizerWrapper> {
    // GPT-2's split regex ('s|'t|…| ?\p{L}+| ?\p{N}+|…|\s+(?!\S)|\s+) is ByteLevel's own.
    let byte_level = ByteLevel::new(false, true, true);
    match pre {
        "default" | "gpt2" | "gpt-2" | "mpt" | "olmo" | "jais" => Some(byte_level.into()),
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" => {
            Some(Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into())
        }
        _ => None,
    }
}

fn string_array<'a>(
    meta: &'a BTreeMap<String, Value>,
    key: &str,
    file: &str,
) -> Result<Vec<&'a str>> {
    let field_err = |reason: String| Error::Config {
        file: file.to_string(),
        field: key.to_string(),
        reason,
    };
    let arr = meta
        .get(key)
        .ok_or_else(|| field_err("missing".into()))?
        .as_array()
        .ok_or_else(|| field_err("expected an array of strings".into()))?;
    arr.iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str().ok_or_else(|| {
                field_err(format!(
                    "item {i} is a {}, expected a string",
                    v.type_name()
                ))
            })
        })
        .collect()
}

/// Builds the tokenizer described by `meta` (the metadata of GGUF file `file`). Returns
/// `Ok(None)` when the file carries no tokenizer (`tokenizer.ggml.model` absent).
pub fn from_metadata(meta: &BTreeMap<String, Value>, file: &str) -> Result<Option<Tokenizer>> {
    let Some(model) = meta.get("tokenizer.ggml.model") else {
        return Ok(None);
    };
    let model = model.as_str().unwrap_or("?");
    if model != "gpt2" {
        return Err(Error::Unsupported {
            file: file.to_string(),
            what: "tokenizer model (tokenizer.ggml.model)".into(),
            value: format!("`{model}`"),
            supported: SUPPORTED_MODELS.into(),
        });
    }
    let pre = pre_tokenizer_of(meta, file)?;
    let tokens = string_array(meta, "tokenizer.ggml.tokens", file)?;
    let merges = string_array(meta, "tokenizer.ggml.merges", file)?;
    let types = token_types(meta, file, tokens.len())?;
    let mut tk = tokenizers::Tokenizer::new(bpe_model(&tokens, &merges, file)?);
    tk.with_pre_tokenizer(Some(pre));
    tk.with_decoder(Some(ByteLevel::new(false, true, true)));
    tk.with_post_processor(Some(ByteLevel::new(false, true, true)));
    let added = |ty: i64, special: bool| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(&types)
            .filter(|&(_, &t)| t == ty)
            .map(|(tok, _)| AddedToken::from(tok.to_string(), special).normalized(false))
            .collect()
    };
    let add_err = |e| Error::Format {
        file: file.to_string(),
        reason: format!("cannot register the GGUF's control/user-defined tokens: {e}"),
    };
    tk.add_special_tokens(added(TOKEN_TYPE_CONTROL, true))
        .map_err(add_err)?;
    tk.add_tokens(added(TOKEN_TYPE_USER_DEFINED, false))
        .map_err(add_err)?;
    Ok(Some(Tokenizer::new(tk)))
}

/// The pre-tokenizer `tokenizer.ggml.pre` names (`default` when absent).
fn pre_tokenizer_of(meta: &BTreeMap<String, Value>, file: &str) -> Result<PreTokenizerWrapper> {
    let pre_name = meta
        .get("tokenizer.ggml.pre")
        .and_then(Value::as_str)
        .unwrap_or("default");
    pre_tokenizer(pre_name).ok_or_else(|| Error::Unsupported {
        file: file.to_string(),
        what: "pre-tokenizer (tokenizer.ggml.pre)".into(),
        value: format!("`{pre_name}`"),
        supported: SUPPORTED_PRE.into(),
    })
}

/// `tokenizer.ggml.token_type`: one integer per token (all normal when absent).
fn token_types(meta: &BTreeMap<String, Value>, file: &str, n_tokens: usize) -> Result<Vec<i64>> {
    let Some(v) = meta.get("tokenizer.ggml.token_type") else {
        return Ok(vec![1; n_tokens]);
    };
    let arr = v.as_array().unwrap_or(&[]);
    let types: Vec<i64> = arr.iter().filter_map(Value::as_i64).collect();
    if types.len() != n_tokens {
        return Err(Error::Config {
            file: file.to_string(),
            field: "tokenizer.ggml.token_type".into(),
            reason: format!(
                "expected {} integers (one per token), got {} usable of {}",
                n_tokens,
                types.len(),
                arr.len()
            ),
        });
    }
    Ok(types)
}

/// The byte-level BPE of `tokens` and `merges` (`a b` each). A duplicated token string
/// keeps its first id, as llama.cpp's token-to-id map does.
fn bpe_model(tokens: &[&str], merges: &[&str], file: &str) -> Result<BPE> {
    let mut vocab = Vocab::default();
    for (id, tok) in tokens.iter().enumerate() {
        vocab.entry(tok.to_string()).or_insert(id as u32);
    }
    let mut pairs = Vec::with_capacity(merges.len());
    for (i, m) in merges.iter().enumerate() {
        let (a, b) = m.split_once(' ').ok_or_else(|| Error::Config {
            file: file.to_string(),
            field: "tokenizer.ggml.merges".into(),
            reason: format!("merge {i} `{m}` is not two tokens separated by a space"),
        })?;
        pairs.push((a.to_string(), b.to_string()));
    }
    BPE::builder()
        .vocab_and_merges(vocab, pairs)
        .build()
        .map_err(|e| Error::Format {
            file: file.to_string(),
            reason: format!("cannot build the BPE tokenizer from tokenizer.ggml.*: {e}"),
        })
}

/// Builds the tokenizer of an opened GGUF file; see [`from_metadata`].
pub fn from_gguf(g: &GgufFile) -> Result<Option<Tokenizer>> {
    from_metadata(&g.metadata, &g.file())
}
