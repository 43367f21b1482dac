//! The systemd units in `deploy/systemd/` are valid for systemd: every key
//! known, every command executable, every dependency resolvable, and the
//! fenced-service drop-in binds a service to the agent.
//!
//! `systemd-analyze verify` checks unit files without a running systemd (these
//! machines have none as PID 1). It only warns about unknown keys, so the test
//! fails on any warning that names one of the files, and first proves on a
//! deliberately broken unit that this systemd version does warn.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use witness_e2e::{require_tool, text, witness_bin};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd")
}

const SYSTEMD_ANALYZE: &str = "systemd-analyze";

/// Copy `name` from deploy/systemd into `dir`, pointing its commands at the
/// binary this build made (verify checks that each one is executable).
fn install(name: &str, dir: &Path) -> PathBuf {
    let source = fs::read_to_string(deploy_dir().join(name))
        .unwrap_or_else(|e| panic!("reading deploy/systemd/{name}: {e}"));
    let unit = source.replace("/usr/bin/witness", &witness_bin().display().to_string());
    let path = dir.join(name);
    fs::write(&path, unit).expect("write unit");
    path
}

/// A stand-in for a service the agent fences (the real one belongs to
/// Carbonio or BIRD), with the project's drop-in installed as documented.
fn fenced_stand_in(unit: &str, dir: &Path) -> PathBuf {
    let path = dir.join(unit);
    fs::write(
        &path,
        "[Unit]\nDescription=stand-in for a fenced service\n\n[Service]\nExecStart=/bin/sleep infinity\n",
    )
    .expect("write stand-in");
    let dropins = dir.join(format!("{unit}.d"));
    fs::create_dir_all(&dropins).expect("drop-in dir");
    fs::copy(
        deploy_dir().join("fenced-service.conf"),
        dropins.join("witness.conf"),
    )
    .expect("copy drop-in");
    path
}

fn verify(dir: &Path, units: &[PathBuf]) -> Output {
    Command::new(SYSTEMD_ANALYZE)
        .arg("verify")
        .arg("--man=no")
        .args(units)
        // The temp dir first, then the system's own units (network-online
        // and the like); drop-ins are found beside the units.
        .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.display()))
        .output()
        .expect("run systemd-analyze")
}

/// Warnings about files under `dir` (systemd's own units may warn about
/// themselves on some hosts; those are not ours to judge).
fn warnings_about(out: &Output, dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains(&prefix) || l.starts_with("witness"))
        .map(str::to_string)
        .collect()
}

#[test]
fn systemd_units_verify_cleanly_and_bind_fenced_services_to_the_agent() {
    require_tool(SYSTEMD_ANALYZE, "systemd");
    let dir = tempfile::tempdir().expect("tempdir");

    // The check itself works: an unknown key is reported.
    let broken = dir.path().join("broken.service");
    fs::write(
        &broken,
        "[Unit]\nDescription=x\n\n[Service]\nExecStart=/bin/true\nNoSuchKey=1\n",
    )
    .expect("write");
    let out = verify(dir.path(), std::slice::from_ref(&broken));
    assert!(
        !warnings_about(&out, dir.path()).is_empty(),
        "systemd-analyze did not flag an unknown key; this check would prove nothing: {}",
        text(&out)
    );
    fs::remove_file(&broken).expect("remove");

    let units = vec![
        install("witness.service", dir.path()),
        install("witness-agent.service", dir.path()),
        fenced_stand_in("bird.service", dir.path()),
        fenced_stand_in("carbonio-proxy.service", dir.path()),
    ];
    let out = verify(dir.path(), &units);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed: {}",
        text(&out)
    );
    let warnings = warnings_about(&out, dir.path());
    assert!(
        warnings.is_empty(),
        "warnings about our units: {warnings:#?}"
    );

    // Drop-ins are read, and their dependencies resolved: the same
    // drop-in, bound to a unit that does not exist, fails verification.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let orphan = fenced_stand_in("bird.service", elsewhere.path());
    let out = verify(elsewhere.path(), std::slice::from_ref(&orphan));
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("witness-agent"),
        "a fenced service bound to a missing agent unit passed verification: {}",
        text(&out)
    );

    // The agent unit never restarts in a tight loop and gives its fence
    // hooks time on stop; the witness unit keeps its data dir writable.
    let agent = fs::read_to_string(deploy_dir().join("witness-agent.service")).expect("read");
    for key in ["Restart=always", "RestartSec=1s", "KillMode=mixed"] {
        assert!(agent.contains(key), "witness-agent.service lacks {key}");
    }
    let witness = fs::read_to_string(deploy_dir().join("witness.service")).expect("read");
    for key in ["StateDirectory=witness", "ReadWritePaths=/var/lib/witness"] {
        assert!(witness.contains(key), "witness.service lacks {key}");
    }
}
