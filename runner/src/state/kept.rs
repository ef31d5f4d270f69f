//! Kept VM state (`-K`): each node's state dir at `<state root>/<test>/<node>`, locked while a run uses it and
//! tagged with the node's identity, so that a disk made by one configuration is never silently booted by another.
//!
//! Beside each dir: `<node>.lock` (held by the run using the dir, with its PID inside) and `<node>.identity.json`
//! (the identity of the node that made the dir).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use super::identity::{read_tag, write_tag, NodeIdentity, Tag, TAG_FORMAT};
use crate::support::lock::{self, LockError, LockGuard};

/// The longest path QEMU can listen on (`sun_path` is 108 bytes with its NUL) less the longest socket name it gets
/// in a state dir (`/monitor`).
const MAX_STATE_DIR_LEN: usize = 107 - "/monitor".len();

/// A node of the test, as the kept state sees it.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    pub drv: Option<String>,
    pub start_script: PathBuf,
}

#[derive(Debug, Clone, Copy)]
pub struct KeepOptions {
    /// Refuse, rather than start fresh, when a node changed.
    pub strict: bool,
    /// How long to wait for another run that holds a node's state dir.
    pub lock_timeout: Duration,
}

/// The state dirs of one run, locked until this is dropped.
#[derive(Debug)]
pub struct KeptState {
    pub dirs: BTreeMap<String, PathBuf>,
    pub notes: Vec<Note>,
    _locks: Vec<LockGuard>,
}

/// What happened to a node's state dir, for the run's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    Reused {
        node: String,
        dir: PathBuf,
    },
    Fresh {
        node: String,
        dir: PathBuf,
    },
    /// The node changed: its old dir was removed.
    Discarded {
        node: String,
        dir: PathBuf,
        old: String,
        new: String,
    },
}

impl Note {
    pub fn is_warning(&self) -> bool {
        matches!(self, Note::Discarded { .. })
    }
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Note::Reused { node, dir } => {
                write!(
                    f,
                    "machine `{node}`: reusing its kept state in {}",
                    dir.display()
                )
            }
            Note::Fresh { node, dir } => {
                write!(
                    f,
                    "machine `{node}`: keeping its state in {}",
                    dir.display()
                )
            }
            Note::Discarded {
                node,
                dir,
                old,
                new,
            } => write!(
                f,
                "machine `{node}` changed since its state was kept (was {old}, now {new}): \
                 discarded {} and starting from a fresh disk",
                dir.display()
            ),
        }
    }
}

