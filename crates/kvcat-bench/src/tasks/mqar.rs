//! `mqar`: multi-query associative recall (Arora et al. 2023, "Zoology: Measuring and
//! Improving Recall in Efficient Language Models"), as text that any tokenizer reads.
//!
//! The context is a list of key–value lines; the question replays `num_queries − 1` pairs of
//! the context as worked queries and ends with one more key, whose value the model must
//! recall. Two formats:
//!
//! - `tokens` (default): Zoology's token-level MQAR. Keys and values are whole words that the
//!   evaluated model's tokenizer encodes as *one* token each (` king`, ` love`), drawn from
//!   disjoint key and value pools read off that tokenizer's vocabulary; a line is
//!   ` <key> <value>`. Retrieval is then one induction step, which a tiny model learns on CPU,
//!   and the same task runs unchanged on a real model (SmolLM2's pools are just larger).
//! - `lines`: `<key>: <value>` with random lower-case keys of `key_len` letters and numbers of
//!   `value_digits` digits (several tokens each).
//!
//! For training, [`kvcat_core::task::Task::training_row`] renders a dense row as Zoology does: a random number
//! of pairs followed by queries that fill the row, in exactly the text evaluation feeds, and
//! scores only the queries' values (the retrievable tokens).

use super::haystack::{Haystack, Needle};
use super::{check_len, example_rng, swept_depth, words};
use kvcat_core::task::{check_depth, Context, Example, Metric, TrainingRow};
use kvcat_core::{Error, Result, Tokenizer};
use rand::rngs::StdRng;
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

/// How keys and values are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MqarFormat {
    /// ` <key> <value>` with single-token words (token-level MQAR).
    Tokens,
    /// `<key>: <value>` with letter keys and digit values.
    Lines,
}

/// Parameters of `mqar`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqarParams {
    /// Target context length in tokens (±5%).
    pub context_len: usize,
    /// Depth in [0, 1] of the asked pair; absent sweeps 0, 0.1, …, 1 across examples.
    pub depth: Option<f64>,
    pub format: MqarFormat,
    /// `tokens` format: words per pool (keys, values) taken from the tokenizer, most frequent
    /// first (lowest ids); 0 takes every single-token word.
    pub pool_size: usize,
    /// `lines` format: letters per key.
    pub key_len: usize,
    /// `lines` format: digits per value.
    pub value_digits: u32,
    /// Queries in the question (the last one is scored).
    pub num_queries: usize,
    /// Training rows: the fewest pairs a row lists before its queries (the most is what fills
    /// `context_len`), so rows mix easy short contexts with full-length ones.
    pub min_train_pairs: usize,
    /// Training rows: the most pairs a row lists (0: what fills `context_len`). Few pairs make
    /// the induction circuit form sooner (docs/benchmarks/evidence.md).
    pub max_train_pairs: usize,
    pub max_new_tokens: usize,
}

impl Default for MqarParams {
    fn default() -> Self {
        MqarParams {
            context_len: 512,
            depth: None,
            format: MqarFormat::Tokens,
            pool_size: 0,
            key_len: 3,
            value_digits: 3,
            num_queries: 4,
            min_train_pairs: 4,
            max_train_pairs: 0,
            max_new_tokens: 4,
        }
    }
}

const NAME: &str = "mqar";

/// Disjoint key and value words (without their leading space) that a tokenizer encodes, with
/// a leading space, as one token each.
#[derive(Debug)]
struct WordPools {
    keys: Vec<String>,
    values: Vec<String>,
}

/// A cheap identity of a tokenizer for the pool cache: its size and its first token strings.
fn fingerprint(tok: &Tokenizer) -> Result<String> {
    let n = tok.vocab_size() as i64;
    let head: Vec<i64> = (0..n.min(64)).collect();
    Ok(format!("{n}:{}", tok.decode(&head)?))
}

