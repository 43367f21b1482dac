//! Operator actions through the real `witnessctl`, from the operator's host,
//! recorded as client operations.
//!
//! Exit status 0 is `ok`; 1 (refused: a precondition failed, nothing was
//! committed) is `fail`; anything else (unreachable, unavailable, the
//! bound ran out) is `info`: the action may have been committed, now or
//! later.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use super::recorder::{Recorder, now_ms};
use crate::history::{Event, Op, OpF, OpType, OpValue};

/// `witnessctl --timeout`, per endpoint: a failover goes through the lease
/// wait (about `lease_ttl + margin`) before it answers.
const CTL_TIMEOUT: &str = "15s";
/// Bound on the whole command (three endpoints tried in turn).
const CTL_BOUND: Duration = Duration::from_secs(50);

/// How to run `witnessctl` from the operator's host.
#[derive(Clone, Debug)]
pub struct Ctl {
    pub witnessctl: PathBuf,
    pub ops_ns: String,
    /// `ip:port` of every witness.
    pub endpoints: Vec<String>,
}

impl Ctl {
    /// Run `witnessctl --output json ARGS`: (exit code, stdout, stderr).
    pub fn run(&self, args: &[&str], timeout: &str) -> (Option<i32>, String, String) {
        let mut argv: Vec<OsString> = vec![
            self.witnessctl.clone().into_os_string(),
            "--endpoints".into(),
            self.endpoints.join(",").into(),
            "--timeout".into(),
            timeout.into(),
            "--output".into(),
            "json".into(),
        ];
        argv.extend(args.iter().map(OsString::from));
        let mut cmd = crate::netns::exec(&self.ops_ns, &argv);
        cmd.env_remove("WITNESS_ENDPOINTS");
        cmd.env_remove("WITNESS_INSECURE");
        // The lab's operator certificate (of the namespace labs' cluster).
        let pki = crate::lab::pki::Pki::shared(crate::lab::netcluster::CLUSTER);
        cmd.envs(crate::lab::pki::Pki::ctl_env(&pki.operator()));
        match crate::cmd::run_unchecked(cmd, None, CTL_BOUND) {
            Ok(done) => (
                done.output.status.code(),
                String::from_utf8_lossy(&done.output.stdout).into_owned(),
                String::from_utf8_lossy(&done.output.stderr).into_owned(),
            ),
            Err(e) => (None, String::new(), e.to_string()),
        }
    }

    /// `status --output json` (the leader's view), if any witness answers.
    pub fn status(&self) -> Option<serde_json::Value> {
        let (code, out, _) = self.run(&["status"], "2s");
        if code != Some(0) {
            return None;
        }
        serde_json::from_str(&out).ok()
    }

    /// Perform `f` (freeze, unfreeze, or failover to `to`) as client
    /// process `process`, recording invoke and completion.
    pub fn act(&self, rec: &Recorder, f: OpF, to: Option<&str>) -> OpType {
        let process = rec.process();
        let op = |t_ms, kind, value, error| {
            Event::Op(Op {
                t_ms,
                process,
                kind,
                f,
                node: None,
                to: to.map(str::to_string),
                value,
                error,
            })
        };
        let reason = "jepsen operator";
        let args: Vec<&str> = match (f, to) {
            (OpF::Freeze, _) => vec!["freeze", "--reason", reason],
            (OpF::Unfreeze, _) => vec!["unfreeze", "--reason", reason],
            (OpF::Failover, Some(site)) => vec![
                "failover",
                "--to",
                site,
                "--reason",
                reason,
                "--accept-data-loss",
            ],
            _ => return OpType::Fail,
        };
        rec.record(&op(now_ms(), OpType::Invoke, None, None));
        let (code, out, err) = self.run(&args, CTL_TIMEOUT);
        let t_ms = now_ms();
        let kind = match code {
            Some(0) => OpType::Ok,
            Some(1) => OpType::Fail,
            _ => OpType::Info,
        };
        let value = match (kind, f) {
            (OpType::Ok, OpF::Failover) => serde_json::from_str::<serde_json::Value>(&out)
                .ok()
                .and_then(|v| v["epoch"].as_u64())
                .map(OpValue::Epoch),
            _ => None,
        };
        let error = (kind != OpType::Ok).then(|| err.trim().to_string());
        rec.record(&op(t_ms, kind, value, error));
        kind
    }
}
