//! `entry.json`: what the cache knows about one run of one cache key.

use serde::{Deserialize, Serialize};

use crate::driver::{Outcome, SubtestRecord};

/// The format tag of `entry.json`. A reader ignores any entry with another tag, so bump it when the shape changes.
pub const FORMAT: &str = "testrig-cache/1";

/// One recorded run. Invariants of an entry on disk: `format` is [`FORMAT`], `key` is the name of its dir, and the
/// dir holds `log.txt`, `junit.xml` and `out/` beside `entry.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub format: String,
    pub key: String,
    pub name: String,
    pub outcome: EntryOutcome,
    /// Why the test did not pass; absent when it passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the run started, in seconds since the Unix epoch.
    pub started_at: u64,
    pub duration_secs: f64,
    /// The plan that ran, as the runner saw it (kept as JSON so that a later plan schema can still read old entries).
    pub plan: serde_json::Value,
    #[serde(default)]
    pub subtests: Vec<SubtestEntry>,
    /// The run reused kept VM state (`-K`): its outcome depends on more than the key, so it never makes a later
    /// run skip.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kept_state: bool,
    /// The testrig that recorded the entry, for bug reports.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub testrig_version: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryOutcome {
    Passed,
    Failed,
    TimedOut,
    Interrupted,
    /// The runner could not run the test (a start script or Python that would not start, ...).
    Error,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubtestEntry {
    pub name: String,
    pub duration_secs: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

impl Entry {
    /// Whether this entry lets a later run of its key skip the test.
    pub fn is_skippable_pass(&self) -> bool {
        self.outcome == EntryOutcome::Passed && !self.kept_state
    }
}

impl EntryOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryOutcome::Passed => "passed",
            EntryOutcome::Failed => "failed",
            EntryOutcome::TimedOut => "timed_out",
            EntryOutcome::Interrupted => "interrupted",
            EntryOutcome::Error => "error",
        }
    }
}

/// The entry's outcome and message for a run's outcome.
pub fn outcome_of(outcome: &Outcome) -> (EntryOutcome, Option<String>) {
    match outcome {
        Outcome::Passed => (EntryOutcome::Passed, None),
        Outcome::Failed(message) => (EntryOutcome::Failed, Some(message.clone())),
        Outcome::TimedOut(t) => (
            EntryOutcome::TimedOut,
            Some(format!("global timeout of {} seconds reached", t.as_secs())),
        ),
        Outcome::Interrupted(sig) => (
            EntryOutcome::Interrupted,
            Some(format!("interrupted by {sig}")),
        ),
    }
}

pub fn subtests_of(records: &[SubtestRecord]) -> Vec<SubtestEntry> {
    records
        .iter()
        .map(|s| SubtestEntry {
            name: s.name.clone(),
            duration_secs: s.duration.as_secs_f64(),
            failure: s.failure.clone(),
        })
        .collect()
}
