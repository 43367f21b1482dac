//! `witness bgp`: the proxies' BGP switch, through a local BIRD 2.
//!
//! An agent on a proxy host runs it from its hooks (DESIGN.md §3.6):
//! `activate` and `unfence` run `witness bgp announce`, `deactivate` and
//! `fence` run `witness bgp withdraw`, each with `WITNESS_EPOCH` in the
//! environment. Announcing writes the VIP's static routes and the
//! epoch-derived MED into a file that BIRD's own config includes, then asks
//! BIRD to reload; withdrawing writes the same file with no route.
//!
//! **The data-plane fence (DESIGN.md §3.4).** An announcement made at epoch
//! `e` carries `MED = 4294967295 − e`, saturating at 0, and a large
//! community `(LOCAL_AS, e >> 32, e & 0xffffffff)` for operators reading
//! `birdc show route all`. Routers that compare MED across neighbours
//! (BIRD's `med metric`; elsewhere `always-compare-med` with
//! `deterministic-med`, the same policy on every neighbour) prefer the lower
//! MED, so a site still announcing from an older epoch — cut off from the
//! witnesses, paused, not fenced yet — loses to the site the witnesses made
//! active without waiting for its BGP session to drop. Withdrawal stays the
//! fence of record; the MED covers the window until it happens.
//!
//! Invariants:
//! - **The include file is the state.** It is replaced atomically (temp
//!   file, fsync, rename, fsync of the directory), so BIRD, whether it
//!   reloads now or starts after a crash, reads the old announcement or the
//!   new one, never half of one. Its first lines record the state, so
//!   `status` and the next command read it back.
//! - **Idempotent.** The same command twice leaves the same file and the
//!   same routes. BIRD is asked to reload every time, so a reload that
//!   failed before is retried by the next call.
//! - **Never backwards.** `announce` refuses an epoch older than the one the
//!   file records (a hook of an older epoch that ran late) and changes
//!   nothing. `withdraw` is always allowed: removing a route is the fence.
//! - **Success means BIRD has it.** After the reload, the command checks,
//!   within the timeout, that BIRD's `witness_vip4`/`witness_vip6`
//!   protocols hold exactly the announced prefixes and that its
//!   `WITNESS_MED` is the announced one. One command at a time per include
//!   file (a lock file beside it).
//! - **Bounded.** Every `birdc` call and the wait for BIRD share one
//!   deadline (`timeout` in the config); a `birdc` that hangs is killed.
//!
//! Not here: the BGP sessions, neighbours and export policy (the operator's
//! `bird.conf`; `deploy/bgp/` ships commented templates), deciding *when* to
//! announce (the agent's job), and any shell: `birdc` runs as an argv.
//!
//! Exit codes of `witness bgp` ([`exit`]): 0 done; 1 failed, nothing is
//! known to have changed in BIRD (retry); 2 bad input (config, epoch, a
//! foreign include file); 3 `status` only: BIRD does not serve what the
//! include file says; 4 `announce` refused a stale epoch (do not retry).

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::config::{ConfigError, FileKind, Problem};
use crate::state::Epoch;

/// Exit codes of `witness bgp`, for the hook runner and for scripts.
pub mod exit {
    /// Done: BIRD serves what was asked (or, for `status`, what the include
    /// file says).
    pub const OK: u8 = 0;
    /// Failed: BIRD unreachable, refused the config, or did not load it in
    /// time; or the file could not be written. Safe to retry.
    pub const FAILED: u8 = 1;
    /// Bad input: the config file, a missing or malformed epoch, or an
    /// include file `witness bgp` did not write. Fix the input.
    pub const USAGE: u8 = 2;
    /// `status`: BIRD does not serve what the include file says.
    pub const DIFFERS: u8 = 3;
    /// `announce`: the epoch is older than the one already written; nothing
    /// changed. A late hook of an older epoch: do not retry.
    pub const STALE: u8 = 4;
}

/// Default path of the `witness bgp` config.
pub const DEFAULT_CONFIG: &str = "/etc/witness/bgp.toml";
/// Default include file. Persistent (not under /run), so the stale-epoch
/// check survives reboots; BIRD (user `bird` on Debian) must be able to
/// read it.
pub const DEFAULT_INCLUDE_FILE: &str = "/var/lib/witness/bgp-vip.conf";
/// Debian's `birdc`.
pub const DEFAULT_BIRDC: &str = "/usr/sbin/birdc";
/// Debian's BIRD control socket.
pub const DEFAULT_SOCKET: &str = "/run/bird/bird.ctl";
/// Default bound on one whole command. A reload of a small proxy config
/// takes milliseconds; the bound only matters when BIRD is wedged, and it
/// must stay below the agent's `fence_timeout` so a fence hook cannot
/// outlive its budget.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Shortest and longest accepted `timeout`.
const TIMEOUT_RANGE: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(300));
/// At most this many VIP prefixes: a proxy pair announces a handful.
pub const MAX_PREFIXES: usize = 64;
/// Cap on what is kept of `birdc`'s output; a route dump for a few
/// prefixes is a few KiB.
const MAX_OUTPUT: usize = 256 * 1024;
/// How often BIRD is polled while waiting for it to load the routes, and
/// how often a running `birdc` or a busy lock is checked.
const POLL: Duration = Duration::from_millis(20);

/// The static protocol names the include file declares, per family. The
/// proxy template's export filter matches on them.
pub const PROTOCOL_V4: &str = "witness_vip4";
/// See [`PROTOCOL_V4`].
pub const PROTOCOL_V6: &str = "witness_vip6";
/// The BIRD constant carrying the MED.
pub const MED_SYMBOL: &str = "WITNESS_MED";
/// First line of every include file we write; a file without it is not
/// ours and is never overwritten.
const MAGIC: &str = "# Written by `witness bgp`";
/// Prefix of the line recording the state.
const STATE_TAG: &str = "# witness-bgp:";

/// The BGP MED of an announcement at `epoch`: `4294967295 − epoch`,
/// saturating at 0. Lower wins, so a newer epoch always beats an older one
/// (up to epoch 4294967295, beyond which every epoch ties at 0).
pub fn med(epoch: Epoch) -> u32 {
    u32::MAX - u32::try_from(epoch).unwrap_or(u32::MAX)
}

// ---------------------------------------------------------------- config --

/// An IP prefix (`192.0.2.10/32`, `2001:db8::10/128`) with no host bits set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

