//! `keygate`: parse the command line, load the config, set up logging, run.

#![forbid(unsafe_code)]

mod cli;
mod interpolate;
mod keys;
mod reload;
mod settings;
mod token;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
