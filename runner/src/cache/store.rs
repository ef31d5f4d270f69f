//! The result cache as a whole: finding, listing and removing entries, and the per-key lock.
//!
//! Readers take no lock: an entry dir appears whole (it is renamed into place), so a lookup sees the old entry,
//! the new one, or none. Writers and removers of a key hold the key's lock, so they never interleave.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::entry::Entry;
use super::layout::{self, EntryPaths, ENTRIES_DIR, LOCKS_DIR};
use super::read::{read_entry, Corrupt};
use crate::support::lock::{self, LockError, LockGuard};
use crate::support::xdg::{self, NoHome};

const CACHEDIR_TAG: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
# This file marks testrig's result cache; backup tools may skip this dir.\n";

#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

/// What a lookup found for a key.
#[derive(Debug)]
pub enum Lookup {
    /// No entry.
    Miss,
    /// A whole entry (of any outcome).
    Found(Found),
    /// An entry dir that cannot be used; the caller warns and runs the test.
    Ignored { dir: PathBuf, reason: Corrupt },
}

#[derive(Debug, Clone)]
pub struct Found {
    pub entry: Entry,
    pub paths: EntryPaths,
}

/// One dir of `entries/`, for `cache ls` and `gc`.
#[derive(Debug)]
pub struct Listed {
    pub key: String,
    pub paths: EntryPaths,
    pub entry: Result<Entry, Corrupt>,
    pub size: u64,
    /// The entry's start, or the dir's modification time when the entry cannot be read.
    pub started_at: u64,
}

impl Cache {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Cache { root: root.into() }
    }

    /// The cache at its usual place (see [`xdg::cache_root`]).
    pub fn from_env() -> Result<Self, NoHome> {
        xdg::cache_root().map(Cache::new)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn entries_dir(&self) -> PathBuf {
        self.root.join(ENTRIES_DIR)
    }

    pub fn entry_paths(&self, key: &str) -> EntryPaths {
        EntryPaths::new(self.entries_dir().join(key))
    }

    /// Creates the cache's dirs if they are missing.
    pub fn ensure(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(self.entries_dir())?;
        std::fs::create_dir_all(self.root.join(LOCKS_DIR))?;
        let tag = self.root.join("CACHEDIR.TAG");
        if !tag.exists() {
            std::fs::write(tag, CACHEDIR_TAG)?;
        }
        Ok(())
    }

    pub fn lookup(&self, key: &str) -> Lookup {
        let paths = self.entry_paths(key);
        if !paths.dir.exists() {
            return Lookup::Miss;
        }
        match read_entry(&paths.dir, key) {
            Ok(entry) => Lookup::Found(Found { entry, paths }),
            Err(reason) => Lookup::Ignored {
                dir: paths.dir,
                reason,
            },
        }
    }

    pub fn lock_path(&self, key: &str) -> PathBuf {
        layout::lock_file(&self.root, key)
    }

    /// Takes the key's lock, waiting up to `wait` for a run that holds it.
    pub async fn lock_key(&self, key: &str, wait: Duration) -> Result<LockGuard, LockError> {
        self.ensure_locks_dir(key)?;
        lock::acquire(&self.lock_path(key), wait).await
    }

    pub fn try_lock_key(&self, key: &str) -> Result<Option<LockGuard>, LockError> {
        self.ensure_locks_dir(key)?;
        lock::try_acquire(&self.lock_path(key))
    }

    fn ensure_locks_dir(&self, key: &str) -> Result<(), LockError> {
        std::fs::create_dir_all(self.root.join(LOCKS_DIR)).map_err(|source| LockError::Io {
            path: self.lock_path(key),
            source,
        })
    }

    /// Every entry dir, readable or not, newest first. Staging dirs are not listed.
    pub fn list(&self) -> std::io::Result<Vec<Listed>> {
        let mut listed = Vec::new();
        let dir = match std::fs::read_dir(self.entries_dir()) {
            Ok(dir) => dir,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(listed),
            Err(e) => return Err(e),
        };
        for item in dir {
            let item = item?;
            let name = item.file_name().to_string_lossy().into_owned();
            if !layout::is_key(&name) {
                continue;
            }
            let paths = EntryPaths::new(item.path());
            let entry = read_entry(&paths.dir, &name);
            let started_at = match &entry {
                Ok(e) => e.started_at,
                Err(_) => mtime_secs(&paths.dir),
            };
            listed.push(Listed {
                key: name,
                size: dir_size(&paths.dir),
                paths,
                entry,
                started_at,
            });
        }
        listed.sort_by(|a, b| {
            b.started_at
                .cmp(&a.started_at)
                .then_with(|| a.key.cmp(&b.key))
        });
        Ok(listed)
    }

    /// Removes the entry of `key`, which the caller has locked. Renamed aside first, so that a reader never sees
    /// a half-removed entry.
    pub fn remove_locked(&self, key: &str, _lock: &LockGuard) -> std::io::Result<()> {
        let dir = self.entry_paths(key).dir;
        let aside = self.entries_dir().join(layout::staging_dir_name(key));
        match std::fs::rename(&dir, &aside) {
            Ok(()) => std::fs::remove_dir_all(&aside),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Bytes in the files under `dir` (0 when it cannot be read).
pub fn dir_size(dir: &Path) -> u64 {
    let Ok(items) = std::fs::read_dir(dir) else {
        return 0;
    };
    items
        .flatten()
        .map(|item| match item.file_type() {
            Ok(t) if t.is_dir() => dir_size(&item.path()),
            Ok(_) => item.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

fn mtime_secs(path: &Path) -> u64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
