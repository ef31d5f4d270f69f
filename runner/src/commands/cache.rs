//! `testrig cache ls|show|rm|gc`: the result cache for people (text) and scripts (`--json`).
//!
//! Exit status: 0 when everything asked for was done, 1 when an entry was not found or is in use, 2 when the
//! cache itself could not be read.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::cache::{self, Cache, GcPolicy, Listed};
use crate::cli::{CacheArgs, CacheCommand};
use crate::support::log::{self, LogFormat};
use crate::support::{exit, lock};

pub fn run(args: CacheArgs) -> u8 {
    log::init(0, LogFormat::Human);
    let cache = match Cache::from_env() {
        Ok(cache) => cache,
        Err(e) => {
            eprintln!("testrig cache: {e}");
            return exit::BAD_INPUT;
        }
    };
    let json = args.json;
    let result = match args.command {
        CacheCommand::Ls => ls(&cache, json),
        CacheCommand::Show { which } => show(&cache, &which, json),
        CacheCommand::Rm { which } => rm(&cache, &which, json),
        CacheCommand::Gc {
            max_age,
            max_size,
            dry_run,
        } => gc(&cache, GcPolicy { max_age, max_size }, dry_run, json),
    };
    result.unwrap_or_else(|e| {
        eprintln!("testrig cache: {e}");
        exit::BAD_INPUT
    })
}

fn ls(cache: &Cache, json: bool) -> std::io::Result<u8> {
    let listed = cache.list()?;
    let now = cache::now_secs();
    if json {
        let rows: Vec<Value> = listed.iter().map(summary_json).collect();
        print_json(&Value::Array(rows));
        return Ok(exit::OK);
    }
    if listed.is_empty() {
        println!("no entries in {}", cache.root().display());
        return Ok(exit::OK);
    }
    let rows: Vec<[String; 5]> = listed
        .iter()
        .map(|l| {
            let (name, outcome) = match &l.entry {
                Ok(e) => (e.name.clone(), outcome_text(e)),
                Err(_) => ("?".into(), "unreadable".into()),
            };
            [
                name,
                l.key.clone(),
                outcome,
                cache::ago(l.started_at, now),
                cache::size(l.size),
            ]
        })
        .collect();
    print_table(&["NAME", "KEY", "OUTCOME", "AGE", "SIZE"], &rows);
    let total: u64 = listed.iter().map(|l| l.size).sum();
    println!(
        "{}, {} in {}",
        count(listed.len(), "entry", "entries"),
        cache::size(total),
        cache.root().display()
    );
    for l in &listed {
        if let Err(reason) = &l.entry {
            eprintln!(
                "warning: cache entry {} is unreadable: {reason}",
                l.paths.dir.display()
            );
        }
    }
    Ok(exit::OK)
}

fn show(cache: &Cache, which: &str, json: bool) -> std::io::Result<u8> {
    let listed = cache.list()?;
    let matches = match resolve(&listed, which) {
        Ok(matches) => matches,
        Err(message) => {
            eprintln!("testrig cache: {message}");
            return Ok(exit::FAILED);
        }
    };
    let chosen = matches[0];
    let entry = match &chosen.entry {
        Ok(entry) => entry,
        Err(reason) => {
            eprintln!(
                "testrig cache: entry {} is unreadable: {reason}",
                chosen.paths.dir.display()
            );
            return Ok(exit::FAILED);
        }
    };
    let artefacts = artefacts(&chosen.paths.out());
    if json {
        let mut value = serde_json::to_value(entry).unwrap_or_default();
        if let Value::Object(map) = &mut value {
            map.insert("dir".into(), json!(chosen.paths.dir));
            map.insert("log".into(), json!(chosen.paths.log()));
            map.insert("junit".into(), json!(chosen.paths.junit()));
            map.insert("out_dir".into(), json!(chosen.paths.out()));
            map.insert("size_bytes".into(), json!(chosen.size));
            let files: Vec<Value> = artefacts
                .iter()
                .map(|(path, size)| json!({"path": path, "size_bytes": size}))
                .collect();
            map.insert("artefacts".into(), Value::Array(files));
        }
        print_json(&value);
        return Ok(exit::OK);
    }
    let now = cache::now_secs();
    let mut lines = vec![
        ("name", entry.name.clone()),
        ("key", entry.key.clone()),
        ("outcome", outcome_text(entry)),
    ];
    if let Some(message) = &entry.message {
        lines.push(("message", message.clone()));
    }
    lines.push((
        "started",
        format!(
            "{} ({})",
            cache::utc(entry.started_at),
            cache::ago(entry.started_at, now)
        ),
    ));
    lines.push(("duration", cache::duration(entry.duration_secs)));
    if let Some(drv) = entry.plan.get("test_drv").and_then(Value::as_str) {
        lines.push(("test drv", drv.to_owned()));
    }
    lines.push(("entry", chosen.paths.dir.display().to_string()));
    lines.push(("log", chosen.paths.log().display().to_string()));
    lines.push(("junit", chosen.paths.junit().display().to_string()));
    lines.push((
        "artefacts",
        format!(
            "{} ({} files)",
            chosen.paths.out().display(),
            artefacts.len()
        ),
    ));
    for (label, value) in lines {
        println!("{:<10} {value}", format!("{label}:"));
    }
    for (path, size) in &artefacts {
        println!("  {path}  {}", cache::size(*size));
    }
    if !entry.subtests.is_empty() {
        println!("subtests:");
        for s in &entry.subtests {
            let status = if s.failure.is_some() {
                "failed"
            } else {
                "passed"
            };
            let why = s
                .failure
                .as_deref()
                .map(|f| format!(": {f}"))
                .unwrap_or_default();
            println!(
                "  {status} {} ({}){why}",
                s.name,
                cache::duration(s.duration_secs)
            );
        }
    }
    if matches.len() > 1 {
        println!("older entries of {which}:");
        for older in &matches[1..] {
            let outcome = older
                .entry
                .as_ref()
                .map(outcome_text)
                .unwrap_or_else(|_| "unreadable".into());
            println!(
                "  {} ({outcome}, {})",
                older.key,
                cache::ago(older.started_at, now)
            );
        }
    }
    Ok(exit::OK)
}