impl WordPools {
    /// Reads the single-token words (` [a-z]{2,}`) of `tok` in id order and deals them
    /// alternately to keys and values, `per_pool` each at most (0: all).
    fn read(tok: &Tokenizer, per_pool: usize) -> Result<WordPools> {
        let mut keys = Vec::new();
        let mut values = Vec::new();
        for id in 0..tok.vocab_size() as i64 {
            let s = tok.decode(&[id])?;
            let Some(word) = s.strip_prefix(' ') else {
                continue;
            };
            if word.len() < 2 || !word.bytes().all(|b| b.is_ascii_lowercase()) {
                continue;
            }
            if tok.encode(&s)? != [id] {
                continue;
            }
            let pool = if keys.len() <= values.len() {
                &mut keys
            } else {
                &mut values
            };
            if per_pool == 0 || pool.len() < per_pool {
                pool.push(word.to_string());
            }
        }
        Ok(WordPools { keys, values })
    }
}

/// The `mqar` task.
pub struct Mqar {
    p: MqarParams,
    pools: Mutex<Option<(String, Arc<WordPools>)>>,
}

/// A drawn set of pairs, rendered as lines.
struct Pairs {
    keys: Vec<String>,
    values: Vec<String>,
    format: MqarFormat,
}

impl Pairs {
    fn line(&self, i: usize) -> String {
        match self.format {
            MqarFormat::Tokens => format!(" {} {}", self.keys[i], self.values[i]),
            MqarFormat::Lines => format!("{}: {}", self.keys[i], self.values[i]),
        }
    }
    /// The question's final line: the key, up to where the value starts.
    fn query(&self, i: usize) -> String {
        match self.format {
            MqarFormat::Tokens => format!(" {}", self.keys[i]),
            MqarFormat::Lines => format!("{}:", self.keys[i]),
        }
    }
    /// The value as it follows [`Pairs::query`]; `query(i) + value(i) == line(i)`.
    fn value(&self, i: usize) -> String {
        format!(" {}", self.values[i])
    }
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
        if p.min_train_pairs == 0 {
            return Err(bad("`min_train_pairs` must be at least 1".into()));
        }
        Ok(Mqar {
            p,
            pools: Mutex::new(None),
        })
    }

    /// The word pools of `tok`, read once per tokenizer.
    fn pools(&self, tok: &Tokenizer) -> Result<Arc<WordPools>> {
        let fp = fingerprint(tok)?;
        let mut cache = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((f, pools)) = cache.as_ref() {
            if *f == fp {
                return Ok(pools.clone());
            }
        }
        let pools = Arc::new(WordPools::read(tok, self.p.pool_size)?);
        *cache = Some((fp, pools.clone()));
        Ok(pools)
    }

    /// Draws `n` pairs with distinct keys.
    fn draw_pairs(&self, tok: &Tokenizer, rng: &mut StdRng, n: usize) -> Result<Pairs> {
        let p = &self.p;
        let (keys, values) = match p.format {
            MqarFormat::Lines => {
                let keys = words::distinct(n, || words::lower(rng, p.key_len));
                let values = (0..n).map(|_| words::number(rng, p.value_digits)).collect();
                (keys, values)
            }
            MqarFormat::Tokens => {
                let pools = self.pools(tok)?;
                if pools.keys.len() < n || pools.values.is_empty() {
                    return Err(Error::Params {
                        kind: "task",
                        name: NAME.into(),
                        reason: format!(
                            "`format` = \"tokens\" needs {n} distinct single-token key words for \
                             `context_len` = {}, but this tokenizer has {} (and {} value words); \
                             lower `context_len` or use `format` = \"lines\"",
                            p.context_len,
                            pools.keys.len(),
                            pools.values.len()
                        ),
                    });
                }
                let keys = sample(rng, pools.keys.len(), n)
                    .into_iter()
                    .map(|i| pools.keys[i].clone())
                    .collect();
                let values = (0..n)
                    .map(|_| pools.values[rng.random_range(0..pools.values.len())].clone())
                    .collect();
                (keys, values)
            }
        };
        Ok(Pairs {
            keys,
            values,
            format: p.format,
        })
    }

    /// Pairs that can fill `context_len` (the haystack takes a prefix of them).
    fn pairs_for_context(&self) -> usize {
        match self.p.format {
            MqarFormat::Tokens => self.p.context_len / 3 + 2,
            MqarFormat::Lines => self.p.context_len / 2 + 8,
        }
    }

    /// Example `index` under `seed`.
    pub fn example(&self, tok: &Tokenizer, seed: u64, index: usize) -> Result<Example> {
        let p = &self.p;
        let mut rng = example_rng(seed, index);
        let n_pairs = self.pairs_for_context();
        let pairs = self.draw_pairs(tok, &mut rng, n_pairs + 1)?;
        // The asked pair (the last) is the needle; the rest are the haystack.
        let units: Vec<String> = (0..n_pairs).map(|i| pairs.line(i)).collect();
        let needle = Needle {
            text: pairs.line(n_pairs),
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
            question.push_str(&pairs.line(i));
            question.push('\n');
        }
        question.push_str(&pairs.query(n_pairs));
        Ok(Example {
            id: format!("{NAME}-{index}"),
            context: Context::Text(sized.text),
            question,
            answer_prefix: String::new(),
            answers: vec![pairs.values[n_pairs].clone()],
            metric: Metric::StringMatchAll,
            max_new_tokens: p.max_new_tokens,
            continuation: vec![],
            depth: sized.depths.first().copied(),
        })
    }

    /// A dense training row: `m` pairs (`min_train_pairs ≤ m`, at most `max_train_pairs`, what
    /// fills `context_len` and three quarters of the row), then query lines replaying random pairs
    /// until the row is full, cut at `seq_len` tokens. Targets: the value tokens of the query
    /// lines. Lines are tokenized piecewise (key part, value, newline); a byte-level
    /// pre-tokenizer splits at those boundaries anyway, so the ids equal those of the joined
    /// text that evaluation tokenizes.
    fn dense_row(&self, tok: &Tokenizer, seq_len: usize, seed: u64) -> Result<TrainingRow> {
        let mut rng = StdRng::seed_from_u64(seed);
        let per_line = match self.p.format {
            MqarFormat::Tokens => 3,
            MqarFormat::Lines => 2 + self.p.key_len.div_ceil(2) + self.p.value_digits as usize,
        };
        let mut most = (self.p.context_len / per_line)
            .min(seq_len * 3 / (4 * per_line))
            .max(1);
        if self.p.max_train_pairs > 0 {
            most = most.min(self.p.max_train_pairs);
        }
        let least = self.p.min_train_pairs.min(most);
        let m = rng.random_range(least..=most);
        let pairs = self.draw_pairs(tok, &mut rng, m)?;
        let newline = tok.encode("\n")?;
        let mut ids: Vec<i64> = Vec::with_capacity(seq_len + 16);
        let mut targets: Vec<bool> = Vec::with_capacity(seq_len + 16);
        let mut line = 0usize;
        while ids.len() < seq_len {
            let (i, is_query) = if line < m {
                (line, false)
            } else {
                (rng.random_range(0..m), true)
            };
            if line > 0 {
                targets.extend(std::iter::repeat_n(false, newline.len()));
                ids.extend_from_slice(&newline);
            }
            let key = tok.encode(&pairs.query(i))?;
            targets.extend(std::iter::repeat_n(false, key.len()));
            ids.extend(key);
            let value = tok.encode(&pairs.value(i))?;
            targets.extend(std::iter::repeat_n(is_query, value.len()));
            ids.extend(value);
            line += 1;
        }
        ids.truncate(seq_len);
        targets.truncate(seq_len);
        Ok(TrainingRow {
            ids,
            targets: Some(targets),
        })
    }
}

kvcat_core::task!(
    Mqar(MqarParams),
    NAME,
    "multi-query associative recall (Arora et al. 2023): token-level word pairs, or key: value lines",
    target_len: |p| p.context_len,
    training_row: dense_row,
);
