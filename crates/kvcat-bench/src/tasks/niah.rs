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
use super::{check_len, data_file, example_rng, read_essays, swept_depth, Choice, ESSAYS};
use kvcat_core::task::{check_depth, Context, Example, Metric};
use kvcat_core::{Error, Result, Tokenizer};
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// Parameters of the needle tasks (defaults differ per variant).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NiahParams {
    /// Target context length in tokens (±5%), without BOS and question.
    pub context_len: usize,
    /// Depth in [0, 1] of the first queried key's needle(s) over the haystack; other needles
    /// go to seeded random depths. Absent sweeps 0, 0.1, …, 1 across examples.
    pub depth: Option<f64>,
    /// What fills the haystack.
    pub haystack: HaystackKind,
    /// What the keys are.
    pub key_type: ItemKind,
    /// What the values are.
    pub value_type: ItemKind,
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

choice_enum! {
    /// What fills a needle task's haystack.
    pub enum HaystackKind {
        /// Paul Graham essay sentences.
        Essay = "essay",
        /// The repeated passkey filler.
        Repeat = "repeat",
        /// Distractor needles with other keys, one per line.
        Needle = "needle",
    }
}

choice_enum! {
    /// What a needle's keys or values are; the name is also the plural noun in the prompt
    /// ("special magic numbers").
    pub enum ItemKind {
        Words = "words",
        Numbers = "numbers",
        Uuids = "uuids",
    }
}

