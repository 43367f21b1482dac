//! `witness demo`: a whole Carbonio HA deployment in miniature on loopback,
//! to watch a failover happen.
//!
//! What runs, all on 127.0.0.1 (ports from `--port-base`, default 7410):
//!
//! ```text
//! witness w1 (dc-a)   gRPC base      HTTP base+1      child `witness run`
//! witness w2 (dc-b)   gRPC base+10   HTTP base+11     child `witness run`
//! witness w3 (dc-c)   gRPC base+20   HTTP base+21     child `witness run`
//! dc-a mailstore      TCP base+30    proxy base+31    in-process listeners
//! dc-b mailstore      TCP base+40    proxy base+41    in-process listeners
//! Consul              HTTP base+50                    in-process fake agent
//! agents mbox-a, proxy-a, mbox-b, proxy-b             child `witness agent`
//! ```
//!
//! The agents are the real `witness agent` with recording actions: their
//! hooks and the Carbonio CLI (`carbonio`, `zmprov`) are small shell scripts
//! that append what they were asked to do to `actions.log` (the mailstore's
//! `getAccountStatus` answers that every replica is caught up, so a failback
//! passes its pre-flight). Consul is the fake agent of [`crate::sim`],
//! holding the four service hosts; the policy's Consul mode is
//! `corroborate`, so a site is only declared down when Consul agrees.
//!
//! Control, one command per line on standard input: `fail dc-a` stops that
//! site's services and marks its Consul nodes failed, as when its servers
//! die (its agents keep running, so fencing is seen); `revive dc-a` brings
//! them back; `status`; `help`; `quit`. Ctrl-C (or SIGTERM, or `quit`)
//! stops every process and removes the temporary data dir; with
//! `--data-dir` the data is kept.
//!
//! The timeline printed is [`witnessctl::watch`]'s, plus each line of the
//! actions log as it is written.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncSeekExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::sim::consul::{AgentKind, FakeConsul, FakeState};

/// The mail sites and their hosts: (site, mailstore agent, proxy agent,
/// mail host name).
const SITES: [(&str, &str, &str, &str); 2] = [
    ("dc-a", "mbox-a", "proxy-a", "mbox1.dc-a.demo"),
    ("dc-b", "mbox-b", "proxy-b", "mbox2.dc-b.demo"),
];

/// `witness demo` options.
#[derive(Clone, Debug)]
pub struct DemoArgs {
    /// Keep everything here instead of a temporary directory.
    pub data_dir: Option<PathBuf>,
    /// First port; see the module docs for the layout.
    pub port_base: u16,
}

struct Ports {
    base: u16,
}

impl Ports {
    fn grpc(&self, witness: u16) -> u16 {
        self.base + (witness - 1) * 10
    }
    fn http(&self, witness: u16) -> u16 {
        self.grpc(witness) + 1
    }
    /// (mailstore, proxy) of site index 0 (dc-a) or 1 (dc-b).
    fn services(&self, site: usize) -> (u16, u16) {
        let p = self.base + 30 + site as u16 * 10;
        (p, p + 1)
    }
    fn consul(&self) -> u16 {
        self.base + 50
    }
    fn all(&self) -> Vec<u16> {
        let mut v: Vec<u16> = (1..=3).flat_map(|w| [self.grpc(w), self.http(w)]).collect();
        for s in 0..2 {
            let (m, p) = self.services(s);
            v.extend([m, p]);
        }
        v.push(self.consul());
        v
    }
}

