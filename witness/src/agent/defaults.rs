//! Every default and every limit of the agent's configuration, in one place.
//!
//! The serde defaults, validation and the example files
//! (`deploy/examples/agent-*.toml`) all use these values; the examples
//! repeat them in comments. Change a value here and in the examples
//! together.

use std::time::Duration;

// ---- [agent] ------------------------------------------------------------

/// `agent.fence_timeout`: how long fencing may take, from the moment the
/// lease runs out until every `fence` hook has finished. Equal to the
/// default `lease.margin` (1 s), which must be at least this long: the
/// leader's lease wait only covers a fence that fits in the margin.
pub const FENCE_TIMEOUT: Duration = Duration::from_secs(1);
/// Most witness endpoints. Three or five witnesses is the design.
pub const MAX_WITNESSES: usize = 7;

// ---- [hooks] ------------------------------------------------------------

/// Most commands per hook list.
pub const MAX_HOOK_COMMANDS: usize = 16;
/// Most elements of one command's argv, and the longest element.
pub const MAX_ARGV: usize = 64;
pub const MAX_ARG_LEN: usize = 4096;
/// Longest timeout of any one hook command. A hook that needs longer is a
/// job for a directive (claimed, renewed, recorded), not a hook.
pub const MAX_HOOK_TIMEOUT: Duration = Duration::from_secs(10 * 60);

// ---- [carbonio] ---------------------------------------------------------

/// `carbonio.carbonio`: the Carbonio CLI, where Carbonio installs it.
pub const CARBONIO_BIN: &str = "/opt/zextras/bin/carbonio";
/// `carbonio.zmprov`: the provisioning CLI used for `flushCache`.
pub const ZMPROV_BIN: &str = "/opt/zextras/bin/zmprov";
/// `carbonio.runuser`: util-linux's `runuser`, which switches to `user`
/// without a shell (see [`carbonio`](super::carbonio) for why not setuid).
pub const RUNUSER_BIN: &str = "/usr/sbin/runuser";
/// `carbonio.user`: the Carbonio CLI runs as this user, as habeat's
/// `su - zextras -c …` did.
pub const CARBONIO_USER: &str = "zextras";
/// `carbonio.promote_timeout`: the synchronous promotion of every account
/// of a mailstore; thousands of accounts take minutes.
pub const PROMOTE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// `carbonio.command_timeout`: every other Carbonio command (one status
/// query, one flush, one replica restart, one module stop/start).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2 * 60);
/// Longest `promote_timeout` / `command_timeout`.
pub const MAX_CARBONIO_TIMEOUT: Duration = Duration::from_secs(6 * 3600);
// ---- [watchdog] ---------------------------------------------------------

/// `watchdog.device`: the Linux watchdog device.
pub const WATCHDOG_DEVICE: &str = "/dev/watchdog";
/// `watchdog.timeout`: one second, the default `lease.margin`, which must
/// be at least this long. Whole seconds only: the kernel API takes an
/// integer number of seconds.
pub const WATCHDOG_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest `watchdog.timeout`.
pub const MAX_WATCHDOG_TIMEOUT: Duration = Duration::from_secs(60);

pub(super) fn fence_timeout() -> Duration {
    FENCE_TIMEOUT
}
pub(super) fn carbonio_bin() -> std::path::PathBuf {
    CARBONIO_BIN.into()
}
pub(super) fn zmprov_bin() -> std::path::PathBuf {
    ZMPROV_BIN.into()
}
pub(super) fn runuser_bin() -> std::path::PathBuf {
    RUNUSER_BIN.into()
}
pub(super) fn carbonio_user() -> String {
    CARBONIO_USER.into()
}
pub(super) fn promote_timeout() -> Duration {
    PROMOTE_TIMEOUT
}
pub(super) fn command_timeout() -> Duration {
    COMMAND_TIMEOUT
}
pub(super) fn watchdog_device() -> std::path::PathBuf {
    WATCHDOG_DEVICE.into()
}
pub(super) fn watchdog_timeout() -> Duration {
    WATCHDOG_TIMEOUT
}
