//! The cache's behaviour on disk, end to end without a run: entries written, read back, replaced, corrupted.

use std::path::Path;

use super::entry::{Entry, EntryOutcome, SubtestEntry, FORMAT};
use super::layout;
use super::read::Corrupt;
use super::staging::Staging;
use super::store::{Cache, Lookup};
use super::summary::cached_line;

const KEY: &str = "0123456789abcdfghijklmnpqrsvwxyz";

fn entry(outcome: EntryOutcome) -> Entry {
    Entry {
        format: FORMAT.into(),
        key: KEY.into(),
        name: "login".into(),
        outcome,
        message: (outcome != EntryOutcome::Passed).then(|| "boom".into()),
        started_at: 1_795_306_582,
        duration_secs: 41.23,
        plan: serde_json::json!({"name": "login", "vms": {}}),
        subtests: vec![SubtestEntry {
            name: "logs in".into(),
            duration_secs: 1.5,
            failure: None,
        }],
        kept_state: false,
        testrig_version: "0.1.0".into(),
    }
}

/// Records `entry` the way a run does: log and output written into the staging dir, then committed.
fn record(cache: &Cache, entry: &Entry, log: &str) {
    let lock = cache.try_lock_key(KEY).unwrap().unwrap();
    let staging = Staging::begin(cache, KEY, &lock).unwrap();
    std::fs::write(staging.paths().log(), log).unwrap();
    std::fs::write(staging.paths().junit(), "<testsuites/>").unwrap();
    std::fs::write(staging.paths().out().join("screen.png"), "png").unwrap();
    staging.commit(entry, &lock).unwrap();
}

fn found(cache: &Cache) -> Entry {
    match cache.lookup(KEY) {
        Lookup::Found(found) => found.entry,
        other => panic!("expected an entry, got {other:?}"),
    }
}

fn ignored(cache: &Cache) -> (std::path::PathBuf, Corrupt) {
    match cache.lookup(KEY) {
        Lookup::Ignored { dir, reason } => (dir, reason),
        other => panic!("expected an ignored entry, got {other:?}"),
    }
}

#[test]
fn an_entry_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(dir.path());
    assert!(matches!(cache.lookup(KEY), Lookup::Miss));
    let written = entry(EntryOutcome::Passed);
    record(&cache, &written, "the log\n");
    assert_eq!(found(&cache), written);
    let paths = cache.entry_paths(KEY);
    assert_eq!(
        std::fs::read_to_string(paths.out().join("screen.png")).unwrap(),
        "png"
    );
    assert!(dir.path().join("CACHEDIR.TAG").exists());
    // Only the entry is left in entries/: the staging dir became it.
    let names: Vec<_> = std::fs::read_dir(cache.entries_dir())
        .unwrap()
        .map(|i| i.unwrap().file_name())
        .collect();
    assert_eq!(names, [KEY]);
    // Absent fields stay absent on the wire.
    let text = std::fs::read_to_string(paths.entry_json()).unwrap();
    assert!(
        !text.contains("null") && !text.contains("kept_state"),
        "{text}"
    );
    assert!(text.contains("\"outcome\": \"passed\""), "{text}");
}

#[test]
fn only_a_fresh_pass_is_skippable() {
    assert!(entry(EntryOutcome::Passed).is_skippable_pass());
    for outcome in [
        EntryOutcome::Failed,
        EntryOutcome::TimedOut,
        EntryOutcome::Interrupted,
        EntryOutcome::Error,
    ] {
        assert!(!entry(outcome).is_skippable_pass());
    }
    let kept = Entry {
        kept_state: true,
        ..entry(EntryOutcome::Passed)
    };
    assert!(!kept.is_skippable_pass());
}

#[test]
fn a_new_entry_replaces_the_old_one_whole() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(dir.path());
    record(&cache, &entry(EntryOutcome::Passed), "first\n");
    let paths = cache.entry_paths(KEY);
    std::fs::write(paths.out().join("only-in-first"), "x").unwrap();
    record(&cache, &entry(EntryOutcome::Failed), "second\n");
    assert_eq!(found(&cache).outcome, EntryOutcome::Failed);
    assert_eq!(std::fs::read_to_string(paths.log()).unwrap(), "second\n");
    assert!(!paths.out().join("only-in-first").exists());
    assert_eq!(std::fs::read_dir(cache.entries_dir()).unwrap().count(), 1);
}

