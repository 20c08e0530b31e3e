//! Long-context QA after RULER's `qa_1` / `qa_2` (Hsieh et al. 2024): `qa_squad` from SQuAD v2
//! dev (answerable questions only; Rajpurkar et al. 2018) and `qa_hotpot` from HotpotQA dev
//! (Yang et al. 2018). The gold paragraph(s) are padded with distractor paragraphs — first
//! those from the same article (SQuAD) or the question's own distractor set (HotpotQA), then
//! random others — to the target length, at a seeded (or configured) position, and numbered
//! `Document i:`. Metric: `string_match_part`.

use super::{check_len, data_file, example_rng, read_text};
use kvcat_core::registry::parse_params;
use kvcat_core::task::{check_depth, Context, Example, Metric};
use kvcat_core::{Error, Result, Tokenizer};
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Parameters of the QA tasks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QaParams {
    /// Target context length in tokens (±5%).
    pub context_len: usize,
    /// Position in [0, 1] of the (first) gold paragraph among the documents; absent draws it
    /// per example from the seed.
    pub depth: Option<f64>,
    pub max_new_tokens: usize,
    /// The dataset JSON; empty uses the packaged RULER file in the assets.
    pub path: String,
}

impl Default for QaParams {
    fn default() -> Self {
        QaParams {
            context_len: 1024,
            depth: None,
            max_new_tokens: 32,
            path: String::new(),
        }
    }
}

/// One question with indices into the document pool.
#[derive(Debug, Clone)]
struct Qa {
    id: String,
    question: String,
    answers: Vec<String>,
    gold: Vec<usize>,
    /// Preferred distractors (same article / the question's own distractor set).
    near: Vec<usize>,
}

/// A loaded QA dataset: unique documents (sorted, as RULER does) and questions.
struct Dataset {
    docs: Vec<String>,
    qas: Vec<Qa>,
}

