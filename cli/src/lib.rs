//! `witnessctl`: status, membership and policy of a Witness cluster.
//!
//! It talks to any witness in `--endpoints` (tried in order until one
//! answers); followers forward what only the leader may answer. A read
//! (`status`, `members list`, `policy show`, `history`) also moves on when an
//! endpoint answers with a transient failure (no leader, timeout, a
//! connection torn down mid-call); a change stops at the first endpoint that
//! may have received it, so it is never sent twice. Every call
//! is bounded by `--timeout`. Output is a table for people or, with
//! `--output json`, one JSON document for scripts.
//!
//! Exit codes (stable, for scripts):
//! - 0: done.
//! - 1: the cluster refused the request (invalid input, precondition
//!   failed); for `check-topology`, some single loss leaves no majority.
//! - 2: bad command line.
//! - 3: no endpoint could be reached.
//! - 4: reached, but the cluster could not answer (no leader, no quorum,
//!   timeout).

mod output;
pub mod status_page;
pub mod topology;
pub mod watch;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use tonic::transport::{Channel, Endpoint};
use witness_proto::admin_client::AdminClient;
use witness_proto::*;
use witness_trust::{Dial, Expect, TlsFiles, Trust};

pub use witness_proto::json::{directives_json, history_json, members_json, status_json};

