//! Evaluation tasks: the [`Task`] trait, the [`Example`] it yields, and the task registry.
//!
//! A task is built from a TOML parameter table (the same pattern as policies and compressors)
//! and generates examples for a tokenizer, a count and a seed. An example is a context (text,
//! or token ids for perplexity), an optional question and answer prefix, the gold answers, the
//! metric that scores it, and a generation length. Evaluation (in `kvcat-bench`) prefills the
//! context, compresses the cache, appends the question at positions continuing from the
//! original length, decodes greedily and scores.
//!
//! Tasks also render an example as plain training text (context, question, answer), so that
//! training can mix synthetic retrieval text into its data.

use crate::registry::Descriptor;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How an example is scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// RULER's `string_match_all`: the fraction of gold answers found in the prediction
    /// (case-insensitive substring), averaged over examples.
    StringMatchAll,
    /// RULER's `string_match_part`: 1 if any gold answer is found in the prediction.
    StringMatchPart,
    /// SQuAD exact match after answer normalisation, max over gold answers.
    ExactMatch,
    /// SQuAD token-level F1 after answer normalisation, max over gold answers.
    TokenF1,
    /// Negative log-likelihood of [`Example::continuation`] (reported as NLL and PPL).
    Perplexity,
}

impl Metric {
    /// Every metric, for error messages.
    pub const ALL: [Metric; 5] = [
        Metric::StringMatchAll,
        Metric::StringMatchPart,
        Metric::ExactMatch,
        Metric::TokenF1,
        Metric::Perplexity,
    ];

    /// The name used in configs and result rows.
    pub fn name(&self) -> &'static str {
        match self {
            Metric::StringMatchAll => "string_match_all",
            Metric::StringMatchPart => "string_match_part",
            Metric::ExactMatch => "exact_match",
            Metric::TokenF1 => "token_f1",
            Metric::Perplexity => "perplexity",
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Metric {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Metric::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown metric `{s}`; known metrics: {}",
                    Metric::ALL.map(|m| m.name()).join(", ")
                ))
            })
    }
}

/// An example's context: text (tokenized by the evaluator) or token ids (perplexity windows).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Context {
    Text(String),
    Tokens(Vec<i64>),
}

/// One evaluation example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// A stable identifier within the task (e.g. `passkey-3`, a SQuAD question id).
    pub id: String,
    /// The context that is prefilled and compressed.
    pub context: Context,
    /// The question, appended *after* compression (seen by the compressor only when
    /// evaluation is query-aware). Empty for tasks without one.
    pub question: String,
    /// Text appended after the question to start the answer (e.g. `"The pass key is"`).
    pub answer_prefix: String,
    /// Gold answers (all must appear for `string_match_all`; any for `string_match_part`).
    pub answers: Vec<String>,
    pub metric: Metric,
    /// Greedy generation length (0 for perplexity examples).
    pub max_new_tokens: usize,
    /// Token ids whose NLL is scored after the context ([`Metric::Perplexity`] only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub continuation: Vec<i64>,
    /// Where the gold information sits in the context, as a fraction of its tokens, when the
    /// task placed it (needle depth, gold paragraph position).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<f64>,
}

impl Example {
    /// Plain-text rendering for training: context, question, answer prefix and the first gold
    /// answer, joined as evaluation would feed them (token contexts and continuations are
    /// decoded with `tokenizer`).
    pub fn training_text(&self, tokenizer: &Tokenizer) -> Result<String> {
        let mut text = match &self.context {
            Context::Text(t) => t.clone(),
            Context::Tokens(ids) => tokenizer.decode(ids)?,
        };
        if !self.continuation.is_empty() {
            text.push_str(&tokenizer.decode(&self.continuation)?);
        }
        text.push_str(&self.question);
        text.push_str(&self.answer_prefix);
        if let Some(a) = self.answers.first() {
            if !self.answer_prefix.is_empty() && !a.starts_with(char::is_whitespace) {
                text.push(' ');
            }
            text.push_str(a);
        }
        Ok(text)
    }
}

/// An evaluation task. Implementations live in `kvcat-bench` (or plugin crates).
pub trait Task: Send + Sync {
    /// The registry name.
    fn name(&self) -> &'static str;
    /// Resolved parameters (defaults filled in).
    fn params(&self) -> toml::Table;
    /// The context length in tokens the task aims for, if it is sized by one (checked by the
    /// evaluator against the model's positions).
    fn target_len(&self) -> Option<usize> {
        None
    }
    /// Generates `n` examples, deterministically for a given `seed` and `tokenizer`.
    fn examples(&self, tokenizer: &Tokenizer, n: usize, seed: u64) -> Result<Vec<Example>>;
    /// `n` plain-text renderings of examples, for mixing into training data.
    fn training_texts(&self, tokenizer: &Tokenizer, n: usize, seed: u64) -> Result<Vec<String>> {
        self.examples(tokenizer, n, seed)?
            .iter()
            .map(|e| e.training_text(tokenizer))
            .collect()
    }
}

/// A registered task.
pub struct TaskDescriptor {
    pub name: &'static str,
    pub description: &'static str,
    pub defaults: fn() -> toml::Table,
    pub build: fn(&toml::Table) -> Result<Box<dyn Task>>,
}

impl Descriptor for TaskDescriptor {
    const KIND: &'static str = "task";
    fn name(&self) -> &'static str {
        self.name
    }
    fn description(&self) -> &'static str {
        self.description
    }
    fn defaults(&self) -> toml::Table {
        (self.defaults)()
    }
}

inventory::collect!(TaskDescriptor);

/// Builds a registered task by name from its parameter table.
pub fn build_task(name: &str, params: &toml::Table) -> Result<Box<dyn Task>> {
    (crate::registry::get::<TaskDescriptor>(name)?.build)(params)
}

/// Checks a needle depth (or any position fraction) parameter lies in [0, 1].
pub fn check_depth(task: &str, field: &str, depth: f64) -> Result<()> {
    if depth.is_finite() && (0.0..=1.0).contains(&depth) {
        Ok(())
    } else {
        Err(Error::Params {
            kind: "task",
            name: task.to_string(),
            reason: format!("`{field}` = {depth} must lie in [0, 1]"),
        })
    }
}
