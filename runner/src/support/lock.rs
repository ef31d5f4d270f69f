//! Advisory locks on lock files (`flock`), for cache keys and kept state dirs.
//!
//! The holder writes its PID into the file, so a run that finds the lock taken can name the other run. The kernel
//! drops the lock when the holder's file is closed, including when the holder is killed with SIGKILL, so a lock is
//! never left behind by a crashed run. A lock file may be removed by its holder ([`LockGuard::remove`]); a waiter
//! that locked the removed file notices (its file is no longer the one at the path) and tries again.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;

/// The longest pause between two tries while waiting for a lock.
const MAX_POLL: Duration = Duration::from_millis(200);

#[derive(Debug, Error)]
pub enum LockError {
    #[error("{} is locked by another testrig run ({}){}", path.display(), holder_text(*holder), waited_text(*waited))]
    Busy {
        path: PathBuf,
        holder: Option<u32>,
        waited: Duration,
    },
    #[error("failed to lock {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn holder_text(holder: Option<u32>) -> String {
    match holder {
        Some(pid) => format!("PID {pid}"),
        None => "PID unknown".into(),
    }
}

fn waited_text(waited: Duration) -> String {
    if waited.is_zero() {
        String::new()
    } else {
        format!(", still after waiting {:.0} s", waited.as_secs_f64())
    }
}

/// A held lock; released when dropped.
#[derive(Debug)]
pub struct LockGuard {
    file: File,
    path: PathBuf,
}

impl LockGuard {
    /// Removes the lock file, then releases the lock.
    pub fn remove(self) -> std::io::Result<()> {
        std::fs::remove_file(&self.path)
    }
}

/// Takes the lock at `path` (creating the file), waiting up to `wait` for its holder to let go. The task sleeps
/// between tries, so other tasks (another test's VMs, a signal handler) go on while it waits, and dropping the
/// future ends the wait.
pub async fn acquire(path: &Path, wait: Duration) -> Result<LockGuard, LockError> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(guard) = try_acquire(path)? {
            return Ok(guard);
        }
        let waited = started.elapsed();
        if waited >= wait {
            return Err(LockError::Busy {
                path: path.to_owned(),
                holder: holder(path),
                waited: if wait.is_zero() {
                    Duration::ZERO
                } else {
                    waited
                },
            });
        }
        tokio::time::sleep(pause.min(wait - waited)).await;
        pause = (pause * 2).min(MAX_POLL);
    }
}

/// Takes the lock at `path` if nobody holds it; `None` when somebody does.
pub fn try_acquire(path: &Path) -> Result<Option<LockGuard>, LockError> {
    let io = |source| LockError::Io {
        path: path.to_owned(),
        source,
    };
    loop {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Ok(None);
            }
            return Err(io(err));
        }
        if !is_same_file(&file, path) {
            // The holder before us removed the file: this lock guards nothing any more.
            continue;
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        return Ok(Some(LockGuard {
            file,
            path: path.to_owned(),
        }));
    }
}

/// The PID written by the lock's current holder, if it wrote one.
pub fn holder(path: &Path) -> Option<u32> {
    let mut text = String::new();
    File::open(path).ok()?.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// Whether somebody holds the lock at `path` right now (a missing file is not held).
pub fn is_held(path: &Path) -> bool {
    if !path.exists() {
        return false;
    }
    matches!(try_acquire(path), Ok(None))
}

fn is_same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // Closing the file releases the lock; say so explicitly for readers of this file.
        // SAFETY: flock on a file descriptor we own.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn second_taker_is_refused_with_the_holders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let first = acquire(&path, Duration::ZERO).await.unwrap();
        let err = acquire(&path, Duration::ZERO).await.unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains(&format!("PID {}", std::process::id())),
            "{message}"
        );
        assert!(!message.contains("waiting"), "{message}");
        assert!(is_held(&path));
        drop(first);
        assert!(!is_held(&path));
        acquire(&path, Duration::ZERO).await.unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_waiter_gets_the_lock_when_the_holder_lets_go_and_other_tasks_run_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let first = acquire(&path, Duration::ZERO).await.unwrap();
        // On this one thread, the holder's task must get to run while the waiter waits.
        let holder = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(first);
        });
        let started = Instant::now();
        acquire(&path, Duration::from_secs(5)).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(90));
        holder.await.unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_bounded_wait_names_how_long_it_waited() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let _first = acquire(&path, Duration::ZERO).await.unwrap();
        let err = acquire(&path, Duration::from_millis(50)).await.unwrap_err();
        assert!(
            matches!(err, LockError::Busy { waited, .. } if waited >= Duration::from_millis(50))
        );
        assert!(err.to_string().contains("still after waiting"), "{err}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_removed_lock_file_is_not_shared_by_two_holders() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let first = acquire(&path, Duration::ZERO).await.unwrap();
        // Somebody waits for the lock...
        let waiter_path = path.clone();
        let waiter =
            tokio::spawn(
                async move { acquire(&waiter_path, Duration::from_secs(5)).await.unwrap() },
            );
        tokio::time::sleep(Duration::from_millis(50)).await;
        // ...while the holder removes the file: the waiter must end up holding a lock on the new file.
        first.remove().unwrap();
        let second = waiter.await.unwrap();
        assert!(path.exists());
        assert!(acquire(&path, Duration::ZERO).await.is_err());
        drop(second);
    }
}
