//! `passkey`: the passkey retrieval test of Mohtashami & Jaggi (2023), "Landmark Attention:
//! Random-Access Infinite Context Length for Transformers". A random number is hidden at a depth
//! in repeated filler text; the model must repeat it.

use super::haystack::{filler_units, Haystack, Needle};
use super::{check_len, example_rng, swept_depth};
use kvcat_core::task::{check_depth, Context, Example, Metric};
use kvcat_core::{Error, Result, Tokenizer};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Parameters of `passkey`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PasskeyParams {
    /// Target context length in tokens (±5%), without BOS and question.
    pub context_len: usize,
    /// Needle depth in [0, 1] over the filler; absent sweeps 0, 0.1, …, 1 across examples.
    pub depth: Option<f64>,
    /// Digits of the pass key.
    pub digits: u32,
    pub max_new_tokens: usize,
}

impl Default for PasskeyParams {
    fn default() -> Self {
        PasskeyParams {
            context_len: 1024,
            depth: None,
            digits: 5,
            max_new_tokens: 10,
        }
    }
}

const NAME: &str = "passkey";
const PREFIX: &str = "There is an important info hidden inside a lot of irrelevant text. Find it \
and memorize it. I will quiz you about the important information there.\n";

/// The passkey task.
pub struct Passkey {
    p: PasskeyParams,
}

impl Passkey {
    pub fn new(p: PasskeyParams) -> Result<Self> {
        check_len(NAME, p.context_len)?;
        if let Some(d) = p.depth {
            check_depth(NAME, "depth", d)?;
        }
        if !(1..=18).contains(&p.digits) {
            return Err(Error::Params {
                kind: "task",
                name: NAME.into(),
                reason: format!("`digits` = {} must lie in 1..=18", p.digits),
            });
        }
        Ok(Passkey { p })
    }

    /// Example `index` under `seed`.
    pub fn example(&self, tok: &Tokenizer, seed: u64, index: usize) -> Result<Example> {
        let mut rng = example_rng(seed, index);
        let lo = 10u64.pow(self.p.digits - 1);
        let key = rng.random_range(lo..lo * 10).to_string();
        let depth = self.p.depth.unwrap_or_else(|| swept_depth(index));
        let needle = Needle {
            text: format!("The pass key is {key}. Remember it. {key} is the pass key."),
            depth,
        };
        let units = filler_units();
        let hay = Haystack {
            units: &units,
            separator: " ",
        };
        let sized = hay.build(tok, self.p.context_len, PREFIX, "", &[needle])?;
        Ok(Example {
            id: format!("{NAME}-{index}"),
            context: Context::Text(sized.text),
            question: "\nWhat is the pass key?".into(),
            answer_prefix: " The pass key is".into(),
            answers: vec![key],
            metric: Metric::StringMatchAll,
            max_new_tokens: self.p.max_new_tokens,
            continuation: vec![],
            depth: sized.depths.first().copied(),
        })
    }
}

kvcat_core::task!(
    Passkey(PasskeyParams),
    NAME,
    "passkey retrieval in repeated filler (Mohtashami & Jaggi 2023)",
    target_len: |p| p.context_len,
);