fn rm(cache: &Cache, which: &[String], json: bool) -> std::io::Result<u8> {
    let listed = cache.list()?;
    let (mut removed, mut in_use, mut not_found) = (Vec::new(), Vec::new(), Vec::new());
    let mut done = std::collections::BTreeSet::new();
    for selector in which {
        let matches = match resolve(&listed, selector) {
            Ok(matches) => matches,
            Err(message) => {
                not_found.push(json!({"selector": selector, "message": message}));
                continue;
            }
        };
        for l in matches {
            if !done.insert(l.key.clone()) {
                continue;
            }
            let name = l.entry.as_ref().ok().map(|e| e.name.clone());
            let Some(guard) = cache.try_lock_key(&l.key).map_err(std::io::Error::other)? else {
                let pid = lock::holder(&cache.lock_path(&l.key));
                in_use.push(json!({"key": l.key, "name": name, "pid": pid}));
                continue;
            };
            cache.remove_locked(&l.key, &guard)?;
            guard.remove()?;
            removed.push(json!({"key": l.key, "name": name, "size_bytes": l.size}));
        }
    }
    let code = if in_use.is_empty() && not_found.is_empty() {
        exit::OK
    } else {
        exit::FAILED
    };
    if json {
        print_json(&json!({"removed": removed, "in_use": in_use, "not_found": not_found}));
        return Ok(code);
    }
    for r in &removed {
        println!(
            "removed {} ({})",
            r["key"].as_str().unwrap_or(""),
            name_of(r)
        );
    }
    for r in &in_use {
        let pid = r["pid"]
            .as_u64()
            .map(|p| format!("PID {p}"))
            .unwrap_or_else(|| "PID unknown".into());
        eprintln!(
            "testrig cache: not removing {} ({}): a testrig run ({pid}) is using it",
            r["key"].as_str().unwrap_or(""),
            name_of(r)
        );
    }
    for r in &not_found {
        eprintln!("testrig cache: {}", r["message"].as_str().unwrap_or(""));
    }
    Ok(code)
}