#[test]
fn an_uncommitted_staging_dir_is_never_an_entry() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(dir.path());
    record(&cache, &entry(EntryOutcome::Failed), "failed run\n");
    let lock = cache.try_lock_key(KEY).unwrap().unwrap();
    let staging = Staging::begin(&cache, KEY, &lock).unwrap();
    std::fs::write(staging.paths().log(), "half a log").unwrap();
    // A run killed here leaves its staging dir: lookups still see the old, failed entry.
    let staging_dir = staging.paths().dir.clone();
    std::mem::forget(staging);
    assert_eq!(found(&cache).outcome, EntryOutcome::Failed);
    assert!(layout::staging_key(&staging_dir.file_name().unwrap().to_string_lossy()).is_some());
    assert_eq!(cache.list().unwrap().len(), 1);
    drop(lock);
    // gc removes it once nobody holds the key.
    let policy = super::gc::Policy {
        max_age: None,
        max_size: u64::MAX,
    };
    let report = super::gc::collect(&cache, &policy, 0, false).unwrap();
    assert_eq!(report.leftovers_removed, 1);
    assert!(!staging_dir.exists());
}

fn corrupt_case(damage: impl FnOnce(&Path)) -> (std::path::PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(dir.path());
    record(&cache, &entry(EntryOutcome::Passed), "log\n");
    damage(&cache.entry_paths(KEY).dir);
    let (path, reason) = ignored(&cache);
    assert_eq!(path, cache.entry_paths(KEY).dir);
    // `ls` still lists it, as unreadable.
    assert!(cache.list().unwrap()[0].entry.is_err());
    (path, reason.to_string())
}

#[test]
fn corrupted_entries_are_ignored_with_the_reason() {
    let (_, reason) = corrupt_case(|d| std::fs::remove_file(d.join("entry.json")).unwrap());
    assert!(reason.contains("no entry.json"), "{reason}");

    let (_, reason) =
        corrupt_case(|d| std::fs::write(d.join("entry.json"), "{\"format\": ").unwrap());
    assert!(reason.contains("not valid JSON"), "{reason}");

    let (_, reason) = corrupt_case(|d| {
        let text = std::fs::read_to_string(d.join("entry.json")).unwrap();
        std::fs::write(
            d.join("entry.json"),
            text.replace(FORMAT, "testrig-cache/0"),
        )
        .unwrap()
    });
    assert!(reason.contains("testrig-cache/0"), "{reason}");

    let (_, reason) = corrupt_case(|d| {
        let text = std::fs::read_to_string(d.join("entry.json")).unwrap();
        let other = "zyxwvsrqpnmlkjihgfdcba9876543210";
        std::fs::write(d.join("entry.json"), text.replace(KEY, other)).unwrap()
    });
    assert!(
        reason.contains("zyxwvsrqpnmlkjihgfdcba9876543210"),
        "{reason}"
    );

    let (_, reason) = corrupt_case(|d| std::fs::remove_file(d.join("log.txt")).unwrap());
    assert!(reason.contains("log.txt"), "{reason}");

    let (_, reason) = corrupt_case(|d| {
        std::fs::write(
            d.join("entry.json"),
            format!("{{\"format\": \"{FORMAT}\", \"key\": \"{KEY}\"}}"),
        )
        .unwrap()
    });
    assert!(reason.contains("does not match"), "{reason}");
}

#[test]
fn the_cached_line() {
    let e = entry(EntryOutcome::Passed);
    assert_eq!(
        cached_line(
            "login",
            &e,
            Path::new("/c/entries/k/log.txt"),
            e.started_at + 200
        ),
        "login: passed (cached, 3 minutes ago, 41.2 s); log: /c/entries/k/log.txt"
    );
}

#[test]
fn a_locked_entry_is_not_removed_by_gc() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(dir.path());
    record(&cache, &entry(EntryOutcome::Passed), "log\n");
    let policy = super::gc::Policy {
        max_age: None,
        max_size: 0,
    };
    let held = cache.try_lock_key(KEY).unwrap().unwrap();
    let report = super::gc::collect(&cache, &policy, 0, false).unwrap();
    assert!(report.removed.is_empty());
    assert!(matches!(cache.lookup(KEY), Lookup::Found(_)));
    drop(held);
    let report = super::gc::collect(&cache, &policy, 0, false).unwrap();
    assert_eq!(report.removed.len(), 1);
    assert!(matches!(cache.lookup(KEY), Lookup::Miss));
    // The key's lock file went with it.
    assert!(!cache.lock_path(KEY).exists());
}