impl Prefix {
    /// Whether it is an IPv4 prefix.
    pub fn is_v4(&self) -> bool {
        self.addr.is_ipv4()
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Prefix {
    type Err = String;

    /// `ADDR/LEN`, or a bare address meaning the host prefix (/32, /128).
    fn from_str(s: &str) -> Result<Prefix, String> {
        let bad = |why: String| {
            format!(
                "invalid VIP prefix {s:?}: {why}; write e.g. \"192.0.2.10/32\" or \"2001:db8::10/128\""
            )
        };
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| bad(format!("{addr:?} is not an IP address")))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| bad(format!("the length must be 0 to {max}")))?,
        };
        let host_bits_set = match addr {
            IpAddr::V4(a) => u32::from(a).checked_shl(u32::from(len)).unwrap_or(0) != 0,
            IpAddr::V6(a) => u128::from(a).checked_shl(u32::from(len)).unwrap_or(0) != 0,
        };
        if host_bits_set {
            return Err(bad(format!("{addr} has bits set beyond the /{len}")));
        }
        Ok(Prefix { addr, len })
    }
}

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Prefix, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `bgp.toml`: what to announce, where BIRD reads it, how to reach BIRD.
/// Every key is documented in `deploy/bgp/bgp.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BgpConfig {
    /// The service VIP prefixes this proxy announces.
    pub vip: Vec<Prefix>,
    /// The file BIRD's config includes; rewritten on every command.
    #[serde(default = "default_include_file")]
    pub include_file: PathBuf,
    /// The `birdc` program.
    #[serde(default = "default_birdc")]
    pub birdc: PathBuf,
    /// BIRD's control socket (`bird -s`).
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Bound on one whole command: every `birdc` call and the wait until
    /// BIRD has loaded the routes.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_include_file() -> PathBuf {
    PathBuf::from(DEFAULT_INCLUDE_FILE)
}
fn default_birdc() -> PathBuf {
    PathBuf::from(DEFAULT_BIRDC)
}
fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}
fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

impl BgpConfig {
    /// Read, parse and validate `path`.
    pub fn load(path: &Path) -> Result<BgpConfig, ConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        BgpConfig::parse(&text, path)
    }

    /// Parse and validate `text`, read from `origin` (named in errors).
    pub fn parse(text: &str, origin: &Path) -> Result<BgpConfig, ConfigError> {
        let config: BgpConfig = crate::config::from_toml(text, origin, FileKind::Bgp)?;
        config.validate().map_err(|e| e.in_file(origin))?;
        Ok(config)
    }

    /// Every problem with well-formed values, not only the first.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.vip.is_empty() {
            problems.push(Problem::new(
                "vip",
                "no prefix to announce",
                "list the service VIP, e.g. vip = [\"192.0.2.10/32\"]",
            ));
        }
        if self.vip.len() > MAX_PREFIXES {
            problems.push(Problem::new(
                "vip",
                format!("{} prefixes, more than {MAX_PREFIXES}", self.vip.len()),
                "announce the VIPs, not a routing table",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for p in &self.vip {
            if !seen.insert(p) {
                problems.push(Problem::new(
                    "vip",
                    format!("{p} is listed twice"),
                    "list each prefix once",
                ));
            }
        }
        if !self.include_file.is_absolute() || self.include_file.file_name().is_none() {
            problems.push(Problem::new(
                "include_file",
                format!("{:?} is not an absolute file path", self.include_file),
                "use the absolute path bird.conf includes, e.g. \"/var/lib/witness/bgp-vip.conf\"",
            ));
        }
        if self.birdc.as_os_str().is_empty() {
            problems.push(Problem::new(
                "birdc",
                "is empty",
                "name the birdc program, e.g. \"/usr/sbin/birdc\"",
            ));
        }
        if self.socket.as_os_str().is_empty() {
            problems.push(Problem::new(
                "socket",
                "is empty",
                "give BIRD's control socket, e.g. \"/run/bird/bird.ctl\"",
            ));
        }
        let (lo, hi) = TIMEOUT_RANGE;
        if self.timeout < lo || self.timeout > hi {
            problems.push(Problem::new(
                "timeout",
                format!(
                    "{} is out of range",
                    humantime::format_duration(self.timeout)
                ),
                format!(
                    "use {} to {}, below the agent's fence_timeout",
                    humantime::format_duration(lo),
                    humantime::format_duration(hi)
                ),
            ));
        }
        ConfigError::from_problems(problems)
    }

    fn has_v4(&self) -> bool {
        self.vip.iter().any(Prefix::is_v4)
    }

    fn has_v6(&self) -> bool {
        self.vip.iter().any(|p| !p.is_v4())
    }
}

// ---------------------------------------------------------------- errors --

/// Why a `witness bgp` command failed; [`BgpError::exit_code`] says what
/// the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum BgpError {
    /// The config file is unreadable or invalid: fix it.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `announce` without an epoch.
    #[error(
        "no epoch to announce: pass --epoch N or set WITNESS_EPOCH (the agent sets it for every hook)"
    )]
    NoEpoch,
    /// `WITNESS_EPOCH` is set but not a u64.
    #[error("WITNESS_EPOCH={0:?} is not an epoch: expected an unsigned 64-bit integer")]
    BadEpoch(String),
    /// `announce` at an epoch older than the file's: a late hook.
    #[error(
        "refusing to announce at epoch {asked}: {} already records epoch {recorded}, so this \
         is a late hook of an older epoch; nothing was changed",
        .path.display()
    )]
    StaleEpoch {
        asked: Epoch,
        recorded: Epoch,
        path: PathBuf,
    },
    /// The include path holds a file we did not write: never overwritten.
    #[error(
        "{} exists but was not written by `witness bgp` (its first line is not {MAGIC:?}); \
         refusing to overwrite it: point include_file at a file of its own",
        .0.display()
    )]
    Foreign(PathBuf),
    /// A file could not be read, written or locked.
    #[error("{what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// Nothing listens on the control socket.
    #[error(
        "BIRD is not running (cannot connect to {}: {source}); start BIRD, or fix `socket` in \
         the config",
        .socket.display()
    )]
    BirdDown { socket: PathBuf, source: io::Error },
    /// `birdc` could not run, timed out, or BIRD answered with an error.
    #[error("`{cmd}`: {message}")]
    Birdc { cmd: String, message: String },
    /// BIRD accepted the reload but does not serve the announcement.
    #[error("BIRD did not load the {what} within {timeout}: {detail}")]
    NotApplied {
        what: String,
        timeout: String,
        detail: String,
    },
}

impl BgpError {
    /// The process exit code for this error ([`exit`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            BgpError::Config(_) | BgpError::NoEpoch | BgpError::BadEpoch(_) => exit::USAGE,
            BgpError::Foreign(_) => exit::USAGE,
            BgpError::StaleEpoch { .. } => exit::STALE,
            BgpError::Io { .. }
            | BgpError::BirdDown { .. }
            | BgpError::Birdc { .. }
            | BgpError::NotApplied { .. } => exit::FAILED,
        }
    }

    fn io(what: &'static str, path: &Path, source: io::Error) -> BgpError {
        BgpError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The epoch of an announcement: `--epoch` if given, else `WITNESS_EPOCH`.
pub fn resolve_epoch(flag: Option<Epoch>, env: Option<OsString>) -> Result<Epoch, BgpError> {
    if let Some(e) = flag {
        return Ok(e);
    }
    let Some(raw) = env else {
        return Err(BgpError::NoEpoch);
    };
    let text = raw.to_string_lossy().into_owned();
    text.trim()
        .parse::<Epoch>()
        .map_err(|_| BgpError::BadEpoch(text))
}

// ---------------------------------------------------------- include file --

/// What an include file says: announced or not, and the highest epoch any
/// command has written (0 before the first announcement).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncludeState {
    /// Whether the VIP routes are in the file.
    pub announced: bool,
    /// The epoch of the announcement, or the highest epoch seen.
    pub epoch: Epoch,
    /// The announced prefixes (empty when withdrawn).
    pub prefixes: Vec<Prefix>,
}

