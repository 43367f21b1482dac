//! `jepsen`: the harness's command line. The runner (`test`, `test-all`,
//! `analyze`) comes with the workload and checkers; until then this prints
//! usage, and `cleanup` removes the leftovers of crashed runs.

use std::process::ExitCode;

const USAGE: &str = "\
usage: jepsen <command>

commands:
  cleanup   remove namespaces of crashed harness runs (owner process dead)

The test runner (test, test-all, analyze) is not built yet.";

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("cleanup") => match jepsen::cleanup_orphans() {
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
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}
