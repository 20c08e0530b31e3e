//! A lock file per training job, so that concurrent shards sharing a checkpoint cache train
//! each checkpoint once: the others wait for it. A lock left by a dead process on this host
//! is taken over; one from another host must be removed by hand if its job died.

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
