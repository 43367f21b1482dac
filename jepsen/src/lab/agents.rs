//! Real `witness agent` processes for end-to-end tests.
//!
//! An [`AgentLab`] is a temp dir with the fake Carbonio CLI under both of
//! its names (`carbonio`, `zmprov`), a call log it appends to, and a hook
//! log every agent's hooks append to (`<hook> <epoch> <agent>
//! <realtime_ns>`, one line per run). Each [`AgentProc`] is one agent with
//! its own config, stderr log and serving-state log; it is killed (and its
//! process reaped) on drop, also when a test fails, and its log tail is
//! printed then.

use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::witness_bin;

/// `CLOCK_BOOTTIME` in milliseconds: the clock of the agents' state logs
/// and of the fake Carbonio's `boottime_ns`, shared by every process here.
pub fn boottime_ms() -> u64 {
    witness::agent::clock::boottime().as_millis() as u64
}

/// Realtime nanoseconds (the hook log's and the fake CLI's `realtime_ns`).
pub fn realtime_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Send `sig` (a signal number, e.g. `libc::SIGSTOP`) to `pid` (negative:
/// a process group). Errors are ignored: the target may have exited.
pub fn signal(pid: i64, sig: std::ffi::c_int) {
    if let Ok(sig) = nix::sys::signal::Signal::try_from(sig) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
    }
}

/// The process group of `pid` (a command the agent ran leads its own
/// group; the fake CLI runs under `runuser`, which leads it).
pub fn pgid_of(pid: u64) -> i64 {
    let pgid = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid as i32)))
        .unwrap_or_else(|e| panic!("process {pid} has no process group (it exited): {e}"));
    i64::from(pgid.as_raw())
}

/// One agent to start.
#[derive(Clone, Debug)]
pub struct AgentSpec {
    pub name: String,
    pub site: String,
    pub role: String,
    /// Extra environment for the agent (and so for its commands), e.g.
    /// `FAKE_CARBONIO_SLEEP_MS`.
    pub env: Vec<(String, String)>,
    /// A watchdog device (`mode = "required"`, 1 s timeout), e.g. a
    /// [`FakeWatchdog`]'s FIFO; `None`: `mode = "off"`.
    pub watchdog: Option<PathBuf>,
    /// A health check that passes while this file exists; `None`: no
    /// health check (the agent reports its service unhealthy).
    pub health_file: Option<PathBuf>,
    /// A proxy's `witness bgp` config: its hooks then also announce
    /// (`activate`, `unfence`) and withdraw (`fence` first, `deactivate`)
    /// the VIP, as `deploy/examples/agent-proxy.toml` does.
    pub bgp_config: Option<PathBuf>,
    /// `agent.fence_timeout` (default 1 s, the policy's margin).
    pub fence_timeout: String,
    /// A file standing for "the fenced services may serve": `activate` and
    /// `unfence` create it, `fence` (first) and `deactivate` remove it, as
    /// systemd units bound to the agent would start and stop (the runner's
    /// fenced services answer only while it exists).
    pub serve_flag: Option<PathBuf>,
    /// `[[command]]`s of its file: (name, argv), each with a 10 s timeout.
    pub commands: Vec<(String, Vec<String>)>,
}

impl AgentSpec {
    pub fn new(name: &str, site: &str, role: &str) -> AgentSpec {
        AgentSpec {
            name: name.into(),
            site: site.into(),
            role: role.into(),
            env: Vec::new(),
            watchdog: None,
            health_file: None,
            bgp_config: None,
            fence_timeout: "1s".into(),
            serve_flag: None,
            commands: Vec::new(),
        }
    }

    /// Define `[[command]] name` running `argv` in the agent's file.
    pub fn command(mut self, name: &str, argv: &[&str]) -> AgentSpec {
        self.commands
            .push((name.into(), argv.iter().map(|a| a.to_string()).collect()));
        self
    }

    pub fn serve_flag(mut self, file: &Path) -> AgentSpec {
        self.serve_flag = Some(file.to_path_buf());
        self
    }

    pub fn fence_timeout(mut self, timeout: &str) -> AgentSpec {
        self.fence_timeout = timeout.into();
        self
    }

    pub fn bgp(mut self, config: &Path) -> AgentSpec {
        self.bgp_config = Some(config.to_path_buf());
        self
    }

    pub fn health_file(mut self, file: &Path) -> AgentSpec {
        self.health_file = Some(file.to_path_buf());
        self
    }