#[derive(Parser, Debug)]
#[command(name = "witnessctl", version, about = "Operate a Witness cluster")]
pub struct Cli {
    /// Witness gRPC endpoints, comma-separated host:port; tried in order.
    #[arg(
        long,
        env = "WITNESS_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7400",
        global = true
    )]
    pub endpoints: Vec<String>,
    /// Output format.
    #[arg(long, short, value_enum, default_value = "table", global = true)]
    pub output: Output,
    /// Give up on an endpoint after this long (humantime, e.g. 5s).
    #[arg(long, default_value = "5s", value_parser = parse_duration, global = true)]
    pub timeout: Duration,
    /// The cluster CA's certificate (PEM).
    #[arg(long, env = "WITNESS_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// Your viewer or operator certificate (PEM), made by `witness certs`.
    #[arg(long, env = "WITNESS_CERT", global = true)]
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "WITNESS_KEY", global = true)]
    pub key: Option<PathBuf>,
    /// Talk plaintext, to a cluster whose witnesses run `insecure = true`
    /// (a developer's laptop only).
    #[arg(long, env = "WITNESS_INSECURE", global = true)]
    pub insecure: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// The cluster as the leader sees it (or one node's own view with --local).
    Status {
        /// Ask the first reachable endpoint for its own view; do not forward.
        #[arg(long)]
        local: bool,
    },
    /// List, add or remove witnesses.
    Members {
        #[command(subcommand)]
        action: MembersAction,
    },
    /// Show or change the replicated cluster policy.
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// The failover directives of the current epoch (promotion, cache
    /// flush, …) and their progress; retry a failed one.
    Directives {
        #[command(subcommand)]
        action: DirectivesAction,
    },
    /// Committed decisions, oldest first.
    History {
        /// Show only the last N records (0 = all).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Stop automatic failover and failback (leases and operator failovers continue).
    Freeze {
        /// Why (recorded in history).
        #[arg(long)]
        reason: String,
        /// End the freeze by itself after this long (e.g. 2h), measured on the
        /// leader's clock from when it learns of the freeze.
        #[arg(long, value_parser = parse_duration)]
        expires: Option<Duration>,
    },
    /// End the freeze.
    Unfreeze {
        #[arg(long)]
        reason: String,
    },
    /// Make another site active, through the same lease wait as an automatic failover.
    Failover {
        /// The site to activate; a majority of witnesses must see it up.
        #[arg(long)]
        to: String,
        #[arg(long)]
        reason: String,
        /// Fail back without the replica pre-flight check.
        #[arg(long)]
        accept_data_loss: bool,
    },
    /// Move Raft leadership to another voter (e.g. the third-site witness).
    TransferLeader {
        /// The voter to lead.
        to: u64,
    },
    /// Print changes as they happen (leader, verdict, each witness's view,
    /// pending failover, agents, directives, committed decisions) until
    /// Ctrl-C. With --output json, one JSON object per line.
    Watch {
        /// How often to read the cluster (e.g. 500ms, 2s).
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        interval: Duration,
    },
    /// Serve a witness's status page on a local port, presenting your
    /// certificate for the browser (which then needs none), until Ctrl-C.
    StatusPage {
        /// The witness's HTTP port (node.http_listen), host:port.
        #[arg(long, default_value = "127.0.0.1:7401")]
        http: String,
        /// Where the browser connects; loopback only.
        #[arg(long, default_value = "127.0.0.1:7480")]
        listen: std::net::SocketAddr,
    },
    /// Which single site or witness losses the placement survives, and
    /// warnings (two voters in one site, an even voter count). Reads the
    /// live cluster, or files with --config.
    CheckTopology {
        /// A witness config (witness.toml) whose [[peer]] list to check,
        /// instead of the live cluster.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The cluster policy (cluster.toml) naming the mail sites; with
        /// --config. Without it the mail sites are unknown.
        #[arg(long, requires = "config")]
        policy: Option<PathBuf>,
    },
    /// Print a shell completion script (e.g. `witnessctl completions bash
    /// > /etc/bash_completion.d/witnessctl`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages (witnessctl.1 and one per command) into a directory.
    Man {
        /// Where to write them (e.g. /usr/local/share/man/man1).
        dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum MembersAction {
    /// List members with role and reachability.
    List,
    /// Add a node: as a learner, then (unless --learner) as a voter once caught up.
    Add {
        #[arg(long)]
        id: u64,
        #[arg(long)]
        name: String,
        /// Its gRPC address, host:port.
        #[arg(long)]
        addr: String,
        #[arg(long)]
        site: String,
        /// Stop after adding it as a learner.
        #[arg(long)]
        learner: bool,
    },
    /// Promote a learner to voter.
    Promote { id: u64 },
    /// Remove a node (voter or learner).
    Remove { id: u64 },
}

#[derive(Subcommand, Debug)]
pub enum DirectivesAction {
    /// Each directive with its state, claimant, attempts and last result,
    /// and the gates that wait for them.
    List {
        /// Also the directives of earlier epochs that are still kept.
        #[arg(long)]
        all: bool,
    },
    /// Send a failed (or unreachable) directive of the current epoch back to
    /// pending, with a fresh attempt budget.
    Retry {
        /// The directive, as `<epoch>/<name>` (see `directives list`).
        id: String,
        /// Why (recorded in history).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum PolicyAction {
    /// Print the committed policy (linearizable read).
    Show,
    /// Validate a policy file, show the diff, and commit it.
    Apply {
        file: PathBuf,
        /// Why (recorded in history). Required unless --dry-run.
        #[arg(long, default_value = "")]
        reason: String,
        /// Only validate and show the diff.
        #[arg(long)]
        dry_run: bool,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?}: use e.g. 500ms, 5s, 1m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("bad duration {s:?}: use e.g. 500ms, 5s, 1m")),
    }
}

/// Exit codes; see the crate docs.
pub mod exit {
    pub const OK: u8 = 0;
    pub const REFUSED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const UNREACHABLE: u8 = 3;
    pub const UNAVAILABLE: u8 = 4;
}

/// A failure, with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach any endpoint: {0}")]
    Unreachable(String),
    #[error("{endpoint}: {message}")]
    Refused { endpoint: String, message: String },
    #[error("{endpoint}: {message}")]
    Unavailable { endpoint: String, message: String },
    /// A check that ran and found a problem: the report, printed as is.
    #[error("{0}")]
    Finding(String),
    /// An answer that is not what was asked for (a node's own view instead
    /// of the leader's): `shown` goes to stdout, the error to stderr.
    #[error("{endpoint}: {message}")]
    Degraded {
        endpoint: String,
        message: String,
        shown: String,
    },
}

