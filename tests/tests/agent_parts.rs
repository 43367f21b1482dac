//! The agent's building blocks over real processes: the Carbonio actions
//! run through the hook runner against the fake Carbonio CLI
//! (`fake_carbonio`), the user switch with the real `runuser`, and
//! `witness import-habeat` as the built binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use witness::agent::carbonio::{self, Account, Carbonio, Hostname, Invocation, PromoteExit};
use witness::agent::config::{CarbonioFlavor, CarbonioSection};
use witness::agent::hooks::{self, HookOutcome, HookStatus};
use witness_e2e::witness_bin;

const FAKE: &str = env!("CARGO_BIN_EXE_fake_carbonio");

/// A scratch dir with the fake CLI under both names and a call log.
struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Lab {
        let dir = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink(FAKE, dir.path().join("carbonio")).expect("symlink carbonio");
        std::os::unix::fs::symlink(FAKE, dir.path().join("zmprov")).expect("symlink zmprov");
        Lab { dir }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("calls.jsonl")
    }

    fn section(&self, flavor: CarbonioFlavor) -> CarbonioSection {
        CarbonioSection {
            flavor,
            carbonio: self.dir.path().join("carbonio"),
            zmprov: self.dir.path().join("zmprov"),
            ..CarbonioSection::default()
        }
    }

    fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env = vec![
            (
                "FAKE_CARBONIO_LOG".to_string(),
                self.log_path().display().to_string(),
            ),
            ("WITNESS_EPOCH".to_string(), "7".to_string()),
            ("WITNESS_DIRECTIVE_ID".to_string(), "d-42".to_string()),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env
    }

    fn calls(&self) -> Vec<Value> {
        std::fs::read_to_string(self.log_path())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    fn starts(&self) -> Vec<Value> {
        self.calls()
            .into_iter()
            .filter(|c| c["event"] == "start")
            .collect()
    }
}

async fn run(inv: &Invocation, env: &[(String, String)]) -> HookOutcome {
    hooks::run_argv(&inv.argv, inv.timeout, env, std::future::pending())
        .await
        .expect("runs")
}

fn argv_of(call: &Value) -> Vec<String> {
    call["argv"]
        .as_array()
        .expect("argv")
        .iter()
        .map(|a| a.as_str().expect("string").to_string())
        .collect()
}

/// A promotion followed by its per-account follow-ups reaches the CLI with
/// exactly the reference's argv, the epoch and directive id in the
/// environment, and `zmprov` recognised by its name.
#[tokio::test]
async fn promotion_and_follow_ups_reach_the_cli_verbatim() {
    let lab = Lab::new();
    let cli = Carbonio::with_user_switch(lab.section(CarbonioFlavor::Ha), false);
    let env = lab.env(&[]);
    let source = Hostname::new("mbox1.example.com").expect("host");
    let promote = run(&cli.promote_accounts(&source, 5), &env).await;
    assert_eq!(promote.status, HookStatus::Exited(0));
    let alice = Account::new("alice@example.com").expect("account");
    for inv in [
        cli.flush_cache(&alice, true),
        cli.pause_replicas(&alice),
        cli.restart_replicas(&alice),
    ] {
        assert!(run(&inv, &env).await.success());
    }
    let calls = lab.starts();
    let seen: Vec<(String, Vec<String>)> = calls
        .iter()
        .map(|c| (c["tool"].as_str().expect("tool").to_string(), argv_of(c)))
        .collect();
    let words = |s: &str| s.split(' ').map(str::to_string).collect::<Vec<_>>();
    assert_eq!(
        seen,
        [
            (
                "carbonio".to_string(),
                words("--sync ha promoteAccounts source_mail_host mbox1.example.com threads 5")
            ),
            (
                "zmprov".to_string(),
                words("fc -a account alice@example.com")
            ),
            (
                "carbonio".to_string(),
                words("--json ha pauseReplicas accounts alice@example.com")
            ),
            (
                "carbonio".to_string(),
                words("--json ha restartReplicas accounts alice@example.com")
            ),
        ]
    );
    for call in &calls {
        assert_eq!(call["epoch"], "7");
        assert_eq!(call["directive_id"], "d-42");
        assert!(call["boottime_ns"].as_str().is_some_and(|s| s != "0"));
    }
}

/// The MailReplica flavor calls `carbonio … MailReplica …`.
#[tokio::test]
async fn mailreplica_flavor_reaches_the_cli() {
    let lab = Lab::new();
    let cli = Carbonio::with_user_switch(lab.section(CarbonioFlavor::MailReplica), false);
    let source = Hostname::new("mbox2.example.com").expect("host");
    assert!(
        run(&cli.promote_accounts(&source, 4), &lab.env(&[]))
            .await
            .success()
    );
    assert_eq!(
        argv_of(&lab.starts()[0])[..3],
        ["--sync", "MailReplica", "promoteAccounts"]
    );
}

/// A failed `--sync` promotion's exit code is read, not thrown away.
#[tokio::test]
async fn failed_promotion_is_reported() {
    let lab = Lab::new();
    let cli = Carbonio::with_user_switch(lab.section(CarbonioFlavor::Ha), false);
    let source = Hostname::new("mbox1.example.com").expect("host");
    let env = lab.env(&[
        ("FAKE_CARBONIO_FAIL", "1"),
        ("FAKE_CARBONIO_FAIL_MATCH", "promoteAccounts"),
    ]);
    let outcome = run(&cli.promote_accounts(&source, 4), &env).await;
    let HookStatus::Exited(code) = outcome.status else {
        panic!("{outcome:?}");
    };
    assert_eq!(PromoteExit::from_code(code), PromoteExit::Failed);
    assert!(outcome.output.contains("failing with 1"), "{outcome:?}");
}

