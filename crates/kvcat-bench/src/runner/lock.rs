//! Locks of the runner, both exclusive `flock(2)`s on files that are never deleted (see
//! [`DirLock`] for why):
//!
//! - [`DirLock`]: one writer per results directory; a second writer fails at once.
//! - [`JobLock`]: one trainer per training job, so that concurrent shards sharing a checkpoint
//!   cache train each checkpoint once: the others wait for it, and take over when its holder
//!   dies (the kernel releases the lock).

use kvcat_core::{Error, Result};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

/// Held while training one job. Dropping it (or the process dying) releases the lock; the
/// file `<id>.lock` stays, naming its last holder.
pub struct JobLock {
    /// Kept open: closing the descriptor releases the lock.
    _file: File,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

impl JobLock {
    /// Takes the lock of job `id` under `root`, waiting while another process holds it.
    /// Returns `None` when the checkpoint `done` appeared meanwhile (checked again once the
    /// lock is taken, since its holder may have finished the job while this one waited).
    pub fn acquire(root: &Path, id: &str, done: &Path, label: &str) -> Result<Option<JobLock>> {
        let path = root.join(format!("{id}.lock"));
        let mut file = open_lock_file(&path)?;
        let mut announced = false;
        loop {
            if done.is_dir() {
                return Ok(None);
            }
            if lock_or_explain(&file, &path, "the training job")? {
                if done.is_dir() {
                    return Ok(None);
                }
                note_holder(&mut file, &path)?;
                return Ok(Some(JobLock { _file: file }));
            }
            if !announced {
                eprintln!(
                    "waiting for another process to finish training {label} (lock {}: {})",
                    path.display(),
                    read_holder(&path).trim()
                );
                announced = true;
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}

/// Opens (creating, never truncating) a lock file.
fn open_lock_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| Error::io(path, e))
}

/// Tries the lock once: `Ok(true)` when taken, `Ok(false)` when another process holds it. A
/// filesystem without `flock` is an error naming the mounts that cause it, unless
/// `KVCAT_NO_WRITER_LOCK` is set (then the lock counts as taken).
fn lock_or_explain(file: &File, path: &Path, what: &str) -> Result<bool> {
    match try_flock(file) {
        Ok(taken) => Ok(taken),
        Err(e) if std::env::var_os("KVCAT_NO_WRITER_LOCK").is_some() => {
            tracing::warn!(
                "{}: no lock ({e}); KVCAT_NO_WRITER_LOCK is set",
                path.display()
            );
            Ok(true)
        }
        Err(e) => Err(Error::io(
            path,
            std::io::Error::new(
                e.kind(),
                format!(
                    "cannot lock {what} ({e}); this filesystem does not support flock (NFS \
                     mounted with `nolock`, Lustre without `flock`). Use a local --out and \
                     --checkpoints, or set KVCAT_NO_WRITER_LOCK=1 if you are sure no other \
                     process writes there"
                ),
            ),
        )),
    }
}

/// Writes [`holder_line`] into a lock file just taken, for other processes' messages.
fn note_holder(file: &mut File, path: &Path) -> Result<()> {
    use std::io::{Seek, SeekFrom};
    file.set_len(0).map_err(|e| Error::io(path, e))?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| Error::io(path, e))?;
    file.write_all(holder_line().as_bytes())
        .map_err(|e| Error::io(path, e))?;
    let _ = file.sync_all();
    Ok(())
}

/// The lock file of a results directory (see [`DirLock`]).
pub const WRITER_LOCK_FILE: &str = "writer.lock";

/// One writer per results directory: an exclusive `flock(2)` on `<dir>/writer.lock`, held for
/// as long as a [`super::ResultStore`] is open (`kvcat bench`, `kvcat merge --out`). A second
/// writer fails at once with an error naming the holder (host, pid, start time, command), so
/// two runs never append the same cells to one `results.csv`.
///
/// # Why `flock` and not an exclusive-create lock file
///
/// - **No stale locks.** The kernel drops an `flock` when its process dies (`kill -9`, OOM,
///   node reboot), and an NFSv4 server drops it when the client's lease lapses (about 90 s
///   after a node crash). An `O_EXCL` lock file outlives its writer, so it needs a staleness
///   rule, and every such rule can be wrong: a pid can be reused, another host's pid cannot
///   be checked, and breaking a lock by age races with a second breaker (both delete, both
///   create, both "hold" it).
/// - **The file is never deleted.** Removing a lock file while a waiter holds it open is the
///   classic race (the waiter then locks a deleted inode). The file stays; only the lock on
///   it moves. Its text names the last holder, for messages only.
/// - **NFS.** Linux implements `flock` on NFS as a whole-file POSIX lock, which goes through
///   the server (NLM on NFSv3, the protocol itself on NFSv4), so it excludes writers on other
///   hosts too. A mount with `nolock` or `local_lock=all` keeps locks on one host; Lustre
///   without `-o flock` refuses them (the error says so, and `KVCAT_NO_WRITER_LOCK=1` is the
///   documented escape hatch). The training cache's per-job locks ([`JobLock`]) are `flock`s
///   for the same reasons: an earlier `O_EXCL` version read a lock file between its creation
///   and its first write as "torn, so stale", took it over, and two shards trained one
///   checkpoint into the same directory.
pub struct DirLock {
    /// Kept open: closing the descriptor releases the lock.
    _file: std::fs::File,
}

/// Who holds (or last held) a lock: `host=… pid=… since=… cmd=…`.
fn holder_line() -> String {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let cmd: Vec<String> = std::env::args().collect();
    format!(
        "host={} pid={} since_unix={since} cmd={}\n",
        hostname(),
        std::process::id(),
        cmd.join(" ")
    )
}

/// `flock(fd, LOCK_EX | LOCK_NB)`: `Ok(true)` when taken, `Ok(false)` when another open
/// file description holds it.
fn try_flock(file: &std::fs::File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: `flock` only reads the descriptor, which `file` keeps open for the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// The holder line of a lock just found taken. The holder writes it right after taking the
/// lock, so an empty file is read again for up to a second.
fn read_holder(path: &Path) -> String {
    for _ in 0..20 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.ends_with('\n') {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::read_to_string(path).unwrap_or_default()
}

impl DirLock {
    /// Takes the writer lock of results directory `dir` (which must exist), or fails with
    /// [`Error::Locked`] naming the process that holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        let path = dir.join(WRITER_LOCK_FILE);
        let mut file = open_lock_file(&path)?;
        if !lock_or_explain(&file, &path, "the results directory")? {
            let holder = read_holder(&path);
            return Err(Error::Locked {
                path,
                holder: match holder.trim() {
                    "" => "holder unknown".to_string(),
                    h => h.to_string(),
                },
            });
        }
        note_holder(&mut file, &path)?;
        Ok(DirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::path::PathBuf;
    use std::sync::{Arc, Barrier, Mutex};

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kvcat-lock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Four shards reach one job at the same instant: exactly one trains it, the others wait
    /// and then find it done. (The `O_EXCL` lock this replaced let two of them train.)
    #[test]
    fn concurrent_job_locks_let_exactly_one_train() {
        let root = scratch("race");
        let done = root.join("job");
        let start = Arc::new(Barrier::new(4));
        let trained = Arc::new(Mutex::new(0usize));
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let (root, done) = (root.clone(), done.clone());
                let (start, trained) = (start.clone(), trained.clone());
                std::thread::spawn(move || {
                    start.wait();
                    if let Some(_lock) = JobLock::acquire(&root, "job", &done, "job").unwrap() {
                        *trained.lock().unwrap() += 1;
                        std::thread::sleep(Duration::from_millis(200));
                        std::fs::create_dir(&done).unwrap();
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!(*trained.lock().unwrap(), 1);
        let holder = std::fs::read_to_string(root.join("job.lock")).unwrap();
        assert!(
            holder.contains(&format!("pid={}", std::process::id())),
            "{holder}"
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    /// A lock file left by a dead process (or an older kvcat) holds no lock: taken at once.
    #[test]
    fn a_leftover_lock_file_does_not_block() {
        let root = scratch("leftover");
        std::fs::write(root.join("job.lock"), "otherhost:1\n").unwrap();
        let lock = JobLock::acquire(&root, "job", &root.join("job"), "job").unwrap();
        assert!(lock.is_some());
        let _ = std::fs::remove_dir_all(&root);
    }
}
