//! `node_logs`: no panic or invariant violation in any node log (Jepsen's
//! `log-file-pattern`, etcd's `:crash` checker).
//!
//! The witness keeps its invariants as `assert!`s with a message (STYLE.md
//! §5): a broken one panics, and Rust's panic handler prints
//! `thread '…' panicked at file:line:`, followed by the message
//! (`assertion failed: …` for a bare `assert!`). A corrupt store is refused
//! with `data dir … is corrupt (…)`. These are the markers; each hit is
//! reported as `file:line` with the line's text. Lines are matched one by
//! one, so both the human and the JSON log formats are covered.
//!
//! No node logs at all (none listed in `meta.logs`, none under `logs/`) is
//! unknown: a crash could have gone unseen.

use super::{Anomaly, CheckResult, Findings};
use crate::history::History;

/// One node log, as read from disk.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeLog {
    /// Path as shown in reports (relative to the run directory).
    pub path: String,
    pub text: String,
}

/// What marks trouble, and the anomaly kind it is reported as.
pub const MARKERS: &[(&str, &str)] = &[
    ("panicked at", "panic"),
    ("assertion failed", "assertion"),
    ("invariant violat", "invariant"),
    ("invariant broken", "invariant"),
    ("fatal runtime error", "panic"),
    ("has overflowed its stack", "panic"),
    ("is corrupt (", "corrupt-store"),
];

/// Longest line text quoted in a report.
const QUOTE: usize = 300;

pub fn check(_h: &History, logs: &[NodeLog]) -> CheckResult {
    let mut f = Findings::new();
    if logs.is_empty() {
        f.doubt(Anomaly::new(
            "no-node-logs",
            "no node logs to scan (list them in meta.logs or put them under logs/)".into(),
        ));
        return f.finish("");
    }
    let mut lines = 0usize;
    for log in logs {
        for (i, line) in log.text.lines().enumerate() {
            lines += 1;
            let lower = line.to_ascii_lowercase();
            if let Some((_, kind)) = MARKERS.iter().find(|(m, _)| lower.contains(m)) {
                let quoted: String = line.trim().chars().take(QUOTE).collect();
                f.violation(Anomaly::new(
                    kind,
                    format!("{}:{}: {quoted}", log.path, i + 1),
                ));
            }
        }
    }
    f.note(format!("{} logs, {lines} lines scanned", logs.len()));
    f.finish(format!(
        "no panic or invariant violation in {} node logs",
        logs.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::Valid;
    use crate::checker::build::history;

    fn log(path: &str, text: &str) -> NodeLog {
        NodeLog {
            path: path.into(),
            text: text.into(),
        }
    }

    /// Ordinary errors (a fence, a refused claim) are not crashes.
    #[test]
    fn clean_logs_are_valid() {
        let logs = [log(
            "logs/w1.log",
            "INFO started\nERROR FENCED: lease ran out\n",
        )];
        assert_eq!(check(&history(vec![]), &logs).valid, Valid::True);
    }

    /// A panic is reported with file:line, in either log format.
    #[test]
    fn panics_are_reported_with_their_place() {
        let logs = [
            log(
                "logs/w1.log",
                "ok\nthread 'main' panicked at witness/src/state/mod.rs:10:5:\ntwo active sites at epoch 3\n",
            ),
            log(
                "logs/w2.json",
                "{\"level\":\"ERROR\",\"message\":\"assertion failed: x\"}\n",
            ),
        ];
        let r = check(&history(vec![]), &logs);
        assert_eq!(r.valid, Valid::False);
        assert_eq!(r.anomalies.len(), 2);
        assert!(
            r.anomalies[0].message.starts_with("logs/w1.log:2: thread"),
            "{r:?}"
        );
        assert_eq!(r.anomalies[1].kind, "assertion");
    }

    /// No logs to read: unknown.
    #[test]
    fn no_logs_is_unknown() {
        assert_eq!(check(&history(vec![]), &[]).valid, Valid::Unknown);
    }
}