/// A hung CLI is killed at its timeout: the log shows a start and no end.
#[tokio::test]
async fn hung_cli_is_killed_at_the_timeout() {
    let lab = Lab::new();
    let cli = Carbonio::with_user_switch(lab.section(CarbonioFlavor::Ha), false);
    let mut inv = cli.account_status(&Hostname::new("mbox1.example.com").expect("host"));
    inv.timeout = Duration::from_millis(300);
    let outcome = run(&inv, &lab.env(&[("FAKE_CARBONIO_SLEEP_MS", "30000")])).await;
    assert_eq!(
        outcome.status,
        HookStatus::TimedOut(Duration::from_millis(300))
    );
    let calls = lab.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["event"], "start");
}

/// Canned `getAccountStatus` output goes through the CLI and the parsers:
/// accounts for the follow-ups, and the failback pre-flight's verdict.
#[tokio::test]
async fn account_status_output_is_parsed() {
    let lab = Lab::new();
    let cli = Carbonio::with_user_switch(lab.section(CarbonioFlavor::Ha), false);
    let status_file = lab.dir.path().join("status.json");
    let replica = |seq: u64| {
        serde_json::json!({"accountId": "1", "itemId": 10, "sequence": seq, "mailboxId": 3,
            "destination": "mbox1.example.com", "available": true, "priority": 10,
            "canConnectToKafka": true})
    };
    let answer = |seq: u64| {
        serde_json::json!({"response": {"values": [
            {"accountId": "1", "accountName": "alice@example.com", "accountMailHost": "mbox2.example.com",
             "paused": false, "mailboxId": 5, "sequence": 100, "itemId": 10, "replicas": [replica(seq)]}
        ]}})
        .to_string()
    };
    let status_file_text = status_file.display().to_string();
    let env = lab.env(&[("FAKE_CARBONIO_STATUS_FILE", status_file_text.as_str())]);
    let inv = cli.account_status(&Hostname::new("mbox2.example.com").expect("host"));
    let dest = Hostname::new("mbox1.example.com").expect("host");

    std::fs::write(&status_file, answer(100)).expect("write");
    let out = run(&inv, &env).await;
    assert!(out.success());
    let accounts = carbonio::parse_accounts(&out.output).expect("accounts");
    assert_eq!(
        accounts.accounts,
        [Account::new("alice@example.com").expect("a")]
    );
    assert!(carbonio::replicas_caught_up(&out.output, &dest).caught_up());

    std::fs::write(&status_file, answer(99)).expect("write");
    let out = run(&inv, &env).await;
    assert!(!carbonio::replicas_caught_up(&out.output, &dest).caught_up());
}

/// As root, the CLI runs as the configured user through `runuser`: the fake
/// records the uid it ran with.
#[tokio::test]
async fn runuser_switches_to_the_configured_user() {
    // SAFETY: geteuid has no preconditions.
    #[allow(unsafe_code)]
    let root = unsafe { libc::geteuid() } == 0;
    let runuser = Path::new("/usr/sbin/runuser");
    if !root || !runuser.exists() {
        eprintln!("SKIPPED runuser_switches_to_the_configured_user: needs root and {runuser:?}");
        return;
    }
    let lab = Lab::new();
    // `nobody` must be able to reach the fake and write the log.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(lab.dir.path(), std::fs::Permissions::from_mode(0o777))
        .expect("chmod");
    let section = CarbonioSection {
        user: "nobody".into(),
        ..lab.section(CarbonioFlavor::Ha)
    };
    let cli = Carbonio::with_user_switch(section, true);
    let inv = cli.account_status(&Hostname::new("mbox1.example.com").expect("host"));
    assert_eq!(inv.argv[..4], ["/usr/sbin/runuser", "-u", "nobody", "--"]);
    let out = run(&inv, &lab.env(&[])).await;
    assert!(out.success(), "{out:?}");
    let calls = lab.starts();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["uid"], 65534, "{calls:?}");
    assert_eq!(calls[0]["epoch"], "7", "runuser keeps the environment");
}

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../witness/src/agent/testdata")
        .join(name)
}

/// `witness import-habeat` prints a TOML that `AgentConfig` loads, and
/// lists on stderr what has no equivalent.
#[test]
fn import_habeat_prints_a_loadable_agent_file() {
    for fixture in ["habeat-docs.yml", "habeat-repo.yml"] {
        let out = Command::new(witness_bin())
            .arg("import-habeat")
            .arg(testdata(fixture))
            .output()
            .expect("run witness");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{fixture}: {stderr}");
        let toml = String::from_utf8(out.stdout).expect("utf-8");
        let config = witness::agent::AgentConfig::parse(&toml, Path::new("imported.toml"))
            .unwrap_or_else(|e| panic!("{fixture}: {e}\n{toml}"));
        assert_eq!(config.agent.site, "dc-b");
        assert!(stderr.contains("have no direct equivalent"), "{stderr}");
        assert!(stderr.contains("local.provider"), "{stderr}");
        assert!(stderr.contains("habeat.timer"), "{stderr}");
    }
}

/// Broken YAML makes `witness import-habeat` fail with the position.
#[test]
fn import_habeat_refuses_bad_yaml() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("habeat.yml");
    std::fs::write(&path, "local:\n  role: appserver\n   whoami: [unclosed\n").expect("write");
    let out = Command::new(witness_bin())
        .arg("import-habeat")
        .arg(&path)
        .output()
        .expect("run witness");
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "no TOML on failure");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{}:", path.display())), "{stderr}");
    assert!(stderr.contains("fix the YAML"), "{stderr}");
}
