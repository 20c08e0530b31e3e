//! The RULER needle-in-a-haystack family (Hsieh et al. 2024, "RULER: What's the Real Context
//! Size of Your Long-Context Language Models?"): `niah_single`, `niah_multikey`,
//! `niah_multivalue`, `niah_multiquery`.
//!
//! Needles read "One of the special magic {numbers} for {key} is: {value}." and hide in a
//! haystack of Paul Graham essay sentences (`essay`), the repeated passkey filler (`repeat`),
//! or distractor needles with other keys (`needle`). The prompt follows RULER's `niah` template;
//! the question is appended after compression.

use super::haystack::{filler_units, sentences, split_long, Haystack, Needle};
use super::words;
use super::{check_len, data_file, example_rng, read_essays, swept_depth, ESSAYS};
use kvcat_core::registry::{parse_params, to_table};
use kvcat_core::task::{check_depth, Context, Example, Metric, Task, TaskDescriptor};
use kvcat_core::{Error, Result, Tokenizer};
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Parameters of the needle tasks (defaults differ per variant).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NiahParams {
    /// Target context length in tokens (±5%), without BOS and question.
    pub context_len: usize,
    /// Depth in [0, 1] of the first queried key's needle(s) over the haystack; other needles
    /// go to seeded random depths. Absent sweeps 0, 0.1, …, 1 across examples.
    pub depth: Option<f64>,
    /// `essay`, `repeat` or `needle`.
    pub haystack: String,
    /// `words`, `numbers` or `uuids`.
    pub key_type: String,
    /// `numbers`, `words` or `uuids`.
    pub value_type: String,
    /// Keys hidden (RULER's `num_needle_k`; raised to `num_queries` when smaller).
    pub num_keys: usize,
    /// Values per key (`num_needle_v`).
    pub num_values: usize,
    /// Keys asked for (`num_needle_q`).
    pub num_queries: usize,
    pub max_new_tokens: usize,
    /// The essays JSON (`{"text": …}`); empty uses the packaged RULER file in the assets.
    pub essays: String,
}

impl Default for NiahParams {
    fn default() -> Self {
        Variant::Single.defaults()
    }
}

#[derive(Debug, Clone, Copy)]
enum Variant {
    Single,
    MultiKey,
    MultiValue,
    MultiQuery,
}

impl Variant {
    const fn name(self) -> &'static str {
        match self {
            Variant::Single => "niah_single",
            Variant::MultiKey => "niah_multikey",
            Variant::MultiValue => "niah_multivalue",
            Variant::MultiQuery => "niah_multiquery",
        }
    }
    fn defaults(self) -> NiahParams {
        let (haystack, k, v, q, gen) = match self {
            Variant::Single => ("repeat", 1, 1, 1, 32),
            Variant::MultiKey => ("essay", 4, 1, 1, 32),
            Variant::MultiValue => ("essay", 1, 4, 1, 64),
            Variant::MultiQuery => ("essay", 4, 1, 4, 64),
        };
        NiahParams {
            context_len: 1024,
            depth: None,
            haystack: haystack.into(),
            key_type: "words".into(),
            value_type: "numbers".into(),
            num_keys: k,
            num_values: v,
            num_queries: q,
            max_new_tokens: gen,
            essays: String::new(),
        }
    }
}

/// A needle task.
pub struct Niah {
    name: &'static str,
    p: NiahParams,
    /// Essay sentences when the haystack is `essay`.
    essay: Vec<String>,
}

fn bad(name: &str, reason: String) -> Error {
    Error::Params {
        kind: "task",
        name: name.to_string(),
        reason,
    }
}

fn check_choice(name: &str, field: &str, value: &str, allowed: &[&str]) -> Result<()> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(bad(
            name,
            format!("`{field}` = \"{value}\"; allowed: {}", allowed.join(", ")),
        ))
    }
}

impl Niah {
    fn new(variant: Variant, mut p: NiahParams) -> Result<Self> {
        let name = variant.name();
        check_len(name, p.context_len)?;
        if let Some(d) = p.depth {
            check_depth(name, "depth", d)?;
        }
        check_choice(
            name,
            "haystack",
            &p.haystack,
            &["essay", "repeat", "needle"],
        )?;
        check_choice(
            name,
            "key_type",
            &p.key_type,
            &["words", "numbers", "uuids"],
        )?;
        check_choice(
            name,
            "value_type",
            &p.value_type,
            &["numbers", "words", "uuids"],
        )?;
        if p.num_keys == 0 || p.num_values == 0 || p.num_queries == 0 {
            return Err(bad(
                name,
                "`num_keys`, `num_values` and `num_queries` must be at least 1".into(),
            ));
        }
        p.num_keys = p.num_keys.max(p.num_queries);
        let essay = if p.haystack == "essay" {
            let path = data_file(name, "essays", &p.essays, ESSAYS)?;
            split_long(sentences(&read_essays(&path)?), 16)
        } else {
            vec![]
        };
        Ok(Niah { name, p, essay })
    }

    fn draw(rng: &mut impl Rng, kind: &str) -> String {
        match kind {
            "numbers" => words::number(rng, 7),
            "uuids" => words::uuid(rng),
            _ => words::word(rng),
        }
    }

