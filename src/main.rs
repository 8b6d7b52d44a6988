//! The `switchboard` binary: parse the command line, run it, report failure as one line.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = switchboard::cli::Cli::parse();
    match switchboard::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("switchboard: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
