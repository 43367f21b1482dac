//! The agent: `witness agent`, the process on each HA node (a mailstore, a
//! proxy, …) that replaces habeat. [`run`] is its main loop (the verdict
//! watch, lease renewal, self-fencing, hooks, the serving log) and argues
//! its safety; [`directive`] executes one directive (claim, run, renew,
//! report); the other modules are the building blocks they use.
//!
//! # What the agent owns
//!
//! An agent speaks for one node, in one site, in one role. It keeps its
//! site's **lease** alive by renewing it through any witness it can reach,
//! it **fences** its node when the lease runs out, and it **executes the
//! directives** the leader orders for its role (the built-in Carbonio
//! actions). It decides nothing about which site is active: that is the
//! witnesses' quorum.
//!
//! # The invariant it keeps: never serve past the lease
//!
//! The leader may activate another site once it has waited
//! `lease_ttl × (1+ρ)/(1−ρ) + margin` since its last grant (DESIGN.md
//! §3.4). That wait is only safe if every agent of the old site has
//! stopped serving by then, which each piece of this module helps ensure:
//!
//! - [`clock`]: the lease is counted from the agent's *send* time of the
//!   attempt that earned it, on `CLOCK_BOOTTIME`, which keeps counting
//!   while the machine is suspended (`CLOCK_MONOTONIC` does not: a laptop
//!   lid or a suspended VM would otherwise stretch a lease). A stall
//!   detector notices when the process itself was frozen (SIGSTOP, a
//!   stuck hypervisor, swap storm) so the loop re-checks the lease before
//!   doing anything else.
//! - [`hooks`]: fencing runs operator commands (withdraw the BGP route,
//!   stop the proxy). Each runs as an argv array, never through a shell,
//!   with a timeout, in its own process group that is killed as a whole
//!   when the time is up, so nothing a hook started can act later at a
//!   stale epoch. A failing fence hook is retried with bounded backoff.
//!   `fence_timeout` bounds the whole fence and must fit in `margin`.
//! - [`watchdog`]: an agent that dies or hangs cannot fence itself. While
//!   it holds a lease it pets the kernel watchdog; if it stops petting, the
//!   machine reboots within the watchdog timeout, which must also fit in
//!   `margin`. A clean stop disarms it with the magic close.
//! - [`carbonio`]: the directives' commands (account promotion, flush
//!   cache, replica restarts, the failback pre-flight) are built as argv
//!   arrays from validated host and account names, and run as the
//!   `zextras` user, so a hostile name from the CLI's own output cannot
//!   become a command.
//!
//! [`config`] is the agent's node-local file (DESIGN.md §2a) and
//! [`habeat`] turns an existing habeat.yml into one. [`client`] carries
//! calls to whichever witness answers; [`serving`] is the serving state
//! and its JSON-lines log.
//!
//! # What it does not do
//!
//! No failure detection and no quorum (the witnesses probe every site);
//! no Consul reading (habeat's "alive" check has no equivalent here); no
//! shell anywhere; no decision based on the wall clock. A paused VM's
//! clocks stop entirely, so no agent-side code can bound it: only an
//! outside fence (the router's BFD, the watchdog of the hypervisor) can.

pub mod carbonio;
pub mod check;
pub mod client;
pub mod clock;
pub mod config;
pub mod defaults;
pub mod directive;
pub mod habeat;
pub mod hooks;
pub mod run;
pub mod serving;
pub mod watchdog;

pub use config::{
    AgentConfig, AgentSection, CarbonioFlavor, CarbonioSection, HookCommand, HooksSection,
    NamedCommand, WatchdogMode, WatchdogSection,
};
