//! The command line: clap's types and nothing else. `commands` turns them into the typed options of the layers
//! below, which never see a flag.

mod cache;
mod nix;
mod parse;
mod plan;
mod run;

pub use cache::{CacheArgs, CacheCommand};
pub use nix::NixArgs;
pub use parse::{parse, Command};
pub use plan::PlanArgs;
pub use run::{LogFormatArg, RunArgs};
