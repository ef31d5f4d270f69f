//! Reading one entry dir, and refusing any that is not whole: a run that was killed while writing, a disk that
//! lost data, or an entry from another version of testrig must never be mistaken for a result.

use std::path::Path;

use thiserror::Error;

use super::entry::{Entry, FORMAT};
use super::layout::EntryPaths;

/// Why an entry dir was not used. Messages are fragments that read well after "ignoring cache entry <dir>: ".
#[derive(Debug, Error)]
pub enum Corrupt {
    #[error("it has no entry.json (a run stopped while writing it?)")]
    NoEntryFile,
    #[error("cannot read entry.json: {0}")]
    Unreadable(std::io::Error),
    #[error("entry.json is not valid JSON: {0}")]
    BadJson(serde_json::Error),
    #[error("entry.json has format {found:?}, expected {FORMAT:?}")]
    WrongFormat { found: String },
    #[error("entry.json does not match this testrig's format: {0}")]
    BadShape(serde_json::Error),
    #[error("entry.json is for key {found}, not for the dir it is in")]
    KeyMismatch { found: String },
    #[error("its log.txt is missing")]
    NoLog,
}

/// Reads the entry in `dir`, which must be the entry of `key`.
pub fn read_entry(dir: &Path, key: &str) -> Result<Entry, Corrupt> {
    let paths = EntryPaths::new(dir);
    let bytes = match std::fs::read(paths.entry_json()) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Corrupt::NoEntryFile),
        Err(e) => return Err(Corrupt::Unreadable(e)),
    };
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(Corrupt::BadJson)?;
    // The format first, so that an entry of another version is named as such rather than as a shape error.
    let format = value.get("format").and_then(|f| f.as_str()).unwrap_or("");
    if format != FORMAT {
        return Err(Corrupt::WrongFormat {
            found: format.to_owned(),
        });
    }
    let entry: Entry = serde_json::from_value(value).map_err(Corrupt::BadShape)?;
    if entry.key != key {
        return Err(Corrupt::KeyMismatch { found: entry.key });
    }
    if !paths.log().is_file() {
        return Err(Corrupt::NoLog);
    }
    Ok(entry)
}
