//! The durable results directory: `manifest.toml`, `results.csv`, `examples.csv` and the
//! `cells.done` journal.
//!
//! Each finished cell is written in three durable steps: its rows are appended to
//! `results.csv` in one write and `fsync`ed, its per-example scores are appended to
//! `examples.csv` and `fsync`ed, then `<cell id> <rows> <example scores>` is appended to
//! `cells.done` and `fsync`ed. A cell is finished exactly when its journal line is complete.
//! On open, a torn journal line is dropped and both CSV files are truncated right after the
//! records of the last finished cell, which removes a torn line or the records of a cell whose
//! journal line never landed. So a `kill -9` at any instant, then a re-run, gives the same
//! final files: no duplicate, no lost record.
//!
//! Directories written before `examples.csv` existed have two-field journal lines (no
//! per-example scores); they still recover, and a resumed run adds the file.
//!
//! The resolved manifest is saved first; a directory made by a different manifest is refused.
//!
//! One process writes a directory at a time: an open store holds the directory's writer lock
//! ([`super::lock::DirLock`], `writer.lock`), taken before anything is read or written, so a
//! second `kvcat bench` (or `kvcat merge`) on the same directory fails at once, naming the
//! holder, and the first finishes a directory that resumes and reports as usual.

use super::lock::DirLock;
use super::manifest::Manifest;
use crate::results::{ExampleScore, ResultRow};
use kvcat_core::{Error, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The resolved manifest beside the results.
pub const MANIFEST_FILE: &str = "manifest.toml";
/// The long-format results.
pub const RESULTS_FILE: &str = "results.csv";
/// The long-format per-example scores: `cell_id,example,metric,value`.
pub const EXAMPLES_FILE: &str = "examples.csv";
/// One line per finished cell: `<cell id> <rows> <example scores>`.
pub const JOURNAL_FILE: &str = "cells.done";

/// The header line (without newline) of a CSV of `T`, derived from its fields.
fn header_of<T: Serialize + Default>() -> String {
    let mut w = csv::WriterBuilder::new()
        .has_headers(true)
        .from_writer(vec![]);
    let _ = w.serialize(T::default());
    let bytes = w.into_inner().unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    text.lines().next().unwrap_or_default().to_string()
}

/// The CSV header line (without newline), derived from [`ResultRow`]'s fields.
pub fn csv_header() -> String {
    header_of::<ResultRow>()
}

/// The `examples.csv` header line (without newline), derived from [`ExampleScore`].
pub fn examples_header() -> String {
    header_of::<ExampleScore>()
}

/// Serialises records as CSV without a header.
fn to_csv<T: Serialize>(records: &[T]) -> Result<Vec<u8>> {
    let mut w = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(vec![]);
    for r in records {
        w.serialize(r)
            .map_err(|e| Error::invalid(format!("serialising a CSV record: {e}")))?;
    }
    w.into_inner()
        .map_err(|e| Error::invalid(format!("serialising CSV records: {e}")))
}

/// Serialises rows as CSV records without a header.
pub fn rows_to_csv(rows: &[ResultRow]) -> Result<Vec<u8>> {
    to_csv(rows)
}

/// Appends rows to the CSV file at `path` (its directory created as needed), writing the
/// header first when the file is new or empty and there are rows to write.
pub fn append_rows_csv(path: &Path, rows: &[ResultRow]) -> Result<()> {
    let fresh = std::fs::metadata(path)
        .map(|m| m.len() == 0)
        .unwrap_or(true);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut text = match fresh && !rows.is_empty() {
        true => format!("{}\n", csv_header()).into_bytes(),
        false => vec![],
    };
    text.extend(rows_to_csv(rows)?);
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    file.write_all(&text).map_err(|e| Error::io(path, e))
}

/// The finished state of a results directory, as recovered from disk.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Finished cell ids in finishing order, with their rows.
    pub cells: Vec<(String, Vec<ResultRow>)>,
    /// The per-example scores of each finished cell, parallel to `cells` (empty for cells
    /// written before `examples.csv` existed).
    pub cell_examples: Vec<Vec<ExampleScore>>,
    /// Byte length of `results.csv` holding exactly the finished rows.
    pub csv_len: u64,
    /// Byte length of `examples.csv` holding exactly the finished scores (0: no file).
    pub examples_len: u64,
    /// Byte length of `cells.done` holding exactly the complete journal lines.
    pub journal_len: u64,
    /// Whether `results.csv` has an older kvcat's header (fewer columns).
    pub old_header: bool,
}