impl IncludeState {
    /// The MED BIRD should export: the epoch's when announced, the worst
    /// possible otherwise (nothing is exported then anyway).
    pub fn med(&self) -> u32 {
        if self.announced {
            med(self.epoch)
        } else {
            u32::MAX
        }
    }

    fn describe(&self) -> String {
        if self.announced {
            format!(
                "announced at epoch {} (MED {}): {}",
                self.epoch,
                self.med(),
                join(&self.prefixes)
            )
        } else if self.epoch == 0 {
            "withdrawn (no epoch announced yet)".to_string()
        } else {
            format!("withdrawn (highest epoch seen {})", self.epoch)
        }
    }
}

fn join(prefixes: &[Prefix]) -> String {
    if prefixes.is_empty() {
        return "none".into();
    }
    prefixes
        .iter()
        .map(Prefix::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The text of the include file for `state`. Declares a static protocol
/// for each family in `config.vip` (also when withdrawn, so BIRD's set of
/// protocols never changes and `status` can always ask for them) and the
/// constants the proxy template's export filter uses.
pub fn render_include(config: &BgpConfig, state: &IncludeState) -> String {
    let e = state.epoch;
    let prefixes: Vec<String> = state.prefixes.iter().map(Prefix::to_string).collect();
    let mut s = format!(
        "{MAGIC} on every announce and withdraw. Do not edit:\n\
         # BIRD's config includes it (see deploy/bgp/bird-proxy.conf).\n\
         {STATE_TAG} state={} epoch={e} med={} prefixes={}\n\n\
         # The epoch as two 32-bit halves, for the large community (LOCAL_AS, hi, lo).\n\
         define WITNESS_EPOCH_HI = {};\n\
         define WITNESS_EPOCH_LO = {};\n\
         # Lower wins: 4294967295 - epoch, saturating at 0.\n\
         define {MED_SYMBOL} = {};\n",
        if state.announced {
            "announced"
        } else {
            "withdrawn"
        },
        state.med(),
        if prefixes.is_empty() {
            "-".to_string()
        } else {
            prefixes.join(",")
        },
        e >> 32,
        e & u64::from(u32::MAX),
        state.med(),
    );
    for (family, name, present) in [
        ("ipv4", PROTOCOL_V4, config.has_v4()),
        ("ipv6", PROTOCOL_V6, config.has_v6()),
    ] {
        if !present {
            continue;
        }
        s.push_str(&format!("\nprotocol static {name} {{\n  {family};\n"));
        for p in &state.prefixes {
            if p.is_v4() == (family == "ipv4") {
                s.push_str(&format!("  route {p} blackhole;\n"));
            }
        }
        s.push_str("}\n");
    }
    s
}

/// Read back the state an include file records. `Ok(None)` for a file we
/// did not write (no magic first line); an error for one we did whose state
/// line is damaged.
pub fn parse_include(text: &str) -> Result<Option<IncludeState>, String> {
    if !text.starts_with(MAGIC) {
        return Ok(None);
    }
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(STATE_TAG))
        .ok_or_else(|| format!("no {STATE_TAG:?} line"))?;
    let mut announced = None;
    let mut epoch = None;
    let mut prefixes = Vec::new();
    for field in line.split_whitespace() {
        match field.split_once('=') {
            Some(("state", "announced")) => announced = Some(true),
            Some(("state", "withdrawn")) => announced = Some(false),
            Some(("epoch", v)) => epoch = v.parse::<Epoch>().ok(),
            Some(("prefixes", "-")) => {}
            Some(("prefixes", v)) => {
                for p in v.split(',') {
                    prefixes.push(p.parse::<Prefix>()?);
                }
            }
            _ => {}
        }
    }
    match (announced, epoch) {
        (Some(announced), Some(epoch)) => Ok(Some(IncludeState {
            announced,
            epoch,
            prefixes,
        })),
        _ => Err(format!("damaged state line {line:?}")),
    }
}

/// The state in `path`: `None` if the file does not exist.
fn read_include(path: &Path) -> Result<Option<(String, IncludeState)>, BgpError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(BgpError::io("reading", path, e)),
    };
    match parse_include(&text) {
        Ok(Some(state)) => Ok(Some((text, state))),
        Ok(None) => Err(BgpError::Foreign(path.to_path_buf())),
        Err(why) => Err(BgpError::io(
            "reading",
            path,
            io::Error::new(io::ErrorKind::InvalidData, why),
        )),
    }
}

/// Replace `path` with `text` so that a reader (or a crash) sees the old
/// content or the new one: write a temp file in the same directory, fsync
/// it, rename it over `path`, fsync the directory (the rename itself must
/// survive a power loss, or BIRD could start from the old file).
fn write_atomically(path: &Path, text: &str) -> Result<(), BgpError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let write = || -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            // BIRD runs as its own user: it must be able to read the file.
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        BgpError::io("writing", path, e)
    })
}

/// Held while a command runs, so two hooks never interleave their
/// read-check-write-reload sequences on one include file. Released on drop
/// (the kernel releases it if we die).
struct Lock {
    _file: File,
}

impl Lock {
    fn take(include: &Path, deadline: Instant) -> Result<Lock, BgpError> {
        let mut path = include.as_os_str().to_owned();
        path.push(".lock");
        let path = PathBuf::from(path);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .map_err(|e| BgpError::io("opening lock", &path, e))?;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Lock { _file: file }),
                Err(fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(POLL);
                }
                Err(fs::TryLockError::WouldBlock) => {
                    return Err(BgpError::io(
                        "locking",
                        &path,
                        io::Error::new(
                            io::ErrorKind::TimedOut,
                            "another `witness bgp` holds it past the timeout",
                        ),
                    ));
                }
                Err(fs::TryLockError::Error(e)) => return Err(BgpError::io("locking", &path, e)),
            }
        }
    }
}

// ----------------------------------------------------------------- birdc --

/// One line of a `birdc -v` answer: BIRD's reply code and its text.
/// Continuation lines carry the code of the line they continue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyLine {
    /// BIRD's reply code: 0xxx done, 1xxx data, 8xxx/9xxx errors.
    pub code: u16,
    /// The text after the code.
    pub text: String,
}

/// A whole `birdc -v` answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reply {
    /// Every line but the greeting (`0001 BIRD x.y.z ready.`).
    pub lines: Vec<ReplyLine>,
}

impl Reply {
    /// Parse `birdc -v` output: `DDDD-text` (more follows), `DDDD text`
    /// (last line of that code), or a continuation indented by five spaces.
    /// Asynchronous log lines (`>>> …`) and anything else are ignored.
    pub fn parse(out: &str) -> Reply {
        let mut lines = Vec::new();
        let mut last = None;
        for raw in out.lines() {
            let b = raw.as_bytes();
            let coded = b.len() >= 5
                && b[..4].iter().all(u8::is_ascii_digit)
                && (b[4] == b'-' || b[4] == b' ');
            if coded {
                let code = raw[..4].parse::<u16>().unwrap_or(0);
                last = Some(code);
                if code != 1 {
                    lines.push(ReplyLine {
                        code,
                        text: raw[5..].to_string(),
                    });
                }
            } else if let (Some(code), Some(text)) = (last, raw.strip_prefix("     ")) {
                lines.push(ReplyLine {
                    code,
                    text: text.to_string(),
                });
            }
        }
        Reply { lines }
    }