impl CtlError {
    pub fn code(&self) -> u8 {
        match self {
            CtlError::Usage(_) => exit::USAGE,
            CtlError::Unreachable(_) => exit::UNREACHABLE,
            CtlError::Refused { .. } => exit::REFUSED,
            CtlError::Unavailable { .. } => exit::UNAVAILABLE,
            CtlError::Finding(_) => exit::REFUSED,
            CtlError::Degraded { .. } => exit::UNAVAILABLE,
        }
    }
}

/// Run a parsed command; returns the process exit code.
pub fn run(cli: Cli) -> u8 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return exit::UNAVAILABLE;
        }
    };
    if let Command::StatusPage { http, listen } = &cli.command {
        let result = runtime.block_on(status_page::serve(&cli, http, *listen, async {
            let _ = tokio::signal::ctrl_c().await;
        }));
        return exit_code(result);
    }
    if let Command::Watch { interval } = cli.command {
        let json = cli.output == Output::Json;
        let result = runtime.block_on(watch(
            &cli,
            interval,
            |e| {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"at_unix_ms": unix_ms(), "kind": e.kind,
                                           "text": e.text, "event": e.json})
                    );
                } else {
                    println!("{}  {}", output::format_unix_ms(unix_ms()), e.text);
                }
            },
            async {
                let _ = tokio::signal::ctrl_c().await;
            },
        ));
        return exit_code(result);
    }
    match runtime.block_on(execute(&cli)) {
        Ok(text) => {
            print!("{text}");
            exit::OK
        }
        Err(CtlError::Finding(report)) => {
            print!("{report}");
            exit::REFUSED
        }
        Err(e @ CtlError::Degraded { .. }) => {
            if let CtlError::Degraded { shown, .. } = &e {
                print!("{shown}");
            }
            eprintln!("error: {e}");
            e.code()
        }
        Err(e) => {
            eprintln!("error: {e}");
            e.code()
        }
    }
}