    pub fn watchdog(mut self, device: &Path) -> AgentSpec {
        self.watchdog = Some(device.to_path_buf());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> AgentSpec {
        self.env.push((key.into(), value.into()));
        self
    }
}

/// One line of the hook log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookRun {
    pub hook: String,
    pub epoch: u64,
    pub agent: String,
    pub realtime_ns: u128,
}

/// The shared files of a test's agents.
pub struct AgentLab {
    pub dir: tempfile::TempDir,
    /// The cluster whose CA issues the agents' certificates.
    pub cluster: String,
}

impl AgentLab {
    /// `fake_carbonio` is the path of the fake CLI binary
    /// (`env!("CARGO_BIN_EXE_fake_carbonio")` in a test).
    pub fn new(fake_carbonio: &str) -> AgentLab {
        let dir = tempfile::tempdir().expect("temp dir");
        for name in ["carbonio", "zmprov"] {
            std::os::unix::fs::symlink(fake_carbonio, dir.path().join(name))
                .expect("symlink the fake Carbonio CLI");
        }
        AgentLab {
            dir,
            cluster: "e2e".into(),
        }
    }

    /// The agents talk to witnesses of `cluster` (default `e2e`, the
    /// loopback clusters; the namespace labs are
    /// [`super::netcluster::CLUSTER`]).
    pub fn in_cluster(mut self, cluster: &str) -> AgentLab {
        self.cluster = cluster.to_string();
        self
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn hook_log(&self) -> PathBuf {
        self.path("hooks.log")
    }

    pub fn carbonio_log(&self) -> PathBuf {
        self.path("carbonio.jsonl")
    }

    /// The agent file of `spec`: every hook appends to the hook log; the
    /// Carbonio CLI is the fake one, run as root (the tests run as root,
    /// so the agent switches users with the real runuser); a watchdog and a
    /// health check only as `spec` asks.
    pub fn config(&self, spec: &AgentSpec, witnesses: &[String]) -> String {
        let hook = |timeout: &str| {
            format!(
                "{{ argv = [\"/bin/sh\", \"-c\", \"echo $WITNESS_HOOK $WITNESS_EPOCH \
                 $WITNESS_AGENT $(date +%s%N) >> {}\"], timeout = \"{timeout}\" }}",
                self.hook_log().display()
            )
        };
        // The BGP commands of a proxy, if it has them.
        let bgp = |args: &str, timeout: &str| {
            spec.bgp_config.as_ref().map(|config| {
                format!(
                    "{{ argv = [{:?}, \"bgp\", {args}, \"--config\", {:?}], timeout = \"{timeout}\" }}",
                    witness_bin().display().to_string(),
                    config.display().to_string()
                )
            })
        };
        let announce = bgp("\"announce\"", "6s");
        let withdraw = bgp("\"withdraw\"", "6s");
        // The fence must finish within fence_timeout (1 s) with the record.
        let withdraw_now = bgp("\"withdraw\", \"--timeout\", \"350ms\"", "400ms");
        // Hooks run argv with no PATH search: through the shell, as the
        // hook log's command does.
        let flag = |cmd: &str, timeout: &str| {
            spec.serve_flag.as_ref().map(|f| {
                format!(
                    "{{ argv = [\"/bin/sh\", \"-c\", \"exec {cmd} -f {}\"], timeout = \"{timeout}\" }}",
                    f.display()
                )
            })
        };
        let hooks =
            |list: [Option<String>; 3]| list.into_iter().flatten().collect::<Vec<_>>().join(", ");
        let witnesses: Vec<String> = witnesses.iter().map(|w| format!("{w:?}")).collect();
        let mut s = format!(
            "[agent]\nname = \"{}\"\nsite = \"{}\"\nrole = \"{}\"\nwitnesses = [{}]\n\
             fence_timeout = \"{}\"\nstate_log = \"{}\"\n{}\n\
             [hooks]\nactivate = [{}]\ndeactivate = [{}]\nfence = [{}]\nunfence = [{}]\n\n\
             [watchdog]\n{}\n",
            spec.name,
            spec.site,
            spec.role,
            witnesses.join(", "),
            spec.fence_timeout,
            self.state_log(&spec.name).display(),
            match &spec.health_file {
                Some(file) => format!(
                    "health_check = {{ argv = [\"/bin/sh\", \"-c\", \"test -e {}\"], \
                     timeout = \"1s\" }}",
                    file.display()
                ),
                None => String::new(),
            },
            hooks([Some(hook("5s")), flag("touch", "1s"), announce.clone()]),
            hooks([flag("rm", "1s"), withdraw, Some(hook("5s"))]),
            // Within fence_timeout in all: 100 + 400 + 500 ms (400 ms for
            // the hook log when there is a flag).
            hooks([
                flag("rm", "100ms"),
                withdraw_now,
                Some(hook(if spec.serve_flag.is_some() {
                    "400ms"
                } else {
                    "500ms"
                })),
            ]),
            hooks([Some(hook("5s")), flag("touch", "1s"), announce]),
            match &spec.watchdog {
                Some(device) => format!(
                    "mode = \"required\"\ndevice = \"{}\"\ntimeout = \"1s\"",
                    device.display()
                ),
                None => "mode = \"off\"".to_string(),
            },
        );
        for (name, argv) in &spec.commands {
            s.push_str(&format!(
                "\n[[command]]\nname = {name:?}\nargv = {argv:?}\ntimeout = \"10s\"\n"
            ));
        }
        s.push_str(&super::pki::Pki::table(
            &super::pki::Pki::shared(&self.cluster).agent(&spec.site, &spec.name),
        ));
        if spec.role == "mailstore" {
            s.push_str(&format!(
                "\n[carbonio]\ncarbonio = \"{}\"\nzmprov = \"{}\"\nuser = \"root\"\n\
                 mail_host = \"mbox.{}.test\"\n",
                self.path("carbonio").display(),
                self.path("zmprov").display(),
                spec.site
            ));
        }
        s
    }

    pub fn state_log(&self, agent: &str) -> PathBuf {
        self.path(&format!("{agent}.state.jsonl"))
    }

    /// Write `spec`'s config and start `witness agent` on it.
    pub fn start(&self, spec: &AgentSpec, witnesses: &[String]) -> AgentProc {
        self.start_via(spec, witnesses, |argv| {
            let mut cmd = Command::new(&argv[0]);
            cmd.args(&argv[1..]);
            cmd
        })
    }

    /// As [`start`](Self::start), with the command line turned into a
    /// command by `make` (e.g. `ip netns exec HOST …`, so that the agent runs
    /// on a host of a [`NetCluster`](super::netcluster::NetCluster)). The
    /// command must exec the agent in place, so its pid is the agent's.
    pub fn start_via(
        &self,
        spec: &AgentSpec,
        witnesses: &[String],
        make: impl FnOnce(&[OsString]) -> Command,
    ) -> AgentProc {
        let config = self.path(&format!("{}.toml", spec.name));
        fs::write(&config, self.config(spec, witnesses)).expect("write agent config");
        let log_path = self.path(&format!("{}.log", spec.name));
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open agent log");
        let argv: Vec<OsString> = vec![
            witness_bin().into_os_string(),
            "agent".into(),
            "--config".into(),
            config.into_os_string(),
        ];
        let mut cmd = make(&argv);
        cmd.env("WITNESS_LOG", "info")
            .env("FAKE_CARBONIO_LOG", self.carbonio_log())
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        let child = cmd.spawn().expect("spawn witness agent");
        AgentProc {
            name: spec.name.clone(),
            log_path,
            state_log: self.state_log(&spec.name),
            child: Some(child),
        }
    }

    /// Every hook run so far.
    pub fn hook_runs(&self) -> Vec<HookRun> {
        fs::read_to_string(self.hook_log())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                Some(HookRun {
                    hook: w.next()?.to_string(),
                    epoch: w.next()?.parse().ok()?,
                    agent: w.next()?.to_string(),
                    realtime_ns: w.next()?.parse().ok()?,
                })
            })
            .collect()
    }

    /// The runs of `hook` by `agent`.
    pub fn runs_of(&self, hook: &str, agent: &str) -> Vec<HookRun> {
        self.hook_runs()
            .into_iter()
            .filter(|r| r.hook == hook && r.agent == agent)
            .collect()
    }

    /// Every line the fake Carbonio CLI logged.
    pub fn carbonio_calls(&self) -> Vec<Value> {
        fs::read_to_string(self.carbonio_log())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The `start` lines of calls whose argv contains `word`.
    pub fn carbonio_starts(&self, word: &str) -> Vec<Value> {
        self.carbonio_calls()
            .into_iter()
            .filter(|c| c["event"] == "start" && argv_has(c, word))
            .collect()
    }

    /// The `end` line of the call with `pid`, if it finished.
    pub fn carbonio_end(&self, pid: u64) -> Option<Value> {
        self.carbonio_calls()
            .into_iter()
            .find(|c| c["event"] == "end" && c["pid"] == pid)
    }
}