    /// The first error line (code 8000 and up), if any.
    pub fn error(&self) -> Option<&ReplyLine> {
        self.lines.iter().find(|l| l.code >= 8000)
    }

    /// The code of the last line: BIRD's verdict on the command.
    pub fn final_code(&self) -> Option<u16> {
        self.lines.last().map(|l| l.code)
    }

    /// The text lines, codes dropped.
    pub fn texts(&self) -> Vec<&str> {
        self.lines.iter().map(|l| l.text.as_str()).collect()
    }
}

/// What BIRD said to `configure`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reconfigure {
    /// `0003 Reconfigured`: the new config is in effect.
    Done,
    /// `0004 Reconfiguration in progress`: accepted; protocols are
    /// restarting into it.
    InProgress,
    /// `0005 Reconfiguration already in progress, queueing`: accepted; it
    /// follows the one running.
    Queued,
}

/// Judge BIRD's answer to `configure`: anything but "reconfigured",
/// "in progress" or "queued" is a failure, with BIRD's own words (a config
/// error names the file, line and column).
pub fn parse_reconfigure(reply: &Reply) -> Result<Reconfigure, String> {
    if let Some(e) = reply.error() {
        return Err(e.text.clone());
    }
    match reply.final_code() {
        Some(3) => Ok(Reconfigure::Done),
        Some(4) => Ok(Reconfigure::InProgress),
        Some(5) => Ok(Reconfigure::Queued),
        Some(6) => Err("BIRD is shutting down and ignored the reconfiguration".into()),
        _ => Err(format!(
            "unexpected answer: {}",
            if reply.lines.is_empty() {
                "(nothing)".to_string()
            } else {
                reply.texts().join(" | ")
            }
        )),
    }
}

/// One route of a `show route [… ] [all]` answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Route {
    /// The network, e.g. `192.0.2.10/32`.
    pub net: String,
    /// The route type word before the bracket: `unicast`, `blackhole`, …
    pub kind: String,
    /// The protocol it came from (`proxy_dc_a`, `witness_vip4`).
    pub protocol: String,
    /// When it last changed, as BIRD prints it.
    pub since: String,
    /// Whether it is the best (primary) route for its network: BIRD's `*`.
    pub primary: bool,
    /// The next hop, from its `via ADDR on IFACE` line.
    pub via: Option<IpAddr>,
    /// `Key: value` attribute lines (`BGP.med`, `BGP.as_path`, `Type`), in order.
    pub attrs: Vec<(String, String)>,
}

impl Route {
    /// An attribute's value.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The BGP MED, if the route carries one.
    pub fn med(&self) -> Option<u32> {
        self.attr("BGP.med")?.trim().parse().ok()
    }
}

/// Parse the route lines of a `show route` answer (the text of a [`Reply`],
/// codes dropped). A route starts with a line holding `[protocol since…]`;
/// when its network is left blank it is another route for the previous
/// network. Tab-indented lines after it are its next hop and attributes.
/// Table headers and anything unrecognised are skipped.
pub fn parse_routes<'a>(lines: impl IntoIterator<Item = &'a str>) -> Vec<Route> {
    let mut routes: Vec<Route> = Vec::new();
    let mut net = String::new();
    for line in lines {
        if let Some(detail) = line.strip_prefix('\t') {
            let Some(r) = routes.last_mut() else { continue };
            let detail = detail.trim();
            if let Some(rest) = detail.strip_prefix("via ") {
                r.via = rest.split_whitespace().next().and_then(|a| a.parse().ok());
            } else if let Some((k, v)) = detail.split_once(':') {
                r.attrs.push((k.trim().to_string(), v.trim().to_string()));
            }
            continue;
        }
        let (Some(open), Some(close)) = (line.find('['), line.find(']')) else {
            continue;
        };
        if close < open {
            continue;
        }
        let head: Vec<&str> = line[..open].split_whitespace().collect();
        let kind = match head.as_slice() {
            [n, kind] if !line.starts_with(char::is_whitespace) => {
                net = (*n).to_string();
                (*kind).to_string()
            }
            [kind] if line.starts_with(char::is_whitespace) && !net.is_empty() => {
                (*kind).to_string()
            }
            _ => continue,
        };
        let mut inner = line[open + 1..close].split_whitespace();
        let protocol = inner.next().unwrap_or_default().to_string();
        let since = inner
            .take_while(|w| *w != "from")
            .collect::<Vec<_>>()
            .join(" ");
        let primary = line[close + 1..].split_whitespace().next() == Some("*");
        routes.push(Route {
            net: net.clone(),
            kind,
            protocol,
            since,
            primary,
            via: None,
            attrs: Vec::new(),
        });
    }
    routes
}

/// A `birdc` bound to one control socket.
pub struct Birdc {
    program: PathBuf,
    socket: PathBuf,
}

impl Birdc {
    /// `program -s socket`.
    pub fn new(program: impl Into<PathBuf>, socket: impl Into<PathBuf>) -> Birdc {
        Birdc {
            program: program.into(),
            socket: socket.into(),
        }
    }

    /// Whether BIRD listens on the socket: `Err` when nothing does (no
    /// socket file, or a stale one nobody accepts on).
    pub fn reachable(&self) -> Result<(), BgpError> {
        UnixStream::connect(&self.socket)
            .map(drop)
            .map_err(|source| BgpError::BirdDown {
                socket: self.socket.clone(),
                source,
            })
    }

    /// Run `birdc -v -s SOCKET args…` and parse its answer; fails when it
    /// cannot run, outlives `deadline`, or BIRD answers with an error code.
    pub fn run(&self, args: &[&str], deadline: Instant) -> Result<Reply, BgpError> {
        let mut cmd = Command::new(&self.program);
        cmd.arg("-v").arg("-s").arg(&self.socket).args(args);
        let line = format!(
            "{} -v -s {} {}",
            self.program.display(),
            self.socket.display(),
            args.join(" ")
        );
        let fail = |message: String| BgpError::Birdc {
            cmd: line.clone(),
            message,
        };
        let (status, stdout, stderr) = run_bounded(cmd, deadline).map_err(fail)?;
        let reply = Reply::parse(&stdout);
        if let Some(e) = reply.error() {
            return Err(fail(format!("BIRD answered {} {}", e.code, e.text)));
        }
        if !status.success() {
            let said = stderr.trim();
            return Err(fail(format!(
                "exited with {status}{}",
                if said.is_empty() {
                    String::new()
                } else {
                    format!(": {said}")
                }
            )));
        }
        Ok(reply)
    }

    /// `configure`, judged by [`parse_reconfigure`].
    pub fn configure(&self, deadline: Instant) -> Result<Reconfigure, BgpError> {
        let reply = match self.run(&["configure"], deadline) {
            Ok(r) => r,
            // BIRD's own words for a config error are the useful part.
            Err(BgpError::Birdc { cmd, message }) => {
                return Err(BgpError::Birdc {
                    cmd,
                    message: format!("BIRD refused the new config: {message}"),
                });
            }
            Err(e) => return Err(e),
        };
        parse_reconfigure(&reply).map_err(|message| BgpError::Birdc {
            cmd: format!("{} configure", self.program.display()),
            message,
        })
    }
}