/// Execute a command and return what to print.
pub async fn execute(cli: &Cli) -> Result<String, CtlError> {
    let json = cli.output == Output::Json;
    match &cli.command {
        Command::Status { local } => {
            let local = *local;
            // A node that cannot reach the leader answers with its own view
            // (its `note` says why). That is not what was asked for: keep
            // it, move on to the next endpoint, and show it only if no
            // endpoint can give the leader's view.
            let fallback = std::sync::Arc::new(std::sync::Mutex::new(None));
            let kept = fallback.clone();
            let reply = call(cli, Retry::Read, move |mut c| {
                let kept = kept.clone();
                async move {
                    let resp = c.status(StatusRequest { local }).await?;
                    if local || resp.get_ref().note.is_empty() {
                        return Ok(resp);
                    }
                    let note = resp.get_ref().note.clone();
                    *kept.lock().unwrap_or_else(|e| e.into_inner()) = Some(resp.into_inner());
                    Err(tonic::Status::unavailable(note))
                }
            })
            .await;
            let render = |r: &StatusReply| {
                if json {
                    pretty(&status_json(r))
                } else {
                    output::status_table(r)
                }
            };
            match reply {
                Ok(reply) if local => Ok(render(&reply)),
                Ok(reply) => {
                    // The leader's view also lists the current epoch's
                    // directives that are not done yet.
                    let directives = call(cli, Retry::Read, |mut c| async move {
                        c.list_directives(ListDirectivesRequest {
                            include_past: false,
                        })
                        .await
                    })
                    .await;
                    Ok(if json {
                        let mut v = status_json(&reply);
                        v["directives"] = match &directives {
                            Ok(d) => directives_json(d),
                            Err(_) => serde_json::Value::Null,
                        };
                        pretty(&v)
                    } else {
                        let mut text = render(&reply);
                        text.push('\n');
                        text.push_str(&match &directives {
                            Ok(d) => output::open_directives(d),
                            Err(e) => format!("directives: could not be read: {e}\n"),
                        });
                        text
                    })
                }
                Err(e @ CtlError::Unavailable { .. }) => {
                    let own = fallback.lock().unwrap_or_else(|e| e.into_inner()).take();
                    match own {
                        Some(own) => Err(CtlError::Degraded {
                            endpoint: format!(
                                "node {} ({})",
                                own.answered_by, own.answered_by_name
                            ),
                            message: format!(
                                "{}. Shown is that node's own view, not the cluster's: the \
                                 cluster may have no quorum; check each witness with \
                                 `witnessctl status --local` ({e})",
                                own.note
                            ),
                            shown: render(&own),
                        }),
                        None => Err(e),
                    }
                }
                Err(e) => Err(e),
            }
        }
        Command::Members { action } => match action {
            MembersAction::List => {
                let reply = call(cli, Retry::Read, |mut c| async move {
                    c.members(MembersRequest {}).await
                })
                .await?;
                Ok(if json {
                    pretty(&members_json(&reply.members))
                } else {
                    output::members_table(&reply.members)
                })
            }
            MembersAction::Add {
                id,
                name,
                addr,
                site,
                learner,
            } => {
                let req = AddMemberRequest {
                    id: *id,
                    name: name.clone(),
                    addr: addr.clone(),
                    site: site.clone(),
                    learner_only: *learner,
                };
                let reply = call(cli, Retry::Write, move |mut c| {
                    let req = req.clone();
                    async move { c.add_member(req).await }
                })
                .await?;
                Ok(members_change(json, &reply))
            }
            MembersAction::Promote { id } => {
                let id = *id;
                let reply = call(cli, Retry::Write, move |mut c| async move {
                    c.promote_member(PromoteMemberRequest { id }).await
                })
                .await?;
                Ok(members_change(json, &reply))
            }
            MembersAction::Remove { id } => {
                let id = *id;
                let reply = call(cli, Retry::Write, move |mut c| async move {
                    c.remove_member(RemoveMemberRequest { id }).await
                })
                .await?;
                Ok(members_change(json, &reply))
            }
        },
        Command::Policy { action } => match action {
            PolicyAction::Show => {
                let reply = call(cli, Retry::Read, |mut c| async move {
                    c.policy_show(PolicyShowRequest { allow_stale: false })
                        .await
                })
                .await?;
                Ok(if json {
                    pretty(&serde_json::json!({"version": reply.version, "toml": reply.toml}))
                } else {
                    format!(
                        "# cluster policy, version {}\n{}",
                        reply.version, reply.toml
                    )
                })
            }
            PolicyAction::Apply {
                file,
                reason,
                dry_run,
            } => {
                let toml = std::fs::read_to_string(file).map_err(|e| {
                    CtlError::Usage(format!("cannot read policy file {}: {e}", file.display()))
                })?;
                if !dry_run && reason.trim().is_empty() {
                    return Err(CtlError::Usage(
                        "a policy change needs --reason \"...\" (it is recorded in history)".into(),
                    ));
                }
                let req = PolicyApplyRequest {
                    toml,
                    reason: reason.clone(),
                    operator: operator_name(),
                    dry_run: *dry_run,
                    expected_version: 0,
                };
                let reply = call(cli, Retry::Write, move |mut c| {
                    let req = req.clone();
                    async move { c.policy_apply(req).await }
                })
                .await?;
                Ok(if json {
                    pretty(&serde_json::json!({
                        "version": reply.version, "applied": reply.applied, "diff": reply.diff,
                    }))
                } else {
                    output::policy_apply_text(&reply, *dry_run)
                })
            }
        },
        Command::Directives { action } => match action {
            DirectivesAction::List { all } => {
                let include_past = *all;
                let reply = call(cli, Retry::Read, move |mut c| async move {
                    c.list_directives(ListDirectivesRequest { include_past })
                        .await
                })
                .await?;
                Ok(if json {
                    pretty(&directives_json(&reply))
                } else {
                    output::directives_table(&reply)
                })
            }
            DirectivesAction::Retry { id, reason } => {
                if reason.trim().is_empty() {
                    return Err(CtlError::Usage(
                        "a retry needs --reason \"...\" (it is recorded in history)".into(),
                    ));
                }
                let req = RetryDirectiveRequest {
                    id: id.clone(),
                    operator: operator_name(),
                    reason: reason.clone(),
                };
                let reply = call(cli, Retry::Write, move |mut c| {
                    let req = req.clone();
                    async move { c.retry_directive(req).await }
                })
                .await?;
                Ok(if json {
                    pretty(&serde_json::json!({"state": reply.state, "message": reply.message}))
                } else {
                    format!("{}\n", reply.message)
                })
            }
        },
        Command::History { limit } => {
            let limit = *limit;
            let reply = call(cli, Retry::Read, move |mut c| async move {
                c.history(HistoryRequest { limit }).await
            })
            .await?;
            Ok(if json {
                pretty(&history_json(&reply))
            } else {
                output::history_table(&reply)
            })
        }
        Command::Freeze { reason, expires } => {
            let req = FreezeRequest {
                reason: reason.clone(),
                operator: operator_name(),
                expires_after_ms: expires.map(|d| d.as_millis() as u64).unwrap_or(0),
            };
            let reply = call(cli, Retry::Write, move |mut c| {
                let req = req.clone();
                async move { c.freeze(req).await }
            })
            .await?;
            Ok(if json {
                pretty(&serde_json::json!({"mode": reply.mode}))
            } else {
                format!("mode: {}\n", reply.mode)
            })
        }
        Command::Unfreeze { reason } => {
            let req = UnfreezeRequest {
                reason: reason.clone(),
                operator: operator_name(),
            };
            let reply = call(cli, Retry::Write, move |mut c| {
                let req = req.clone();
                async move { c.unfreeze(req).await }
            })
            .await?;
            Ok(if json {
                pretty(&serde_json::json!({"mode": reply.mode}))
            } else {
                format!("mode: {}\n", reply.mode)
            })
        }
        Command::Failover {
            to,
            reason,
            accept_data_loss,
        } => {
            let req = FailoverRequest {
                to: to.clone(),
                reason: reason.clone(),
                operator: operator_name(),
                accept_data_loss: *accept_data_loss,
            };
            let reply = call(cli, Retry::Write, move |mut c| {
                let req = req.clone();
                async move { c.failover(req).await }
            })
            .await?;
            Ok(if json {
                pretty(&serde_json::json!({"epoch": reply.epoch, "message": reply.message}))
            } else {
                format!("{}\n", reply.message)
            })
        }
        Command::Watch { .. } => Err(CtlError::Usage(
            "watch streams; run it through witnessctl::run or witnessctl::watch".into(),
        )),
        Command::StatusPage { .. } => Err(CtlError::Usage(
            "status-page serves until stopped; run it through witnessctl::run".into(),
        )),
        Command::CheckTopology { config, policy } => {
            let (voters, mail_sites) = match config {
                Some(path) => {
                    let voters = topology::config_voters(path).map_err(CtlError::Usage)?;
                    let sites = match policy {
                        Some(p) => {
                            let text = std::fs::read_to_string(p).map_err(|e| {
                                CtlError::Usage(format!("cannot read {}: {e}", p.display()))
                            })?;
                            topology::policy_sites(&text).map_err(|e| {
                                CtlError::Usage(format!(
                                    "{} is not a cluster policy: {e}",
                                    p.display()
                                ))
                            })?
                        }
                        None => Vec::new(),
                    };
                    (voters, sites)
                }
                None => live_topology(cli).await?,
            };
            let report = topology::analyze(&voters, &mail_sites);
            let text = if json {
                pretty(&topology::json(&report))
            } else {
                topology::table(&report)
            };
            if report.survives_every_single_loss() {
                Ok(text)
            } else {
                Err(CtlError::Finding(text))
            }
        }
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "witnessctl", &mut out);
            Ok(String::from_utf8_lossy(&out).into_owned())
        }
        Command::Man { dir } => write_man_pages(dir),
        Command::TransferLeader { to } => {
            let to = *to;
            let reply = call(cli, Retry::Write, move |mut c| async move {
                c.transfer_leader(TransferLeaderRequest { to }).await
            })
            .await?;
            Ok(if json {
                pretty(&serde_json::json!({"leader_id": reply.leader_id}))
            } else {
                format!("node {} now leads\n", reply.leader_id)
            })
        }
    }
}