fn gc(cache: &Cache, policy: GcPolicy, dry_run: bool, json: bool) -> std::io::Result<u8> {
    let report = cache::gc(cache, &policy, cache::now_secs(), dry_run)?;
    if json {
        let mut value = serde_json::to_value(&report).unwrap_or_default();
        if let Value::Object(map) = &mut value {
            map.insert("dry_run".into(), json!(dry_run));
            map.insert("max_size_bytes".into(), json!(policy.max_size));
            if let Some(age) = policy.max_age {
                map.insert("max_age_secs".into(), json!(age.as_secs()));
            }
        }
        print_json(&value);
        return Ok(exit::OK);
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    for r in &report.removed {
        let reason = match r.reason {
            cache::GcReason::TooOld => "too old",
            cache::GcReason::OverSize => "over the size cap",
        };
        println!(
            "{verb} {} ({}, {reason}, {})",
            r.key,
            r.name.as_deref().unwrap_or("?"),
            cache::size(r.size_bytes)
        );
    }
    for r in &report.in_use {
        let pid = r
            .pid
            .map(|p| format!("PID {p}"))
            .unwrap_or_else(|| "PID unknown".into());
        println!("kept {}: a testrig run ({pid}) is using it", r.key);
    }
    println!(
        "{verb} {} ({}); {} left, {} (cap {}{})",
        count(report.removed.len(), "entry", "entries"),
        cache::size(report.total_bytes_before - report.total_bytes_after),
        count(report.entries_kept, "entry", "entries"),
        cache::size(report.total_bytes_after),
        cache::size(policy.max_size),
        policy
            .max_age
            .map(|a| format!(", max age {}", age_text(a)))
            .unwrap_or_default()
    );
    if report.leftovers_removed > 0 {
        println!(
            "removed {} unfinished entries of runs that stopped while writing",
            report.leftovers_removed
        );
    }
    Ok(exit::OK)
}

/// The entries `selector` names, newest first: a key, a test name, or a unique prefix of a key.
fn resolve<'a>(listed: &'a [Listed], selector: &str) -> Result<Vec<&'a Listed>, String> {
    if let Some(l) = listed.iter().find(|l| l.key == selector) {
        return Ok(vec![l]);
    }
    let by_name: Vec<&Listed> = listed
        .iter()
        .filter(|l| l.entry.as_ref().is_ok_and(|e| e.name == selector))
        .collect();
    if !by_name.is_empty() {
        return Ok(by_name);
    }
    let by_prefix: Vec<&Listed> = if selector.len() >= 4 {
        listed
            .iter()
            .filter(|l| l.key.starts_with(selector))
            .collect()
    } else {
        Vec::new()
    };
    match by_prefix.len() {
        0 => Err(format!(
            "no cache entry has the key or test name `{selector}`"
        )),
        1 => Ok(by_prefix),
        n => Err(format!(
            "`{selector}` is the start of {n} keys; give more of the key"
        )),
    }
}

fn summary_json(l: &Listed) -> Value {
    let mut value = json!({
        "key": l.key,
        "dir": l.paths.dir,
        "size_bytes": l.size,
        "started_at": l.started_at,
    });
    let map = value.as_object_mut().expect("an object");
    match &l.entry {
        Ok(e) => {
            map.insert("name".into(), json!(e.name));
            map.insert("outcome".into(), json!(e.outcome));
            map.insert("duration_secs".into(), json!(e.duration_secs));
            if e.kept_state {
                map.insert("kept_state".into(), json!(true));
            }
        }
        Err(reason) => {
            map.insert("outcome".into(), json!("unreadable"));
            map.insert("unreadable".into(), json!(reason.to_string()));
        }
    }
    value
}

fn outcome_text(entry: &cache::Entry) -> String {
    let outcome = entry.outcome.as_str();
    if entry.kept_state {
        format!("{outcome} (-K)")
    } else {
        outcome.to_owned()
    }
}

/// Files under an entry's output dir, relative to it, with their sizes.
fn artefacts(out: &Path) -> Vec<(String, u64)> {
    fn walk(base: &Path, dir: &Path, files: &mut Vec<(String, u64)>) {
        let Ok(items) = std::fs::read_dir(dir) else {
            return;
        };
        for item in items.flatten() {
            let path = item.path();
            match item.file_type() {
                Ok(t) if t.is_dir() => walk(base, &path, files),
                Ok(_) => {
                    let rel = path.strip_prefix(base).unwrap_or(&path);
                    let size = item.metadata().map(|m| m.len()).unwrap_or(0);
                    files.push((rel.display().to_string(), size));
                }
                Err(_) => {}
            }
        }
    }
    let mut files = Vec::new();
    walk(out, out, &mut files);
    files.sort();
    files
}

fn age_text(age: Duration) -> String {
    let secs = age.as_secs();
    match secs {
        s if s % 86_400 == 0 && s > 0 => format!("{} d", s / 86_400),
        s if s % 3600 == 0 && s > 0 => format!("{} h", s / 3600),
        s => format!("{s} s"),
    }
}

fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn name_of(row: &Value) -> &str {
    row["name"].as_str().unwrap_or("?")
}

fn print_table(header: &[&str; 5], rows: &[[String; 5]]) {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 5]| {
        let text: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(*header);
    for row in rows {
        line(row.each_ref().map(String::as_str));
    }
}

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}