/// Run the demo until Ctrl-C, SIGTERM or `quit`.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    if args.port_base == 0 || args.port_base > 65_000 {
        bail!("--port-base must be between 1 and 65000 (the demo uses 51 ports from it)");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(demo(args));
    // The stdin reader is a blocking thread that never returns while the
    // terminal stays open; do not wait for it.
    runtime.shutdown_background();
    result
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let ports = Ports {
        base: args.port_base,
    };
    // The data dir: a fresh temporary one, or the one given, which must be
    // empty so that nothing of the user's is overwritten.
    let temp;
    let dir = match &args.data_dir {
        Some(d) => {
            if d.exists()
                && fs::read_dir(d)
                    .with_context(|| format!("reading --data-dir {}", d.display()))?
                    .next()
                    .is_some()
            {
                bail!(
                    "--data-dir {} is not empty; give a new or empty directory (the demo writes \
                     configs, Raft data and logs there)",
                    d.display()
                );
            }
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.canonicalize()?
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("witness-demo-")
                .tempdir()
                .context("creating a temporary directory")?;
            temp.path().to_path_buf()
        }
    };
    for port in ports.all() {
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            bail!(
                "127.0.0.1:{port} is in use (an earlier demo or local cluster still running?); \
                 stop it, or pick other ports with --port-base"
            );
        }
    }
    let exe = std::env::current_exe().context("locating the witness binary")?;
    let lab = Lab::write(&dir, &ports)?;

    let consul = start_consul(&ports).await?;
    let mut services = Vec::new();
    for (i, _) in SITES.iter().enumerate() {
        services.push(SiteServices::start(&ports, i).await?);
        fs::write(lab.up_marker(i), "up\n")?;
    }

    let mut procs = Procs::default();
    let init = Command::new(&exe)
        .args(["init", "--config"])
        .arg(lab.witness_config(1))
        .arg("--policy")
        .arg(lab.policy())
        .output()
        .await
        .context("running witness init")?;
    if !init.status.success() {
        bail!(
            "witness init failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
    }
    for id in 1..=3u16 {
        procs.spawn(
            &exe,
            "run",
            &lab.witness_config(id),
            &dir,
            &format!("w{id}"),
        )?;
    }
    let ready = wait_ready(&lab, &ports, Duration::from_secs(30)).await;
    if let Err(e) = ready {
        procs.stop().await;
        bail!("{e}; see the logs in {}", dir.display());
    }
    for (_, mbox, proxy, _) in SITES {
        for agent in [mbox, proxy] {
            procs.spawn(&exe, "agent", &lab.agent_config(agent), &dir, agent)?;
        }
    }

    let endpoints: Vec<String> = (1..=3)
        .map(|w| format!("127.0.0.1:{}", ports.grpc(w)))
        .collect();
    print_banner(&lab, &ports, &endpoints, args.data_dir.is_some());

    let timeline = tokio::spawn(timeline(ctl_cli(
        &lab,
        &endpoints,
        witnessctl::Command::Watch {
            interval: TIMELINE_INTERVAL,
        },
    )));
    let actions = tokio::spawn(tail_actions(lab.actions_log()));

    // Installed once, before the loop: a signal that arrives while a
    // control command runs is kept for the next turn, not lost.
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    let mut check = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = check.tick() => {
                for (name, status, log) in procs.exited() {
                    say(&format!(
                        "ERROR: {name} exited ({status}); its last words: {}",
                        last_line(&log)
                    ));
                }
            }
            line = lines.next_line(), if stdin_open => match line {
                Ok(Some(line)) => {
                    if !control(line.trim(), &mut services, &consul, &lab, &ports, &endpoints).await {
                        break;
                    }
                }
                // No more commands (stdin closed): keep running until a signal.
                Ok(None) | Err(_) => stdin_open = false,
            },
        }
    }
    say("stopping: the agents, the witnesses, the sites and Consul…");
    for task in [timeline, actions] {
        // A reading of the cluster in flight is not worth waiting for.
        task.abort();
        let _ = task.await;
    }
    procs.stop().await;
    for s in services {
        s.stop();
    }
    consul.stop().await;
    if args.data_dir.is_some() {
        say(&format!(
            "stopped; data, configs and logs kept in {}",
            dir.display()
        ));
    } else {
        say("stopped; the temporary data dir is removed");
    }
    Ok(())
}

