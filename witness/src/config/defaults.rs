//! Every default and every limit of the configuration, in one place.
//!
//! The serde defaults, `Default` impls, validation and the timer check all
//! read these constants; the example files in `deploy/examples/` repeat the
//! values in their comments, and a unit test checks that the timers of the
//! commented local policy still equal [`Policy::default`](super::Policy::default)'s.
//! Change a value here and in the examples together.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

// ---- [node] -------------------------------------------------------------

/// `node.cluster`: the cluster name recorded in the data dir at `init`.
pub const CLUSTER: &str = "witness";
/// `node.listen`: gRPC (Raft, Witness, Admin), on every interface.
pub const LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 7400);
/// `node.http_listen`: `/healthz`, `/readyz`, `/metrics`.
pub const HTTP_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 7401);

// ---- [raft] (node-local; a witness may sit in another site) -------------
//
// Sized for round trips up to about 50 ms between sites. A leader change
// takes up to 2 × election_timeout_max + rpc_timeout (openraft's followers
// refuse votes for election_timeout_max after the last heartbeat, so the
// first election attempt may fail), and it must fit inside one lease with
// two renewal intervals to spare (see `timers.rs`); slower links scale these
// and `lease.lease_ttl` together.

/// `raft.heartbeat_interval`: how often the leader sends AppendEntries.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);
/// `raft.election_timeout_min`: lower bound of a follower's randomised
/// wait for the leader before it calls an election.
pub const ELECTION_TIMEOUT_MIN: Duration = Duration::from_millis(400);
/// `raft.election_timeout_max`: upper bound of that wait.
pub const ELECTION_TIMEOUT_MAX: Duration = Duration::from_millis(800);
/// `raft.rpc_timeout`: deadline of one Raft RPC to one peer.
pub const RPC_TIMEOUT: Duration = Duration::from_millis(300);
/// `raft.snapshot_after_logs`: entries applied since the last snapshot
/// before a new one is built.
pub const SNAPSHOT_AFTER_LOGS: u64 = 1000;
/// `raft.keep_logs_after_snapshot`: entries kept behind a snapshot so a
/// briefly slow follower catches up from the log, not a snapshot transfer.
pub const KEEP_LOGS_AFTER_SNAPSHOT: u64 = 500;

// ---- [lease] (cluster policy, replicated) -------------------------------

/// `lease.renew_interval`: how often an agent of the active site renews.
pub const RENEW_INTERVAL: Duration = Duration::from_millis(400);
/// `lease.lease_ttl`: how long a granted lease lasts, from the agent's send time.
pub const LEASE_TTL: Duration = Duration::from_secs(3);
/// `lease.max_drift`: the clock-rate error ρ every process stays within,
/// as a fraction (the TOML says `"1%"`).
pub const MAX_DRIFT: f64 = 0.01;
/// `lease.margin`: slack added to the lease wait; must cover the agents'
/// fence and watchdog timeouts.
pub const MARGIN: Duration = Duration::from_secs(1);

// ---- [probe] (cluster policy, replicated) -------------------------------

/// `probe.interval`: how often every witness probes each target. Together
/// with `fail_after` and `timeout` it sets detection: 3 × 500 ms + 400 ms
/// ≈ 1.9 s (DESIGN.md §7).
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// `probe.timeout`: deadline of one probe. Below the interval, so a probe
/// always ends before the next one of the same target is due.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(400);
/// `probe.fail_after`: consecutive failures before a target counts as down.
/// Three, so one lost SYN or one slow answer is not an outage.
pub const PROBE_FAIL_AFTER: u32 = 3;
/// `probe.recover_after`: consecutive successes before a target counts as
/// up again. Lower than `fail_after`: coming back is cheap to believe (it
/// can only block or delay a failover), going away is what triggers one.
pub const PROBE_RECOVER_AFTER: u32 = 2;
/// `expect_status` of an http/https target.
pub const HTTP_EXPECT_STATUS: u16 = 200;
/// `tls_verify` of an https target: on, so a probe never trusts an
/// impostor that answers on the right port.
pub const TLS_VERIFY: bool = true;
/// `service` of a grpc target: the empty name asks for the server's
/// overall health (gRPC health protocol).
pub const GRPC_SERVICE: &str = "";

// ---- [failover] (cluster policy, replicated) ----------------------------

/// `failover.observation_ttl`: an observation older than this counts as
/// unknown, and witnesses re-affirm theirs every `observation_ttl / 2`.
/// The floor is 2 × `interval` × `fail_after` = 3 s with the probe
/// defaults (an observation must outlive the detection window it
/// summarises); the default is twice the floor, so a re-affirmation
/// proposed at 3 s has another 3 s to commit, enough to ride out a leader
/// change (2 × election_timeout_max 800 ms + an RPC), before the previous one
/// expires and a live witness's word is lost.
pub const OBSERVATION_TTL: Duration = Duration::from_secs(6);
/// `failover.min_failover_interval`: anti-flap, no automatic failover this
/// soon after the previous change of active site.
pub const MIN_FAILOVER_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// `failover.failback_after`: with `failback = "auto"`, how long the old
/// site must have been up before the witnesses move back to it.
pub const FAILBACK_AFTER: Duration = Duration::from_secs(10 * 60);

