//! The `witness` binary's commands, as library functions so tests can call
//! them and the binary stays thin.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::config::{self, ConfigFile, NodeConfig, Policy};

/// `witness check-config FILE [--policy P]`: validate and print the effective
/// config (and, for a policy, the timer check and worst-case failover time).
pub fn check_config(file: &Path, policy: Option<&Path>) -> anyhow::Result<()> {
    match config::load_any(file)? {
        ConfigFile::Node(node) => {
            println!(
                "# {}: valid node config (node {})",
                file.display(),
                node.node.id
            );
            println!("{}", node.to_toml());
            let policy = match policy {
                Some(p) => Policy::load(p)?,
                None => {
                    println!("# Raft timers checked against the default policy (pass --policy)");
                    Policy::default()
                }
            };
            print_timers(&node, &policy)?;
        }
        ConfigFile::Policy(policy) => {
            println!("# {}: valid cluster policy", file.display());
            println!("{}", policy.to_toml());
            let report = config::check_timers(&config::RaftTimers::default(), &policy)?;
            println!("# Timer check (with default Raft timers):");
            for line in &report.lines {
                println!("#   {line}");
            }
        }
    }
    Ok(())
}

fn print_timers(node: &NodeConfig, policy: &Policy) -> anyhow::Result<()> {
    let report = config::check_timers(&node.raft, policy)?;
    println!("# Timer check:");
    for line in &report.lines {
        println!("#   {line}");
    }
    Ok(())
}

/// `witness import-habeat FILE`: the agent TOML on stdout, then on stderr
/// every habeat key that has no equivalent and why. The TOML is checked
/// with [`AgentConfig::parse`](crate::agent::AgentConfig::parse) before it
/// is printed, so what is printed always loads.
pub fn import_habeat(file: &Path) -> anyhow::Result<()> {
    let imported = crate::agent::habeat::load(file)?;
    crate::agent::AgentConfig::parse(&imported.toml, Path::new("(imported agent.toml)"))
        .context("the generated agent TOML does not validate; this is a bug, please report it")?;
    print!("{}", imported.toml);
    eprintln!(
        "# {} habeat setting(s) have no direct equivalent or need a person:",
        imported.notes.len()
    );
    for note in &imported.notes {
        eprintln!("#  - {note}");
    }
    Ok(())
}

/// `witness agent check-config --config agent.toml`: validate an agent
/// file and print its effective configuration.
pub fn agent_check_config(config: &Path) -> anyhow::Result<()> {
    let agent = crate::agent::AgentConfig::load(config)?;
    println!(
        "# {}: valid agent config ({} at {})",
        config.display(),
        agent.agent.role,
        agent.agent.site
    );
    print!("{}", agent.to_toml());
    Ok(())
}

