//! The `switchboard` binary: parse the command line, run it, report failure as one line.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc: fanout allocates and frees small blocks on many threads (mailbox envelopes,
/// frame buffers); measured faster and leaner than the system allocator here.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