/// The voters and mail sites of the live cluster.
async fn live_topology(cli: &Cli) -> Result<(Vec<topology::Voter>, Vec<String>), CtlError> {
    let members = call(cli, Retry::Read, |mut c| async move {
        c.members(MembersRequest {}).await
    })
    .await?;
    let policy = call(cli, Retry::Read, |mut c| async move {
        c.policy_show(PolicyShowRequest { allow_stale: false })
            .await
    })
    .await?;
    let voters = members
        .members
        .iter()
        .filter(|m| m.voter)
        .map(|m| topology::Voter {
            id: m.id,
            name: m.name.clone(),
            site: m.site.clone(),
        })
        .collect();
    let sites = topology::policy_sites(&policy.toml).map_err(|e| CtlError::Unavailable {
        endpoint: "the cluster".into(),
        message: format!("the committed policy did not parse: {e}"),
    })?;
    Ok((voters, sites))
}

/// `witnessctl man DIR`: witnessctl.1, and witnessctl-<command>.1 for each
/// command (nested ones as witnessctl-members-add.1).
fn write_man_pages(dir: &std::path::Path) -> Result<String, CtlError> {
    fn render(
        cmd: &clap::Command,
        name: &str,
        dir: &std::path::Path,
        written: &mut Vec<String>,
    ) -> Result<(), CtlError> {
        let cmd = cmd.clone().name(name.to_string());
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone())
            .render(&mut page)
            .map_err(|e| CtlError::Usage(format!("rendering the man page of {name}: {e}")))?;
        let file = dir.join(format!("{name}.1"));
        std::fs::write(&file, page)
            .map_err(|e| CtlError::Usage(format!("cannot write {}: {e}", file.display())))?;
        written.push(file.display().to_string());
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            render(sub, &format!("{name}-{}", sub.get_name()), dir, written)?;
        }
        Ok(())
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| CtlError::Usage(format!("cannot create {}: {e}", dir.display())))?;
    let mut written = Vec::new();
    let mut cmd = Cli::command();
    cmd.build();
    render(&cmd, "witnessctl", dir, &mut written)?;
    Ok(format!(
        "wrote {} man pages:\n{}\n",
        written.len(),
        written.join("\n")
    ))
}