/// One control command; false to quit.
async fn control(
    line: &str,
    services: &mut [SiteServices],
    consul: &FakeConsul,
    lab: &Lab,
    ports: &Ports,
    endpoints: &[String],
) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    let site_index = |name: &str| SITES.iter().position(|(s, ..)| *s == name);
    match words.as_slice() {
        [] => {}
        ["quit" | "exit"] => return false,
        ["help"] => print_controls(),
        ["status"] => {
            let cli = ctl_cli(lab, endpoints, witnessctl::Command::Status { local: false });
            match witnessctl::execute(&cli).await {
                Ok(text) => println!("{text}"),
                Err(e) => say(&format!("status: {e}")),
            }
        }
        ["fail", site] => match site_index(site) {
            Some(i) => {
                services[i].stop();
                let _ = fs::remove_file(lab.up_marker(i));
                consul.update(|state| {
                    for node in consul_nodes(i) {
                        let _ = state.fail_node(&node);
                    }
                });
                say(&format!(
                    "{site} FAILED: its mailstore ({}) and proxy ({}) stop answering and Consul \
                     marks their nodes failed; its agents keep running",
                    ports.services(i).0,
                    ports.services(i).1
                ));
            }
            None => say(&format!(
                "no site {site:?}: the demo's sites are dc-a and dc-b"
            )),
        },
        ["revive", site] => match site_index(site) {
            Some(i) => {
                if let Err(e) = services[i].restart(ports, i).await {
                    say(&format!("reviving {site}: {e}"));
                    return true;
                }
                let _ = fs::write(lab.up_marker(i), "up\n");
                consul.update(|state| {
                    for node in consul_nodes(i) {
                        let _ = state.revive_node(&node);
                    }
                });
                say(&format!(
                    "{site} REVIVED: its services answer again and Consul sees them passing. \
                     Failback is manual: witnessctl failover --to {site} --reason \"back home\""
                ));
            }
            None => say(&format!(
                "no site {site:?}: the demo's sites are dc-a and dc-b"
            )),
        },
        _ => say(&format!("unknown command {line:?}; type `help`")),
    }
    true
}

/// The operator the demo's witnessctl calls act as.
const DEMO_OPERATOR: &str = "demo";

fn ctl_cli(lab: &Lab, endpoints: &[String], command: witnessctl::Command) -> witnessctl::Cli {
    let (ca, cert, key) = lab.tls_files(&format!("operator-{DEMO_OPERATOR}"));
    witnessctl::Cli {
        endpoints: endpoints.to_vec(),
        output: witnessctl::Output::Table,
        timeout: Duration::from_secs(3),
        ca: Some(ca),
        cert: Some(cert),
        key: Some(key),
        insecure: false,
        command,
    }
}

/// `witnessctl watch`'s events, printed as they come, until aborted.
/// How often the timeline reads the cluster.
const TIMELINE_INTERVAL: Duration = Duration::from_millis(250);

