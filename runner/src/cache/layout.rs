//! The cache's layout on disk, in one place:
//!
//! ```text
//! <root>/CACHEDIR.TAG
//! <root>/entries/<key>/entry.json      what ran and how it ended (written last)
//! <root>/entries/<key>/log.txt         the run's full text log
//! <root>/entries/<key>/junit.xml       the JUnit report
//! <root>/entries/<key>/out/            everything the test wrote to its output dir
//! <root>/entries/.tmp-<key>-<pid>/     an entry being written (never read)
//! <root>/locks/<key>.lock              held by the run that is running or recording <key>
//! ```

use std::path::{Path, PathBuf};

pub const ENTRIES_DIR: &str = "entries";
pub const LOCKS_DIR: &str = "locks";
/// Prefix of dirs in `entries/` that are not entries: staging dirs and entries being swapped out.
pub const TEMP_PREFIX: &str = ".tmp-";

/// The files of one entry dir (committed or staging).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryPaths {
    pub dir: PathBuf,
}

impl EntryPaths {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        EntryPaths { dir: dir.into() }
    }

    pub fn entry_json(&self) -> PathBuf {
        self.dir.join("entry.json")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("log.txt")
    }

    pub fn junit(&self) -> PathBuf {
        self.dir.join("junit.xml")
    }

    pub fn out(&self) -> PathBuf {
        self.dir.join("out")
    }
}

/// Whether `name` can be a cache key (and so an entry's dir name): Nix base32, as the runner computes it.
pub fn is_key(name: &str) -> bool {
    name.len() == 32
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b.is_ascii_lowercase() && !b"eotu".contains(&b)))
}

/// The key a staging dir belongs to: `.tmp-<key>-<pid>` gives `<key>`.
pub fn staging_key(name: &str) -> Option<&str> {
    let rest = name.strip_prefix(TEMP_PREFIX)?;
    let key = rest.get(..32)?;
    (is_key(key) && rest[32..].starts_with('-')).then_some(key)
}

pub fn staging_dir_name(key: &str) -> String {
    format!("{TEMP_PREFIX}{key}-{}", std::process::id())
}

pub fn lock_file(root: &Path, key: &str) -> PathBuf {
    root.join(LOCKS_DIR).join(format!("{key}.lock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_staging_names() {
        let key = "0123456789abcdfghijklmnpqrsvwxyz";
        assert!(is_key(key));
        assert!(!is_key("0123456789abcdfghijklmnpqrsvwxye"));
        assert!(!is_key("short"));
        assert_eq!(staging_key(&format!(".tmp-{key}-42")), Some(key));
        assert_eq!(staging_key(&staging_dir_name(key)), Some(key));
        assert_eq!(staging_key(".tmp-x-1"), None);
        assert_eq!(staging_key(key), None);
    }
}
