//! Bad configuration files are refused by the real binary with a clear
//! message and a non-zero exit, before anything is started or written.

use std::process::Command;

use witness_e2e::*;

fn check(cfg: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("node.toml");
    std::fs::write(&path, cfg).expect("write");
    let out = Command::new(witness_bin())
        .arg("check-config")
        .arg(&path)
        .output()
        .expect("run");
    if !out.status.success() {
        // `run` must refuse the same file before binding or writing anything.
        let run = Command::new(witness_bin())
            .args(["run", "--config"])
            .arg(&path)
            .output()
            .expect("run");
        assert!(
            !run.status.success(),
            "run must refuse what check-config refuses: {}",
            text(&run)
        );
        let data = cfg
            .lines()
            .find_map(|l| l.strip_prefix("data_dir = \""))
            .expect("data_dir");
        let data = data.trim_end_matches('"');
        assert!(
            !std::path::Path::new(data).exists(),
            "nothing written for a bad config"
        );
    }
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn valid() -> String {
    let c = Cluster::new(3);
    std::fs::read_to_string(c.config_path(1)).expect("config")
}

/// The generated test config is valid (so each case below fails for its own reason).
#[test]
fn the_baseline_config_is_valid() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("node.toml");
    std::fs::write(&path, valid()).expect("write");
    let out = Command::new(witness_bin())
        .arg("check-config")
        .arg(&path)
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("worst-case failover") || stdout.contains("Worst-case"),
        "{stdout}"
    );
}

/// Each bad config is refused with a message that names what to fix.
#[test]
fn bad_configs_are_refused_with_clear_errors() {
    let base = valid();
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "unknown key",
            base.replacen("[node]\n", "[node]\ncolour = \"blue\"\n", 1),
            &["colour"],
        ),
        (
            "duplicate node id",
            base.replacen("[[peer]]\nid = 2", "[[peer]]\nid = 3", 1),
            &["is used by both", "3"],
        ),
        (
            "own id not in peers",
            base.replacen("[node]\nid = 1", "[node]\nid = 9", 1),
            &["9", "peer"],
        ),
        (
            "bad address",
            {
                let addr_line = base
                    .lines()
                    .find(|l| l.starts_with("addr = "))
                    .expect("addr");
                base.replacen(addr_line, "addr = \"127.0.0.1\"", 1)
            },
            &["addr", "127.0.0.1"],
        ),
        (
            "bad listen",
            base.replacen("listen = \"127.0.0.1:", "listen = \"localhost-ish:", 1),
            &["listen"],
        ),
    ];
    for (name, cfg, words) in cases {
        let (ok, err) = check(&cfg);
        assert!(!ok, "{name}: must be refused");
        for w in words {
            assert!(err.contains(w), "{name}: error should mention {w:?}: {err}");
        }
    }
}
