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
//! - `jepsen test [--nemesis a,b] [--time-limit S] [--seed N]`: deploy the
//!   real binaries on namespace hosts, run the workload under the named
//!   nemeses (default: a mix of all), check the history; the run lands in
//!   `jepsen/store/<test>/<time>/`.
//! - `jepsen test-all [--time-limit S]`: one test per nemesis, then a
//!   summary; the exit status is the worst of them.
//!
//! - `jepsen check-checkers [--time-limit S]`: the runs that must be judged
//!   invalid — sabotaged builds and a clock beyond `max_drift`
//!   ([`jepsen::runner::expected`]); exit 0 only if every one was.
//!
//! `test`, `test-all` and `check-checkers` need root, `ip netns`, iptables
//! and BIRD 2.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use jepsen::checker::Valid;
use jepsen::runner::TestOpts;
use jepsen::runner::faults::{ALL, EXPECTED_FAILURES};

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
    /// Run one test against the real binaries and check it.
    Test {
        #[command(flatten)]
        run: RunArgs,
        /// Nemeses to mix, comma-separated (default: all of them).
        #[arg(long, value_delimiter = ',')]
        nemesis: Vec<String>,
        /// Seconds of the fault phase.
        #[arg(long, default_value_t = 60)]
        time_limit: u64,
    },
    /// Run the experiments that must be judged invalid (sabotaged builds,
    /// a clock beyond max_drift); exit 0 only if every one was.
    CheckCheckers {
        /// Where runs are stored.
        #[arg(long, default_value_os_t = default_store())]
        store: PathBuf,
        /// Seconds of each run's fault phase.
        #[arg(long, default_value_t = 20)]
        time_limit: u64,
        /// Only these experiments (comma-separated names).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// Run every nemesis in short tests (one test per nemesis, or per
    /// `--group` of them), then print a summary.
    TestAll {
        #[command(flatten)]
        run: RunArgs,
        /// Seconds of each test's fault phase (longer if needed for each of
        /// its nemeses to run once).
        #[arg(long, default_value_t = 20)]
        time_limit: u64,
        /// Nemeses per test, in `jepsen test --nemesis` order.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
        group: u64,
    },
    /// Print, as JSON, what this process's clocks show (run under the clock
    /// shim by the harness's tests).
    #[command(hide = true)]
    ClockProbe {
        #[arg(long, default_value_t = 4)]
        threads: usize,
        /// Milliseconds to sleep, on this process's clock.
        #[arg(long, default_value_t = 1000)]
        sleep_ms: u64,
        /// Milliseconds of reading from every thread, on this process's clock.
        #[arg(long, default_value_t = 1000)]
        run_ms: u64,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Seed of the schedule's random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Use the binaries in this directory instead of building them
    /// (witness, witnessctl, fake_carbonio).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Where runs are stored.
    #[arg(long, default_value_os_t = default_store())]
    store: PathBuf,
    /// Seconds of the quiet phase before the faults.
    #[arg(long, default_value_t = 5)]
    quiet: u64,
    /// Seconds of the recover phase after the heal.
    #[arg(long, default_value_t = 15)]
    recover: u64,
}

/// `jepsen/store` of this source tree.
fn default_store() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("store")
}

impl RunArgs {
    fn opts(&self, name: String, nemeses: Vec<String>, time_limit: u64) -> TestOpts {
        TestOpts {
            nemeses,
            time_limit: Duration::from_secs(time_limit),
            seed: self.seed,
            store: self.store.clone(),
            name,
            quiet: Duration::from_secs(self.quiet),
            recover: Duration::from_secs(self.recover),
        }
    }
}