impl Recovered {
    /// All finished rows in order.
    pub fn rows(&self) -> Vec<ResultRow> {
        self.cells
            .iter()
            .flat_map(|(_, r)| r.iter().cloned())
            .collect()
    }

    /// All finished per-example scores in order.
    pub fn examples(&self) -> Vec<ExampleScore> {
        self.cell_examples.iter().flatten().cloned().collect()
    }
}

fn read_bytes(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// One complete journal line: a finished cell and its record counts.
struct JournalEntry {
    id: String,
    rows: usize,
    examples: usize,
}

/// Parses the complete lines of `cells.done`; returns them and their byte length.
fn read_journal(jpath: &Path) -> Result<(Vec<JournalEntry>, u64)> {
    let journal = read_bytes(jpath)?.unwrap_or_default();
    let journal_len = journal
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let mut entries: Vec<JournalEntry> = Vec::new();
    for (i, line) in String::from_utf8_lossy(&journal[..journal_len])
        .lines()
        .enumerate()
    {
        let at = format!("{}:{}", jpath.display(), i + 1);
        let bad = || Error::Format {
            file: at.clone(),
            reason: format!("expected `<cell id> <rows> [<example scores>]`, got `{line}`"),
        };
        let fields: Vec<&str> = line.split(' ').collect();
        let count = |k: usize| -> Result<usize> {
            fields
                .get(k)
                .map_or(Ok(0), |f| f.parse().map_err(|_| bad()))
        };
        if !(2..=3).contains(&fields.len()) {
            return Err(bad());
        }
        let entry = JournalEntry {
            id: fields[0].to_string(),
            rows: count(1)?,
            examples: count(2)?,
        };
        if entries.iter().any(|x| x.id == entry.id) {
            return Err(Error::Format {
                file: at,
                reason: format!("cell {} is listed twice", entry.id),
            });
        }
        entries.push(entry);
    }
    Ok((entries, journal_len as u64))
}

/// Reads the records of the finished cells from a headed CSV, in journal order: `counts[i]`
/// records of cell `ids[i]`, each carrying that cell id. Returns each cell's records, the
/// byte length of the file holding exactly them (0 when the file is absent and no record is
/// expected), and whether the file has an older kvcat's header (a prefix of `header`).
fn read_cell_records<T: DeserializeOwned>(
    path: &Path,
    header: &str,
    expected: &[(&str, usize)],
    cell_of: impl Fn(&T) -> &str,
) -> Result<(Vec<Vec<T>>, u64, bool)> {
    let total: usize = expected.iter().map(|(_, n)| n).sum();
    let Some(bytes) = read_bytes(path)? else {
        if total == 0 {
            return Ok((expected.iter().map(|_| Vec::new()).collect(), 0, false));
        }
        return Err(Error::Format {
            file: path.display().to_string(),
            reason: format!("missing, but {JOURNAL_FILE} lists {total} records in it"),
        });
    };
    let current = header;
    let header = file_header(&bytes, current).ok_or_else(|| {
        let got = String::from_utf8_lossy(&bytes)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        Error::Format {
            file: path.display().to_string(),
            reason: format!("unexpected header (written by another kvcat version?)\n  expected: {current}\n  found:    {got}"),
        }
    })?;
    let header_len = header.len() + 1;

    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(&bytes[header_len..]);
    let headers = csv::ByteRecord::from(header.split(',').collect::<Vec<_>>());
    let mut record = csv::ByteRecord::new();
    let mut cells = Vec::with_capacity(expected.len());
    let mut end = 0u64;
    for (id, n) in expected {
        let mut records = Vec::with_capacity(*n);
        for _ in 0..*n {
            let ok = rdr
                .read_byte_record(&mut record)
                .map_err(|e| Error::Format {
                    file: path.display().to_string(),
                    reason: format!("bad record of finished cell {id}: {e}"),
                })?;
            let parsed: Option<T> = if ok {
                record.deserialize(Some(&headers)).ok()
            } else {
                None
            };
            match parsed {
                Some(r) if cell_of(&r) == *id => records.push(r),
                _ => {
                    return Err(Error::Format {
                        file: path.display().to_string(),
                        reason: format!(
                            "does not match {JOURNAL_FILE}: expected {n} records of finished cell {id} at byte {}",
                            header_len as u64 + end
                        ),
                    })
                }
            }
            end = rdr.position().byte();
        }
        cells.push(records);
    }
    Ok((cells, header_len as u64 + end, header != current))
}

/// Reads the finished cells of `dir` without changing anything.
pub fn recover(dir: &Path) -> Result<Recovered> {
    let (journal, journal_len) = read_journal(&dir.join(JOURNAL_FILE))?;
    let rows_expected: Vec<(&str, usize)> =
        journal.iter().map(|e| (e.id.as_str(), e.rows)).collect();
    let (rows, csv_len, old_header) = read_cell_records(
        &dir.join(RESULTS_FILE),
        &csv_header(),
        &rows_expected,
        |r: &ResultRow| r.cell_id.as_str(),
    )?;
    let examples_expected: Vec<(&str, usize)> = journal
        .iter()
        .map(|e| (e.id.as_str(), e.examples))
        .collect();
    let (cell_examples, examples_len, old_examples_header) = read_cell_records(
        &dir.join(EXAMPLES_FILE),
        &examples_header(),
        &examples_expected,
        |r: &ExampleScore| r.cell_id.as_str(),
    )?;
    if old_examples_header {
        // Only `results.csv` is upgraded in place; `examples.csv` has had one header.
        return Err(Error::Format {
            file: dir.join(EXAMPLES_FILE).display().to_string(),
            reason: format!("unexpected header\n  expected: {}", examples_header()),
        });
    }
    Ok(Recovered {
        cells: journal.iter().map(|e| e.id.clone()).zip(rows).collect(),
        cell_examples,
        csv_len,
        examples_len,
        journal_len,
        old_header,
    })
}

/// The header line of a `results.csv` (without its newline): today's, or an older kvcat's,
/// whose columns are a prefix of today's (columns are only ever appended; the missing ones
/// read as their defaults). `None` for anything else.
fn file_header(csv_bytes: &[u8], current: &str) -> Option<String> {
    let end = csv_bytes.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&csv_bytes[..end]).ok()?;
    let is_prefix = current.starts_with(line)
        && (line.len() == current.len() || current.as_bytes()[line.len()] == b',');
    (is_prefix && line.contains(',')).then(|| line.to_string())
}

