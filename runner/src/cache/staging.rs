//! Writing an entry atomically: the run writes into `entries/.tmp-<key>-<pid>/`; [`Staging::commit`] writes
//! `entry.json` last, syncs every file and dir to disk, then renames the dir over `entries/<key>/` in one step.
//! A run killed at any point before the rename leaves only a staging dir, which no lookup reads and `gc` removes;
//! so no crash can leave an entry that claims a pass.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use super::entry::Entry;
use super::layout::{self, EntryPaths};
use super::store::Cache;
use crate::support::lock::LockGuard;

/// An entry being written. Dropped without [`Staging::commit`], it removes its dir.
#[derive(Debug)]
pub struct Staging {
    paths: EntryPaths,
    final_paths: EntryPaths,
    committed: bool,
}

impl Staging {
    /// Starts an entry for `key`; the caller holds the key's lock until the entry is committed or dropped.
    pub fn begin(cache: &Cache, key: &str, _lock: &LockGuard) -> std::io::Result<Self> {
        cache.ensure()?;
        let paths = EntryPaths::new(cache.entries_dir().join(layout::staging_dir_name(key)));
        if paths.dir.exists() {
            std::fs::remove_dir_all(&paths.dir)?;
        }
        std::fs::create_dir(&paths.dir)?;
        std::fs::create_dir(paths.out())?;
        Ok(Staging {
            paths,
            final_paths: cache.entry_paths(key),
            committed: false,
        })
    }

    /// Where the run writes its log, report and output while it runs.
    pub fn paths(&self) -> &EntryPaths {
        &self.paths
    }

    /// Writes `entry.json` and puts the entry in place, replacing any earlier entry of the key.
    pub fn commit(mut self, entry: &Entry, _lock: &LockGuard) -> std::io::Result<EntryPaths> {
        let mut json = serde_json::to_vec_pretty(entry).map_err(std::io::Error::other)?;
        json.push(b'\n');
        let mut file = File::create(self.paths.entry_json())?;
        file.write_all(&json)?;
        drop(file);
        sync_tree(&self.paths.dir)?;
        replace_dir(&self.paths.dir, &self.final_paths.dir)?;
        self.committed = true;
        if let Some(parent) = self.final_paths.dir.parent() {
            File::open(parent)?.sync_all()?;
        }
        Ok(self.final_paths.clone())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // After a commit the staging path holds the entry it replaced (or nothing): remove it either way.
        let _ = std::fs::remove_dir_all(&self.paths.dir);
    }
}

/// Moves `new` to `target`. When `target` exists the two are swapped in one step (`RENAME_EXCHANGE`) and the old
/// one, now at `new`, is left for the caller to remove; on file systems without the exchange, the old entry is
/// renamed aside first (a reader in between sees no entry, which only means it runs the test).
fn replace_dir(new: &Path, target: &Path) -> std::io::Result<()> {
    if !target.exists() {
        return std::fs::rename(new, target);
    }
    match exchange(new, target) {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {
            let aside = new.with_extension("old");
            std::fs::rename(target, &aside)?;
            std::fs::rename(new, target)?;
            std::fs::remove_dir_all(&aside)
        }
        Err(e) => Err(e),
    }
}

fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let a = CString::new(a.as_os_str().as_bytes())?;
    let b = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: two NUL-terminated paths that live across the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// fsyncs every file and dir under `dir`, and `dir` itself, so that the rename that publishes it never gets to
/// disk before its contents.
fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for item in std::fs::read_dir(dir)? {
        let item = item?;
        let kind = item.file_type()?;
        if kind.is_dir() {
            sync_tree(&item.path())?;
        } else if kind.is_file() {
            File::open(item.path())?.sync_all()?;
        }
    }
    File::open(dir)?.sync_all()
}
