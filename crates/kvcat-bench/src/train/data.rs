//! Tokenized, cached, packed training data.
//!
//! Each corpus is tokenized once (documents joined by the end-of-text id), its tail
//! (`heldout_fraction` of its tokens) held out, and the streams cached as little-endian `u32`
//! files keyed by a hash of the tokenizer and the corpus files. Training sequences are the
//! non-overlapping `seq_len` windows of the training stream; a batch draws windows uniformly
//! with the `(seed, step, micro)` generator, optionally replacing rows by synthetic retrieval
//! rows. Synthetic rows are generated fresh from a seed drawn from that same generator (mixed
//! into a stream disjoint from evaluation), so a long run never sees a row twice and cannot
//! memorise its way through retrieval; `data.synthetic_pool` restores a fixed pool for
//! ablations.

use super::config::TrainConfig;
use super::corpus;
use super::schedule::{step_rng, Stream};
use super::synthetic::{self, SyntheticSource};
use kvcat_core::error::ResultExt;
use kvcat_core::task::TrainingRow;
use kvcat_core::{Error, Result, Tokenizer};
use rand::Rng;
use sha2::{Digest, Sha256};
use std::path::Path;
use tch::{Device, Tensor};

/// The label of a token that the next-token loss does not score (`cross_entropy`'s
/// `ignore_index`).
pub const IGNORED: i64 = -100;

/// One micro-batch.
pub struct Batch {
    /// `[batch_size, seq_len]` int64 token ids.
    pub tokens: Tensor,
    /// `[batch_size, seq_len]` int64 next-token targets: the token id where scored, else
    /// [`IGNORED`] (synthetic retrieval rows score only their retrievable tokens).
    pub labels: Tensor,
}

/// The generator of a run's synthetic rows.
pub struct SyntheticRows {
    pub source: SyntheticSource,
    pub tokenizer: Tokenizer,
    /// Fills rows that whole examples leave short (the end-of-text id, else a newline).
    pub pad: i64,
    /// Draw from this many fixed rows instead of fresh ones (`data.synthetic_pool`).
    pub pool: Option<usize>,
}

/// The packed token streams of a run.
pub struct TrainData {
    pub train: Vec<u32>,
    pub heldout: Vec<u32>,
    /// Synthetic rows, when `data.synthetic_fraction > 0`.
    pub synthetic: Option<SyntheticRows>,
    pub seq_len: i64,
    pub batch_size: i64,
    pub synthetic_fraction: f64,
    pub seed: u64,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_u32(path: &Path, ids: &[u32]) -> Result<()> {
    let bytes: Vec<u8> = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
    kvcat_core::loading::write_atomic(path, &bytes)?;
    Ok(())
}

fn read_u32(path: &Path) -> Result<Vec<u32>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.len() % 4 != 0 {
        return Err(Error::Format {
            file: path.display().to_string(),
            reason: "truncated token cache".into(),
        });
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// All documents of the configured corpora, per corpus.
pub fn load_documents(cfg: &TrainConfig) -> Result<Vec<Vec<String>>> {
    cfg.data
        .corpora
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let src = corpus::resolve(spec, &cfg.data.assets, i)?;
            corpus::documents(&src).with_context(|| format!("field `data.corpora[{i}]`"))
        })
        .collect()
}

impl SyntheticRows {
    /// The row of `row_seed`, exactly `seq_len` ids.
    fn row(&self, seq_len: usize, row_seed: u64) -> Result<TrainingRow> {
        let row = self
            .source
            .row(&self.tokenizer, seq_len, row_seed, self.pad)?;
        if row.ids.len() != seq_len || row.targets.as_ref().is_some_and(|t| t.len() != seq_len) {
            return Err(Error::field(
                "data.synthetic_task",
                format!(
                    "a training row has {} tokens, not `seq_len` = {seq_len}",
                    row.ids.len()
                ),
            ));
        }
        Ok(row)
    }
}

