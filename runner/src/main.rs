//! testrig: runs NixOS VM integration tests outside the Nix sandbox.

mod cache;
mod cli;
mod commands;
mod driver;
mod machine;
mod nix;
mod plan;
mod run;
mod state;
mod support;

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::parse();
    // One thread: the parent-death signal of every child is tied to the thread that forked it, and this one
    // lives as long as the runner.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("testrig: cannot start the async runtime: {e}");
            return ExitCode::from(support::exit::BAD_INPUT);
        }
    };
    let code = runtime.block_on(async {
        match cli.command {
            cli::Command::Run(args) => commands::run::run(args).await,
            cli::Command::Plan(args) => commands::plan::run(args).await,
            cli::Command::Cache(args) => commands::cache::run(args),
        }
    });
    ExitCode::from(code)
}