#[derive(Debug, Error)]
pub enum StateError {
    #[error("cannot keep the state of machine `{node}`: {source}")]
    Locked { node: String, source: LockError },
    #[error(
        "machine `{node}` changed since its state in {} was kept (was {old}, now {new}); \
         refusing to start with --strict-state (remove the dir, or drop --strict-state to start from a fresh disk)",
        dir.display()
    )]
    Changed {
        node: String,
        dir: PathBuf,
        old: String,
        new: String,
    },
    #[error(
        "machine `{node}`: the state dir {} is too long for QEMU's sockets ({len} bytes, at most {MAX_STATE_DIR_LEN}); \
         set TESTRIG_STATE_DIR to a shorter path",
        dir.display()
    )]
    PathTooLong {
        node: String,
        dir: PathBuf,
        len: usize,
    },
    #[error("machine `{node}`: failed to {what} {}: {source}", path.display())]
    Io {
        node: String,
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What to do with one node's dir, decided before anything is changed.
enum Decision {
    Reuse,
    Fresh,
    Discard { old: String },
}

/// Locks, checks and prepares the state dirs of `nodes` for the test `test` under `root`. Nothing is removed
/// unless every node could be locked and (with `strict`) none changed.
pub async fn prepare(
    root: &Path,
    test: &str,
    nodes: &[NodeSpec],
    options: KeepOptions,
) -> Result<KeptState, StateError> {
    let test_dir = root.join(path_component(test));
    let io = |node: &str, what, path: &Path| {
        let (node, path) = (node.to_owned(), path.to_owned());
        move |source| StateError::Io {
            node,
            what,
            path,
            source,
        }
    };
    let mut locks = Vec::new();
    let mut decided = Vec::new();
    for node in nodes {
        let name = &node.name;
        let dir = test_dir.join(name);
        let len = dir.as_os_str().len();
        if len > MAX_STATE_DIR_LEN {
            return Err(StateError::PathTooLong {
                node: name.clone(),
                dir,
                len,
            });
        }
        std::fs::create_dir_all(&test_dir).map_err(io(name, "create", &test_dir))?;
        let lock_path = test_dir.join(format!("{name}.lock"));
        let guard = lock::acquire(&lock_path, options.lock_timeout)
            .await
            .map_err(|source| StateError::Locked {
                node: name.clone(),
                source,
            })?;
        locks.push(guard);

        let identity = NodeIdentity::of(node.drv.as_deref(), &node.start_script).map_err(io(
            name,
            "read the start script",
            &node.start_script,
        ))?;
        let tag_path = test_dir.join(format!("{name}.identity.json"));
        let decision = if !dir.exists() {
            Decision::Fresh
        } else {
            match read_tag(&tag_path) {
                Ok(Some(tag)) if tag.identity == identity => Decision::Reuse,
                Ok(Some(tag)) => Decision::Discard {
                    old: tag.identity.to_string(),
                },
                Ok(None) => Decision::Discard {
                    old: "unknown (no identity recorded)".into(),
                },
                Err(reason) => Decision::Discard {
                    old: format!("unknown ({reason})"),
                },
            }
        };
        if let (Decision::Discard { old }, true) = (&decision, options.strict) {
            return Err(StateError::Changed {
                node: name.clone(),
                dir,
                old: old.clone(),
                new: identity.to_string(),
            });
        }
        decided.push((node, dir, tag_path, identity, decision));
    }

    let mut dirs = BTreeMap::new();
    let mut notes = Vec::new();
    for (node, dir, tag_path, identity, decision) in decided {
        let name = &node.name;
        let note = match decision {
            Decision::Reuse => Note::Reused {
                node: name.clone(),
                dir: dir.clone(),
            },
            Decision::Fresh => Note::Fresh {
                node: name.clone(),
                dir: dir.clone(),
            },
            Decision::Discard { old } => {
                std::fs::remove_dir_all(&dir).map_err(io(name, "remove", &dir))?;
                Note::Discarded {
                    node: name.clone(),
                    dir: dir.clone(),
                    old,
                    new: identity.to_string(),
                }
            }
        };
        if !matches!(note, Note::Reused { .. }) {
            // Only once the old dir is gone: a tag never names a dir made by another identity.
            let tag = Tag {
                format: TAG_FORMAT.into(),
                test: test.to_owned(),
                node: name.clone(),
                identity,
            };
            write_tag(&tag_path, &tag).map_err(io(name, "write", &tag_path))?;
        }
        notes.push(note);
        dirs.insert(name.clone(), dir);
    }
    Ok(KeptState {
        dirs,
        notes,
        _locks: locks,
    })
}

/// A test name as one path component: anything but letters, digits and `._+-` becomes `_`.
pub fn path_component(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._+-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    match safe.as_str() {
        "" | "." | ".." => "_".into(),
        _ => safe,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn root(&self) -> PathBuf {
            self.dir.path().join("state")
        }

        fn script(&self, name: &str, text: &str) -> PathBuf {
            let path = self.dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            path
        }

        fn prepare(&self, nodes: &[NodeSpec], strict: bool) -> Result<KeptState, StateError> {
            let options = KeepOptions {
                strict,
                lock_timeout: Duration::ZERO,
            };
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap()
                .block_on(prepare(&self.root(), "my test", nodes, options))
        }
    }

    fn node(name: &str, drv: Option<&str>, script: &Path) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            drv: drv.map(Into::into),
            start_script: script.to_owned(),
        }
    }

    #[test]
    fn reuses_a_dir_of_the_same_node() {
        let f = Fixture::new();
        let script = f.script("run-a-vm", "#!/bin/sh\n");
        let nodes = [node("a", Some("/nix/store/x-a.drv"), &script)];
        let first = f.prepare(&nodes, false).unwrap();
        let dir = first.dirs["a"].clone();
        assert_eq!(dir, f.root().join("my_test").join("a"));
        assert!(matches!(first.notes[0], Note::Fresh { .. }));
        drop(first);
        // QEMU made the dir and a disk in it.
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.qcow2"), "disk").unwrap();
        let second = f.prepare(&nodes, false).unwrap();
        assert!(matches!(second.notes[0], Note::Reused { .. }));
        assert!(dir.join("a.qcow2").exists());
        // The tag sits beside the dir, not in it.
        assert!(f.root().join("my_test").join("a.identity.json").exists());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    }

    #[test]
    fn a_changed_drv_discards_the_old_disk_with_a_warning() {
        let f = Fixture::new();
        let script = f.script("run-a-vm", "#!/bin/sh\n");
        let state = f
            .prepare(&[node("a", Some("/nix/store/old-a.drv"), &script)], false)
            .unwrap();
        let dir = state.dirs["a"].clone();
        drop(state);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.qcow2"), "disk").unwrap();

        let state = f
            .prepare(&[node("a", Some("/nix/store/new-a.drv"), &script)], false)
            .unwrap();
        let warning = state.notes[0].to_string();
        assert!(state.notes[0].is_warning());
        assert!(
            warning.contains("machine `a`")
                && warning.contains("/nix/store/old-a.drv")
                && warning.contains("/nix/store/new-a.drv"),
            "{warning}"
        );
        assert!(!dir.exists());
        drop(state);
        // The new identity is recorded: the next run reuses.
        std::fs::create_dir_all(&dir).unwrap();
        let state = f
            .prepare(&[node("a", Some("/nix/store/new-a.drv"), &script)], false)
            .unwrap();
        assert!(matches!(state.notes[0], Note::Reused { .. }));
    }

    #[test]
    fn without_drv_the_start_script_content_is_the_identity() {
        let f = Fixture::new();
        let script = f.script("run-a-vm", "#!/bin/sh\n# one\n");
        let nodes = [node("a", None, &script)];
        let dir = f.prepare(&nodes, false).unwrap().dirs["a"].clone();
        std::fs::create_dir_all(&dir).unwrap();
        f.script("run-a-vm", "#!/bin/sh\n# two\n");
        let state = f.prepare(&nodes, false).unwrap();
        let warning = state.notes[0].to_string();
        assert!(warning.contains("run-a-vm (sha256 "), "{warning}");
    }

    #[test]
    fn strict_refuses_and_changes_nothing() {
        let f = Fixture::new();
        let script = f.script("run-a-vm", "#!/bin/sh\n");
        let old = [
            node("a", Some("/nix/store/a.drv"), &script),
            node("b", Some("/nix/store/old-b.drv"), &script),
        ];
        let state = f.prepare(&old, false).unwrap();
        for dir in state.dirs.values() {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join("disk.qcow2"), "disk").unwrap();
        }
        drop(state);
        let new = [
            node("a", Some("/nix/store/a.drv"), &script),
            node("b", Some("/nix/store/new-b.drv"), &script),
        ];
        let err = f.prepare(&new, true).unwrap_err().to_string();
        assert!(
            err.contains("machine `b` changed")
                && err.contains("old-b.drv")
                && err.contains("new-b.drv")
                && err.contains("--strict-state"),
            "{err}"
        );
        let test_dir = f.root().join("my_test");
        assert!(test_dir.join("b/disk.qcow2").exists());
        assert!(test_dir.join("a/disk.qcow2").exists());
    }

    #[test]
    fn a_dir_without_a_tag_is_not_trusted() {
        let f = Fixture::new();
        let script = f.script("run-a-vm", "#!/bin/sh\n");
        let dir = f.root().join("my_test").join("a");
        std::fs::create_dir_all(&dir).unwrap();
        let nodes = [node("a", Some("/nix/store/a.drv"), &script)];
        let err = f.prepare(&nodes, true).unwrap_err().to_string();
        assert!(err.contains("no identity recorded"), "{err}");
        std::fs::write(f.root().join("my_test").join("a.identity.json"), "{").unwrap();
        let state = f.prepare(&nodes, false).unwrap();
        assert!(state.notes[0].to_string().contains("not a valid tag"));
    }

    #[test]
    fn a_dir_in_use_is_refused_naming_the_pid() {
        let f = Fixture::new();
        let script = f.script("run-a-vm", "#!/bin/sh\n");
        let nodes = [node("a", None, &script)];
        let _held = f.prepare(&nodes, false).unwrap();
        let err = f.prepare(&nodes, false).unwrap_err().to_string();
        assert!(
            err.contains("machine `a`") && err.contains(&format!("PID {}", std::process::id())),
            "{err}"
        );
    }

    #[test]
    fn refuses_a_state_dir_too_long_for_sockets() {
        let f = Fixture::new();
        let script = f.script("run-a-vm", "#!/bin/sh\n");
        let long = "n".repeat(120);
        let err = f
            .prepare(&[node(&long, None, &script)], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("TESTRIG_STATE_DIR"), "{err}");
    }

    #[test]
    fn test_names_become_one_path_component() {
        assert_eq!(path_component("login"), "login");
        assert_eq!(path_component("a/b c"), "a_b_c");
        assert_eq!(path_component(".."), "_");
        assert_eq!(path_component(""), "_");
    }
}