/// Run `opts`; print its summary; its validity (unknown when it could not
/// run at all).
fn one(opts: &TestOpts) -> Valid {
    match jepsen::runner::run(opts) {
        Ok((dir, results)) => {
            print!("{}", results.summary());
            println!("results in {}", dir.display());
            results.valid
        }
        Err(e) => {
            eprintln!("jepsen test {}: {e:#}", opts.name);
            Valid::Unknown
        }
    }
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
        Command::ClockProbe {
            threads,
            sleep_ms,
            run_ms,
        } => {
            let seen = jepsen::nemesis::clock::probe(
                threads,
                Duration::from_millis(sleep_ms),
                Duration::from_millis(run_ms),
            );
            println!("{seen}");
            ExitCode::SUCCESS
        }
        Command::Test {
            run,
            nemesis,
            time_limit,
        } => {
            let Some(nemeses) = chosen(nemesis) else {
                return ExitCode::from(EXIT_BAD_INPUT);
            };
            prepare(&run);
            let name = if nemeses.len() == ALL.len() {
                "mix".to_string()
            } else {
                nemeses.join("+")
            };
            let valid = one(&run.opts(name, nemeses, time_limit));
            ExitCode::from(jepsen::results::exit_code(valid))
        }
        Command::TestAll {
            run,
            time_limit,
            group,
        } => {
            prepare(&run);
            let groups: Vec<Vec<String>> = ALL
                .chunks(group as usize)
                .map(|g| g.iter().map(|s| s.to_string()).collect())
                .collect();
            let mut summary = Vec::new();
            for nemeses in &groups {
                if jepsen::runner::interrupted() {
                    break;
                }
                let name = nemeses.join("+");
                let opts = run.opts(name.clone(), nemeses.clone(), time_limit);
                summary.push((name, one(&opts)));
            }
            println!("\ntest-all:");
            for (name, v) in &summary {
                println!("  {:<40} {}", name, v.name());
            }
            let worst = if summary.iter().any(|(_, v)| *v == Valid::False) {
                Valid::False
            } else if summary.len() < groups.len()
                || summary.iter().any(|(_, v)| *v == Valid::Unknown)
            {
                Valid::Unknown
            } else {
                Valid::True
            };
            println!("valid: {}", worst.name());
            ExitCode::from(jepsen::results::exit_code(worst))
        }
        Command::CheckCheckers {
            store,
            time_limit,
            only,
        } => check_checkers(&store, time_limit, &only),
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

/// The nemeses asked for (all when none), or `None` after saying which
/// name is unknown.
fn chosen(names: Vec<String>) -> Option<Vec<String>> {
    if names.is_empty() {
        return Some(ALL.iter().map(|s| s.to_string()).collect());
    }
    for n in &names {
        if !ALL.contains(&n.as_str()) && !EXPECTED_FAILURES.contains(&n.as_str()) {
            eprintln!(
                "jepsen: unknown nemesis {n:?}; known: {}, and the experiment {} (expected to \
                 be invalid)",
                ALL.join(", "),
                EXPECTED_FAILURES.join(", ")
            );
            return None;
        }
    }
    Some(names)
}

/// Before any thread starts: signals, leftovers of crashed runs, binaries.
fn prepare(run: &RunArgs) {
    jepsen::runner::catch_interrupts();
    if let Ok(removed) = jepsen::cleanup_orphans() {
        for p in removed {
            eprintln!("jepsen: removed leftovers of crashed run {p}");
        }
    }
    if let Some(dir) = &run.bin_dir {
        // Agents' hooks name the binaries by absolute path.
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
        jepsen::lab::set_bin_dir(dir);
    }
}

/// `check-checkers`: each experiment in a child `jepsen test`, which must
/// exit 1 (invalid).
fn check_checkers(store: &std::path::Path, time_limit: u64, only: &[String]) -> ExitCode {
    use jepsen::runner::expected::{EXPERIMENTS, build_sabotaged};
    if let Some(bad) = only
        .iter()
        .find(|n| !EXPERIMENTS.iter().any(|x| x.name == n.as_str()))
    {
        let names: Vec<&str> = EXPERIMENTS.iter().map(|x| x.name).collect();
        eprintln!(
            "jepsen check-checkers: unknown experiment {bad:?}; known: {}",
            names.join(", ")
        );
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    let bins = jepsen::lab::bin_dir();
    let sabotaged = match build_sabotaged(bins) {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("jepsen check-checkers: building the sabotaged witness: {e:#}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let exe = std::env::current_exe().expect("this executable");
    let mut missed = Vec::new();
    for x in EXPERIMENTS
        .iter()
        .filter(|x| only.is_empty() || only.iter().any(|n| n == x.name))
    {
        // (label, sabotage, nemeses, bin dir, exit status wanted)
        let runs = [
            (
                x.name.to_string(),
                x.sabotage,
                x.nemesis,
                if x.sabotage.is_some() {
                    sabotaged.as_path()
                } else {
                    bins
                },
                1,
            ),
            (format!("{}-control", x.name), None, x.control, bins, 0),
        ];
        for (label, sabotage, nemeses, dir, want) in runs {
            let mut cmd = std::process::Command::new(&exe);
            cmd.args(["test", "--nemesis", nemeses])
                .args(["--time-limit", &time_limit.to_string()])
                .args(["--seed", &x.seed.to_string()])
                .arg("--store")
                .arg(store.join("check-checkers").join(&label))
                .arg("--bin-dir")
                .arg(dir);
            match sabotage {
                Some(s) => cmd.env("WITNESS_SABOTAGE", s),
                None => cmd.env_remove("WITNESS_SABOTAGE"),
            };
            eprintln!(
                "jepsen check-checkers: {label} ({}), nemesis {nemeses}: must be {}",
                sabotage.map_or("the real binaries".into(), |s| format!(
                    "WITNESS_SABOTAGE={s}"
                )),
                if want == 1 { "invalid" } else { "valid" }
            );
            let code = cmd.status().ok().and_then(|s| s.code());
            let verdict = match (code, want) {
                (Some(1), 1) => "caught (invalid)".to_string(),
                (Some(0), 0) => "valid, as it must be".to_string(),
                (Some(0), _) => "MISSED: judged valid".to_string(),
                (Some(1), _) => "WRONG: judged invalid".to_string(),
                (Some(2), _) => "judged unknown".to_string(),
                _ => "the run failed".to_string(),
            };
            println!("  {label:<36} {verdict}");
            if code != Some(want) {
                missed.push(label);
            }
        }
    }
    if missed.is_empty() {
        println!("check-checkers: every experiment was judged invalid and every control valid");
        ExitCode::SUCCESS
    } else {
        println!("check-checkers: not as expected: {}", missed.join(", "));
        ExitCode::FAILURE
    }
}
