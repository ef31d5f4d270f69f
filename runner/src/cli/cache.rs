//! `testrig cache`'s arguments.

use std::time::Duration;

use clap::{Args, Subcommand};

use crate::cache::{parse_duration, parse_size};

#[derive(Debug, Args)]
pub struct CacheArgs {
    /// Print JSON for scripts instead of text for people.
    #[arg(long = "json", global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: CacheCommand,
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// List the entries, newest first: name, key, outcome, age, size.
    Ls,
    /// Show one entry (the newest, for a test name): outcome, log, report, artefacts.
    Show {
        #[arg(value_name = "KEY|NAME")]
        which: String,
    },
    /// Remove entries: a key removes that entry, a test name every entry of that test.
    Rm {
        #[arg(value_name = "KEY|NAME", required = true, num_args = 1..)]
        which: Vec<String>,
    },
    /// Remove entries older than --max-age, then the oldest until the cache is under --max-size. Entries of
    /// running tests are kept.
    Gc {
        /// Remove entries older than this (`30d`, `12h`, `2w`, seconds).
        #[arg(long = "max-age", value_name = "DURATION", value_parser = parse_duration)]
        max_age: Option<Duration>,
        /// Keep the cache under this size (`500M`, `2G`, bytes).
        #[arg(long = "max-size", value_name = "SIZE", default_value = "1GiB", value_parser = parse_size)]
        max_size: u64,
        /// Say what would be removed, remove nothing.
        #[arg(long = "dry-run")]
        dry_run: bool,
    },
}