    /// Example `index` under `seed`.
    pub fn example(&self, tok: &Tokenizer, seed: u64, index: usize) -> Result<Example> {
        let p = &self.p;
        let mut rng = example_rng(seed, index);
        let keys = words::distinct(p.num_keys, || Self::draw(&mut rng, &p.key_type));
        let values = words::distinct(p.num_keys * p.num_values, || {
            Self::draw(&mut rng, &p.value_type)
        });
        let mut order: Vec<usize> = (0..p.num_keys).collect();
        order.shuffle(&mut rng);
        let queried = &order[..p.num_queries];
        let first_depth = p.depth.unwrap_or_else(|| swept_depth(index));
        let singular = p.num_queries * p.num_values == 1;
        let type_v = if singular {
            p.value_type.trim_end_matches('s').to_string()
        } else {
            p.value_type.clone()
        };
        let mut needles = Vec::new();
        for (k, key) in keys.iter().enumerate() {
            for v in 0..p.num_values {
                let depth = if k == queried[0] {
                    first_depth
                } else {
                    // RULER's 40-point depth grid.
                    (rng.random_range(0..40) as f64 / 39.0 * 100.0).round() / 100.0
                };
                needles.push(Needle {
                    text: format!(
                        "One of the special magic {} for {key} is: {}.",
                        p.value_type,
                        values[k * p.num_values + v]
                    ),
                    depth,
                });
            }
        }
        let answers: Vec<String> = queried
            .iter()
            .flat_map(|&k| values[k * p.num_values..(k + 1) * p.num_values].to_vec())
            .collect();
        let qkeys: Vec<&str> = queried.iter().map(|&k| keys[k].as_str()).collect();
        let query = match qkeys.len() {
            1 => qkeys[0].to_string(),
            n => format!("{}, and {}", qkeys[..n - 1].join(", "), qkeys[n - 1]),
        };
        let distractors: Vec<String>;
        let (units, separator) = match p.haystack.as_str() {
            "essay" => (&self.essay, " "),
            "needle" => {
                let n = p.context_len / 8 + 16;
                distractors = (0..n)
                    .map(|_| {
                        format!(
                            "One of the special magic {} for {} is: {}.",
                            p.value_type,
                            Self::draw(&mut rng, &p.key_type),
                            Self::draw(&mut rng, &p.value_type)
                        )
                    })
                    .collect();
                (&distractors, "\n")
            }
            _ => {
                distractors = filler_units();
                (&distractors, " ")
            }
        };
        let prefix = if singular {
            format!(
                "A special magic {type_v} is hidden within the following text. Make sure to \
                 memorize it. I will quiz you about the {type_v} afterwards.\n"
            )
        } else {
            format!(
                "Some special magic {type_v} are hidden within the following text. Make sure to \
                 memorize it. I will quiz you about the {type_v} afterwards.\n"
            )
        };
        let (question, answer_prefix) = if singular {
            (
                format!("\nWhat is the special magic {type_v} for {query} mentioned in the provided text?"),
                format!(" The special magic {type_v} for {query} mentioned in the provided text is"),
            )
        } else {
            (
                format!("\nWhat are all the special magic {type_v} for {query} mentioned in the provided text?"),
                format!(" The special magic {type_v} for {query} mentioned in the provided text are"),
            )
        };
        let hay = Haystack { units, separator };
        let sized = hay.build(tok, p.context_len, &prefix, "", &needles)?;
        let first = queried[0] * p.num_values;
        Ok(Example {
            id: format!("{}-{index}", self.name),
            context: Context::Text(sized.text),
            question,
            answer_prefix,
            answers,
            metric: Metric::StringMatchAll,
            max_new_tokens: p.max_new_tokens,
            continuation: vec![],
            depth: sized.depths.get(first).copied(),
        })
    }
}

impl Task for Niah {
    fn name(&self) -> &'static str {
        self.name
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

macro_rules! register {
    ($variant:expr, $defaults:ident, $build:ident, $desc:literal) => {
        fn $defaults() -> toml::Table {
            to_table(&$variant.defaults())
        }
        fn $build(t: &toml::Table) -> Result<Box<dyn Task>> {
            let mut table = to_table(&$variant.defaults());
            table.extend(t.clone());
            let p: NiahParams = parse_params("task", $variant.name(), &table)?;
            Ok(Box::new(Niah::new($variant, p)?))
        }
        inventory::submit! {
            TaskDescriptor {
                name: $variant.name(),
                description: $desc,
                defaults: $defaults,
                build: $build,
            }
        }
    };
}

register!(
    Variant::Single,
    single_defaults,
    single_build,
    "RULER niah_single: one magic number for one key (Hsieh et al. 2024)"
);
register!(
    Variant::MultiKey,
    multikey_defaults,
    multikey_build,
    "RULER niah_multikey: one queried key among distractor keys"
);
register!(
    Variant::MultiValue,
    multivalue_defaults,
    multivalue_build,
    "RULER niah_multivalue: all values of one key"
);
register!(
    Variant::MultiQuery,
    multiquery_defaults,
    multiquery_build,
    "RULER niah_multiquery: the values of several keys"
);