/// Read the cluster every `interval` and hand each change to `emit` until
/// `until` completes. The first reading must succeed; later failures are
/// reported as `unreachable` events and the watch goes on.
pub async fn watch(
    cli: &Cli,
    interval: Duration,
    mut emit: impl FnMut(&watch::Event),
    until: impl std::future::Future<Output = ()>,
) -> Result<(), CtlError> {
    let mut prev = read_cluster(cli).await?;
    for e in watch::changes(None, &prev) {
        emit(&e);
    }
    let mut lost: Option<String> = None;
    tokio::pin!(until);
    loop {
        tokio::select! {
            _ = &mut until => return Ok(()),
            _ = tokio::time::sleep(interval) => {}
        }
        match read_cluster(cli).await {
            Ok(next) => {
                if lost.take().is_some() {
                    emit(&watch::Event {
                        kind: "reachable",
                        text: "the cluster answers again".into(),
                        json: serde_json::json!({"reachable": true}),
                    });
                }
                for e in watch::changes(Some(&prev), &next) {
                    emit(&e);
                }
                prev = next;
            }
            Err(e) => {
                let text = e.to_string();
                if lost.as_deref() != Some(text.as_str()) {
                    emit(&watch::Event {
                        kind: "unreachable",
                        text: format!("cannot read the cluster: {text}"),
                        json: serde_json::json!({"reachable": false, "error": text}),
                    });
                    lost = Some(text);
                }
            }
        }
    }
}

