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

use crate::registry::Registration;
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
    /// The first gold answer as it follows the prompt (`question ++ answer_prefix`) in a
    /// training row and under teacher forcing: with a leading space unless the prompt ends in
    /// whitespace or the answer starts with it. With a byte-level BPE, `k: 7` and `k:7` tokenize
    /// differently, so training text and answer scoring must agree with what a model generates
    /// after the prompt. `None` when the example has no gold answer.
    pub fn answer_continuation(&self) -> Option<String> {
        let answer = self.answers.first()?;
        let prompt_end = if self.answer_prefix.is_empty() {
            &self.question
        } else {
            &self.answer_prefix
        };
        let needs_space = !prompt_end.is_empty()
            && !prompt_end.ends_with(char::is_whitespace)
            && !answer.starts_with(char::is_whitespace);
        Some(if needs_space {
            format!(" {answer}")
        } else {
            answer.clone()
        })
    }

    /// Plain-text rendering for training: context, question, answer prefix and the first gold
    /// answer ([`Example::answer_continuation`]), joined token-for-token as evaluation feeds
    /// them (token contexts and continuations are decoded with `tokenizer`).
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
        if let Some(a) = self.answer_continuation() {
            text.push_str(&a);
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
    /// One training row of exactly `seq_len` token ids, deterministic in `seed`, for mixing
    /// this task into training data (the trainer draws a fresh seed per row), with the
    /// positions whose tokens are prediction targets.
    ///
    /// The default packs whole examples ([`Example::training_text`], separated by a blank
    /// line) and fills the rest of the row with `pad`; it never cuts an example, except one
    /// that alone is longer than the row. Tasks whose examples carry few targets per token
    /// (retrieval) should override this with a denser rendering, as `mqar` does.
    fn training_row(
        &self,
        tokenizer: &Tokenizer,
        seq_len: usize,
        seed: u64,
        pad: i64,
    ) -> Result<TrainingRow> {
        pack_examples(self, tokenizer, seq_len, seed, pad)
    }
}

/// A synthetic training row: `ids` (`seq_len` tokens) and which of them the next-token loss
/// scores. Retrieval tasks score only what can be retrieved (Zoology's MQAR scores only the
/// values of its queries), so that the gradient is not drowned by tokens that no model can
/// predict (random keys and values on their first appearance).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingRow {
    pub ids: Vec<i64>,
    /// `targets[i]`: whether `ids[i]` is scored. `None`: every token is.
    pub targets: Option<Vec<bool>>,
}

impl TrainingRow {
    /// A row whose every token is a target.
    pub fn dense(ids: Vec<i64>) -> TrainingRow {
        TrainingRow { ids, targets: None }
    }
}

/// Whole examples of `task` (drawn with `seed`) packed into one row of `seq_len` ids, padded
/// with `pad`; the first example is truncated when it alone exceeds the row.
pub fn pack_examples<T: Task + ?Sized>(
    task: &T,
    tokenizer: &Tokenizer,
    seq_len: usize,
    seed: u64,
    pad: i64,
) -> Result<TrainingRow> {
    let mut row: Vec<i64> = Vec::with_capacity(seq_len);
    let mut round: u64 = 0;
    loop {
        // Examples are drawn a few at a time; a row rarely holds more than a handful.
        let round_seed = seed.wrapping_add(round.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let texts = task.training_texts(tokenizer, 4, round_seed)?;
        if texts.is_empty() {
            return Err(Error::invalid(format!(
                "task `{}` rendered no training example",
                task.name()
            )));
        }
        for text in &texts {
            let ids = tokenizer.encode(&format!("{text}\n\n"))?;
            if row.is_empty() && ids.len() >= seq_len {
                return Ok(TrainingRow::dense(ids[..seq_len].to_vec()));
            }
            if row.len() + ids.len() > seq_len {
                row.resize(seq_len, pad);
                return Ok(TrainingRow::dense(row));
            }
            row.extend(ids);
        }
        round += 1;
    }
}

/// A registered task.
pub type TaskDescriptor = Registration<dyn Task>;

crate::plugin_kind!(dyn Task, "task");

/// Builds a registered task by name from its parameter table.
pub fn build_task(name: &str, params: &toml::Table) -> Result<Box<dyn Task>> {
    crate::registry::build(name, params)
}

/// Declares a task whose examples are built one at a time by
/// `self.example(tokenizer, seed, index) -> Result<Example>` from its parameters in field `p`,
/// and registers it: implements [`Task`] (name, params, `target_len`, examples, and optionally
/// a dense `training_row` method `fn(&self, tokenizer, seq_len, seed) -> Result<TrainingRow>`)
/// and submits a [`TaskDescriptor`] built by `$ty::new(params)`.
///
/// ```ignore
/// kvcat_core::task!(
///     Passkey(PasskeyParams),
///     "passkey",
///     "passkey retrieval in repeated filler (Mohtashami & Jaggi 2023)",
///     target_len: |p| p.context_len,
/// );
/// ```
///
/// A type registered under several names (one per variant) writes the two halves:
/// `kvcat_core::task!(@impl Niah, name: |s| s.name, target_len: |p| p.context_len);` and one
/// [`register_task!`](crate::register_task) per name.
#[macro_export]
macro_rules! task {
    ($ty:ident($params:ty), $name:expr, $desc:literal, target_len: |$p:ident| $len:expr
     $(, training_row: $row:ident)? $(,)?) => {
        $crate::task!(@impl $ty, name: |_task| $name, target_len: |$p| $len $(, training_row: $row)?);
        $crate::register_task!($name, $desc, $params, |params| $ty::new(params));
    };
    (@impl $ty:ident, name: |$s:ident| $name:expr, target_len: |$p:ident| $len:expr
     $(, training_row: $row:ident)? $(,)?) => {
        impl $crate::task::Task for $ty {
            fn name(&self) -> &'static str {
                let $s = self;
                $name
            }
            fn params(&self) -> $crate::toml::Table {
                $crate::registry::to_table(&self.p)
            }
            fn target_len(&self) -> Option<usize> {
                let $p = &self.p;
                Some($len)
            }
            fn examples(
                &self,
                tokenizer: &$crate::Tokenizer,
                n: usize,
                seed: u64,
            ) -> $crate::Result<Vec<$crate::task::Example>> {
                (0..n).map(|i| self.example(tokenizer, seed, i)).collect()
            }
            $(
            fn training_row(
                &self,
                tokenizer: &$crate::Tokenizer,
                seq_len: usize,
                seed: u64,
                _pad: i64,
            ) -> $crate::Result<$crate::task::TrainingRow> {
                self.$row(tokenizer, seq_len, seed)
            }
            )?
        }
    };
}

/// Registers a task: [`register!`](crate::register) with the kind `dyn Task`.
#[macro_export]
macro_rules! register_task {
    ($($args:tt)*) => {
        $crate::register!(dyn $crate::task::Task, $($args)*);
    };
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
