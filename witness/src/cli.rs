//! The `witness` binary's commands, as library functions so tests can call
//! them and the binary stays thin.

use std::path::Path;

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

/// `witness run --config FILE`: serve until SIGTERM or Ctrl-C.
pub fn run(config: &Path) -> anyhow::Result<()> {
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
