//! `witnessctl`: the operator's command line. Thin: parse, then call the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = witnessctl::Cli::parse();
    let code = witnessctl::run(cli);
    ExitCode::from(code)
}
