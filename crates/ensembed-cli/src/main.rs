//! The `ensembed` binary: parses flags (`args`), resolves them into the library's validated
//! configs, and runs one command (`commands/`). All math lives in the library; this crate only
//! reads paths, shows progress and prints results.

mod args;
mod commands;
mod progress;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: args::Cli) -> anyhow::Result<()> {
    if let Some(t) = cli.threads {
        if t == 0 {
            anyhow::bail!("--threads must be at least 1");
        }
        rayon::ThreadPoolBuilder::new().num_threads(t).build_global()?;
    }
    let progress = progress::Bars::new(cli.quiet);
    commands::run(cli.command, &progress)
}