/// Run `cmd` until it exits or `deadline` passes (then it is killed and
/// reaped). Returns its status, stdout and stderr (each capped).
fn run_bounded(
    mut cmd: Command,
    deadline: Instant,
) -> Result<(std::process::ExitStatus, String, String), String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot run: {e}"))?;
    // Drained on their own threads: a full pipe would block birdc forever.
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
            Ok(None) => {
                kill(&mut child);
                return Err("did not answer within the timeout and was killed".into());
            }
            Err(e) => {
                kill(&mut child);
                return Err(format!("waiting for it: {e}"));
            }
        }
    };
    let text = |h: std::thread::JoinHandle<Vec<u8>>| {
        String::from_utf8_lossy(&h.join().unwrap_or_default()).into_owned()
    };
    Ok((status, text(out), text(err)))
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(p) = pipe {
            // A read error keeps what was read: the exit status decides.
            let _ = p.take(MAX_OUTPUT as u64).read_to_end(&mut buf);
        }
        buf
    })
}

/// What BIRD currently serves from the include file: the prefixes in our
/// static protocols and the value of `WITNESS_MED`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    /// Prefixes in `witness_vip4`/`witness_vip6`, sorted.
    pub prefixes: Vec<String>,
    /// `WITNESS_MED` as BIRD evaluates it.
    pub med: u32,
}

/// Ask BIRD what it serves from the include file. A 9001 "syntax error"
/// for our protocol or constant means BIRD's config does not include the
/// file at all, which is said in so many words.
pub fn loaded(birdc: &Birdc, config: &BgpConfig, deadline: Instant) -> Result<Loaded, BgpError> {
    let not_included = |e: BgpError| match e {
        BgpError::Birdc { cmd, message } if message.contains(" 9001 ") => BgpError::Birdc {
            cmd,
            message: format!(
                "{message}: BIRD does not know it, so its config does not include {}; see \
                 deploy/bgp/bird-proxy.conf",
                config.include_file.display()
            ),
        },
        other => other,
    };
    let mut prefixes = Vec::new();
    for (name, present) in [
        (PROTOCOL_V4, config.has_v4()),
        (PROTOCOL_V6, config.has_v6()),
    ] {
        if present {
            let reply = birdc
                .run(&["show", "route", "protocol", name], deadline)
                .map_err(not_included)?;
            prefixes.extend(parse_routes(reply.texts()).into_iter().map(|r| r.net));
        }
    }
    prefixes.sort();
    let reply = birdc
        .run(&["eval", MED_SYMBOL], deadline)
        .map_err(not_included)?;
    let med = reply
        .lines
        .iter()
        .find(|l| l.code == 23)
        .and_then(|l| l.text.trim().parse::<u32>().ok())
        .ok_or_else(|| BgpError::Birdc {
            cmd: format!("eval {MED_SYMBOL}"),
            message: format!("no number in the answer: {}", reply.texts().join(" | ")),
        })?;
    Ok(Loaded { prefixes, med })
}

/// What BIRD should serve for `state`.
fn expected(state: &IncludeState) -> Loaded {
    let mut prefixes: Vec<String> = state.prefixes.iter().map(Prefix::to_string).collect();
    prefixes.sort();
    Loaded {
        prefixes,
        med: state.med(),
    }
}

fn describe_loaded(l: &Loaded) -> String {
    if l.prefixes.is_empty() {
        format!("no route ({MED_SYMBOL} {})", l.med)
    } else {
        format!("{} with MED {}", l.prefixes.join(", "), l.med)
    }
}

// ------------------------------------------------------------- commands --

/// What `announce` and `withdraw` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The state now in the include file.
    pub state: IncludeState,
    /// Whether the file's bytes changed (false: it already said this).
    pub file_changed: bool,
    /// BIRD's answer to the reload; `None` when not asked
    /// (`--no-reconfigure`) or not running (withdraw only).
    pub reconfigure: Option<Reconfigure>,
}

/// `announce` (`Some(epoch)`) or `withdraw` (`None`, optionally recording
/// the epoch the hook ran at): write the include file, reload BIRD, and
/// wait until BIRD serves exactly that. See the module doc for the rules.
pub fn apply(
    config: &BgpConfig,
    announce: Option<Epoch>,
    withdraw_epoch: Option<Epoch>,
    reconfigure: bool,
) -> Result<Outcome, BgpError> {
    let deadline = Instant::now() + config.timeout;
    let _lock = Lock::take(&config.include_file, deadline)?;
    let old = read_include(&config.include_file)?;
    let recorded = old.as_ref().map_or(0, |(_, s)| s.epoch);
    let state = match announce {
        Some(epoch) if epoch < recorded => {
            return Err(BgpError::StaleEpoch {
                asked: epoch,
                recorded,
                path: config.include_file.clone(),
            });
        }
        Some(epoch) => IncludeState {
            announced: true,
            epoch,
            prefixes: config.vip.clone(),
        },
        None => IncludeState {
            announced: false,
            epoch: recorded.max(withdraw_epoch.unwrap_or(0)),
            prefixes: Vec::new(),
        },
    };
    let birdc = Birdc::new(&config.birdc, &config.socket);
    if reconfigure && state.announced {
        // Fail before touching the file: an announcement BIRD cannot take
        // now must not be picked up by a later BIRD start either.
        birdc.reachable()?;
    }
    let text = render_include(config, &state);
    let file_changed = old.as_ref().is_none_or(|(t, _)| *t != text);
    if file_changed {
        write_atomically(&config.include_file, &text)?;
    }
    if !reconfigure {
        return Ok(Outcome {
            state,
            file_changed,
            reconfigure: None,
        });
    }
    if let Err(down) = birdc.reachable() {
        // A BIRD that does not run announces nothing, and it reads the
        // withdrawn file when it starts: the fence holds. An announcement
        // without BIRD is a failure.
        return if state.announced {
            Err(down)
        } else {
            Ok(Outcome {
                state,
                file_changed,
                reconfigure: None,
            })
        };
    }
    let answer = birdc.configure(deadline)?;
    let want = expected(&state);
    let mut last;
    loop {
        last = loaded(&birdc, config, deadline)?;
        if last == want {
            break;
        }
        if Instant::now() + POLL >= deadline {
            return Err(BgpError::NotApplied {
                what: if state.announced {
                    "announcement".into()
                } else {
                    "withdrawal".into()
                },
                timeout: humantime::format_duration(config.timeout).to_string(),
                detail: format!(
                    "it serves {}, the include file says {}",
                    describe_loaded(&last),
                    describe_loaded(&want)
                ),
            });
        }
        std::thread::sleep(POLL);
    }
    Ok(Outcome {
        state,
        file_changed,
        reconfigure: Some(answer),
    })
}

/// What `status` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// The include file's state; `None` when it does not exist yet.
    pub include: Option<IncludeState>,
    /// What BIRD serves; `None` when BIRD is not running.
    pub bird: Option<Loaded>,
}

impl Status {
    /// Whether BIRD serves what the include file says (a BIRD that is not
    /// running agrees with a withdrawn or absent file).
    pub fn consistent(&self) -> bool {
        let want = self.include.as_ref().map(expected);
        match (&want, &self.bird) {
            (Some(w), Some(b)) => w == b,
            (None, Some(b)) => b.prefixes.is_empty(),
            (w, None) => w.as_ref().is_none_or(|w| w.prefixes.is_empty()),
        }
    }
}