impl TrainData {
    /// Tokenizes (or reads from `cache_dir`) the corpora of `cfg` with `tok`, separating
    /// documents by `eos` when given.
    pub fn prepare(
        cfg: &TrainConfig,
        tok: &Tokenizer,
        eos: Option<i64>,
        cache_dir: &Path,
    ) -> Result<TrainData> {
        let sources: Vec<_> = cfg
            .data
            .corpora
            .iter()
            .enumerate()
            .map(|(i, s)| corpus::resolve(s, &cfg.data.assets, i))
            .collect::<Result<_>>()?;
        let key = cache_key(cfg, tok, eos, &sources)?;
        let train_path = cache_dir.join(format!("tokens-{key}.train.u32"));
        let held_path = cache_dir.join(format!("tokens-{key}.heldout.u32"));
        let (train, heldout) = if train_path.exists() && held_path.exists() {
            (read_u32(&train_path)?, read_u32(&held_path)?)
        } else {
            std::fs::create_dir_all(cache_dir).map_err(|e| Error::io(cache_dir, e))?;
            let (train, heldout) = tokenize_corpora(cfg, tok, eos, &sources)?;
            write_u32(&train_path, &train)?;
            write_u32(&held_path, &heldout)?;
            (train, heldout)
        };
        let t = cfg.seq_len as usize;
        if train.len() < t {
            return Err(Error::field(
                "data.corpora",
                format!(
                    "only {} training tokens, fewer than one sequence of `seq_len` = {t}",
                    train.len()
                ),
            ));
        }
        Ok(TrainData {
            train,
            heldout,
            synthetic: synthetic_rows(cfg, tok, eos)?,
            seq_len: cfg.seq_len,
            batch_size: cfg.batch_size,
            synthetic_fraction: cfg.data.synthetic_fraction,
            seed: cfg.seed,
        })
    }

    /// Number of packed training windows.
    pub fn windows(&self) -> usize {
        self.train.len() / self.seq_len as usize
    }

    /// The micro-batch of `(step, micro)` on `device`.
    pub fn batch(&self, step: usize, micro: usize, device: Device) -> Result<Batch> {
        let mut rng = step_rng(self.seed, step, micro, Stream::Data);
        let t = self.seq_len as usize;
        let n = self.windows();
        let size = self.batch_size as usize * t;
        let mut rows: Vec<i64> = Vec::with_capacity(size);
        let mut labels: Vec<i64> = Vec::with_capacity(size);
        for _ in 0..self.batch_size {
            let synth = match &self.synthetic {
                Some(s) if rng.random::<f64>() < self.synthetic_fraction => Some(s),
                _ => None,
            };
            if let Some(s) = synth {
                let i = match s.pool {
                    Some(pool) => rng.random_range(0..pool as u64),
                    None => rng.random::<u64>(),
                };
                let row = s.row(t, synthetic::row_seed(self.seed, i))?;
                match &row.targets {
                    Some(targets) => {
                        labels.extend(row.ids.iter().zip(targets).map(|(&id, &scored)| {
                            if scored {
                                id
                            } else {
                                IGNORED
                            }
                        }))
                    }
                    None => labels.extend_from_slice(&row.ids),
                }
                rows.extend(row.ids);
            } else {
                let w = rng.random_range(0..n);
                rows.extend(self.train[w * t..(w + 1) * t].iter().map(|&x| x as i64));
                labels.extend_from_slice(&rows[rows.len() - t..]);
            }
        }
        let shape = [self.batch_size, self.seq_len];
        Ok(Batch {
            tokens: Tensor::from_slice(&rows).view(shape).to_device(device),
            labels: Tensor::from_slice(&labels).view(shape).to_device(device),
        })
    }

