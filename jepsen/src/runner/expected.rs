//! `jepsen check-checkers`: the harness judged by runs that must fail.
//!
//! A checker that never says "invalid" proves nothing. Each experiment here
//! removes one guard the product's safety rests on and runs the nemesis
//! that guard exists for; the harness must judge every such run
//! **invalid** (exit 1). Valid or unknown means a checker missed a real
//! violation, and the command fails. Each experiment has a **control**:
//! the same seed and faults with the guard in place (the real binaries,
//! every clock within `max_drift`), which must be judged **valid** — so
//! what the checkers catch is the broken guard, not the fault.
//!
//! | experiment | what is broken | nemesis (control) | what catches it |
//! | --- | --- | --- | --- |
//! | `agent-ignores-lease-expiry` | a sabotaged agent never fences when its lease runs out | `partition-site` (the same) | `split_brain`: the cut-off site keeps serving after the other is activated |
//! | `grant-without-read-index` | a sabotaged leader grants leases without confirming it still leads | `leader-with-site` (the same) | `split_brain`, and `leases` (`stale-grant`): the deposed leader keeps the old site's leases alive past the new activation |
//! | `failover-on-consul-alone` | a sabotaged engine counts a site down when Consul says its services are critical, whatever its own probes say | `consul-lies` (the same) | `failover_cause`: a failover from a site whose services answered, with no fault but Consul's lie to explain it |
//! | `clock-beyond` | dc-a's agents run at half speed, 50 × `max_drift` (the real binaries) | `clock-beyond` (`clock,partition-site`) | `split_brain`: dc-a's agents believe their lease lasts twice as long |
//!
//! The sabotaged binaries are the product built with the cargo feature
//! `sabotage` (`witness::sabotage`), switched on per run by
//! `WITNESS_SABOTAGE`; the build is copied to `<target>/<profile>/sabotage/`
//! and the normal build restored, so nothing else ever runs it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One experiment: its name, the sabotage switched on (none: the real
/// binaries), the nemesis, the control's nemeses, the seed.
pub struct Experiment {
    pub name: &'static str,
    pub sabotage: Option<&'static str>,
    pub nemesis: &'static str,
    pub control: &'static str,
    pub seed: u64,
}

/// Every experiment, in order.
pub const EXPERIMENTS: [Experiment; 4] = [
    Experiment {
        name: "agent-ignores-lease-expiry",
        sabotage: Some("agent-ignores-lease-expiry"),
        nemesis: "partition-site",
        control: "partition-site",
        seed: 2,
    },
    Experiment {
        name: "grant-without-read-index",
        sabotage: Some("grant-without-read-index"),
        nemesis: "leader-with-site",
        control: "leader-with-site",
        seed: 2,
    },
    Experiment {
        name: "failover-on-consul-alone",
        sabotage: Some("failover-on-consul-alone"),
        nemesis: "consul-lies",
        control: "consul-lies",
        seed: 2,
    },
    Experiment {
        name: "clock-beyond",
        sabotage: None,
        nemesis: "clock-beyond",
        control: "clock,partition-site",
        seed: 2,
    },
];

/// Build the sabotaged `witness` next to the normal binaries in `bins`
/// (as [`crate::lab::bin_dir`] built them): `bins/sabotage/` with it,
/// `witnessctl` and `fake_carbonio`; then restore the normal build.
pub fn build_sabotaged(bins: &Path) -> anyhow::Result<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let release = bins.file_name().is_some_and(|n| n == "release");
    let cargo = |features: bool| -> anyhow::Result<()> {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--quiet", "-p", "witness", "--bin", "witness"])
            .current_dir(workspace);
        if features {
            cmd.args(["--features", "sabotage"]);
        }
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status()?;
        anyhow::ensure!(status.success(), "cargo build of witness failed");
        Ok(())
    };
    let out = bins.join("sabotage");
    std::fs::create_dir_all(&out)?;
    cargo(true)?;
    std::fs::copy(bins.join("witness"), out.join("witness"))?;
    cargo(false)?;
    for bin in ["witnessctl", "fake_carbonio", "libjepsen_clockshim.so"] {
        std::fs::copy(bins.join(bin), out.join(bin))?;
    }
    Ok(out)
}