/// `status`: the include file's state and what BIRD serves.
pub fn status(config: &BgpConfig) -> Result<Status, BgpError> {
    let deadline = Instant::now() + config.timeout;
    let include = read_include(&config.include_file)?.map(|(_, s)| s);
    let birdc = Birdc::new(&config.birdc, &config.socket);
    let bird = match birdc.reachable() {
        Ok(()) => Some(loaded(&birdc, config, deadline)?),
        Err(_) => None,
    };
    Ok(Status { include, bird })
}

// ------------------------------------------------------------------ CLI --

/// `witness bgp …` arguments.
#[derive(clap::Args, Debug)]
pub struct BgpArgs {
    #[command(subcommand)]
    pub action: BgpAction,
}

/// Options every action takes.
#[derive(clap::Args, Debug)]
pub struct Common {
    /// The `witness bgp` config.
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Override the config's `timeout` for this command, e.g. "350ms" in a
    /// fence hook, so it fails with its own error inside the hook's bound.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
}

impl Common {
    fn load(&self) -> Result<BgpConfig, BgpError> {
        let mut config = BgpConfig::load(&self.config)?;
        if let Some(t) = self.timeout {
            config.timeout = t;
            config
                .validate()
                .map_err(|e| e.in_file(Path::new("--timeout")))?;
        }
        Ok(config)
    }
}

/// The three actions.
#[derive(clap::Subcommand, Debug)]
pub enum BgpAction {
    /// Announce the VIP at an epoch (agent hooks: activate, unfence).
    ///
    /// Exit codes: 0 announced and loaded by BIRD; 1 failed (retry);
    /// 2 bad config or epoch; 4 stale epoch refused (do not retry).
    Announce {
        #[command(flatten)]
        common: Common,
        /// The epoch; default: the WITNESS_EPOCH environment variable.
        #[arg(long)]
        epoch: Option<Epoch>,
        /// Only write the include file; do not ask BIRD to reload.
        #[arg(long)]
        no_reconfigure: bool,
    },
    /// Withdraw the VIP (agent hooks: deactivate, fence).
    ///
    /// Succeeds when nothing is announced, and when BIRD is not running
    /// (it then announces nothing, and reads the withdrawn file at start).
    /// Exit codes: 0 withdrawn; 1 failed (retry); 2 bad config.
    Withdraw {
        #[command(flatten)]
        common: Common,
        /// Record this epoch as seen (default: WITNESS_EPOCH if set); later
        /// announcements at older epochs are refused.
        #[arg(long)]
        epoch: Option<Epoch>,
        /// Only write the include file (e.g. before BIRD starts:
        /// `ExecStartPre=`); do not ask BIRD to reload.
        #[arg(long)]
        no_reconfigure: bool,
    },
    /// Show what the include file says and what BIRD serves.
    ///
    /// Exit codes: 0 BIRD serves what the file says; 1 failed; 2 bad
    /// config; 3 BIRD differs from the file.
    Status {
        #[command(flatten)]
        common: Common,
    },
}

