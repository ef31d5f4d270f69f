//! `testrig cache gc`: drop entries older than a maximum age, then the oldest until the cache fits its size cap.
//! An entry whose key is locked (a run is running or recording it) is never removed, but its size still counts.

use std::time::Duration;

use serde::Serialize;

use super::layout::{self, LOCKS_DIR};
use super::store::Cache;
use crate::support::lock;

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub max_age: Option<Duration>,
    pub max_size: u64,
}

/// An entry as `gc` weighs it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub key: String,
    pub name: Option<String>,
    pub started_at: u64,
    pub size: u64,
    pub in_use: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    TooOld,
    OverSize,
}

/// Which candidates to remove and why, oldest first: every one older than `max_age`, then the oldest of the rest
/// until the total (in-use entries included) is at most `max_size`.
pub fn plan(candidates: &[Candidate], now: u64, policy: &Policy) -> Vec<(usize, Reason)> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (&candidates[a], &candidates[b]);
        a.started_at
            .cmp(&b.started_at)
            .then_with(|| a.key.cmp(&b.key))
    });
    let mut total: u64 = candidates.iter().map(|c| c.size).sum();
    let mut chosen = Vec::new();
    let mut taken = vec![false; candidates.len()];
    if let Some(max_age) = policy.max_age {
        for &i in &order {
            let c = &candidates[i];
            if !c.in_use && now.saturating_sub(c.started_at) > max_age.as_secs() {
                chosen.push((i, Reason::TooOld));
                taken[i] = true;
                total -= c.size;
            }
        }
    }
    for &i in &order {
        if total <= policy.max_size {
            break;
        }
        let c = &candidates[i];
        if !c.in_use && !taken[i] {
            chosen.push((i, Reason::OverSize));
            taken[i] = true;
            total -= c.size;
        }
    }
    chosen
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub removed: Vec<Removed>,
    /// Entries `gc` would have removed but a run holds.
    pub in_use: Vec<InUse>,
    /// Dirs of runs that died while writing an entry.
    pub leftovers_removed: usize,
    pub total_bytes_before: u64,
    pub total_bytes_after: u64,
    pub entries_kept: usize,
}

#[derive(Debug, Serialize)]
pub struct Removed {
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub reason: Reason,
    pub size_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct InUse {
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

/// Applies `policy` to the cache (or only reports what it would do, with `dry_run`).
pub fn collect(cache: &Cache, policy: &Policy, now: u64, dry_run: bool) -> std::io::Result<Report> {
    let listed = cache.list()?;
    let candidates: Vec<Candidate> = listed
        .iter()
        .map(|l| Candidate {
            key: l.key.clone(),
            name: l.entry.as_ref().ok().map(|e| e.name.clone()),
            started_at: l.started_at,
            size: l.size,
            in_use: lock::is_held(&cache.lock_path(&l.key)),
        })
        .collect();
    let total: u64 = candidates.iter().map(|c| c.size).sum();
    let mut report = Report {
        total_bytes_before: total,
        total_bytes_after: total,
        ..Report::default()
    };
    for (i, reason) in plan(&candidates, now, policy) {
        let c = &candidates[i];
        if !dry_run {
            // Probed as free above; a run may have taken the key since.
            let Some(guard) = cache.try_lock_key(&c.key).map_err(std::io::Error::other)? else {
                report.in_use.push(InUse {
                    key: c.key.clone(),
                    pid: lock::holder(&cache.lock_path(&c.key)),
                });
                continue;
            };
            cache.remove_locked(&c.key, &guard)?;
            guard.remove()?;
        }
        report.total_bytes_after -= c.size;
        report.removed.push(Removed {
            key: c.key.clone(),
            name: c.name.clone(),
            reason,
            size_bytes: c.size,
        });
    }
    report.entries_kept = candidates.len() - report.removed.len();
    if !dry_run {
        report.leftovers_removed = remove_leftovers(cache)?;
    }
    Ok(report)
}

/// Removes staging dirs and lock files that no run holds: what runs killed mid-write leave behind.
fn remove_leftovers(cache: &Cache) -> std::io::Result<usize> {
    let mut removed = 0;
    if let Ok(items) = std::fs::read_dir(cache.entries_dir()) {
        for item in items.flatten() {
            let name = item.file_name().to_string_lossy().into_owned();
            let Some(key) = layout::staging_key(&name) else {
                continue;
            };
            if let Some(_guard) = cache.try_lock_key(key).map_err(std::io::Error::other)? {
                std::fs::remove_dir_all(item.path())?;
                removed += 1;
            }
        }
    }
    if let Ok(items) = std::fs::read_dir(cache.root().join(LOCKS_DIR)) {
        for item in items.flatten() {
            let name = item.file_name().to_string_lossy().into_owned();
            let Some(key) = name.strip_suffix(".lock").filter(|k| layout::is_key(k)) else {
                continue;
            };
            if cache.entry_paths(key).dir.exists() {
                continue;
            }
            if let Some(guard) = cache.try_lock_key(key).map_err(std::io::Error::other)? {
                guard.remove()?;
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(key: &str, started_at: u64, size: u64, in_use: bool) -> Candidate {
        Candidate {
            key: key.into(),
            name: None,
            started_at,
            size,
            in_use,
        }
    }

    fn keys(candidates: &[Candidate], plan: &[(usize, Reason)]) -> Vec<(String, Reason)> {
        plan.iter()
            .map(|&(i, r)| (candidates[i].key.clone(), r))
            .collect()
    }

    #[test]
    fn removes_oldest_first_until_under_the_cap() {
        let cands = [
            c("new", 300, 40, false),
            c("old", 100, 40, false),
            c("mid", 200, 40, false),
        ];
        let policy = Policy {
            max_age: None,
            max_size: 50,
        };
        assert_eq!(
            keys(&cands, &plan(&cands, 400, &policy)),
            [
                ("old".into(), Reason::OverSize),
                ("mid".into(), Reason::OverSize)
            ]
        );
        let roomy = Policy {
            max_age: None,
            max_size: 120,
        };
        assert!(plan(&cands, 400, &roomy).is_empty());
    }

    #[test]
    fn age_first_then_size() {
        let cands = [
            c("a", 100, 10, false),
            c("b", 350, 100, false),
            c("c", 390, 100, false),
        ];
        let policy = Policy {
            max_age: Some(Duration::from_secs(60)),
            max_size: 150,
        };
        assert_eq!(
            keys(&cands, &plan(&cands, 400, &policy)),
            [("a".into(), Reason::TooOld), ("b".into(), Reason::OverSize)]
        );
    }

    #[test]
    fn never_removes_an_entry_in_use_but_counts_it() {
        let cands = [
            c("busy-old", 100, 100, true),
            c("idle", 200, 10, false),
            c("idle-new", 300, 10, false),
        ];
        let policy = Policy {
            max_age: Some(Duration::from_secs(1)),
            max_size: 100,
        };
        // Too old, all of them; the busy one stays and alone fills the cap.
        assert_eq!(
            keys(&cands, &plan(&cands, 400, &policy)),
            [
                ("idle".into(), Reason::TooOld),
                ("idle-new".into(), Reason::TooOld)
            ]
        );
        let size_only = Policy {
            max_age: None,
            max_size: 105,
        };
        assert_eq!(
            keys(&cands, &plan(&cands, 400, &size_only)),
            [
                ("idle".into(), Reason::OverSize),
                ("idle-new".into(), Reason::OverSize)
            ]
        );
    }
}
