//! The one line `testrig run` prints for a test it skips.

use std::path::Path;

use super::entry::Entry;
use super::humanize;

/// `<name>: passed (cached, 3 minutes ago, 41.2 s); log: <path>`. The name is the test being run: two tests that
/// run exactly the same thing share a key, and so an entry.
pub fn cached_line(name: &str, entry: &Entry, log: &Path, now: u64) -> String {
    format!(
        "{name}: {} (cached, {}, {}); log: {}",
        entry.outcome.as_str(),
        humanize::ago(entry.started_at, now),
        humanize::duration(entry.duration_secs),
        log.display()
    )
}