fn argv_has(call: &Value, word: &str) -> bool {
    call["argv"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x == word))
}

/// A number carried as a decimal string (the fake CLI's clocks).
pub fn ns(v: &Value) -> u128 {
    v.as_str().and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// What a [`FakeWatchdog`] saw, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchdogEvent {
    /// The agent opened the device (armed it).
    Open,
    /// A byte other than `V`: a pet.
    Pet,
    /// The magic close byte `V`: a deliberate disarm follows.
    MagicClose,
    /// The agent closed the device (or died).
    Closed,
}

/// A FIFO standing in for `/dev/watchdog`: a thread reads it and records
/// every open, pet, magic close and close with its `CLOCK_BOOTTIME` ms.
/// It reopens after each close, so the agent can arm it again.
pub struct FakeWatchdog {
    path: PathBuf,
    events: Arc<Mutex<Vec<(u64, WatchdogEvent)>>>,
    stop: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl FakeWatchdog {
    pub fn new(path: &Path) -> FakeWatchdog {
        let made = Command::new("mkfifo")
            .arg(path)
            .status()
            .expect("run mkfifo");
        assert!(made.success(), "mkfifo {}", path.display());
        let events: Arc<Mutex<Vec<(u64, WatchdogEvent)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (path, events, stop) = (path.to_path_buf(), events.clone(), stop.clone());
            std::thread::spawn(move || {
                let record = |e| {
                    events
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((boottime_ms(), e))
                };
                while !stop.load(Ordering::SeqCst) {
                    // Blocks until a writer opens the FIFO.
                    let Ok(mut fifo) = fs::File::open(&path) else {
                        return;
                    };
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    record(WatchdogEvent::Open);
                    let mut buf = [0u8; 64];
                    loop {
                        match fifo.read(&mut buf) {
                            Ok(0) | Err(_) => {
                                record(WatchdogEvent::Closed);
                                break;
                            }
                            Ok(n) => {
                                for b in &buf[..n] {
                                    record(if *b == b'V' {
                                        WatchdogEvent::MagicClose
                                    } else {
                                        WatchdogEvent::Pet
                                    });
                                }
                            }
                        }
                    }
                }
            })
        };
        FakeWatchdog {
            path: path.to_path_buf(),
            events,
            stop,
            reader: Some(reader),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Everything seen so far.
    pub fn events(&self) -> Vec<(u64, WatchdogEvent)> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for FakeWatchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let Some(reader) = self.reader.take() else {
            return;
        };
        // Wake a reader blocked in open(): a non-blocking writer open
        // succeeds exactly when a reader is waiting. Bounded: a reader still
        // held by a live writer is left behind rather than hang the test.
        for _ in 0..100 {
            if reader.is_finished() {
                let _ = reader.join();
                return;
            }
            let _ = fs::OpenOptions::new()
                .write(true)
                .custom_flags(nix::libc::O_NONBLOCK)
                .open(&self.path);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One running `witness agent`.
pub struct AgentProc {
    pub name: String,
    pub log_path: PathBuf,
    pub state_log: PathBuf,
    child: Option<Child>,
}

impl AgentProc {
    pub fn pid(&self) -> i64 {
        self.child.as_ref().map_or(0, |c| i64::from(c.id()))
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP / SIGCONT.
    pub fn pause(&self) {
        signal(self.pid(), nix::libc::SIGSTOP);
    }

    pub fn resume(&self) {
        signal(self.pid(), nix::libc::SIGCONT);
    }

    /// SIGTERM; whether it exited with success within `within`.
    pub fn terminate(&mut self, within: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        signal(i64::from(child.id()), nix::libc::SIGCONT);
        signal(i64::from(child.id()), nix::libc::SIGTERM);
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its stderr log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Its serving-state log: `{at_unix_ms, boottime_ms, state, epoch, reason}`.
    pub fn states(&self) -> Vec<Value> {
        read_states(&self.state_log)
    }

    /// The first state change to `state` at `epoch` (any epoch: `None`).
    pub fn first(&self, state: &str, epoch: Option<u64>) -> Option<Value> {
        self.states()
            .into_iter()
            .find(|s| s["state"] == state && epoch.is_none_or(|e| s["epoch"] == e))
    }

    /// Its current serving state, per its log.
    pub fn state(&self) -> Option<String> {
        self.states()
            .last()
            .and_then(|s| s["state"].as_str().map(str::to_string))
    }
}

fn read_states(path: &Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        // Lease and run lines (with an `event` field) are not states.
        .filter(|v| v.get("event").is_none())
        .collect()
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A stopped process must be continued to die promptly.
            signal(i64::from(child.id()), nix::libc::SIGCONT);
        }
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("----- last lines of agent {} log -----", self.name);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
            eprintln!("----- agent {} states -----", self.name);
            for s in self.states() {
                eprintln!("{s}");
            }
        }
    }
}