fn format_err(path: &Path, e: serde_json::Error) -> Error {
    Error::Format {
        file: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn index_docs(all: Vec<String>) -> (Vec<String>, BTreeMap<String, usize>) {
    let mut docs = all;
    docs.sort();
    docs.dedup();
    let map = docs
        .iter()
        .enumerate()
        .map(|(i, d)| (d.clone(), i))
        .collect();
    (docs, map)
}

fn load_squad(path: &Path) -> Result<Dataset> {
    #[derive(Deserialize)]
    struct File {
        data: Vec<Article>,
    }
    #[derive(Deserialize)]
    struct Article {
        paragraphs: Vec<Paragraph>,
    }
    #[derive(Deserialize)]
    struct Paragraph {
        context: String,
        qas: Vec<Question>,
    }
    #[derive(Deserialize)]
    struct Question {
        id: String,
        question: String,
        answers: Vec<Answer>,
        #[serde(default)]
        is_impossible: bool,
    }
    #[derive(Deserialize)]
    struct Answer {
        text: String,
    }
    let f: File = serde_json::from_str(&read_text(path)?).map_err(|e| format_err(path, e))?;
    let all = f
        .data
        .iter()
        .flat_map(|a| a.paragraphs.iter().map(|p| p.context.clone()))
        .collect();
    let (docs, map) = index_docs(all);
    let mut qas = Vec::new();
    for a in &f.data {
        let article: Vec<usize> = a.paragraphs.iter().map(|p| map[&p.context]).collect();
        for p in &a.paragraphs {
            let gold = map[&p.context];
            for q in p
                .qas
                .iter()
                .filter(|q| !q.is_impossible && !q.answers.is_empty())
            {
                qas.push(Qa {
                    id: q.id.clone(),
                    question: q.question.clone(),
                    answers: q.answers.iter().map(|x| x.text.clone()).collect(),
                    gold: vec![gold],
                    near: article.iter().copied().filter(|&d| d != gold).collect(),
                });
            }
        }
    }
    Ok(Dataset { docs, qas })
}

fn load_hotpot(path: &Path) -> Result<Dataset> {
    #[derive(Deserialize)]
    struct Item {
        #[serde(rename = "_id")]
        id: String,
        question: String,
        answer: String,
        supporting_facts: Vec<(String, serde_json::Value)>,
        context: Vec<(String, Vec<String>)>,
    }
    let items: Vec<Item> =
        serde_json::from_str(&read_text(path)?).map_err(|e| format_err(path, e))?;
    let render = |t: &str, p: &[String]| format!("{t}\n{}", p.concat());
    let all = items
        .iter()
        .flat_map(|it| it.context.iter().map(|(t, p)| render(t, p)))
        .collect();
    let (docs, map) = index_docs(all);
    let qas = items
        .iter()
        .map(|it| {
            let support: Vec<&str> = it
                .supporting_facts
                .iter()
                .map(|(t, _)| t.as_str())
                .collect();
            let (gold, near): (Vec<_>, Vec<_>) = it
                .context
                .iter()
                .partition(|(t, _)| support.contains(&t.as_str()));
            Qa {
                id: it.id.clone(),
                question: it.question.clone(),
                answers: vec![it.answer.clone()],
                gold: gold.iter().map(|(t, p)| map[&render(t, p)]).collect(),
                near: near.iter().map(|(t, p)| map[&render(t, p)]).collect(),
            }
        })
        .filter(|q| !q.gold.is_empty())
        .collect();
    Ok(Dataset { docs, qas })
}

const PREFIX: &str = "Answer the question based on the given documents. Only give me the answer \
and do not output any other words.\n\nThe following are given documents.\n\n";

/// A QA task over a loaded dataset.
pub struct QaTask {
    name: &'static str,
    p: QaParams,
    data: Dataset,
}

impl QaTask {
    fn new(name: &'static str, p: QaParams, hotpot: bool) -> Result<Self> {
        check_len(name, p.context_len)?;
        if let Some(d) = p.depth {
            check_depth(name, "depth", d)?;
        }
        let default = if hotpot {
            "data/long_context_eval/data/synthetic/json/hotpotqa.json"
        } else {
            "data/long_context_eval/data/synthetic/json/squad.json"
        };
        let path = data_file(name, "path", &p.path, default)?;
        let data = if hotpot {
            load_hotpot(&path)?
        } else {
            load_squad(&path)?
        };
        if data.qas.is_empty() {
            return Err(Error::Format {
                file: path.display().to_string(),
                reason: "no answerable questions".into(),
            });
        }
        Ok(QaTask { name, p, data })
    }

    fn render(&self, docs: &[usize]) -> String {
        let body: Vec<String> = docs
            .iter()
            .enumerate()
            .map(|(i, &d)| format!("Document {}:\n{}", i + 1, self.data.docs[d]))
            .collect();
        format!("{PREFIX}{}", body.join("\n\n"))
    }

    /// Example `index` under `seed`.
    pub fn example(&self, tok: &Tokenizer, seed: u64, index: usize) -> Result<Example> {
        let p = &self.p;
        let target = p.context_len;
        let mut rng = example_rng(seed, index);
        let qa = &self.data.qas[rng.random_range(0..self.data.qas.len())];
        let gold_total = self.gold_tokens(tok, qa)?;
        let distractors = self.distractors(tok, qa, gold_total, &mut rng)?;
        let docs = self.place_gold(qa, distractors, &mut rng);
        let text = self.render(&docs);
        let n = tok.encode(&text)?.len();
        if (n as f64 - target as f64).abs() > target as f64 * 0.05 {
            return Err(Error::invalid(format!(
                "task `{}`: cannot pad question {} to {target} tokens (±5%): got {n}",
                self.name, qa.id
            )));
        }
        let g0 = docs.iter().position(|&d| d == qa.gold[0]).unwrap_or(0);
        Ok(Example {
            id: qa.id.clone(),
            context: Context::Text(text),
            question: format!(
                "\n\nAnswer the question based on the given documents. Only give me the answer \
                 and do not output any other words.\n\nQuestion: {}",
                qa.question
            ),
            answer_prefix: " Answer:".into(),
            answers: qa.answers.clone(),
            metric: Metric::StringMatchPart,
            max_new_tokens: p.max_new_tokens,
            continuation: vec![],
            depth: Some(if docs.len() > 1 {
                g0 as f64 / (docs.len() - 1) as f64
            } else {
                0.0
            }),
        })
    }

    /// Tokens of document `d` as rendered (with a two-digit number and its separator).
    fn doc_tokens(&self, tok: &Tokenizer, d: usize) -> Result<usize> {
        let text = format!("Document 00:\n{}\n\n", self.data.docs[d]);
        Ok(tok.encode(&text)?.len())
    }

    /// Tokens of the prefix and the gold paragraph(s); errors when they alone exceed the
    /// target length.
    fn gold_tokens(&self, tok: &Tokenizer, qa: &Qa) -> Result<usize> {
        let target = self.p.context_len;
        let mut total = tok.encode(PREFIX)?.len();
        for &g in &qa.gold {
            total += self.doc_tokens(tok, g)?;
        }
        if total as f64 > target as f64 * 1.05 {
            return Err(Error::invalid(format!(
                "task `{}`: the gold paragraph(s) of question {} alone take {total} tokens, \
                 more than context_len = {target}",
                self.name, qa.id
            )));
        }
        Ok(total)
    }

    /// Distractor documents that fill the context from `total` tokens towards the target: the
    /// question's near ones first (shuffled), then random others, skipping documents too long
    /// for the room left.
    fn distractors(
        &self,
        tok: &Tokenizer,
        qa: &Qa,
        mut total: usize,
        rng: &mut impl Rng,
    ) -> Result<Vec<usize>> {
        let target = self.p.context_len;
        let mut near = qa.near.clone();
        near.shuffle(rng);
        let mut distractors: Vec<usize> = Vec::new();
        let mut pool = near.into_iter();
        let mut tries = 0;
        while total < target && tries < 10_000 {
            tries += 1;
            let d = match pool.next() {
                Some(d) => d,
                None => rng.random_range(0..self.data.docs.len()),
            };
            let room = target.saturating_sub(total);
            if room <= target / 25 {
                break;
            }
            // A cheap lower bound on the token count (no token spans 12 characters on
            // average) skips hopeless candidates without tokenizing them.
            let slack = target / 40;
            if qa.gold.contains(&d)
                || distractors.contains(&d)
                || self.data.docs[d].len() / 12 > room + slack
            {
                continue;
            }
            let t = self.doc_tokens(tok, d)?;
            if t > room + slack {
                continue;
            }
            distractors.push(d);
            total += t;
        }
        Ok(distractors)
    }

    /// Inserts the gold paragraph(s) among the distractors: the first at the configured depth
    /// (or a seeded slot), the others at seeded positions.
    fn place_gold(&self, qa: &Qa, distractors: Vec<usize>, rng: &mut impl Rng) -> Vec<usize> {
        let slots = distractors.len() + 1;
        let first = match self.p.depth {
            Some(d) => (d * (slots - 1) as f64).round() as usize,
            None => rng.random_range(0..slots),
        };
        let mut docs = distractors;
        for (j, &g) in qa.gold.iter().enumerate() {
            let at = if j == 0 {
                first
            } else {
                rng.random_range(0..=docs.len())
            };
            docs.insert(at.min(docs.len()), g);
        }
        docs
    }

    /// The gold paragraph texts of the question an example was built from (for tests).
    pub fn gold_paragraphs(&self, id: &str) -> Vec<&str> {
        self.data
            .qas
            .iter()
            .find(|q| q.id == id)
            .map(|q| q.gold.iter().map(|&g| self.data.docs[g].as_str()).collect())
            .unwrap_or_default()
    }
}

kvcat_core::task!(@impl QaTask, name: |s| s.name, target_len: |p| p.context_len);

/// Builds `qa_squad` directly (for callers that need [`QaTask::gold_paragraphs`]).
pub fn squad(t: &toml::Table) -> Result<QaTask> {
    QaTask::new("qa_squad", parse_params("task", "qa_squad", t)?, false)
}

/// Builds `qa_hotpot` directly.
pub fn hotpot(t: &toml::Table) -> Result<QaTask> {
    QaTask::new("qa_hotpot", parse_params("task", "qa_hotpot", t)?, true)
}

kvcat_core::register_task!(
    "qa_squad",
    "SQuAD v2 dev (answerable) gold paragraph padded with distractors (RULER qa_1)",
    QaParams,
    |p| QaTask::new("qa_squad", p, false)
);
kvcat_core::register_task!(
    "qa_hotpot",
    "HotpotQA dev gold paragraphs padded with distractors (RULER qa_2)",
    QaParams,
    |p| QaTask::new("qa_hotpot", p, true)
);