async fn timeline(cli: witnessctl::Cli) {
    let interval = TIMELINE_INTERVAL;
    let started = Instant::now();
    loop {
        let forever = std::future::pending::<()>();
        if let Err(e) = witnessctl::watch(&cli, interval, |e| say(&e.text), forever).await {
            // The first reading failed (the cluster is still starting);
            // try again shortly.
            if started.elapsed() > Duration::from_secs(30) {
                say(&format!("timeline: {e}"));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Print each new line of the actions log, until aborted.
async fn tail_actions(path: PathBuf) {
    let mut offset = 0u64;
    loop {
        if let Ok(mut file) = tokio::fs::File::open(&path).await
            && file.seek(std::io::SeekFrom::Start(offset)).await.is_ok()
        {
            let mut reader = BufReader::new(file);
            let mut line = String::new();
            while let Ok(n) = reader.read_line(&mut line).await {
                if n == 0 || !line.ends_with('\n') {
                    break;
                }
                offset += n as u64;
                say(&format!("action: {}", line.trim_end()));
                line.clear();
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The last non-empty line of a log file.
fn last_line(log: &Path) -> String {
    fs::read_to_string(log)
        .ok()
        .and_then(|t| {
            t.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_string)
        })
        .unwrap_or_else(|| format!("(nothing in {})", log.display()))
}

/// A timestamped line of the timeline.
fn say(text: &str) {
    let ms = crate::clock::unix_ms();
    let secs = ms / 1000;
    println!(
        "{:02}:{:02}:{:02}.{:03}  {text}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60,
        ms % 1000
    );
}

fn print_banner(lab: &Lab, ports: &Ports, endpoints: &[String], kept: bool) {
    let dir = &lab.dir;
    println!();
    println!("Witness demo: three witnesses, two mail sites with agents, and Consul, on 127.0.0.1");
    println!();
    for (id, site) in [(1u16, "dc-a"), (2, "dc-b"), (3, "dc-c")] {
        println!(
            "  witness w{id} ({site})  gRPC 127.0.0.1:{}  HTTP https://127.0.0.1:{}/  (/metrics, /readyz)",
            ports.grpc(id),
            ports.http(id)
        );
    }
    for (i, (site, mbox, proxy, _)) in SITES.iter().enumerate() {
        let (m, p) = ports.services(i);
        println!(
            "  site {site}: mailstore 127.0.0.1:{m}, proxy 127.0.0.1:{p}; agents {mbox}, {proxy}"
        );
    }
    println!(
        "  Consul (fake agent)  http://127.0.0.1:{}/v1/",
        ports.consul()
    );
    println!(
        "  data, configs, logs and actions.log: {}{}",
        dir.display(),
        if kept { "" } else { " (removed on exit)" }
    );
    println!();
    let (ca, cert, key) = lab.tls_files(&format!("operator-{DEMO_OPERATOR}"));
    println!(
        "Every port takes mutual TLS; the demo's CA and certificates are in {}.",
        lab.tls_dir().display()
    );
    println!("In another terminal:");
    println!("  export WITNESS_ENDPOINTS={}", endpoints.join(","));
    println!(
        "  export WITNESS_CA={} WITNESS_CERT={} WITNESS_KEY={}",
        ca.display(),
        cert.display(),
        key.display()
    );
    println!(
        "  witnessctl status          # who leads, which site is active, what each witness sees"
    );
    println!("  witnessctl watch           # the same changes this timeline shows");
    println!("  witnessctl history         # every decision, with its evidence");
    println!("  witnessctl directives list # the failover's promotion and its progress");
    println!(
        "  witnessctl freeze --reason \"maintenance\"   /   witnessctl unfreeze --reason \"done\""
    );
    println!(
        "  curl --cacert $WITNESS_CA --cert $WITNESS_CERT --key $WITNESS_KEY https://127.0.0.1:{}/status.json",
        ports.http(1)
    );
    println!(
        "(witnessctl is target/release/witnessctl after `cargo build --release -p witnessctl`)"
    );
    println!();
    print_controls();
    println!();
}

fn print_controls() {
    println!("Type here (then Enter):");
    println!(
        "  fail dc-a     dc-a's servers die: watch the witnesses agree, fence dc-a, activate dc-b"
    );
    println!("  revive dc-a   dc-a's servers come back (failback is manual: witnessctl failover)");
    println!("  status        witnessctl status");
    println!("  quit          stop everything (so does Ctrl-C)");
}

/// Wait until every witness answers `/readyz` with 200.
async fn wait_ready(lab: &Lab, ports: &Ports, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    // The HTTP port takes mutual TLS too: read it as the demo's viewer.
    let (ca, cert, key) = lab.tls_files("viewer-oncall");
    let mut identity = fs::read(&cert)?;
    identity.extend(fs::read(&key)?);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .add_root_certificate(reqwest::Certificate::from_pem(&fs::read(&ca)?)?)
        .identity(reqwest::Identity::from_pem(&identity)?)
        .build()?;
    loop {
        let mut ready = 0;
        for id in 1..=3 {
            let url = format!("https://127.0.0.1:{}/readyz", ports.http(id));
            if let Ok(r) = client.get(&url).send().await
                && r.status().is_success()
            {
                ready += 1;
            }
        }
        if ready == 3 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the witnesses were not ready within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The child processes, each in its own process group so that a Ctrl-C in
/// the terminal reaches only the demo, which then stops them in order.
#[derive(Default)]
struct Procs {
    children: Vec<(String, Child, PathBuf)>,
}

impl Procs {
    /// `witness <kind> --config <config>` (`run` or `agent`), logging to
    /// `<dir>/<name>.log`.
    fn spawn(
        &mut self,
        exe: &Path,
        kind: &str,
        config: &Path,
        dir: &Path,
        name: &str,
    ) -> anyhow::Result<()> {
        let log = dir.join(format!("{name}.log"));
        let out = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut command = Command::new(exe);
        command
            .arg(kind)
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(true);
        // If the demo itself is killed (SIGKILL runs no cleanup), the kernel
        // kills its children too, so no witness or agent outlives it. The
        // children are spawned from the main thread, which lives as long as
        // the demo does.
        // SAFETY: prctl(2) is async-signal-safe and touches no memory of the
        // parent; it runs in the child between fork and exec.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let label = match kind {
            "run" => format!("witness {name}"),
            _ => format!("{kind} {name}"),
        };
        let child = command
            .spawn()
            .with_context(|| format!("starting {label}"))?;
        self.children.push((label, child, log));
        Ok(())
    }

    /// The children that exited since the last call: name, status, log.
    fn exited(&mut self) -> Vec<(String, std::process::ExitStatus, PathBuf)> {
        let mut out = Vec::new();
        self.children
            .retain_mut(|(name, child, log)| match child.try_wait() {
                Ok(Some(status)) => {
                    out.push((name.clone(), status, log.clone()));
                    false
                }
                _ => true,
            });
        out
    }

    /// SIGTERM to each, newest first (the agents before the witnesses);
    /// SIGKILL to what is left after 10 s.
    async fn stop(&mut self) {
        for (_, child, _) in self.children.iter().rev() {
            if let Some(pid) = child.id() {
                // SAFETY: kill(2) on a child we spawned and have not reaped.
                #[allow(unsafe_code)]
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGTERM);
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (name, child, _) in self.children.iter_mut().rev() {
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, child.wait()).await.is_err() {
                say(&format!("{name} did not stop within 10 s; killing it"));
                let _ = child.kill().await;
            }
        }
        self.children.clear();
    }
}

/// A site's two services: TCP listeners that accept and close.
struct SiteServices {
    tasks: Vec<JoinHandle<()>>,
}

impl SiteServices {
    async fn start(ports: &Ports, site: usize) -> anyhow::Result<SiteServices> {
        let (m, p) = ports.services(site);
        let mut tasks = Vec::new();
        for port in [m, p] {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr}"))?;
            tasks.push(tokio::spawn(async move {
                while let Ok((conn, _)) = listener.accept().await {
                    drop(conn);
                }
            }));
        }
        Ok(SiteServices { tasks })
    }

    fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }

    async fn restart(&mut self, ports: &Ports, site: usize) -> anyhow::Result<()> {
        self.stop();
        // An aborted task releases its listener once it has been dropped.
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        *self = SiteServices::start(ports, site).await?;
        Ok(())
    }
}

/// Consul node names of site `i`'s mailstore and proxy.
fn consul_nodes(i: usize) -> [String; 2] {
    let (_, mbox, proxy, _) = SITES[i];
    [format!("agent-{mbox}"), format!("agent-{proxy}")]
}

async fn start_consul(ports: &Ports) -> anyhow::Result<FakeConsul> {
    let mut state = FakeState::default();
    state.add_node("server-svc3", "127.0.0.1", AgentKind::Server);
    let _ = state.add_service("server-svc3", "consul", 8300, None);
    state.set_leader(Some("127.0.0.1:8300".into()));
    for (i, _) in SITES.iter().enumerate() {
        let (m, p) = ports.services(i);
        let [mbox, proxy] = consul_nodes(i);
        state.add_node(&mbox, "127.0.0.1", AgentKind::Client);
        let _ = state.add_service(&mbox, "carbonio-mailbox", m, Some("tcp"));
        state.add_node(&proxy, "127.0.0.1", AgentKind::Client);
        let _ = state.add_service(&proxy, "carbonio-proxy", p, Some("tcp"));
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], ports.consul()));
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr} for Consul"))?;
    Ok(FakeConsul::start(listener, state)?)
}

/// The files of one demo: configs, policy, scripts and logs.
struct Lab {
    dir: PathBuf,
}

impl Lab {
    fn write(dir: &Path, ports: &Ports) -> anyhow::Result<Lab> {
        let lab = Lab {
            dir: dir.to_path_buf(),
        };
        fs::write(lab.policy(), policy_toml(ports)).context("writing the policy")?;
        lab.issue_certificates().map_err(|e| anyhow::anyhow!(e))?;
        let peers: String = (1..=3u16)
            .map(|id| {
                format!(
                    "[[peer]]\nid = {id}\nname = \"w{id}\"\naddr = \"127.0.0.1:{}\"\nsite = \"dc-{}\"\n\n",
                    ports.grpc(id),
                    ["a", "b", "c"][usize::from(id) - 1]
                )
            })
            .collect();
        for id in 1..=3u16 {
            let site = ["dc-a", "dc-b", "dc-c"][usize::from(id) - 1];
            let toml = format!(
                "[node]\nid = {id}\nname = \"w{id}\"\nsite = \"{site}\"\ncluster = \"demo\"\n\
                 listen = \"127.0.0.1:{}\"\nhttp_listen = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\n\n\
                 {peers}[consul]\naddress = \"127.0.0.1:{}\"\ntimeout = \"1s\"\n\n{}",
                ports.grpc(id),
                ports.http(id),
                dir.join(format!("w{id}")).display(),
                ports.consul(),
                lab.tls_table(&format!("peer-{id}")),
            );
            fs::write(lab.witness_config(id), toml)?;
        }
        let witnesses: Vec<String> = (1..=3)
            .map(|w| format!("\"127.0.0.1:{}\"", ports.grpc(w)))
            .collect();
        for (i, (site, mbox, proxy, mail_host)) in SITES.iter().enumerate() {
            // The Carbonio CLI of this mailstore: records every call; its
            // getAccountStatus says every replica on this host is caught up.
            for tool in ["carbonio", "zmprov"] {
                let script = lab.dir.join(format!("{tool}-{mbox}"));
                fs::write(
                    &script,
                    carbonio_script(&lab.actions_log(), mbox, mail_host),
                )?;
                fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;
            }
            for (agent, role) in [(*mbox, "mailstore"), (*proxy, "proxy")] {
                let hook = format!(
                    "{{ argv = [\"/bin/sh\", \"-c\", \"echo \\\"$WITNESS_AGENT ran its $WITNESS_HOOK \
                     hook at epoch $WITNESS_EPOCH\\\" >> {}\"], timeout = \"500ms\" }}",
                    lab.actions_log().display()
                );
                let carbonio = if role == "mailstore" {
                    format!(
                        "\n[carbonio]\ncarbonio = \"{}\"\nzmprov = \"{}\"\nuser = \"root\"\n\
                         mail_host = \"{mail_host}\"\n",
                        lab.dir.join(format!("carbonio-{mbox}")).display(),
                        lab.dir.join(format!("zmprov-{mbox}")).display(),
                    )
                } else {
                    String::new()
                };
                let toml = format!(
                    "[agent]\nname = \"{agent}\"\nsite = \"{site}\"\nrole = \"{role}\"\n\
                     witnesses = [{}]\nfence_timeout = \"1s\"\nstate_log = \"{}\"\n\
                     health_check = {{ argv = [\"/bin/sh\", \"-c\", \"test -e {}\"], timeout = \"1s\" }}\n\n\
                     [hooks]\nactivate = [{hook}]\ndeactivate = [{hook}]\nfence = [{hook}]\n\
                     unfence = [{hook}]\n\n[watchdog]\nmode = \"off\"\n{carbonio}\n{}",
                    witnesses.join(", "),
                    lab.dir.join(format!("{agent}-state.jsonl")).display(),
                    lab.up_marker(i).display(),
                    lab.tls_table(&format!("agent-{site}-{agent}")),
                );
                fs::write(lab.agent_config(agent), toml)?;
            }
        }
        Ok(lab)
    }

    /// The demo's own CA and every certificate it needs, as `witness certs`
    /// makes them: a peer certificate per witness, one per agent, and an
    /// operator (`demo`) and a viewer (`oncall`) for witnessctl.
    fn issue_certificates(&self) -> Result<(), String> {
        use crate::trust::{Principal, certs};
        let tls = self.tls_dir();
        let now = crate::trust::unix_now();
        certs::init_ca(&tls, "demo", 30, false, now)?;
        let mut principals: Vec<Principal> = (1..=3).map(|id| Principal::Peer { id }).collect();
        for (site, mbox, proxy, _) in SITES {
            for name in [mbox, proxy] {
                principals.push(Principal::Agent {
                    site: site.to_string(),
                    name: name.to_string(),
                });
            }
        }
        principals.push(Principal::Operator {
            name: DEMO_OPERATOR.into(),
        });
        principals.push(Principal::Viewer {
            name: "oncall".into(),
        });
        for principal in principals {
            certs::issue_into(&tls, &tls, principal, &["127.0.0.1".into()], 30, false, now)?;
        }
        Ok(())
    }

    fn tls_dir(&self) -> PathBuf {
        self.dir.join("tls")
    }

    /// `(ca, cert, key)` of a certificate `witness certs` wrote as `stem`.
    fn tls_files(&self, stem: &str) -> (PathBuf, PathBuf, PathBuf) {
        let tls = self.tls_dir();
        (
            tls.join(crate::trust::certs::CA_CERT),
            tls.join(format!("{stem}.pem")),
            tls.join(format!("{stem}.key")),
        )
    }

    /// The `[tls]` table of a node or agent file.
    fn tls_table(&self, stem: &str) -> String {
        let (ca, cert, key) = self.tls_files(stem);
        format!(
            "[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            ca.display(),
            cert.display(),
            key.display()
        )
    }

    fn policy(&self) -> PathBuf {
        self.dir.join("cluster.toml")
    }
    fn witness_config(&self, id: u16) -> PathBuf {
        self.dir.join(format!("witness-{id}.toml"))
    }
    fn agent_config(&self, agent: &str) -> PathBuf {
        self.dir.join(format!("{agent}.toml"))
    }
    fn actions_log(&self) -> PathBuf {
        self.dir.join("actions.log")
    }
    /// Present while site `i`'s services are up: the agents' health check.
    fn up_marker(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.up", SITES[i].0))
    }
}

/// The demo's cluster policy: the documented defaults, except a short
/// `min_failover_interval` so that a site can be failed again soon.
fn policy_toml(ports: &Ports) -> String {
    let mut s = String::from(
        "# The witness demo's cluster policy.\n\
         [lease]\nrenew_interval = \"400ms\"\nlease_ttl = \"3s\"\nmax_drift = \"1%\"\nmargin = \"1s\"\n\n\
         [probe]\ninterval = \"500ms\"\ntimeout = \"400ms\"\nfail_after = 3\nrecover_after = 2\n\n\
         [consul]\nmode = \"corroborate\"\n\n\
         [failover]\nobservation_ttl = \"6s\"\nmin_failover_interval = \"30s\"\nfailback = \"manual\"\n\
         preferred_leader = \"dc-c\"\n",
    );
    for (i, (site, mbox, proxy, mail_host)) in SITES.iter().enumerate() {
        let (m, p) = ports.services(i);
        s.push_str(&format!(
            "\n[[site]]\nname = \"{site}\"\nactive = {}\ndown_rule = \"all\"\n\
             mail_hosts = [\"{mail_host}\"]\n\n\
             [[site.target]]\nname = \"mailstore\"\nrole = \"mailstore\"\nkind = \"tcp\"\n\
             address = \"127.0.0.1:{m}\"\nconsul_service = \"carbonio-mailbox\"\n\
             consul_node = \"agent-{mbox}\"\n\n\
             [[site.target]]\nname = \"proxy\"\nrole = \"proxy\"\nkind = \"tcp\"\n\
             address = \"127.0.0.1:{p}\"\nconsul_service = \"carbonio-proxy\"\n\
             consul_node = \"agent-{proxy}\"\n",
            i == 0
        ));
    }
    s
}

/// A recording stand-in for `carbonio` and `zmprov`.
fn carbonio_script(log: &Path, agent: &str, mail_host: &str) -> String {
    let account = |name: &str| {
        format!(
            "{{\"accountId\":\"{name}\",\"accountName\":\"{name}@demo\",\
             \"accountMailHost\":\"other\",\"paused\":false,\"mailboxId\":1,\"sequence\":10,\
             \"itemId\":5,\"replicas\":[{{\"accountId\":\"{name}\",\"itemId\":5,\"sequence\":10,\
             \"mailboxId\":2,\"destination\":\"{mail_host}\",\"available\":true,\"priority\":10,\
             \"canConnectToKafka\":true}}]}}"
        )
    };
    format!(
        "#!/bin/sh\n\
         # The demo's stand-in for the Carbonio CLI on {agent}: it records the call.\n\
         echo \"{agent} ran: $(basename \"$0\" | sed 's/-.*//') $* (epoch ${{WITNESS_EPOCH:-none}})\" >> {log}\n\
         case \"$*\" in\n\
           *getAccountStatus*) echo '{{\"response\":{{\"values\":[{},{}]}}}}' ;;\n\
           *) echo '{{\"response\":{{\"result\":\"ok\"}}}}' ;;\n\
         esac\n",
        account("alice"),
        account("bob"),
        log = log.display(),
    )
}
