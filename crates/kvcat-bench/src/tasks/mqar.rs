//! `mqar`: multi-query associative recall (Arora et al. 2023, "Zoology: Measuring and
//! Improving Recall in Efficient Language Models"), as text for tiny models.
//!
//! The context is a list of `key: value` pairs (random lower-case keys, random numbers) filling
//! the target length. The question replays `num_queries − 1` pairs drawn from the list as
//! worked queries and ends with one more key; the model must recall its value.

use super::haystack::{Haystack, Needle};
use super::{check_len, example_rng, swept_depth, words};
use kvcat_core::registry::{parse_params, to_table};
use kvcat_core::task::{check_depth, Context, Example, Metric, Task, TaskDescriptor};
use kvcat_core::{Error, Result, Tokenizer};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Parameters of `mqar`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqarParams {
    /// Target context length in tokens (±5%).
    pub context_len: usize,
    /// Depth in [0, 1] of the asked pair; absent sweeps 0, 0.1, …, 1 across examples.
    pub depth: Option<f64>,
    /// Letters per key.
    pub key_len: usize,
    /// Digits per value.
    pub value_digits: u32,
    /// Queries in the question (the last one is scored).
    pub num_queries: usize,
    pub max_new_tokens: usize,
}

impl Default for MqarParams {
    fn default() -> Self {
        MqarParams {
            context_len: 512,
            depth: None,
            key_len: 3,
            value_digits: 3,
            num_queries: 4,
            max_new_tokens: 4,
        }
    }
}

const NAME: &str = "mqar";

/// The `mqar` task.
pub struct Mqar {
    p: MqarParams,
}

impl Mqar {
    pub fn new(p: MqarParams) -> Result<Self> {
        check_len(NAME, p.context_len)?;
        if let Some(d) = p.depth {
            check_depth(NAME, "depth", d)?;
        }
        let bad = |reason: String| Error::Params {
            kind: "task",
            name: NAME.into(),
            reason,
        };
        if !(1..=8).contains(&p.key_len) {
            return Err(bad(format!("`key_len` = {} must lie in 1..=8", p.key_len)));
        }
        if !(1..=9).contains(&p.value_digits) {
            return Err(bad(format!(
                "`value_digits` = {} must lie in 1..=9",
                p.value_digits
            )));
        }
        if p.num_queries == 0 {
            return Err(bad("`num_queries` must be at least 1".into()));
        }
        Ok(Mqar { p })
    }

    /// Example `index` under `seed`.
    pub fn example(&self, tok: &Tokenizer, seed: u64, index: usize) -> Result<Example> {
        let p = &self.p;
        let mut rng = example_rng(seed, index);
        // More pairs than can fit; the haystack builder uses a prefix of them.
        let n_pairs = p.context_len / 2 + 8;
        let keys = words::distinct(n_pairs + 1, || words::lower(&mut rng, p.key_len));
        let values: Vec<String> = (0..=n_pairs)
            .map(|_| words::number(&mut rng, p.value_digits))
            .collect();
        // The asked pair is the needle; the rest are the haystack.
        let (asked_key, asked_value) = (keys[n_pairs].clone(), values[n_pairs].clone());
        let units: Vec<String> = (0..n_pairs)
            .map(|i| format!("{}: {}", keys[i], values[i]))
            .collect();
        let needle = Needle {
            text: format!("{asked_key}: {asked_value}"),
            depth: p.depth.unwrap_or_else(|| swept_depth(index)),
        };
        let hay = Haystack {
            units: &units,
            separator: "\n",
        };
        let sized = hay.build(tok, p.context_len, "", "", &[needle])?;
        // Worked queries from pairs that made it into the context.
        let mut question = String::from("\n");
        for _ in 1..p.num_queries {
            let i = rng.random_range(0..sized.units.max(1));
            question.push_str(&format!("{}: {}\n", keys[i], values[i]));
        }
        question.push_str(&format!("{asked_key}:"));
        Ok(Example {
            id: format!("{NAME}-{index}"),
            context: Context::Text(sized.text),
            question,
            answer_prefix: String::new(),
            answers: vec![asked_value],
            metric: Metric::StringMatchAll,
            max_new_tokens: p.max_new_tokens,
            continuation: vec![],
            depth: sized.depths.first().copied(),
        })
    }
}

impl Task for Mqar {
    fn name(&self) -> &'static str {
        NAME
    }
    fn params(&self) -> toml::Table {
        to_table(&self.p)
    }
    fn target_len(&self) -> Option<usize> {
        Some(self.p.context_len)
    }
    fn examples(&self, tok: &Tokenizer, n: usize, seed: u64) -> Result<Vec<Example>> {
        (0..n).map(|i| self.example(tok, seed, i)).collect()
    }
}

fn defaults() -> toml::Table {
    to_table(&MqarParams::default())
}

fn build(t: &toml::Table) -> Result<Box<dyn Task>> {
    Ok(Box::new(Mqar::new(parse_params("task", NAME, t)?)?))
}

inventory::submit! {
    TaskDescriptor {
        name: NAME,
        description: "multi-query associative recall over key: value lines (Arora et al. 2023)",
        defaults,
        build,
    }
}
