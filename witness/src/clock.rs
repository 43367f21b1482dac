//! The wall clock, for timestamps shown to people and for the liveness
//! windows that are defined in wall time (anti-flap, failback). Safety never
//! reads it: leases and lease waits use each node's monotonic clock.
//!
//! The one seam: a deterministic simulation installs its own clock with
//! [`set_wall_clock`], so simulated time, not the host's, drives those
//! windows and a seed replays exactly. Nothing else should call it.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// A replacement wall clock: Unix milliseconds, or `None` to fall back to
/// the system clock (e.g. on a thread outside the simulation).
pub type WallClock = fn() -> Option<u64>;

static WALL_CLOCK: OnceLock<WallClock> = OnceLock::new();

/// Install `clock` for the rest of the process. Returns false if a clock
/// was installed before (the first one stays).
pub fn set_wall_clock(clock: WallClock) -> bool {
    WALL_CLOCK.set(clock).is_ok()
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    if let Some(ms) = WALL_CLOCK.get().and_then(|clock| clock()) {
        return ms;
    }
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub use witness_trust::format_unix;