// ---- [consul] (node file: the local agent) ------------------------------

/// `consul.address` in a node file: Carbonio's agent serves HTTP on
/// 127.0.0.1:8500 on every node (reference/carbonio-ha.md §9).
pub const CONSUL_ADDRESS: &str = "127.0.0.1:8500";
/// `consul.timeout`: deadline of one Consul HTTP call. Short, because
/// Consul is only evidence and a reading must stay as fresh as the probes.
/// A leaderless Consul answers `500 No cluster leader` only after its
/// `rpc_hold_timeout` (7 s), so with this timeout that case shows up as a
/// timeout; `/v1/status/leader` (answered locally, at once) tells the two
/// apart in `status`.
pub const CONSUL_TIMEOUT: Duration = Duration::from_secs(1);

// ---- limits -------------------------------------------------------------

/// Most `[[site]]` tables. Two sites is the design; a few more leave room
/// for a lab, while a bound keeps every witness's probe load small.
pub const MAX_SITES: usize = 8;
/// Most targets per site. Each costs one probe per interval per witness.
pub const MAX_TARGETS_PER_SITE: usize = 32;
/// Longest `probe.interval` (and per-target override). A slower probe makes
/// detection pointless for a failover tool.
pub const MAX_PROBE_INTERVAL: Duration = Duration::from_secs(10 * 60);
/// Largest `fail_after` / `recover_after`.
pub const MAX_PROBE_COUNT: u32 = 100;
/// Longest `expect_body` substring.
pub const MAX_EXPECT_BODY: usize = 1024;
/// Bytes of an HTTP answer a probe reads; `expect_body` must appear in them.
pub const MAX_PROBE_BODY: usize = 64 * 1024;
/// Most elements of a command target's `argv`, and the longest element.
pub const MAX_ARGV: usize = 64;
pub const MAX_ARG_LEN: usize = 4096;
/// Longest URL of an http/https target.
pub const MAX_URL_LEN: usize = 2048;
/// Longest Consul node, service or check name (Consul allows more; ours
/// are short and end up in URLs, logs and the Raft log).
pub const MAX_CONSUL_NAME_LEN: usize = 256;
/// Longest `consul.timeout` in a node file. Evidence older than this is not
/// evidence about "now" any more.
pub const MAX_CONSUL_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes of a Consul answer the reader accepts; more is refused as an
/// error, never truncated into a wrong answer.
pub const MAX_CONSUL_BODY: usize = 4 * 1024 * 1024;
/// Longest Consul ACL token (they are 36-character UUIDs).
pub const MAX_CONSUL_TOKEN_LEN: usize = 512;
/// Longest `observation_ttl`, `min_failover_interval` and `failback_after`.
pub const MAX_FAILOVER_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

// ---- limits -------------------------------------------------------------

/// Most voters a cluster may list. Three or five is the design (one witness
/// per site, or 2+2+1); more voters make every commit slower without
/// surviving more site failures.
pub const MAX_PEERS: usize = 7;
/// Longest node, site or cluster name (a DNS label's limit, so a name can
/// be used in host names and metric labels unchanged).
pub const MAX_NAME_LEN: usize = 63;
/// `max_drift` must stay below this. Real clocks drift by parts per
/// million and NTP slews at most 0.05 %; 10 % means a broken clock or a
/// typo, and would stretch every lease wait by over 20 %.
pub const MAX_DRIFT_LIMIT: f64 = 0.1;
/// A follower must be able to miss this many heartbeats in a row (lost
/// packets, a GC-free but busy peer, WAN jitter) before it calls an
/// election; fewer turns one dropped packet into a term change.
pub const HEARTBEATS_PER_ELECTION_TIMEOUT: u32 = 3;
/// An agent gets at least this many renewal attempts per lease, so one or
/// two lost renewals (a leader change, a dropped packet) do not fence a
/// healthy site.
pub const RENEWALS_PER_LEASE: u32 = 3;

pub(super) fn cluster() -> String {
    CLUSTER.to_string()
}

pub(super) fn listen() -> SocketAddr {
    LISTEN
}

pub(super) fn http_listen() -> SocketAddr {
    HTTP_LISTEN
}

pub(super) fn consul_address() -> String {
    CONSUL_ADDRESS.to_string()
}

pub(super) fn consul_timeout() -> Duration {
    CONSUL_TIMEOUT
}

pub(super) fn yes() -> bool {
    true
}