/// One reading for `watch`: the newest history records, the directives of
/// the current epoch, and the leader's status — read in that order, so the
/// status is never older than the history beside it (an activation shows
/// in the verdict no later than its record).
pub async fn read_cluster(cli: &Cli) -> Result<watch::Reading, CtlError> {
    let history = call(cli, Retry::Read, |mut c| async move {
        c.history(HistoryRequest { limit: 50 }).await
    })
    .await?;
    let directives = call(cli, Retry::Read, |mut c| async move {
        c.list_directives(ListDirectivesRequest {
            include_past: false,
        })
        .await
    })
    .await?;
    let status = call(cli, Retry::Read, |mut c| async move {
        c.status(StatusRequest { local: false }).await
    })
    .await?;
    Ok(watch::Reading {
        status,
        directives,
        history: history.entries,
    })
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn members_change(json: bool, reply: &MembersReply) -> String {
    if json {
        pretty(&serde_json::json!({
            "message": reply.message, "members": members_json(&reply.members),
        }))
    } else {
        format!(
            "{}\n\n{}",
            reply.message,
            output::members_table(&reply.members)
        )
    }
}

fn pretty(v: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    s.push('\n');
    s
}

/// Who is operating, for the history record.
fn operator_name() -> String {
    std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".to_string())
}

/// Whether a request may be sent again to another endpoint after an
/// answer that may or may not have been acted on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Retry {
    /// A read: a transient failure (no leader, timeout, a connection torn
    /// down mid-call) moves on to the next endpoint.
    Read,
    /// A change: only a failure to connect moves on; once the request may
    /// have reached the cluster, its answer is final, so a change is never
    /// applied twice behind the operator's back.
    Write,
}

/// Metadata a witness that is no member yet puts on its refusal (the
/// server's `NOT_MEMBER_HEADER`).
const NOT_MEMBER_HEADER: &str = "x-witness-not-member";

/// Call `f` on the first endpoint that answers. Connection failures move on
/// to the next endpoint; so do transient failures of a [`Retry::Read`].
/// Otherwise an answer (even an error status) is final.
async fn call<T, F, Fut>(cli: &Cli, retry: Retry, f: F) -> Result<T, CtlError>
where
    F: Fn(AdminClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    if cli.endpoints.iter().all(|e| e.trim().is_empty()) {
        return Err(CtlError::Usage(
            "no endpoints: pass --endpoints host:port[,host:port…] or set WITNESS_ENDPOINTS".into(),
        ));
    }
    let trust = cli.trust()?;
    let mut failures = Vec::new();
    let mut unavailable = Vec::new();
    for endpoint in cli
        .endpoints
        .iter()
        .map(|e| e.trim())
        .filter(|e| !e.is_empty())
    {
        let uri = if endpoint.contains("://") {
            endpoint.to_string()
        } else {
            format!("http://{endpoint}")
        };
        let ep = Endpoint::from_shared(uri)
            .map_err(|e| CtlError::Usage(format!("bad endpoint {endpoint:?}: {e}")))?
            .connect_timeout(cli.timeout)
            .timeout(cli.timeout);
        let connect = witness_trust::conn::connect(ep, trust.clone(), Dial::AnyWitness);
        let channel = match tokio::time::timeout(cli.timeout, connect).await {
            Ok(Ok(ch)) => ch,
            Ok(Err(e)) => {
                failures.push(format!("{endpoint}: {}", source_chain(&e)));
                continue;
            }
            Err(_) => {
                failures.push(format!(
                    "{endpoint}: no connection within {:?}",
                    cli.timeout
                ));
                continue;
            }
        };
        let client = AdminClient::new(channel);
        let err = match tokio::time::timeout(cli.timeout, f(client)).await {
            Ok(Ok(resp)) => return Ok(resp.into_inner()),
            // A witness that is no member yet: the request reached no
            // cluster, so even a change may go to the next endpoint.
            Ok(Err(status)) if status.metadata().contains_key(NOT_MEMBER_HEADER) => {
                failures.push(format!("{endpoint}: {}", status.message()));
                continue;
            }
            Ok(Err(status)) => classify(endpoint, status),
            Err(_) => CtlError::Unavailable {
                endpoint: endpoint.to_string(),
                message: format!(
                    "no answer within {:?}; the cluster may have no quorum (try `witnessctl \
                     status --local` against each node)",
                    cli.timeout
                ),
            },
        };
        match err {
            CtlError::Unavailable { .. } if retry == Retry::Read => unavailable.push(err),
            err => return Err(err),
        }
    }
    match unavailable.len() {
        0 => Err(CtlError::Unreachable(format!(
            "{}. Is witness running there? Check --endpoints / WITNESS_ENDPOINTS",
            failures.join("; ")
        ))),
        1 if failures.is_empty() => Err(unavailable.remove(0)),
        _ => {
            let all: Vec<String> = unavailable
                .iter()
                .map(ToString::to_string)
                .chain(failures)
                .collect();
            Err(CtlError::Unavailable {
                endpoint: "every endpoint".to_string(),
                message: all.join("; "),
            })
        }
    }
}

