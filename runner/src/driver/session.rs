//! What a run owns while its test script runs: the machines by name, the output dir and the subtest records.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::log::Section;
use crate::machine::Machine;

/// One `subtest(...)` of the script: a JUnit testcase.
#[derive(Debug, Clone)]
pub struct SubtestRecord {
    pub name: String,
    pub duration: Duration,
    pub failure: Option<String>,
}

/// The script's final word (`result` op).
#[derive(Debug, Clone, Default)]
pub struct ScriptResult {
    pub ok: bool,
    pub message: String,
    pub traceback: String,
}

pub struct Session {
    pub machines: BTreeMap<String, Arc<Machine>>,
    pub out_dir: PathBuf,
    pub shared_dir: PathBuf,
    pub subtests: Mutex<Vec<SubtestRecord>>,
    /// Open subtests by name, with their start time and log section.
    pub open_subtests: Mutex<Vec<(String, Instant, Section)>>,
    /// Log sections the script opened with `log.nested(...)`.
    pub open_sections: Mutex<Vec<Section>>,
    pub result: Mutex<Option<ScriptResult>>,
    /// Set when `--debug-on-failure` opened its prompt: the global timeout no longer applies.
    pub debugging: AtomicBool,
    /// Whether the test may use OCR (`get_screen_text`, `wait_for_text`): see
    /// [`crate::plan_load::LoadedPlan::ocr_allowed`].
    pub ocr_allowed: bool,
}

impl Session {
    pub fn new(
        machines: BTreeMap<String, Arc<Machine>>,
        out_dir: PathBuf,
        shared_dir: PathBuf,
    ) -> Self {
        Session {
            machines,
            out_dir,
            shared_dir,
            subtests: Mutex::default(),
            open_subtests: Mutex::default(),
            open_sections: Mutex::default(),
            result: Mutex::default(),
            debugging: AtomicBool::new(false),
            ocr_allowed: false,
        }
    }

    pub fn with_ocr(mut self, allowed: bool) -> Self {
        self.ocr_allowed = allowed;
        self
    }

    pub fn machine(&self, name: &str) -> Option<&Arc<Machine>> {
        self.machines.get(name)
    }
}
