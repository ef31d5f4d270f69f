//! One run of one test: machines, vlans, the Python process that runs the script, and the outcome.

mod dispatch;
mod python;
mod request;
mod rpc;
mod run;
mod session;
mod vlan;

pub use run::{run_test, Outcome, RunOptions, RunResult};
pub use session::SubtestRecord;
