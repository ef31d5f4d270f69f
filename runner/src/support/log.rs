//! The run log: what a reader of a NixOS test log expects (`server: waiting for unit nginx`, nested sections that
//! end with `(finished: ..., in 1.23 seconds)`, serial lines as `server # ...`), written to the terminal as text or
//! JSON lines, and always as text to each run's log file.
//!
//! Everything goes through `tracing`. Events with target `testrig` carry a `machine` field, and sections are events
//! marked `section = "begin" | "end"`; serial console lines have the target `serial` and what the test script
//! prints the target `script`, so each can be filtered on its own. Each test runs inside a [`run_span`]; the layers
//! find it in an event's scope, which is how tests running side by side keep their own log file, their own nesting
//! depth, and (with [`prefix_test_names`]) their name in front of their terminal lines.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Span, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Log files of the runs that have one, by run id.
static RUN_FILES: Mutex<BTreeMap<u64, File>> = Mutex::new(BTreeMap::new());
static NEXT_RUN: AtomicU64 = AtomicU64::new(1);
static PREFIX_TEST_NAMES: AtomicBool = AtomicBool::new(false);

const RUN_SPAN_TARGET: &str = "testrig::run";

/// How the terminal log is written: text for people, or one JSON object per line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

/// Sets up logging: `verbosity` 0 is the normal test log, negative hides serial output and sections, positive adds
/// the runner's own debugging. `TESTRIG_LOG` (a tracing filter) overrides it for the terminal; run log files
/// always get the whole normal log.
pub fn init(verbosity: i8, format: LogFormat) {
    let default = match verbosity {
        i8::MIN..=-1 => "warn,script=info",
        0 => "info,testrig=info,serial=info,script=info",
        1 => "debug,tokio=info,runtime=info",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("TESTRIG_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let terminal = TerminalLayer {
        format,
        started: Instant::now(),
        depths: Depths::default(),
    };
    let files = FileLayer {
        depths: Depths::default(),
    };
    let _ = tracing_subscriber::registry()
        .with(files.with_filter(LevelFilter::INFO))
        .with(terminal.with_filter(filter))
        .try_init();
}

/// A new run of a test: run everything of the test inside the returned span (spawned tasks with
/// `.in_current_span()`), and address its log file by the returned id.
pub fn run_span(test: &str) -> (u64, Span) {
    let run = NEXT_RUN.fetch_add(1, Ordering::Relaxed);
    // ERROR level so that no terminal filter can hide the span (and with it the routing of its events).
    let span = tracing::error_span!(target: RUN_SPAN_TARGET, "test", test, run);
    (run, span)
}

/// Tests run side by side: put each one's name in front of its terminal lines.
pub fn prefix_test_names(on: bool) {
    PREFIX_TEST_NAMES.store(on, Ordering::Relaxed);
}

/// From now on the log of run `run` is also written (as text) to `path`.
pub fn tee_to_file(run: u64, path: &Path) -> std::io::Result<()> {
    RUN_FILES.lock().unwrap().insert(run, File::create(path)?);
    Ok(())
}

pub fn stop_tee(run: u64) {
    RUN_FILES.lock().unwrap().remove(&run);
}

/// One line of the test log, attributed to a machine when there is one.
pub fn line(machine: Option<&str>, message: &str) {
    match machine {
        Some(m) => tracing::info!(target: "testrig", machine = m, "{message}"),
        None => tracing::info!(target: "testrig", "{message}"),
    }
}

/// A line the test script printed (Python's stdout or stderr): passed through as it is, and kept in the log file.
pub fn script_output(text: &str, to_stderr: bool) {
    let stream = if to_stderr { "stderr" } else { "stdout" };
    tracing::info!(target: "script", stream, "{text}");
}

/// A serial console line.
pub fn serial(machine: &str, text: &str) {
    tracing::info!(target: "serial", machine, "{text}");
}

/// A timed, nested section of the log; ends when dropped.
pub struct Section {
    machine: Option<String>,
    message: String,
    started: Instant,
}

impl Section {
    pub fn begin(machine: Option<&str>, message: impl Into<String>) -> Self {
        let message = message.into();
        match machine {
            Some(m) => {
                tracing::info!(target: "testrig", machine = m, section = "begin", "{message}")
            }
            None => tracing::info!(target: "testrig", section = "begin", "{message}"),
        }
        Section {
            machine: machine.map(str::to_owned),
            message,
            started: Instant::now(),
        }
    }
}

impl Drop for Section {
    fn drop(&mut self) {
        let secs = self.started.elapsed().as_secs_f64();
        let text = format!("(finished: {}, in {secs:.2} seconds)", self.message);
        match &self.machine {
            Some(m) => {
                tracing::info!(target: "testrig", machine = m.as_str(), section = "end", "{text}")
            }
            None => tracing::info!(target: "testrig", section = "end", "{text}"),
        }
    }
}

/// Which run a span belongs to; attached to the run span by the file layer, read by both.
struct RunTag {
    run: u64,
    test: String,
}

#[derive(Default)]
struct RunFields {
    run: Option<u64>,
    test: Option<String>,
}

impl Visit for RunFields {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "run" {
            self.run = Some(value);
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "test" {
            self.test = Some(value.to_owned());
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "test" {
            self.test = Some(format!("{value:?}").trim_matches('"').to_owned());
        }
    }
}

/// The run of the innermost run span around an event (0 outside any run), and its test's name.
fn run_of<S>(event: &Event<'_>, ctx: &Context<'_, S>) -> (u64, Option<String>)
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    if let Some(scope) = ctx.event_scope(event) {
        for span in scope {
            if let Some(tag) = span.extensions().get::<RunTag>() {
                return (tag.run, Some(tag.test.clone()));
            }
        }
    }
    (0, None)
}

/// Nesting depth per run, kept by each layer for the sections it sees.
#[derive(Default)]
struct Depths(Mutex<BTreeMap<u64, usize>>);

impl Depths {
    /// The depth to draw `fields` at, updated for the section it begins or ends.
    fn place(&self, run: u64, fields: &Fields) -> usize {
        let mut depths = self.0.lock().unwrap();
        let depth = depths.entry(run).or_default();
        match fields.section.as_deref() {
            Some("begin") => {
                *depth += 1;
                *depth - 1
            }
            Some("end") => {
                *depth = depth.saturating_sub(1);
                *depth
            }
            _ => *depth,
        }
    }
}

struct FileLayer {
    depths: Depths,
}

impl<S> Layer<S> for FileLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().target() != RUN_SPAN_TARGET {
            return;
        }
        let mut fields = RunFields::default();
        attrs.record(&mut fields);
        if let (Some(run), Some(span)) = (fields.run, ctx.span(id)) {
            span.extensions_mut().insert(RunTag {
                run,
                test: fields.test.unwrap_or_default(),
            });
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let (run, _) = run_of(event, &ctx);
        let mut fields = Fields::default();
        event.record(&mut fields);
        let depth = self.depths.place(run, &fields);
        if let Some(file) = RUN_FILES.lock().unwrap().get_mut(&run) {
            let meta = event.metadata();
            let _ = writeln!(
                file,
                "{}",
                human_line(meta.target(), *meta.level(), &fields, depth)
            );
        }
    }
}

