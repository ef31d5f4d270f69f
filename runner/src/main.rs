//! testrig: runs NixOS VM integration tests outside the Nix sandbox.

mod cache;
mod cache_command;
mod cached_run;
mod cli;
mod copy_tree;
mod driver;
mod lock;
mod log;
mod machine;
mod nix_eval;
mod plan_command;
mod plan_load;
mod process;
mod realise;
mod report;
mod run_command;
mod schedule;
mod state;
mod vlan;
mod xdg;

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
            return ExitCode::from(2);
        }
    };
    let code = runtime.block_on(async {
        match cli.command {
            cli::Command::Run(args) => run_command::run(args).await,
            cli::Command::Plan(args) => plan_command::run(args).await,
            cli::Command::Cache(args) => cache_command::run(args),
        }
    });
    ExitCode::from(code)
}
