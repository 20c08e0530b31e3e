//! `jsonl` and `parquet`: a user's dataset in kvpress's columns — `context` (string),
//! `question` (string), `answer_prefix` (string, optional), `answer` (string or list of
//! strings), `max_new_tokens` (optional integer) — as JSON Lines (one object per line) or as a
//! Parquet file (as `pandas.DataFrame.to_parquet` writes it; snappy, zstd or no compression;
//! registered only with the `parquet` cargo feature, on by default).
//! Unknown columns are ignored (kvpress datasets carry extras such as `task`), so a kvpress
//! evaluation file can be used as is.
//!
//! Examples are the file's rows in order (or a seeded shuffle with `shuffle = true`); the
//! context is used as given (no length target), and the evaluator checks it fits the model.

use super::{example_rng, read_text};
use kvcat_core::registry::to_table;
use kvcat_core::task::{Context, Example, Metric, Task};
use kvcat_core::{Error, Result, Tokenizer};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Whether this build registers the `parquet` task (the `parquet` cargo feature of kvcat-bench).
pub const PARQUET_ENABLED: bool = cfg!(feature = "parquet");

/// Parameters of `jsonl` and `parquet`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JsonlParams {
    /// The data file (required).
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

impl Row {
    fn into_example(self, id: String, metric: Metric, default_new: usize) -> Example {
        let answers = match self.answer {
            Answer::One(a) => vec![a],
            Answer::Many(a) => a,
        };
        Example {
            id,
            context: Context::Text(self.context),
            question: self.question,
            answer_prefix: self.answer_prefix,
            answers,
            metric,
            max_new_tokens: self.max_new_tokens.unwrap_or(default_new),
            continuation: vec![],
            depth: None,
        }
    }
}

/// Reads kvpress-column rows from a Parquet file. A missing required column, or a value of
/// the wrong type, is an error naming the file, the row (0-based) and the column. Needs the
/// `parquet` cargo feature (on by default).
#[cfg(feature = "parquet")]
pub fn read_parquet(path: &Path, metric: Metric, default_new: usize) -> Result<Vec<Example>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    let file_name = path.display().to_string();
    let bad = |reason: String| Error::Format {
        file: file_name.clone(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let reader =
        SerializedFileReader::new(file).map_err(|e| bad(format!("not a Parquet file: {e}")))?;
    let rows = reader
        .get_row_iter(None)
        .map_err(|e| bad(format!("cannot read rows: {e}")))?;
    let text = |field: &Field| match field {
        Field::Str(s) => Some(s.clone()),
        _ => None,
    };
    let mut out = Vec::new();
    for (i, row) in rows.enumerate() {
        let row = row.map_err(|e| bad(format!("row {i}: {e}")))?;
        let (mut context, mut question, mut prefix, mut answer, mut new) =
            (None, String::new(), String::new(), None, None);
        for (name, field) in row.get_column_iter() {
            let wrong = |want: &str| {
                bad(format!(
                    "row {i}: column `{name}` must be {want}, got {field:?}"
                ))
            };
            match (name.as_str(), field) {
                (_, Field::Null) => {}
                ("context", f) => context = Some(text(f).ok_or_else(|| wrong("a string"))?),
                ("question", f) => question = text(f).ok_or_else(|| wrong("a string"))?,
                ("answer_prefix", f) => prefix = text(f).ok_or_else(|| wrong("a string"))?,
                ("answer", Field::ListInternal(list)) => {
                    let items: Option<Vec<String>> = list.elements().iter().map(text).collect();
                    answer = Some(Answer::Many(
                        items.ok_or_else(|| wrong("a list of strings"))?,
                    ));
                }
                ("answer", f) => {
                    answer = Some(Answer::One(
                        text(f).ok_or_else(|| wrong("a string or a list of strings"))?,
                    ))
                }
                ("max_new_tokens", Field::Int(n)) => new = usize::try_from(*n).ok(),
                ("max_new_tokens", Field::Long(n)) => new = usize::try_from(*n).ok(),
                ("max_new_tokens", _) => return Err(wrong("an integer")),
                _ => {}
            }
        }
        let missing = |col: &str| {
            bad(format!("row {i}: column `{col}` is missing (kvpress columns: context, question, answer_prefix, answer, max_new_tokens)"))
        };
        let row = Row {
            context: context.ok_or_else(|| missing("context"))?,
            question,
            answer_prefix: prefix,
            answer: answer.ok_or_else(|| missing("answer"))?,
            max_new_tokens: new,
        };
        out.push(row.into_example(format!("row-{i}"), metric, default_new));
    }
    if out.is_empty() {
        return Err(bad("no rows".into()));
    }
    Ok(out)
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
        out.push(row.into_example(format!("line-{}", i + 1), metric, default_new));
    }
    if out.is_empty() {
        return Err(Error::Format {
            file: path.display().to_string(),
            reason: "no rows".into(),
        });
    }
    Ok(out)
}

/// The file formats a user dataset can come in; each is its own registered task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    Jsonl,
    /// Only with the `parquet` cargo feature.
    #[cfg(feature = "parquet")]
    Parquet,
}

impl FileFormat {
    fn name(self) -> &'static str {
        match self {
            FileFormat::Jsonl => "jsonl",
            #[cfg(feature = "parquet")]
            FileFormat::Parquet => "parquet",
        }
    }
}

/// The `jsonl` / `parquet` task: rows loaded at build time.
pub struct UserFile {
    p: JsonlParams,
    format: FileFormat,
    rows: Vec<Example>,
}

impl UserFile {
    pub fn new(p: JsonlParams, format: FileFormat) -> Result<Self> {
        let name = format.name();
        let bad = |reason: String| Error::Params {
            kind: "task",
            name: name.into(),
            reason,
        };
        if p.path.is_empty() {
            return Err(bad(format!(
                "`path` is required (a .{name} file in kvpress's columns)"
            )));
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
                reason: format!("task `{name}`: data file not found"),
            });
        }
        let rows = match format {
            FileFormat::Jsonl => read_jsonl(&path, metric, p.max_new_tokens)?,
            #[cfg(feature = "parquet")]
            FileFormat::Parquet => read_parquet(&path, metric, p.max_new_tokens)?,
        };
        Ok(UserFile { p, format, rows })
    }
}

impl Task for UserFile {
    fn name(&self) -> &'static str {
        self.format.name()
    }
    fn params(&self) -> toml::Table {
        to_table(&self.p)
    }
    fn examples(&self, _tok: &Tokenizer, n: usize, seed: u64) -> Result<Vec<Example>> {
        if n > self.rows.len() {
            return Err(Error::invalid(format!(
                "task `{}`: {n} examples asked, {} has {} rows",
                self.format.name(),
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

kvcat_core::register_task!(
    "jsonl",
    "a user JSONL file in kvpress columns (context, question, answer_prefix, answer, max_new_tokens)",
    JsonlParams,
    |p| UserFile::new(p, FileFormat::Jsonl)
);
#[cfg(feature = "parquet")]
kvcat_core::register_task!(
    "parquet",
    "a user Parquet file in kvpress columns (context, question, answer_prefix, answer, max_new_tokens)",
    JsonlParams,
    |p| UserFile::new(p, FileFormat::Parquet)
);