struct TerminalLayer {
    format: LogFormat,
    started: Instant,
    depths: Depths,
}

impl<S> Layer<S> for TerminalLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let (run, test) = run_of(event, &ctx);
        let mut fields = Fields::default();
        event.record(&mut fields);
        let depth = self.depths.place(run, &fields);
        let meta = event.metadata();
        let prefix = match (&test, PREFIX_TEST_NAMES.load(Ordering::Relaxed)) {
            (Some(test), true) => format!("[{test}] "),
            _ => String::new(),
        };
        if meta.target() == "script" {
            // The script's own output stays on its own stream, as it is.
            let text = format!("{prefix}{}", fields.message);
            let _ = if fields.stream.as_deref() == Some("stderr") {
                writeln!(std::io::stderr().lock(), "{text}")
            } else {
                writeln!(std::io::stdout().lock(), "{text}")
            };
            return;
        }
        let mut stderr = std::io::stderr().lock();
        let _ = match self.format {
            LogFormat::Human => writeln!(
                stderr,
                "{prefix}{}",
                human_line(meta.target(), *meta.level(), &fields, depth)
            ),
            LogFormat::Json => {
                let record = serde_json::json!({
                    "elapsed": self.started.elapsed().as_secs_f64(),
                    "level": meta.level().as_str(),
                    "target": meta.target(),
                    "test": test,
                    "machine": fields.machine,
                    "depth": depth,
                    "message": format!("{}{}", fields.message, fields.rest),
                });
                writeln!(stderr, "{record}")
            }
        };
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    machine: Option<String>,
    section: Option<String>,
    stream: Option<String>,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_owned(),
            "machine" => self.machine = Some(value.to_owned()),
            "section" => self.section = Some(value.to_owned()),
            "stream" => self.stream = Some(value.to_owned()),
            name => {
                let _ = write!(self.rest, " {name}={value}");
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "machine" => self.machine = Some(format!("{value:?}")),
            name => {
                let _ = write!(self.rest, " {name}={value:?}");
            }
        }
    }
}

fn human_line(target: &str, level: Level, fields: &Fields, depth: usize) -> String {
    match target {
        "serial" => {
            return format!(
                "{} # {}",
                fields.machine.as_deref().unwrap_or("?"),
                fields.message
            )
        }
        "script" => return fields.message.clone(),
        _ => {}
    }
    let mut text = "  ".repeat(depth);
    if level <= Level::WARN {
        let _ = write!(text, "{}: ", level.as_str().to_lowercase());
    }
    if let Some(machine) = &fields.machine {
        let _ = write!(text, "{machine}: ");
    }
    text.push_str(&fields.message);
    text.push_str(&fields.rest);
    text
}