/// Writes `text` to `path` atomically (temporary file, fsync, rename, fsync of the directory).
pub fn write_atomic(path: &Path, text: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    {
        let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(text).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    sync_dir(dir);
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Checks that `dir` belongs to `manifest_text` (or is new), and saves the manifest there.
pub fn claim_dir(dir: &Path, manifest_text: &str) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mpath = dir.join(MANIFEST_FILE);
    match read_bytes(&mpath)? {
        Some(existing) => {
            if existing != manifest_text.as_bytes() {
                let existing = String::from_utf8_lossy(&existing);
                let diff = existing
                    .lines()
                    .zip(manifest_text.lines())
                    .enumerate()
                    .find(|(_, (a, b))| a != b)
                    .map(|(i, (a, b))| {
                        format!(
                            "first difference at line {}:\n  saved:   {a}\n  current: {b}",
                            i + 1
                        )
                    })
                    .unwrap_or_else(|| "the manifests differ in length".into());
                return Err(Error::invalid(format!(
                    "{} holds results of a different manifest (see {}); use another --out directory, or delete it to start over\n{diff}",
                    dir.display(),
                    mpath.display()
                )));
            }
        }
        None => {
            if dir.join(RESULTS_FILE).exists() {
                return Err(Error::invalid(format!(
                    "{} has a {RESULTS_FILE} but no {MANIFEST_FILE}: not a kvcat results directory",
                    dir.display()
                )));
            }
            write_atomic(&mpath, manifest_text.as_bytes())?;
        }
    }
    Ok(())
}

/// Rewrites an older kvcat's `results.csv` with today's header and its finished rows (new
/// columns empty), atomically, so that appended rows match the header.
fn upgrade_csv(dir: &Path, recovered: &Recovered) -> Result<()> {
    let path = dir.join(RESULTS_FILE);
    tracing::warn!(
        "{}: adding the columns of this kvcat version",
        path.display()
    );
    let mut text = format!("{}\n", csv_header()).into_bytes();
    text.extend(rows_to_csv(&recovered.rows())?);
    write_atomic(&path, &text)
}

/// An open results directory that appends finished cells durably.
pub struct ResultStore {
    /// Held while the store is open; dropping the store releases it.
    _lock: DirLock,
    dir: PathBuf,
    csv: File,
    examples: File,
    journal: File,
    done: HashMap<String, usize>,
    recovered: Recovered,
}

/// Opens `p` for appending, first truncating it to `len` (dropping an interrupted write).
fn open_truncated(p: &Path, len: u64) -> Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .map_err(|e| Error::io(p, e))?;
    let actual = f.metadata().map_err(|e| Error::io(p, e))?.len();
    if actual != len {
        tracing::warn!(
            "{}: dropping {} bytes of an interrupted write",
            p.display(),
            actual.saturating_sub(len)
        );
        f.set_len(len).map_err(|e| Error::io(p, e))?;
        f.sync_all().map_err(|e| Error::io(p, e))?;
    }
    Ok(f)
}