/// Run `witness bgp …` and map the outcome to its exit code.
pub fn run(args: &BgpArgs) -> ExitCode {
    match run_inner(args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn run_inner(args: &BgpArgs) -> Result<u8, BgpError> {
    let env = || std::env::var_os("WITNESS_EPOCH");
    match &args.action {
        BgpAction::Announce {
            common,
            epoch,
            no_reconfigure,
        } => {
            let epoch = resolve_epoch(*epoch, env())?;
            let config = common.load()?;
            let out = apply(&config, Some(epoch), None, !no_reconfigure)?;
            report(&config, &out);
            Ok(exit::OK)
        }
        BgpAction::Withdraw {
            common,
            epoch,
            no_reconfigure,
        } => {
            // The epoch is optional here; a malformed one is still an error
            // (it means the hook's environment is broken).
            let epoch = match resolve_epoch(*epoch, env()) {
                Ok(e) => Some(e),
                Err(BgpError::NoEpoch) => None,
                Err(e) => return Err(e),
            };
            let config = common.load()?;
            let out = apply(&config, None, epoch, !no_reconfigure)?;
            report(&config, &out);
            Ok(exit::OK)
        }
        BgpAction::Status { common } => {
            let config = common.load()?;
            let s = status(&config)?;
            println!("include: {}", config.include_file.display());
            match &s.include {
                Some(state) => println!("state:   {}", state.describe()),
                None => println!(
                    "state:   no include file yet (nothing announced; BIRD cannot start without \
                     it: run `witness bgp withdraw --no-reconfigure`)"
                ),
            }
            match &s.bird {
                Some(l) => println!("bird:    serves {}", describe_loaded(l)),
                None => println!("bird:    not running (socket {})", config.socket.display()),
            }
            if s.consistent() {
                println!("BIRD serves what the include file says.");
                Ok(exit::OK)
            } else {
                println!("BIRD DIFFERS from the include file: run the last command again.");
                Ok(exit::DIFFERS)
            }
        }
    }
}

fn report(config: &BgpConfig, out: &Outcome) {
    let file = if out.file_changed {
        "wrote"
    } else {
        "unchanged"
    };
    let bird = match out.reconfigure {
        Some(Reconfigure::Done) => "BIRD reconfigured and serves it",
        Some(Reconfigure::InProgress) => "BIRD reconfigured (protocols restarted) and serves it",
        Some(Reconfigure::Queued) => "BIRD reconfigured (after a queued reload) and serves it",
        None if out.state.announced => "BIRD not asked to reload (--no-reconfigure)",
        None => "BIRD not asked to reload (not running or --no-reconfigure)",
    };
    println!(
        "{}; {file} {}; {bird}",
        out.state.describe(),
        config.include_file.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vip: &[&str]) -> BgpConfig {
        BgpConfig {
            vip: vip.iter().map(|p| p.parse().expect("prefix")).collect(),
            include_file: PathBuf::from("/var/lib/witness/bgp-vip.conf"),
            birdc: PathBuf::from(DEFAULT_BIRDC),
            socket: PathBuf::from(DEFAULT_SOCKET),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// MED = 4294967295 − epoch, saturating at 0; newer epochs always win
    /// (lower MED) up to the saturation point.
    #[test]
    fn med_is_the_inverted_epoch_saturating_at_zero() {
        let max = u64::from(u32::MAX);
        for (epoch, want) in [
            (0, u32::MAX),
            (1, u32::MAX - 1),
            (2, u32::MAX - 2),
            (1_000_001, u32::MAX - 1_000_001),
            (max - 1, 1),
            (max, 0),
            (max + 1, 0),
            (u64::MAX, 0),
        ] {
            assert_eq!(med(epoch), want, "epoch {epoch}");
        }
        assert!(med(2) < med(1), "a newer epoch must have the lower MED");
    }

    /// Prefixes: canonical forms parse, host bits and bad lengths are
    /// refused with an example of what to write.
    #[test]
    fn prefixes_parse_and_refuse_host_bits() {
        for (text, shown) in [
            ("192.0.2.10/32", "192.0.2.10/32"),
            ("192.0.2.10", "192.0.2.10/32"),
            ("198.51.100.0/24", "198.51.100.0/24"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("2001:db8::10/128", "2001:db8::10/128"),
            ("2001:db8::/48", "2001:db8::/48"),
        ] {
            let p: Prefix = text.parse().expect(text);
            assert_eq!(p.to_string(), shown);
        }
        for (text, says) in [
            ("192.0.2.10/24", "bits set beyond the /24"),
            ("192.0.2.10/33", "length must be 0 to 32"),
            ("2001:db8::1/129", "length must be 0 to 128"),
            ("192.0.2.300/32", "not an IP address"),
            ("vip", "not an IP address"),
            ("192.0.2.0/x", "length must be"),
        ] {
            let err = text.parse::<Prefix>().expect_err(text);
            assert!(err.contains(says), "{text}: {err}");
            assert!(err.contains(" write "), "{text}: {err}");
        }
    }

    /// An announcement renders the constants and one blackhole route per
    /// prefix, in the protocol of its family; a withdrawal keeps the
    /// protocols but no route; the state line reads back.
    #[test]
    fn include_file_renders_and_reads_back() {
        let c = config(&["192.0.2.10/32", "2001:db8::10/128"]);
        let on = IncludeState {
            announced: true,
            epoch: 7,
            prefixes: c.vip.clone(),
        };
        let text = render_include(&c, &on);
        assert!(text.starts_with(MAGIC), "{text}");
        for line in [
            "# witness-bgp: state=announced epoch=7 med=4294967288 prefixes=192.0.2.10/32,2001:db8::10/128",
            "define WITNESS_EPOCH_HI = 0;",
            "define WITNESS_EPOCH_LO = 7;",
            "define WITNESS_MED = 4294967288;",
            "protocol static witness_vip4 {",
            "  ipv4;",
            "  route 192.0.2.10/32 blackhole;",
            "protocol static witness_vip6 {",
            "  route 2001:db8::10/128 blackhole;",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert_eq!(parse_include(&text), Ok(Some(on)));

        let off = IncludeState {
            announced: false,
            epoch: 7,
            prefixes: vec![],
        };
        let text = render_include(&c, &off);
        assert!(!text.contains("route "), "{text}");
        assert!(text.contains("protocol static witness_vip4 {"), "{text}");
        assert!(text.contains("define WITNESS_MED = 4294967295;"), "{text}");
        assert_eq!(parse_include(&text), Ok(Some(off)));
    }

    /// An IPv4-only config declares no IPv6 protocol (a BIRD without an
    /// IPv6 setup must not have to care), and large epochs split into
    /// 32-bit halves for the large community.
    #[test]
    fn include_file_only_declares_configured_families_and_splits_the_epoch() {
        let c = config(&["192.0.2.10/32"]);
        let epoch = (5u64 << 32) | 9;
        let text = render_include(
            &c,
            &IncludeState {
                announced: true,
                epoch,
                prefixes: c.vip.clone(),
            },
        );
        assert!(!text.contains(PROTOCOL_V6), "{text}");
        assert!(text.contains("define WITNESS_EPOCH_HI = 5;"), "{text}");
        assert!(text.contains("define WITNESS_EPOCH_LO = 9;"), "{text}");
        assert!(text.contains("define WITNESS_MED = 0;"), "{text}");
    }

    /// A file without our first line is foreign (never overwritten); one
    /// with a damaged state line is an error, not a guess.
    #[test]
    fn foreign_and_damaged_include_files_are_recognised() {
        assert_eq!(parse_include("protocol static x { ipv4; }\n"), Ok(None));
        assert!(parse_include(&format!("{MAGIC}\n# witness-bgp: state=maybe\n")).is_err());
        assert!(parse_include(&format!("{MAGIC}\nnothing\n")).is_err());
    }

    /// `birdc -v` output: codes, continuations, the greeting dropped.
    #[test]
    fn birdc_replies_parse() {
        let out = "0001 BIRD 2.0.12 ready.\n\
                   1007-Table master4:\n     \
                   192.0.2.10/32        blackhole [witness_vip4 05:47:13.375] * (200)\n\
                   0000 \n";
        let r = Reply::parse(out);
        assert_eq!(
            r.lines,
            vec![
                ReplyLine {
                    code: 1007,
                    text: "Table master4:".into()
                },
                ReplyLine {
                    code: 1007,
                    text: "192.0.2.10/32        blackhole [witness_vip4 05:47:13.375] * (200)"
                        .into()
                },
                ReplyLine {
                    code: 0,
                    text: String::new()
                },
            ]
        );
        assert_eq!(r.error(), None);
    }

    /// BIRD's answers to `configure`: success codes, a config error with
    /// its position, a shutdown, and garbage.
    #[test]
    fn reconfigure_answers_are_judged() {
        let judge = |out: &str| parse_reconfigure(&Reply::parse(out));
        let reading =
            "0001 BIRD 2.0.12 ready.\n0002-Reading configuration from /etc/bird/bird.conf\n";
        assert_eq!(
            judge(&format!("{reading}0003 Reconfigured\n")),
            Ok(Reconfigure::Done)
        );
        assert_eq!(
            judge(&format!("{reading}0004 Reconfiguration in progress\n")),
            Ok(Reconfigure::InProgress)
        );
        assert_eq!(
            judge(&format!(
                "{reading}0005 Reconfiguration already in progress, queueing\n"
            )),
            Ok(Reconfigure::Queued)
        );
        let err = judge(&format!(
            "{reading}8002 /var/lib/witness/bgp-vip.conf:9:1 syntax error, unexpected GARBAGE\n"
        ))
        .expect_err("a config error");
        assert!(err.contains("bgp-vip.conf:9:1 syntax error"), "{err}");
        let err = judge(&format!(
            "{reading}0006 Reconfiguration ignored, shutting down\n"
        ))
        .expect_err("shutting down");
        assert!(err.contains("shutting down"), "{err}");
        let err = judge("0001 BIRD 2.0.12 ready.\n").expect_err("no answer");
        assert!(err.contains("unexpected answer"), "{err}");
        assert!(judge("9001 syntax error\n").is_err());
    }

    /// `show route for … all` with two routes for one network (the second
    /// with its network left blank), attributes, next hops and the `*`.
    #[test]
    fn routes_parse_with_best_route_and_attributes() {
        let out = [
            "0001 BIRD 2.0.12 ready.",
            "1007-Table master4:",
            "     192.0.2.10/32        unicast [proxy_dc_b 05:47:19.383] * (100) [AS65002i]",
            "     \tvia 10.77.40.3 on eth0",
            "1008-\tType: BGP univ",
            "1012-\tBGP.origin: IGP",
            "     \tBGP.as_path: 65002",
            "     \tBGP.med: 4294967293",
            "     \tBGP.large_community: (65002, 0, 2)",
            "                          unicast [proxy_dc_a 2026-11-22 from 10.77.40.2] (100) [AS65001i]",
            "     \tvia 10.77.40.2 on eth0",
            "1008-\tType: BGP univ",
            "1012-\tBGP.med: 4294967294",
            "0000 ",
        ]
        .join("\n");
        let routes = parse_routes(Reply::parse(&out).texts());
        assert_eq!(routes.len(), 2, "{routes:#?}");
        let (b, a) = (&routes[0], &routes[1]);
        assert_eq!(b.net, "192.0.2.10/32");
        assert_eq!(b.kind, "unicast");
        assert_eq!(b.protocol, "proxy_dc_b");
        assert_eq!(b.since, "05:47:19.383");
        assert!(b.primary);
        assert_eq!(b.via, Some("10.77.40.3".parse().expect("ip")));
        assert_eq!(b.med(), Some(4294967293));
        assert_eq!(b.attr("BGP.large_community"), Some("(65002, 0, 2)"));
        assert_eq!(
            a.net, "192.0.2.10/32",
            "a blank network repeats the last one"
        );
        assert_eq!(a.protocol, "proxy_dc_a");
        assert_eq!(a.since, "2026-11-22");
        assert!(!a.primary);
        assert_eq!(a.via, Some("10.77.40.2".parse().expect("ip")));
        assert_eq!(a.med(), Some(4294967294));
        assert!(parse_routes(["Table master4:", "", "garbage ] ["]).is_empty());
    }

    /// The epoch comes from --epoch, else WITNESS_EPOCH; neither, or
    /// garbage, is an error that says what to do.
    #[test]
    fn epoch_comes_from_the_flag_or_the_environment() {
        assert_eq!(resolve_epoch(Some(3), Some("9".into())).ok(), Some(3));
        assert_eq!(resolve_epoch(None, Some("9".into())).ok(), Some(9));
        assert_eq!(resolve_epoch(None, Some(" 9\n".into())).ok(), Some(9));
        let e = resolve_epoch(None, None).expect_err("none");
        assert!(e.to_string().contains("WITNESS_EPOCH"), "{e}");
        assert_eq!(e.exit_code(), exit::USAGE);
        for bad in ["", "-1", "1.5", "18446744073709551616", "two"] {
            let e = resolve_epoch(None, Some(bad.into())).expect_err(bad);
            assert!(matches!(e, BgpError::BadEpoch(_)), "{bad}: {e}");
            assert_eq!(e.exit_code(), exit::USAGE);
        }
    }

    fn parse(text: &str) -> Result<BgpConfig, ConfigError> {
        BgpConfig::parse(text, Path::new("/etc/witness/bgp.toml"))
    }

    /// A minimal file gets every default; the documented example parses.
    #[test]
    fn config_defaults_and_the_shipped_example() {
        let c = parse("vip = [\"192.0.2.10/32\"]\n").expect("minimal");
        assert_eq!(c, config(&["192.0.2.10/32"]));
        let shipped = include_str!("../../deploy/bgp/bgp.toml");
        let c = parse(shipped).expect("deploy/bgp/bgp.toml must be valid");
        assert_eq!(c.include_file, PathBuf::from(DEFAULT_INCLUDE_FILE));
    }

    /// Errors name the file, line and column, the key, and what to do.
    #[test]
    fn config_errors_are_located_and_explained() {
        for (text, says) in [
            (
                "vip = [\"192.0.2.10/32\"]\ninclude = \"/x\"\n",
                "bgp.toml:2:1",
            ),
            (
                "vip = [\"192.0.2.10/32\"]\ninclude = \"/x\"\n",
                "unknown field `include`",
            ),
            (
                "vip = [\"192.0.2.10/32\"]\ninclude = \"/x\"\n",
                "deploy/bgp/bgp.toml documents every key",
            ),
            ("vip = [\"192.0.2.10/24\"]\n", "bgp.toml:1:7"),
            ("vip = [\"192.0.2.10/24\"]\n", "bits set beyond the /24"),
            ("timeout = \"5s\"\n", "missing field `vip`"),
            (
                "vip = [\"192.0.2.10/32\"]\ntimeout = \"5\"\n",
                "bgp.toml:2:11",
            ),
            ("vip = [\"192.0.2.10/32\"]\ntimeout = \"5\"\n", "humantime"),
            ("vip = [\"192.0.2.10/32\"\n", "bgp.toml:1"),
        ] {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.contains(says), "{text:?}: {err}");
        }
    }

    /// Well-formed but unusable values: every problem is listed.
    #[test]
    fn config_validation_lists_every_problem() {
        let err = parse(
            "vip = []\ninclude_file = \"relative.conf\"\nsocket = \"\"\ntimeout = \"10ms\"\n",
        )
        .expect_err("invalid");
        let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["vip", "include_file", "socket", "timeout"], "{err}");
        let err = parse("vip = [\"192.0.2.10/32\", \"192.0.2.10\"]\n").expect_err("dup");
        assert!(err.to_string().contains("listed twice"), "{err}");
    }

    /// The file-only path (no BIRD) is idempotent and never goes back in
    /// epochs: announce twice = same bytes; a stale announce changes
    /// nothing; withdraw keeps the highest epoch; a foreign file is never
    /// overwritten.
    #[test]
    fn file_state_is_idempotent_and_monotonic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = config(&["192.0.2.10/32"]);
        c.include_file = dir.path().join("vip.conf");

        let out = apply(&c, Some(2), None, false).expect("announce");
        assert!(out.file_changed && out.state.announced);
        let first = fs::read_to_string(&c.include_file).expect("read");
        let out = apply(&c, Some(2), None, false).expect("announce again");
        assert!(!out.file_changed, "the same announcement must not rewrite");
        assert_eq!(fs::read_to_string(&c.include_file).expect("read"), first);

        let err = apply(&c, Some(1), None, false).expect_err("stale");
        assert_eq!(err.exit_code(), exit::STALE, "{err}");
        assert_eq!(fs::read_to_string(&c.include_file).expect("read"), first);

        let out = apply(&c, None, Some(1), false).expect("withdraw");
        assert!(!out.state.announced);
        assert_eq!(out.state.epoch, 2, "withdraw keeps the highest epoch seen");
        let out = apply(&c, None, None, false).expect("withdraw again");
        assert!(!out.file_changed);
        assert!(apply(&c, Some(1), None, false).is_err(), "still stale");
        assert!(apply(&c, Some(3), None, false).is_ok());

        fs::write(&c.include_file, "protocol static mine { ipv4; }\n").expect("write");
        let err = apply(&c, None, None, false).expect_err("foreign");
        assert!(matches!(err, BgpError::Foreign(_)), "{err}");
        assert_eq!(err.exit_code(), exit::USAGE);
    }

    /// Withdrawing with no BIRD listening succeeds (no speaker, no route);
    /// announcing fails and says BIRD is not running.
    #[test]
    fn withdraw_succeeds_and_announce_fails_without_bird() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = config(&["192.0.2.10/32"]);
        c.include_file = dir.path().join("vip.conf");
        c.socket = dir.path().join("no-bird.ctl");
        let out = apply(&c, None, None, true).expect("withdraw without BIRD");
        assert_eq!(out.reconfigure, None);
        let err = apply(&c, Some(1), None, true).expect_err("announce without BIRD");
        assert!(matches!(err, BgpError::BirdDown { .. }), "{err}");
        assert_eq!(err.exit_code(), exit::FAILED);
        assert!(err.to_string().contains("not running"), "{err}");
        let text = fs::read_to_string(&c.include_file).expect("read");
        assert!(
            text.contains("state=withdrawn"),
            "a failed announce changes nothing: {text}"
        );
        let s = status(&c).expect("status");
        assert_eq!(s.bird, None);
        assert!(s.consistent(), "withdrawn and BIRD down agree");
        apply(&c, Some(1), None, false).expect("announce, file only");
        assert!(
            !status(&c).expect("status").consistent(),
            "announced, BIRD down: differs"
        );
    }
}