impl ItemKind {
    /// One random item of this kind.
    fn draw(self, rng: &mut impl Rng) -> String {
        match self {
            ItemKind::Numbers => words::number(rng, 7),
            ItemKind::Uuids => words::uuid(rng),
            ItemKind::Words => words::word(rng),
        }
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
            Variant::Single => (HaystackKind::Repeat, 1, 1, 1, 32),
            Variant::MultiKey => (HaystackKind::Essay, 4, 1, 1, 32),
            Variant::MultiValue => (HaystackKind::Essay, 1, 4, 1, 64),
            Variant::MultiQuery => (HaystackKind::Essay, 4, 1, 4, 64),
        };
        NiahParams {
            context_len: 1024,
            depth: None,
            haystack,
            key_type: ItemKind::Words,
            value_type: ItemKind::Numbers,
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

impl Niah {
    fn new(variant: Variant, mut p: NiahParams) -> Result<Self> {
        let name = variant.name();
        check_len(name, p.context_len)?;
        if let Some(d) = p.depth {
            check_depth(name, "depth", d)?;
        }
        if p.num_keys == 0 || p.num_values == 0 || p.num_queries == 0 {
            return Err(bad(
                name,
                "`num_keys`, `num_values` and `num_queries` must be at least 1".into(),
            ));
        }
        p.num_keys = p.num_keys.max(p.num_queries);
        let essay = if p.haystack == HaystackKind::Essay {
            let path = data_file(name, "essays", &p.essays, ESSAYS)?;
            split_long(sentences(&read_essays(&path)?), 16)
        } else {
            vec![]
        };
        Ok(Niah { name, p, essay })
    }

    /// Example `index` under `seed`.
    pub fn example(&self, tok: &Tokenizer, seed: u64, index: usize) -> Result<Example> {
        let p = &self.p;
        let mut rng = example_rng(seed, index);
        let keys = words::distinct(p.num_keys, || p.key_type.draw(&mut rng));
        let values = words::distinct(p.num_keys * p.num_values, || p.value_type.draw(&mut rng));
        let mut order: Vec<usize> = (0..p.num_keys).collect();
        order.shuffle(&mut rng);
        let queried = &order[..p.num_queries];
        let first_depth = p.depth.unwrap_or_else(|| swept_depth(index));
        let needles = self.needles(&keys, &values, queried[0], first_depth, &mut rng);
        let answers: Vec<String> = queried
            .iter()
            .flat_map(|&k| values[k * p.num_values..(k + 1) * p.num_values].to_vec())
            .collect();
        let qkeys: Vec<&str> = queried.iter().map(|&k| keys[k].as_str()).collect();
        let (units, separator) = self.haystack_units(&mut rng);
        let prompt = Prompt::new(p, &qkeys);
        let hay = Haystack {
            units: &units,
            separator,
        };
        let sized = hay.build(tok, p.context_len, &prompt.prefix, "", &needles)?;
        let first = queried[0] * p.num_values;
        Ok(Example {
            id: format!("{}-{index}", self.name),
            context: Context::Text(sized.text),
            question: prompt.question,
            answer_prefix: prompt.answer_prefix,
            answers,
            metric: Metric::StringMatchAll,
            max_new_tokens: p.max_new_tokens,
            continuation: vec![],
            depth: sized.depths.get(first).copied(),
        })
    }

    /// The `num_values` needles of every key, in key order: the first queried key's at
    /// `first_depth`, the others at seeded depths on RULER's 40-point grid.
    fn needles(
        &self,
        keys: &[String],
        values: &[String],
        first_queried: usize,
        first_depth: f64,
        rng: &mut impl Rng,
    ) -> Vec<Needle> {
        let p = &self.p;
        let mut needles = Vec::with_capacity(keys.len() * p.num_values);
        for (k, key) in keys.iter().enumerate() {
            for v in 0..p.num_values {
                let depth = if k == first_queried {
                    first_depth
                } else {
                    (rng.random_range(0..40) as f64 / 39.0 * 100.0).round() / 100.0
                };
                needles.push(Needle {
                    text: format!(
                        "One of the special magic {} for {key} is: {}.",
                        p.value_type.name(),
                        values[k * p.num_values + v]
                    ),
                    depth,
                });
            }
        }
        needles
    }

    /// The haystack's units and separator: the essay sentences, `context_len / 8 + 16` seeded
    /// distractor needles (one per line), or the repeated filler.
    fn haystack_units(&self, rng: &mut impl Rng) -> (Cow<'_, [String]>, &'static str) {
        let p = &self.p;
        match p.haystack {
            HaystackKind::Essay => (Cow::Borrowed(&self.essay[..]), " "),
            HaystackKind::Needle => {
                let n = p.context_len / 8 + 16;
                let distractors = (0..n)
                    .map(|_| {
                        format!(
                            "One of the special magic {} for {} is: {}.",
                            p.value_type.name(),
                            p.key_type.draw(rng),
                            p.value_type.draw(rng)
                        )
                    })
                    .collect();
                (Cow::Owned(distractors), "\n")
            }
            HaystackKind::Repeat => (Cow::Owned(filler_units()), " "),
        }
    }
}

/// RULER's `niah` prompt: the instruction before the haystack, and the question and answer
/// prefix after it.
struct Prompt {
    prefix: String,
    question: String,
    answer_prefix: String,
}

impl Prompt {
    /// The prompt asking for the values of `keys` (singular when one value is asked for).
    fn new(p: &NiahParams, keys: &[&str]) -> Prompt {
        let query = match keys.len() {
            1 => keys[0].to_string(),
            n => format!("{}, and {}", keys[..n - 1].join(", "), keys[n - 1]),
        };
        let noun = p.value_type.name();
        let (type_v, article, verb, what) = if p.num_queries * p.num_values == 1 {
            (noun.trim_end_matches('s'), "A", "is", "What is")
        } else {
            (noun, "Some", "are", "What are all")
        };
        Prompt {
            prefix: format!(
                "{article} special magic {type_v} {verb} hidden within the following text. Make \
                 sure to memorize it. I will quiz you about the {type_v} afterwards.\n"
            ),
            question: format!(
                "\n{what} the special magic {type_v} for {query} mentioned in the provided text?"
            ),
            answer_prefix: format!(
                " The special magic {type_v} for {query} mentioned in the provided text {verb}"
            ),
        }
    }
}

kvcat_core::task!(@impl Niah, name: |s| s.name, target_len: |p| p.context_len);

/// Registers one needle variant under its name, with its own defaults.
macro_rules! register_variant {
    ($variant:expr, $desc:literal) => {
        kvcat_core::register_task!(
            $variant.name(),
            $desc,
            defaults: $variant.defaults(),
            NiahParams,
            |p| Niah::new($variant, p)
        );
    };
}

register_variant!(
    Variant::Single,
    "RULER niah_single: one magic number for one key (Hsieh et al. 2024)"
);
register_variant!(
    Variant::MultiKey,
    "RULER niah_multikey: one queried key among distractor keys"
);
register_variant!(
    Variant::MultiValue,
    "RULER niah_multivalue: all values of one key"
);
register_variant!(
    Variant::MultiQuery,
    "RULER niah_multiquery: the values of several keys"
);