impl Cli {
    /// The certificate to present, loaded and checked (`None` with
    /// `--insecure`). Any problem is a usage error that says what to fix.
    pub fn trust(&self) -> Result<Option<Arc<Trust>>, CtlError> {
        let given = [&self.ca, &self.cert, &self.key];
        if self.insecure {
            if given.iter().any(|p| p.is_some()) {
                return Err(CtlError::Usage(
                    "--insecure and a certificate (--ca/--cert/--key or WITNESS_CA/WITNESS_CERT/\
                     WITNESS_KEY) were both given; drop one"
                        .into(),
                ));
            }
            return Ok(None);
        }
        let (Some(ca), Some(cert), Some(key)) = (&self.ca, &self.cert, &self.key) else {
            return Err(CtlError::Usage(
                "witnessctl needs your certificate: pass --ca, --cert and --key (or set \
                 WITNESS_CA, WITNESS_CERT and WITNESS_KEY) with a viewer or operator certificate \
                 made by `witness certs`; only for witnesses running insecure = true, pass \
                 --insecure"
                    .into(),
            ));
        };
        Trust::load(
            TlsFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
                deny: None,
            },
            Expect::Admin,
        )
        .map(Some)
        .map_err(CtlError::Usage)
    }
}

/// The exit code of a command that prints as it goes (`watch`,
/// `status-page`), its error on stderr.
fn exit_code(result: Result<(), CtlError>) -> u8 {
    match result {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("error: {e}");
            e.code()
        }
    }
}

fn classify(endpoint: &str, status: tonic::Status) -> CtlError {
    use tonic::Code;
    let message = if status.message().is_empty() {
        format!("{:?}", status.code())
    } else {
        status.message().to_string()
    };
    let endpoint = endpoint.to_string();
    match status.code() {
        Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::AlreadyExists
        | Code::NotFound
        | Code::PermissionDenied
        | Code::Unimplemented => CtlError::Refused { endpoint, message },
        _ => CtlError::Unavailable { endpoint, message },
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Durations accept the documented units and reject anything else.
    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("fast").is_err());
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("5d").is_err());
    }

    /// Each gRPC status maps to the documented exit code.
    #[test]
    fn status_codes_map_to_exit_codes() {
        use tonic::{Code, Status};
        assert_eq!(
            classify("e", Status::new(Code::InvalidArgument, "x")).code(),
            exit::REFUSED
        );
        assert_eq!(
            classify("e", Status::new(Code::Unavailable, "x")).code(),
            exit::UNAVAILABLE
        );
        assert_eq!(
            classify("e", Status::new(Code::DeadlineExceeded, "x")).code(),
            exit::UNAVAILABLE
        );
    }
}
