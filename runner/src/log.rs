//! The run log: what a reader of a NixOS test log expects (`server: waiting for unit nginx`, nested sections that
//! end with `(finished: ..., in 1.23 seconds)`, serial lines as `server # ...`), written to stderr as text or JSON
//! lines, and always as text to the run's log file.
//!
//! Everything goes through `tracing`: events with target `testrig` carry `machine` and `depth` fields; serial
//! console lines have the target `serial`, so they can be filtered on their own.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

static DEPTH: AtomicUsize = AtomicUsize::new(0);
static LOG_FILE: Mutex<Option<File>> = Mutex::new(None);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// Sets up logging: `verbosity` 0 is the normal test log, negative hides serial output and sections, positive adds
/// the runner's own debugging. `TESTRIG_LOG` (a tracing filter) overrides it.
pub fn init(verbosity: i8, format: LogFormat) {
    let default = match verbosity {
        i8::MIN..=-1 => "warn",
        0 => "info,testrig=info,serial=info",
        1 => "debug,tokio=info,runtime=info",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("TESTRIG_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let layer = TestLogLayer {
        format,
        started: Instant::now(),
    };
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .try_init();
}

/// From now on the log is also written (as text) to `path`.
pub fn tee_to_file(path: &Path) -> std::io::Result<()> {
    *LOG_FILE.lock().unwrap() = Some(File::create(path)?);
    Ok(())
}

pub fn stop_tee() {
    *LOG_FILE.lock().unwrap() = None;
}

/// One line of the test log, attributed to a machine when there is one.
pub fn line(machine: Option<&str>, message: &str) {
    let depth = DEPTH.load(Ordering::Relaxed);
    match machine {
        Some(m) => tracing::info!(target: "testrig", machine = m, depth, "{message}"),
        None => tracing::info!(target: "testrig", depth, "{message}"),
    }
}

/// A line the test script printed (Python's stdout or stderr): passed through as it is, and kept in the log file.
pub fn script_output(text: &str, to_stderr: bool) {
    if let Some(file) = LOG_FILE.lock().unwrap().as_mut() {
        let _ = writeln!(file, "{text}");
    }
    if to_stderr {
        let _ = writeln!(std::io::stderr().lock(), "{text}");
    } else {
        let _ = writeln!(std::io::stdout().lock(), "{text}");
    }
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
        line(machine, &message);
        DEPTH.fetch_add(1, Ordering::Relaxed);
        Section {
            machine: machine.map(str::to_owned),
            message,
            started: Instant::now(),
        }
    }
}

impl Drop for Section {
    fn drop(&mut self) {
        let _ = DEPTH.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| d.checked_sub(1));
        let secs = self.started.elapsed().as_secs_f64();
        line(
            self.machine.as_deref(),
            &format!("(finished: {}, in {secs:.2} seconds)", self.message),
        );
    }
}

struct TestLogLayer {
    format: LogFormat,
    started: Instant,
}

#[derive(Default)]
struct Fields {
    message: String,
    machine: Option<String>,
    depth: usize,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_owned(),
            "machine" => self.machine = Some(value.to_owned()),
            name => {
                let _ = write!(self.rest, " {name}={value}");
            }
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "depth" {
            self.depth = value as usize;
        } else {
            let _ = write!(self.rest, " {}={value}", field.name());
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

impl<S: Subscriber> Layer<S> for TestLogLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let target = event.metadata().target();
        let level = *event.metadata().level();
        let text = human_line(target, level, &fields);

        if let Some(file) = LOG_FILE.lock().unwrap().as_mut() {
            let _ = writeln!(file, "{text}");
        }
        let mut stderr = std::io::stderr().lock();
        let _ = match self.format {
            LogFormat::Human => writeln!(stderr, "{text}"),
            LogFormat::Json => {
                let record = serde_json::json!({
                    "elapsed": self.started.elapsed().as_secs_f64(),
                    "level": level.as_str(),
                    "target": target,
                    "machine": fields.machine,
                    "depth": fields.depth,
                    "message": format!("{}{}", fields.message, fields.rest),
                });
                writeln!(stderr, "{record}")
            }
        };
    }
}

fn human_line(target: &str, level: Level, fields: &Fields) -> String {
    if target == "serial" {
        return format!(
            "{} # {}",
            fields.machine.as_deref().unwrap_or("?"),
            fields.message
        );
    }
    let mut text = "  ".repeat(fields.depth);
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
