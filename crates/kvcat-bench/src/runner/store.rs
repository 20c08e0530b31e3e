//! The durable results directory: `manifest.toml`, `results.csv` and the `cells.done` journal.
//!
//! Each finished cell is written in two durable steps: its rows are appended to
//! `results.csv` in one write and `fsync`ed, then `<cell id> <rows>` is appended to
//! `cells.done` and `fsync`ed. A cell is finished exactly when its journal line is complete.
//! On open, a torn journal line is dropped and `results.csv` is truncated right after the
//! rows of the last finished cell, which removes a torn line or the rows of a cell whose
//! journal line never landed. So a `kill -9` at any instant, then a re-run, gives the same
//! final CSV: no duplicate, no lost row.
//!
//! The resolved manifest is saved first; a directory made by a different manifest is refused.
//!
//! One process writes a directory at a time: an open store holds the directory's writer lock
//! ([`super::lock::DirLock`], `writer.lock`), taken before anything is read or written, so a
//! second `kvcat bench` (or `kvcat merge`) on the same directory fails at once, naming the
//! holder, and the first finishes a directory that resumes and reports as usual.

use super::lock::DirLock;
use super::manifest::Manifest;
use crate::results::ResultRow;
use kvcat_core::{Error, Result};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The resolved manifest beside the results.
pub const MANIFEST_FILE: &str = "manifest.toml";
/// The long-format results.
pub const RESULTS_FILE: &str = "results.csv";
/// One line per finished cell: `<cell id> <number of rows>`.
pub const JOURNAL_FILE: &str = "cells.done";

/// The CSV header line (without newline), derived from [`ResultRow`]'s fields.
pub fn csv_header() -> String {
    let mut w = csv::WriterBuilder::new()
        .has_headers(true)
        .from_writer(vec![]);
    let _ = w.serialize(ResultRow::example());
    let bytes = w.into_inner().unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    text.lines().next().unwrap_or_default().to_string()
}

/// Serialises rows as CSV records without a header.
pub fn rows_to_csv(rows: &[ResultRow]) -> Result<Vec<u8>> {
    let mut w = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(vec![]);
    for r in rows {
        w.serialize(r)
            .map_err(|e| Error::invalid(format!("serialising a result row: {e}")))?;
    }
    w.into_inner()
        .map_err(|e| Error::invalid(format!("serialising result rows: {e}")))
}

/// The finished state of a results directory, as recovered from disk.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Finished cell ids in finishing order, with their rows.
    pub cells: Vec<(String, Vec<ResultRow>)>,
    /// Byte length of `results.csv` holding exactly the finished rows.
    pub csv_len: u64,
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
}

