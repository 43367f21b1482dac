//! `jepsen`: the harness's command line.
//!
//! - `jepsen cleanup`: remove the leftovers (namespaces, chains) of crashed
//!   runs whose owner process is dead.
//! - `jepsen analyze <dir>`: re-read `<dir>/history.jsonl` and the node logs
//!   (`meta.logs` and everything under `<dir>/logs/`), re-run every checker,
//!   rewrite `<dir>/results.json` and `<dir>/timeline.html`, print a
//!   summary.
//!
//! Exit status (Jepsen's, plus one for bad input):
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | valid (every checker true) |
//! | 1 | invalid (some checker false) |
//! | 2 | unknown (no checker false, some unknown) |
//! | 3 | could not run: bad arguments, a missing or malformed history, an output not writable; the message says what to fix |
//!
//! The runner's `test` and `test-all` commands join [`Command`] when the
//! workload lands.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit status when the command could not run at all.
const EXIT_BAD_INPUT: u8 = 3;

#[derive(Parser)]
#[command(
    name = "jepsen",
    about = "Fault-injection harness for the witness: check recorded runs, clean up crashed ones",
    after_help = "Exit status: 0 valid, 1 invalid, 2 unknown, 3 bad input or arguments."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Remove namespaces of crashed harness runs (owner process dead).
    Cleanup,
    /// Re-check a stored run: rewrite results.json and timeline.html.
    Analyze {
        /// The run directory (holds history.jsonl; node logs under logs/).
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version are not errors; usage errors must not look
            // like "unknown" (2), which is clap's default code.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_BAD_INPUT)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Cleanup => match jepsen::cleanup_orphans() {
            Ok(removed) => {
                for p in removed {
                    println!("removed run {p}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("jepsen cleanup: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Analyze { dir } => match jepsen::results::analyze(&dir) {
            Ok(results) => {
                print!("{}", results.summary());
                println!(
                    "wrote {} and {}",
                    dir.join("results.json").display(),
                    dir.join("timeline.html").display()
                );
                ExitCode::from(jepsen::results::exit_code(results.valid))
            }
            Err(e) => {
                eprintln!("jepsen analyze: {e}");
                ExitCode::from(EXIT_BAD_INPUT)
            }
        },
    }
}
