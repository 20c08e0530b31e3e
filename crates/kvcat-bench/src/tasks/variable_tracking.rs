//! `variable_tracking`: RULER's multi-hop tracing task (Hsieh et al. 2024). Chains of
//! assignments `VAR A = 12345`, `VAR B = VAR A`, … hide in repeated filler; the model must list
//! every variable that ends up holding the first chain's value. (RULER also prepends one
//! solved in-context example; kvcat does not, to keep the context length exact.)

use super::haystack::{filler_units, Haystack, Needle};
use super::{check_len, example_rng, words};
use kvcat_core::task::{Context, Example, Metric};
use kvcat_core::{Error, Result, Tokenizer};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Parameters of `variable_tracking`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VariableTrackingParams {
    /// Target context length in tokens (±5%).
    pub context_len: usize,
    /// Independent chains (the first is asked about).
    pub num_chains: usize,
    /// Hops per chain (a chain names `num_hops + 1` variables).
    pub num_hops: usize,
    pub max_new_tokens: usize,
}

impl Default for VariableTrackingParams {
    fn default() -> Self {
        VariableTrackingParams {
            context_len: 1024,
            num_chains: 1,
            num_hops: 4,
            max_new_tokens: 30,
        }
    }
}

const NAME: &str = "variable_tracking";

/// The `variable_tracking` task.
pub struct VariableTracking {
    p: VariableTrackingParams,
}

impl VariableTracking {
    pub fn new(p: VariableTrackingParams) -> Result<Self> {
        check_len(NAME, p.context_len)?;
        if p.num_chains == 0 || p.num_hops == 0 {
            return Err(Error::Params {
                kind: "task",
                name: NAME.into(),
                reason: "`num_chains` and `num_hops` must be at least 1".into(),
            });
        }
        Ok(VariableTracking { p })
    }

    /// Example `index` under `seed`.
    pub fn example(&self, tok: &Tokenizer, seed: u64, index: usize) -> Result<Example> {
        let p = &self.p;
        let mut rng = example_rng(seed, index);
        let per = p.num_hops + 1;
        let vars = words::distinct(per * p.num_chains, || words::upper(&mut rng, 5));
        let mut needles = Vec::new();
        let mut first_value = String::new();
        for c in 0..p.num_chains {
            let v = &vars[c * per..(c + 1) * per];
            let value = rng.random_range(10000..100000).to_string();
            if c == 0 {
                first_value = value.clone();
            }
            // Statements of a chain in order, at sorted random depths.
            let mut depths: Vec<f64> = (0..per).map(|_| rng.random::<f64>()).collect();
            depths.sort_by(f64::total_cmp);
            needles.push(Needle {
                text: format!("VAR {} = {value}.", v[0]),
                depth: depths[0],
            });
            for j in 1..per {
                needles.push(Needle {
                    text: format!("VAR {} = VAR {}.", v[j], v[j - 1]),
                    depth: depths[j],
                });
            }
        }
        let prefix = "Memorize and track the chain(s) of variable assignment hidden in the \
                      following text.\n\n";
        let units = filler_units();
        let hay = Haystack {
            units: &units,
            separator: " ",
        };
        let sized = hay.build(tok, p.context_len, prefix, "", &needles)?;
        Ok(Example {
            id: format!("{NAME}-{index}"),
            context: Context::Text(sized.text),
            question: format!(
                "\nQuestion: Find all variables that are assigned the value {first_value} in \
                 the text above."
            ),
            answer_prefix: format!(
                " Answer: According to the chain(s) of variable assignment in the text above, \
                 {per} variables are assigned the value {first_value}, they are: "
            ),
            answers: vars[..per].to_vec(),
            metric: Metric::StringMatchAll,
            max_new_tokens: p.max_new_tokens,
            continuation: vec![],
            depth: sized.depths.first().copied(),
        })
    }
}

kvcat_core::task!(
    VariableTracking(VariableTrackingParams),
    NAME,
    "RULER variable tracking: list the variables of an assignment chain",
    target_len: |p| p.context_len,
);
