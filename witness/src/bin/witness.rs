//! `witness`: the daemon and its offline commands. Thin: parse, then call
//! the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "witness",
    version,
    about = "Consensus-based datacenter witness for Carbonio HA"
)]
struct Cli {
    /// Log format: human-readable text or one JSON object per line.
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a witness node (an empty data dir makes a joiner that waits to be admitted).
    Run {
        /// The node's TOML config.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Create a new cluster on this node, once: cluster id, incarnation, initial membership.
    Init {
        /// The node's TOML config (its [[peer]] list is the initial membership).
        #[arg(long, short)]
        config: PathBuf,
        /// The cluster policy file (cluster.toml), committed as the first policy.
        #[arg(long, short)]
        policy: PathBuf,
    },
    /// Disaster recovery, offline, when only a minority of witnesses survives:
    /// make this stopped node the only voter of a new cluster incarnation.
    Recover {
        /// The node's TOML config.
        #[arg(long, short)]
        config: PathBuf,
        /// Required: this cannot be undone by the old majority coming back.
        #[arg(long)]
        force: bool,
        /// Why (recorded in history).
        #[arg(long)]
        reason: String,
    },
    /// Validate a node config or a cluster policy file and print the effective config.
    CheckConfig {
        /// A node config (has a [node] table) or a cluster policy file.
        file: PathBuf,
        /// With a node config: also check its Raft timers against this policy.
        #[arg(long)]
        policy: Option<PathBuf>,
    },
    /// Print an agent TOML equivalent to a habeat.yml; what has no equivalent goes to stderr.
    ImportHabeat {
        /// The habeat.yml (/etc/habeat/habeat.yml or /etc/hamon/habeat.yml).
        file: PathBuf,
    },
    /// Run the agent of an HA node (lease, fencing, hooks, directives).
    Agent {
        /// The agent's TOML config.
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: Option<AgentCommand>,
    },
    /// Make the cluster CA and the certificates of witnesses, agents and operators.
    Certs(witness::cli::CertsArgs),
    /// Announce or withdraw the service VIP through the local BIRD (proxy hooks).
    Bgp(witness::bgp::BgpArgs),
    /// A whole deployment on loopback to watch a failover: three witnesses,
    /// two mail sites with agents, and Consul. Type `fail dc-a` to fail a site.
    Demo {
        /// Keep configs, data and logs here (a new or empty directory)
        /// instead of a temporary directory removed on exit.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// First of the 51 loopback ports it uses (witnesses at +0, +10,
        /// +20; sites at +30, +40; Consul at +50).
        #[arg(long, default_value_t = 7410)]
        port_base: u16,
    },
}

#[derive(Subcommand)]
enum AgentCommand {
    /// Validate the agent config and print the effective config.
    CheckConfig {
        /// The agent's TOML config (also accepted before the subcommand).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::CheckConfig { file, policy } => {
            witness::cli::check_config(&file, policy.as_deref())
        }
        Command::Init { config, policy } => witness::cli::init(&config, &policy),
        Command::Run { config } => witness::cli::run(&config),
        Command::Recover {
            config,
            force,
            reason,
        } => witness::cli::recover(&config, force, &reason),
        Command::ImportHabeat { file } => witness::cli::import_habeat(&file),
        Command::Agent { config, command } => {
            let config = match &command {
                Some(AgentCommand::CheckConfig { config: Some(c) }) => Some(c.clone()),
                _ => config,
            };
            match (config, command) {
                (None, _) => Err(anyhow::anyhow!(
                    "missing --config: pass the agent's TOML file, e.g. \
                     `witness agent --config /etc/witness/agent.toml`"
                )),
                (Some(c), None) => witness::cli::agent(&c),
                (Some(c), Some(AgentCommand::CheckConfig { .. })) => {
                    witness::cli::agent_check_config(&c)
                }
            }
        }
        Command::Demo {
            data_dir,
            port_base,
        } => witness::demo::run(witness::demo::DemoArgs {
            data_dir,
            port_base,
        }),
        // Its own exit codes (documented in witness::bgp) for hook runners.
        Command::Bgp(args) => return witness::bgp::run(&args),
        Command::Certs(args) => witness::cli::certs(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    // openraft warns on every failed heartbeat to a down peer; the witness
    // logs peer refusals itself, once per change. WITNESS_LOG overrides.
    let filter = tracing_subscriber::EnvFilter::try_from_env("WITNESS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // Under systemd the journal adds its own timestamps.
    let under_systemd = std::env::var_os("JOURNAL_STREAM").is_some();
    match (format, under_systemd) {
        (LogFormat::Json, _) => builder.json().init(),
        (LogFormat::Text, true) => builder.without_time().init(),
        (LogFormat::Text, false) => builder.init(),
    }
}