/// `witness agent --config agent.toml`: run the agent until SIGTERM or
/// Ctrl-C.
pub fn agent(config: &Path) -> anyhow::Result<()> {
    crate::sabotage::announce();
    let agent = crate::agent::AgentConfig::load(config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("witness-agent")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(crate::agent::run::run(agent, shutdown_signal()))?;
    Ok(())
}

/// `witness init --config node.toml --policy cluster.toml`.
pub fn init(config: &Path, policy: &Path) -> anyhow::Result<()> {
    let node = NodeConfig::load(config)?;
    let policy = Policy::load(policy)?;
    let report = crate::node::init(&node, &policy)?;
    println!(
        "Created cluster {:?} in {}",
        node.node.cluster,
        report.data_dir.display()
    );
    println!("  cluster id:   {}", report.cluster_id);
    println!(
        "  this node:    {} ({}), incarnation {}",
        node.node.id, node.node.name, report.incarnation
    );
    println!("  initial voters:");
    for (id, m) in &report.members {
        println!("    {id}  {:<12} {:<22} site {}", m.name, m.addr, m.site);
    }
    println!();
    println!("Next: start `witness run --config <its config>` on every node listed above,");
    println!("this one included. The others start with an empty data dir and are admitted");
    println!("on first contact.");
    Ok(())
}

/// `witness recover --force --config FILE --reason "…"`.
pub fn recover(config: &Path, force: bool, reason: &str) -> anyhow::Result<()> {
    if !force {
        anyhow::bail!(
            "refusing without --force. A forced recovery makes this node the only voter of a NEW \
             cluster incarnation; use it only when a majority of witnesses is lost for good. \
             Stop this node first, then run: witness recover --force --config {} --reason \"…\"",
            config.display()
        );
    }
    let node = NodeConfig::load(config)?;
    let operator = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let r = runtime.block_on(crate::node::recover(&node, &operator, reason))?;
    eprintln!(
        "FORCED RECOVERY prepared for node {} ({}).",
        node.node.id, node.node.name
    );
    eprintln!("  old store moved to:   {}", r.moved_to.display());
    eprintln!("  old cluster id:       {}", r.previous_cluster_id);
    eprintln!("  new cluster id:       {}", r.new_cluster_id);
    eprintln!("  state as of index:    {}", r.applied_index);
    eprintln!(
        "  epoch:                {} -> {}",
        r.epoch_before, r.epoch_after
    );
    eprintln!();
    eprintln!(
        "Start it with `witness run --config {}`. It comes up FROZEN as the only voter.",
        config.display()
    );
    eprintln!("Wipe the data dirs of the other witnesses before they return, add them with");
    eprintln!("`witnessctl members add`, then `witnessctl unfreeze --reason …`.");
    Ok(())
}

/// `witness run --config FILE`: serve until SIGTERM or Ctrl-C.
pub fn run(config: &Path) -> anyhow::Result<()> {
    crate::sabotage::announce();
    let node = NodeConfig::load(config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("witness")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(crate::node::run(node, shutdown_signal()))
}

/// Resolves on SIGTERM (systemd stop) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot listen for SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// `witness certs …`: the cluster CA and its certificates (see
/// [`crate::trust::certs`] and docs/SECURITY.md).
#[derive(clap::Args, Debug)]
pub struct CertsArgs {
    #[command(subcommand)]
    pub command: CertsCommand,
}

/// Where a certificate is issued from and written to.
#[derive(clap::Args, Debug)]
pub struct IssueArgs {
    /// The CA's directory (ca.pem, ca.key).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Where to write the certificate and key (default: the CA's directory).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Lifetime in days.
    #[arg(long, default_value_t = crate::trust::certs::LEAF_DAYS)]
    pub days: u32,
    /// Replace existing files.
    #[arg(long)]
    pub force: bool,
}

#[derive(clap::Subcommand, Debug)]
pub enum CertsCommand {
    /// Make the cluster CA: DIR/ca.pem and DIR/ca.key (mode 0600; keep it offline).
    Ca {
        /// The cluster's name (node.cluster of every witness).
        #[arg(long)]
        cluster: String,
        /// Where to write it.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Lifetime in days.
        #[arg(long, default_value_t = crate::trust::certs::CA_DAYS)]
        days: u32,
        /// Replace an existing CA (every certificate it issued stops working).
        #[arg(long)]
        force: bool,
    },
    /// A witness's certificate (peer-ID.pem, peer-ID.key).
    Peer {
        /// Its node id (node.id).
        #[arg(long)]
        id: u64,
        /// A DNS name or IP address it is reached at, for browsers and curl
        /// (repeatable); witnesses check the identity, not the host.
        #[arg(long = "host")]
        hosts: Vec<String>,
        #[command(flatten)]
        issue: IssueArgs,
    },
    /// An agent's certificate (agent-SITE-NAME.pem/.key).
    Agent {
        /// Its site (agent.site).
        #[arg(long)]
        site: String,
        /// Its name (agent.name).
        #[arg(long)]
        name: String,
        #[command(flatten)]
        issue: IssueArgs,
    },
    /// An operator's certificate: may change things (operator-NAME.pem/.key).
    Operator {
        /// The name recorded in history for this operator's actions.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        issue: IssueArgs,
    },
    /// A read-only operator's certificate (viewer-NAME.pem/.key).
    Viewer {
        #[arg(long)]
        name: String,
        #[command(flatten)]
        issue: IssueArgs,
    },
    /// Print the identity, serial and validity of certificate files.
    Show {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// `witness certs …`.
pub fn certs(args: &CertsArgs) -> anyhow::Result<()> {
    use crate::trust::{Principal, certs, identity::check_name};
    let now = crate::trust::unix_now();
    let name =
        |what: &str, value: &str| check_name(value).map_err(|e| anyhow::anyhow!("--{what}: {e}"));
    let (principal, hosts, issue) = match &args.command {
        CertsCommand::Ca {
            cluster,
            dir,
            days,
            force,
        } => {
            let (cert, key) =
                certs::init_ca(dir, cluster, *days, *force, now).map_err(anyhow::Error::msg)?;
            println!(
                "CA of cluster {cluster:?}: {} and {}",
                cert.display(),
                key.display()
            );
            println!(
                "Keep {} offline once the certificates are issued.",
                key.display()
            );
            return Ok(());
        }
        CertsCommand::Show { files } => {
            for file in files {
                print!("{}", certs::describe(file).map_err(anyhow::Error::msg)?);
            }
            return Ok(());
        }
        CertsCommand::Peer { id, hosts, issue } => {
            if *id == 0 {
                anyhow::bail!("--id: node ids start at 1");
            }
            (Principal::Peer { id: *id }, hosts.clone(), issue)
        }
        CertsCommand::Agent {
            site,
            name: n,
            issue,
        } => {
            name("site", site)?;
            name("name", n)?;
            let principal = Principal::Agent {
                site: site.clone(),
                name: n.clone(),
            };
            (principal, Vec::new(), issue)
        }
        CertsCommand::Operator { name: n, issue } => {
            name("name", n)?;
            (Principal::Operator { name: n.clone() }, Vec::new(), issue)
        }
        CertsCommand::Viewer { name: n, issue } => {
            name("name", n)?;
            (Principal::Viewer { name: n.clone() }, Vec::new(), issue)
        }
    };
    let out = issue.out.as_ref().unwrap_or(&issue.dir);
    let shown = principal.clone();
    let (cert, key) = certs::issue_into(
        &issue.dir,
        out,
        principal,
        &hosts,
        issue.days,
        issue.force,
        now,
    )
    .map_err(anyhow::Error::msg)?;
    println!(
        "{} {:?}: {} and {} (key mode 0600)",
        shown.role(),
        shown.name(),
        cert.display(),
        key.display()
    );
    Ok(())
}
