//! Locks of the runner.
//!
//! - [`DirLock`]: one writer per results directory (an `flock`, released by the kernel when
//!   its holder dies; see its doc for the choice).
//! - [`JobLock`]: a lock file per training job, so that concurrent shards sharing a
//!   checkpoint cache train each checkpoint once: the others wait for it. A lock left by a
//!   dead process on this host is taken over; one from another host must be removed by hand
//!   if its job died.

use kvcat_core::{Error, Result};
use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Held while training one job; removes its file on drop.
pub struct JobLock {
    path: PathBuf,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

fn owner_is_dead(owner: &str) -> bool {
    match owner.trim().rsplit_once(':') {
        Some((host, pid)) if host == hostname() => pid
            .parse::<u32>()
            .is_ok_and(|p| !Path::new(&format!("/proc/{p}")).exists()),
        Some(_) => false,
        // An empty or torn lock file: its writer died before writing it.
        None => true,
    }
}

impl JobLock {
    /// Takes the lock of job `id` under `root`, waiting while another live process holds it.
    /// Returns `None` when the checkpoint `done` appeared meanwhile.
    pub fn acquire(root: &Path, id: &str, done: &Path, label: &str) -> Result<Option<JobLock>> {
        let path = root.join(format!("{id}.lock"));
        let mut announced = false;
        loop {
            if done.is_dir() {
                return Ok(None);
            }
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    let me = format!("{}:{}\n", hostname(), std::process::id());
                    f.write_all(me.as_bytes())
                        .map_err(|e| Error::io(&path, e))?;
                    let _ = f.sync_all();
                    return Ok(Some(JobLock { path }));
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    let owner = std::fs::read_to_string(&path).unwrap_or_default();
                    if owner_is_dead(&owner) {
                        tracing::warn!(
                            "taking over the stale lock {} ({})",
                            path.display(),
                            owner.trim()
                        );
                        let _ = std::fs::remove_file(&path);
                        continue;
                    }
                    if !announced {
                        eprintln!(
                            "waiting for {} to finish training {label} (lock {}; delete it if that process is gone)",
                            owner.trim(),
                            path.display()
                        );
                        announced = true;
                    }
                    std::thread::sleep(Duration::from_secs(2));
                }
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
    }
}

impl Drop for JobLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
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
///   documented escape hatch). The training cache keeps its own per-job lock files
///   ([`JobLock`]), which only make concurrent shards *wait*; a stale one there delays, it
///   cannot corrupt.
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
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let taken = match try_flock(&file) {
            Ok(t) => t,
            Err(e) if std::env::var_os("KVCAT_NO_WRITER_LOCK").is_some() => {
                tracing::warn!(
                    "{}: no lock ({e}); KVCAT_NO_WRITER_LOCK is set",
                    path.display()
                );
                true
            }
            Err(e) => {
                return Err(Error::io(
                    &path,
                    std::io::Error::new(
                        e.kind(),
                        format!(
                            "cannot lock the results directory ({e}); this filesystem does not \
                             support flock (NFS mounted with `nolock`, Lustre without `flock`). \
                             Use a local --out, or set KVCAT_NO_WRITER_LOCK=1 if you are sure \
                             no other process writes there"
                        ),
                    ),
                ))
            }
        };
        if !taken {
            let holder = read_holder(&path);
            return Err(Error::Locked {
                path,
                holder: match holder.trim() {
                    "" => "holder unknown".to_string(),
                    h => h.to_string(),
                },
            });
        }
        use std::io::{Seek, SeekFrom};
        let note = holder_line();
        file.set_len(0).map_err(|e| Error::io(&path, e))?;
        file.seek(SeekFrom::Start(0))
            .map_err(|e| Error::io(&path, e))?;
        file.write_all(note.as_bytes())
            .map_err(|e| Error::io(&path, e))?;
        let _ = file.sync_all();
        Ok(DirLock { _file: file })
    }
}