fn read_bytes(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Reads the finished cells of `dir` without changing anything.
pub fn recover(dir: &Path) -> Result<Recovered> {
    let jpath = dir.join(JOURNAL_FILE);
    let cpath = dir.join(RESULTS_FILE);
    let journal = read_bytes(&jpath)?.unwrap_or_default();
    let journal_len = journal
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let mut expected: Vec<(String, usize)> = Vec::new();
    for (i, line) in String::from_utf8_lossy(&journal[..journal_len])
        .lines()
        .enumerate()
    {
        let bad = || Error::Format {
            file: format!("{}:{}", jpath.display(), i + 1),
            reason: format!("expected `<cell id> <rows>`, got `{line}`"),
        };
        let (id, n) = line.split_once(' ').ok_or_else(bad)?;
        let n: usize = n.trim().parse().map_err(|_| bad())?;
        if expected.iter().any(|(x, _)| x == id) {
            return Err(Error::Format {
                file: format!("{}:{}", jpath.display(), i + 1),
                reason: format!("cell {id} is listed twice"),
            });
        }
        expected.push((id.to_string(), n));
    }

    let Some(csv_bytes) = read_bytes(&cpath)? else {
        if expected.is_empty() {
            return Ok(Recovered::default());
        }
        return Err(Error::Format {
            file: cpath.display().to_string(),
            reason: format!(
                "missing, but {} lists {} finished cells",
                JOURNAL_FILE,
                expected.len()
            ),
        });
    };
    let current = csv_header();
    let header = file_header(&csv_bytes, &current).ok_or_else(|| {
        let got = String::from_utf8_lossy(&csv_bytes)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        Error::Format {
            file: cpath.display().to_string(),
            reason: format!("unexpected header (written by another kvcat version?)\n  expected: {current}\n  found:    {got}"),
        }
    })?;
    let header_len = header.len() + 1;

    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(&csv_bytes[header_len..]);
    let headers = csv::ByteRecord::from(header.split(',').collect::<Vec<_>>());
    let mut record = csv::ByteRecord::new();
    let mut cells = Vec::with_capacity(expected.len());
    let mut end = 0u64;
    for (id, n) in &expected {
        let mut rows = Vec::with_capacity(*n);
        for _ in 0..*n {
            let ok = rdr
                .read_byte_record(&mut record)
                .map_err(|e| Error::Format {
                    file: cpath.display().to_string(),
                    reason: format!("bad record in the rows of finished cell {id}: {e}"),
                })?;
            let row: Option<ResultRow> = if ok {
                record.deserialize(Some(&headers)).ok()
            } else {
                None
            };
            match row {
                Some(r) if &r.cell_id == id => rows.push(r),
                _ => {
                    return Err(Error::Format {
                        file: cpath.display().to_string(),
                        reason: format!(
                            "does not match {JOURNAL_FILE}: expected {n} rows of finished cell {id} at byte {}",
                            header_len as u64 + end
                        ),
                    })
                }
            }
            end = rdr.position().byte();
        }
        cells.push((id.clone(), rows));
    }
    Ok(Recovered {
        cells,
        csv_len: header_len as u64 + end,
        journal_len: journal_len as u64,
        old_header: header != current,
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
    journal: File,
    done: HashMap<String, usize>,
    recovered: Recovered,
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
        let jpath = dir.join(JOURNAL_FILE);
        if !cpath.exists() {
            write_atomic(&cpath, format!("{}\n", csv_header()).as_bytes())?;
        }
        if !jpath.exists() {
            write_atomic(&jpath, b"")?;
        }
        let mut recovered = recover(dir)?;
        if recovered.old_header {
            upgrade_csv(dir, &recovered)?;
            recovered = recover(dir)?;
        }
        let open = |p: &Path, len: u64| -> Result<File> {
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
                    actual - len
                );
                f.set_len(len).map_err(|e| Error::io(p, e))?;
                f.sync_all().map_err(|e| Error::io(p, e))?;
            }
            Ok(f)
        };
        let csv = open(&cpath, recovered.csv_len)?;
        let journal = open(&jpath, recovered.journal_len)?;
        let done = recovered
            .cells
            .iter()
            .map(|(id, r)| (id.clone(), r.len()))
            .collect();
        Ok(ResultStore {
            _lock: lock,
            dir: dir.to_path_buf(),
            csv,
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

    /// Appends a finished cell's rows durably (rows, fsync, journal line, fsync).
    pub fn append_cell(&mut self, id: &str, rows: &[ResultRow]) -> Result<()> {
        if self.is_done(id) {
            return Err(Error::invalid(format!("cell {id} is already finished")));
        }
        if let Some(r) = rows.iter().find(|r| r.cell_id != id) {
            return Err(Error::invalid(format!(
                "a row of cell {id} carries cell id {}",
                r.cell_id
            )));
        }
        let cpath = self.dir.join(RESULTS_FILE);
        let jpath = self.dir.join(JOURNAL_FILE);
        use std::io::{Seek, SeekFrom};
        let bytes = rows_to_csv(rows)?;
        self.csv
            .seek(SeekFrom::End(0))
            .map_err(|e| Error::io(&cpath, e))?;
        self.csv
            .write_all(&bytes)
            .map_err(|e| Error::io(&cpath, e))?;
        self.csv.sync_data().map_err(|e| Error::io(&cpath, e))?;
        self.journal
            .seek(SeekFrom::End(0))
            .map_err(|e| Error::io(&jpath, e))?;
        self.journal
            .write_all(format!("{id} {}\n", rows.len()).as_bytes())
            .map_err(|e| Error::io(&jpath, e))?;
        self.journal.sync_data().map_err(|e| Error::io(&jpath, e))?;
        self.done.insert(id.to_string(), rows.len());
        Ok(())
    }
}