    /// The first `n` held-out windows (fewer if the held-out stream is short), in batches of
    /// at most `batch_size`. Errors if there is not even one.
    pub fn heldout_batches(&self, n: usize, device: Device) -> Result<Vec<Tensor>> {
        let t = self.seq_len as usize;
        let avail = (self.heldout.len() / t).min(n);
        if avail == 0 {
            return Err(Error::field(
                "data.heldout_fraction",
                format!(
                    "the held-out split has {} tokens, fewer than one sequence of `seq_len` = {t}",
                    self.heldout.len()
                ),
            ));
        }
        let ids: Vec<i64> = self.heldout[..avail * t]
            .iter()
            .map(|&x| x as i64)
            .collect();
        let all = Tensor::from_slice(&ids).view([avail as i64, self.seq_len]);
        Ok(all
            .split(self.batch_size, 0)
            .into_iter()
            .map(|b| b.to_device(device))
            .collect())
    }
}

/// The token cache key (16 hex digits): a hash of the tokenizer, the document separator,
/// the held-out fraction and every corpus file's fingerprint.
fn cache_key(
    cfg: &TrainConfig,
    tok: &Tokenizer,
    eos: Option<i64>,
    sources: &[corpus::CorpusSource],
) -> Result<String> {
    let mut hasher = Sha256::new();
    let tok_json = tok
        .inner
        .to_string(false)
        .map_err(|e| Error::invalid(format!("serialising the tokenizer: {e}")))?;
    hasher.update(tok_json.as_bytes());
    hasher.update(format!(
        "eos={eos:?};heldout={};",
        cfg.data.heldout_fraction
    ));
    for s in sources {
        hasher.update(corpus::fingerprint(s)?.as_bytes());
    }
    Ok(hex(&hasher.finalize())[..16].to_string())
}

/// Tokenizes every corpus (documents joined by `eos`) and splits each stream: its tail
/// (`data.heldout_fraction` of its tokens) held out. Returns `(train, heldout)`.
fn tokenize_corpora(
    cfg: &TrainConfig,
    tok: &Tokenizer,
    eos: Option<i64>,
    sources: &[corpus::CorpusSource],
) -> Result<(Vec<u32>, Vec<u32>)> {
    let mut train = Vec::new();
    let mut heldout = Vec::new();
    for (i, src) in sources.iter().enumerate() {
        let docs = corpus::documents(src).with_context(|| format!("field `data.corpora[{i}]`"))?;
        let mut stream: Vec<u32> = Vec::new();
        for d in &docs {
            stream.extend(tok.encode(d)?.into_iter().map(|x| x as u32));
            if let Some(e) = eos {
                stream.push(e as u32);
            }
        }
        if stream.is_empty() {
            return Err(Error::field(
                format!("data.corpora[{i}]"),
                format!("corpus `{}` tokenizes to nothing", src.name),
            ));
        }
        let cut = stream.len() - (stream.len() as f64 * cfg.data.heldout_fraction) as usize;
        heldout.extend_from_slice(&stream[cut..]);
        train.extend_from_slice(&stream[..cut]);
    }
    Ok((train, heldout))
}

/// The synthetic row generator when `data.synthetic_fraction > 0`, checked at start-up (not
/// at the first synthetic draw) by generating one row of `seq_len`.
fn synthetic_rows(
    cfg: &TrainConfig,
    tok: &Tokenizer,
    eos: Option<i64>,
) -> Result<Option<SyntheticRows>> {
    let on = cfg.data.synthetic_fraction > 0.0;
    if !on {
        return Ok(None);
    }
    let source = SyntheticSource::new(cfg.data.synthetic_task.as_ref())?;
    let newline = tok.encode("\n")?.first().copied();
    let rows = SyntheticRows {
        source,
        tokenizer: tok.clone(),
        pad: eos.or(newline).unwrap_or(0),
        pool: cfg.data.synthetic_pool,
    };
    rows.row(cfg.seq_len as usize, synthetic::row_seed(cfg.seed, 0))?;
    Ok(Some(rows))
}