/// Appends `bytes` at the end of `f` and syncs its data.
fn append_synced(f: &mut File, path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::{Seek, SeekFrom};
    f.seek(SeekFrom::End(0)).map_err(|e| Error::io(path, e))?;
    f.write_all(bytes).map_err(|e| Error::io(path, e))?;
    f.sync_data().map_err(|e| Error::io(path, e))
}

impl ResultStore {
    /// Opens (or creates) a results directory for `manifest`, recovering from any
    /// interrupted run.
    pub fn open(dir: &Path, manifest: &Manifest) -> Result<ResultStore> {
        Self::open_text(dir, &manifest.to_toml()?)
    }

    /// [`ResultStore::open`] with the resolved manifest's saved text.
    pub fn open_text(dir: &Path, manifest_text: &str) -> Result<ResultStore> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let lock = DirLock::acquire(dir)?;
        claim_dir(dir, manifest_text)?;
        let cpath = dir.join(RESULTS_FILE);
        let epath = dir.join(EXAMPLES_FILE);
        let jpath = dir.join(JOURNAL_FILE);
        if !cpath.exists() {
            write_atomic(&cpath, format!("{}\n", csv_header()).as_bytes())?;
        }
        if !epath.exists() {
            write_atomic(&epath, format!("{}\n", examples_header()).as_bytes())?;
        }
        if !jpath.exists() {
            write_atomic(&jpath, b"")?;
        }
        let mut recovered = recover(dir)?;
        if recovered.old_header {
            upgrade_csv(dir, &recovered)?;
            recovered = recover(dir)?;
        }
        let csv = open_truncated(&cpath, recovered.csv_len)?;
        let examples = open_truncated(&epath, recovered.examples_len)?;
        let journal = open_truncated(&jpath, recovered.journal_len)?;
        let done = recovered
            .cells
            .iter()
            .map(|(id, r)| (id.clone(), r.len()))
            .collect();
        Ok(ResultStore {
            _lock: lock,
            dir: dir.to_path_buf(),
            csv,
            examples,
            journal,
            done,
            recovered,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether cell `id` is already finished.
    pub fn is_done(&self, id: &str) -> bool {
        self.done.contains_key(id)
    }

    /// Number of finished cells.
    pub fn done_count(&self) -> usize {
        self.done.len()
    }

    /// The cells that were already finished when the store was opened.
    pub fn recovered(&self) -> &Recovered {
        &self.recovered
    }

    /// Appends a finished cell durably: its rows (fsync), its per-example scores (fsync),
    /// then its journal line (fsync).
    pub fn append_cell(
        &mut self,
        id: &str,
        rows: &[ResultRow],
        examples: &[ExampleScore],
    ) -> Result<()> {
        if self.is_done(id) {
            return Err(Error::invalid(format!("cell {id} is already finished")));
        }
        let foreign = rows
            .iter()
            .map(|r| &r.cell_id)
            .chain(examples.iter().map(|e| &e.cell_id))
            .find(|c| *c != id);
        if let Some(other) = foreign {
            return Err(Error::invalid(format!(
                "a record of cell {id} carries cell id {other}"
            )));
        }
        append_synced(&mut self.csv, &self.dir.join(RESULTS_FILE), &to_csv(rows)?)?;
        append_synced(
            &mut self.examples,
            &self.dir.join(EXAMPLES_FILE),
            &to_csv(examples)?,
        )?;
        let line = format!("{id} {} {}\n", rows.len(), examples.len());
        append_synced(
            &mut self.journal,
            &self.dir.join(JOURNAL_FILE),
            line.as_bytes(),
        )?;
        self.done.insert(id.to_string(), rows.len());
        Ok(())
    }
}
