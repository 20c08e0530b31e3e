//! `jsonl`: a user's dataset in kvpress's columns, one JSON object per line:
//! `context` (string), `question` (string), `answer_prefix` (string, optional),
//! `answer` (string or list of strings), `max_new_tokens` (optional integer).
//! Unknown columns are ignored (kvpress datasets carry extras such as `task`), so a kvpress
//! evaluation file can be used as is.
//!
//! Examples are the file's rows in order (or a seeded shuffle with `shuffle = true`); the
//! context is used as given (no length target), and the evaluator checks it fits the model.

use super::{example_rng, read_text};
use kvcat_core::registry::{parse_params, to_table};
use kvcat_core::task::{Context, Example, Metric, Task, TaskDescriptor};
use kvcat_core::{Error, Result, Tokenizer};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Parameters of `jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JsonlParams {
    /// The JSONL file (required).
    pub path: String,
    /// `string_match_part`, `string_match_all`, `exact_match` or `token_f1`.
    pub metric: String,
    /// Generation length for rows without `max_new_tokens`.
    pub max_new_tokens: usize,
    /// Draw rows in a seeded random order instead of file order.
    pub shuffle: bool,
}

impl Default for JsonlParams {
    fn default() -> Self {
        JsonlParams {
            path: String::new(),
            metric: "string_match_part".into(),
            max_new_tokens: 32,
            shuffle: false,
        }
    }
}

/// `answer` as kvpress stores it: one string or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Answer {
    One(String),
    Many(Vec<String>),
}

/// One row in kvpress's columns.
#[derive(Debug, Clone, Deserialize)]
struct Row {
    context: String,
    #[serde(default)]
    question: String,
    #[serde(default)]
    answer_prefix: String,
    answer: Answer,
    #[serde(default)]
    max_new_tokens: Option<usize>,
}

/// Reads kvpress-column rows from a JSONL file; a malformed line is an error naming the file
/// and the 1-based line number. Blank lines are skipped.
pub fn read_jsonl(path: &Path, metric: Metric, default_new: usize) -> Result<Vec<Example>> {
    let text = read_text(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row: Row = serde_json::from_str(line).map_err(|e| Error::Format {
            file: path.display().to_string(),
            reason: format!(
                "line {}: {e} (expected an object with `context`, `question`, `answer`, and \
                 optionally `answer_prefix`, `max_new_tokens`)",
                i + 1
            ),
        })?;
        let answers = match row.answer {
            Answer::One(a) => vec![a],
            Answer::Many(a) => a,
        };
        out.push(Example {
            id: format!("line-{}", i + 1),
            context: Context::Text(row.context),
            question: row.question,
            answer_prefix: row.answer_prefix,
            answers,
            metric,
            max_new_tokens: row.max_new_tokens.unwrap_or(default_new),
            continuation: vec![],
            depth: None,
        });
    }
    if out.is_empty() {
        return Err(Error::Format {
            file: path.display().to_string(),
            reason: "no rows".into(),
        });
    }
    Ok(out)
}

const NAME: &str = "jsonl";

/// The `jsonl` task: rows loaded at build time.
pub struct Jsonl {
    p: JsonlParams,
    rows: Vec<Example>,
}

impl Jsonl {
    pub fn new(p: JsonlParams) -> Result<Self> {
        let bad = |reason: String| Error::Params {
            kind: "task",
            name: NAME.into(),
            reason,
        };
        if p.path.is_empty() {
            return Err(bad(
                "`path` is required (a .jsonl file in kvpress's columns)".into(),
            ));
        }
        let metric: Metric = p.metric.parse()?;
        if metric == Metric::Perplexity {
            return Err(bad("`metric` must be a text metric, not perplexity".into()));
        }
        let path = PathBuf::from(&p.path);
        if !path.is_file() {
            return Err(Error::Config {
                file: p.path.clone(),
                field: "path".into(),
                reason: "task `jsonl`: data file not found".into(),
            });
        }
        let rows = read_jsonl(&path, metric, p.max_new_tokens)?;
        Ok(Jsonl { p, rows })
    }
}

impl Task for Jsonl {
    fn name(&self) -> &'static str {
        NAME
    }
    fn params(&self) -> toml::Table {
        to_table(&self.p)
    }
    fn examples(&self, _tok: &Tokenizer, n: usize, seed: u64) -> Result<Vec<Example>> {
        if n > self.rows.len() {
            return Err(Error::invalid(format!(
                "task `jsonl`: {n} examples asked, {} has {} rows",
                self.p.path,
                self.rows.len()
            )));
        }
        let mut order: Vec<usize> = (0..self.rows.len()).collect();
        if self.p.shuffle {
            order.shuffle(&mut example_rng(seed, 0));
        }
        Ok(order[..n].iter().map(|&i| self.rows[i].clone()).collect())
    }
}

fn defaults() -> toml::Table {
    to_table(&JsonlParams::default())
}

fn build(t: &toml::Table) -> Result<Box<dyn Task>> {
    Ok(Box::new(Jsonl::new(parse_params("task", NAME, t)?)?))
}

inventory::submit! {
    TaskDescriptor {
        name: NAME,
        description: "a user JSONL file in kvpress columns (context, question, answer_prefix, answer, max_new_tokens)",
        defaults,
        build,
    }
}
