//! `results.json`: every checker's result and the run's overall validity,
//! and [`analyze`], which (re)builds it and the timeline from a run
//! directory.
//!
//! ```json
//! {"valid": true | false | "unknown",
//!  "checkers": {"split_brain": {"valid": true, "summary": "…", "anomalies": [], "notes": []}, …},
//!  "counts": {"events": 812, "ops": 300, "ok": 280, "fail": 12, "info": 8,
//!             "faults": 6, "failovers": 2, "decisions": 9},
//!  "notes": ["history.jsonl:813: the last line is torn …"]}
//! ```
//!
//! The overall `valid` is Jepsen's merge: `false` if any checker is false,
//! else `"unknown"` if any is unknown, else `true`.
//!
//! # A run directory
//!
//! - `history.jsonl`: the history ([`crate::history`]);
//! - node logs: the paths in `meta.logs` (relative to the directory) and
//!   every file under `logs/` (recursively);
//! - written here: `results.json` and `timeline.html` ([`crate::report`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::checker::{CheckResult, NodeLog, Valid, check_all};
use crate::history::{DecisionKind, History, HistoryError, OpType};

/// How much of one node log is read; the rest is noted, not scanned.
pub const MAX_LOG_BYTES: u64 = 256 * 1024 * 1024;

/// Counts for the summary.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Counts {
    /// History events, meta excluded.
    pub events: usize,
    /// Client operations (invocations).
    pub ops: usize,
    pub ok: usize,
    pub fail: usize,
    /// Indeterminate, including never completed.
    pub info: usize,
    /// Fault windows (nemesis starts).
    pub faults: usize,
    /// Committed activations after the first (changes of the active site).
    pub failovers: usize,
    /// Committed decisions recorded.
    pub decisions: usize,
}

/// Everything `results.json` holds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Results {
    pub valid: Valid,
    /// By checker name, in report order.
    #[serde(serialize_with = "ordered")]
    pub checkers: Vec<(String, CheckResult)>,
    pub counts: Counts,
    /// How the inputs were read (torn lines, logs not found, …).
    pub notes: Vec<String>,
}

fn ordered<S: serde::Serializer>(v: &[(String, CheckResult)], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(v.len()))?;
    for (k, r) in v {
        m.serialize_entry(k, r)?;
    }
    m.end()
}

impl Results {
    /// Run every checker over `h` and `logs`.
    pub fn compute(h: &History, logs: &[NodeLog]) -> Results {
        let checkers: Vec<(String, CheckResult)> = check_all(h, logs)
            .into_iter()
            .map(|(n, r)| (n.to_string(), r))
            .collect();
        let valid = checkers
            .iter()
            .fold(Valid::True, |v, (_, r)| v.and(r.valid));
        let ops = h.completed_ops();
        let activations = h
            .decisions()
            .filter(|(_, d)| d.kind == DecisionKind::Activated)
            .count();
        let counts = Counts {
            events: h.events.len(),
            ops: ops.len(),
            ok: ops.iter().filter(|c| c.kind() == OpType::Ok).count(),
            fail: ops.iter().filter(|c| c.kind() == OpType::Fail).count(),
            info: ops.iter().filter(|c| c.kind() == OpType::Info).count(),
            faults: h.fault_windows().len(),
            failovers: activations.saturating_sub(1),
            decisions: h.decisions().count(),
        };
        Results {
            valid,
            checkers,
            counts,
            notes: h.notes.clone(),
        }
    }

    /// A few lines for the terminal.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for (name, r) in &self.checkers {
            out.push_str(&format!("{:<8} {name}: {}\n", r.valid.name(), r.summary));
        }
        let c = &self.counts;
        out.push_str(&format!(
            "{} ops ({} ok, {} fail, {} info), {} faults, {} failovers\n",
            c.ops, c.ok, c.fail, c.info, c.faults, c.failovers
        ));
        for n in &self.notes {
            out.push_str(&format!("note: {n}\n"));
        }
        out.push_str(&format!("valid: {}\n", self.valid.name()));
        out
    }
}

/// The exit status for a validity: 0 valid, 1 invalid, 2 unknown.
pub fn exit_code(v: Valid) -> u8 {
    match v {
        Valid::True => 0,
        Valid::False => 1,
        Valid::Unknown => 2,
    }
}

/// Why a run directory could not be analysed.
#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    /// The history is missing or malformed: fix the file.
    #[error(transparent)]
    History(#[from] HistoryError),
    /// An output could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Re-check a run directory: read `history.jsonl` and the node logs, run
/// every checker, write `results.json` and `timeline.html`.
pub fn analyze(dir: &Path) -> Result<Results, AnalyzeError> {
    let history = History::read(&dir.join("history.jsonl"))?;
    let (logs, mut notes) = read_logs(dir, &history.meta.logs);
    let mut results = Results::compute(&history, &logs);
    results.notes.append(&mut notes);
    let glitches = clock_glitches(dir);
    if !glitches.is_empty() {
        // The injected clock itself misbehaved: what the checkers say is
        // not about the product.
        results.notes.push(format!(
            "an agent's clock stepped back, which only a broken clock injection can \
             do, so this run cannot be judged: {}",
            glitches.join("; ")
        ));
        results.valid = Valid::Unknown;
    }
    let json = serde_json::to_string_pretty(&results).unwrap_or_default();
    write(&dir.join("results.json"), &json)?;
    let html = crate::report::render(&history, &results);
    write(&dir.join("timeline.html"), &html)?;
    Ok(results)
}

/// [`clock_glitch`](crate::runner::collect::clock_glitch) of every agent
/// serving log under `dir/logs/` (`agent-<name>.state.jsonl`).
fn clock_glitches(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir.join("logs")) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("agent-") && n.ends_with(".state.jsonl"))
        })
        .collect();
    paths.sort();
    paths
        .iter()
        .filter_map(|p| crate::runner::collect::clock_glitch(p))
        .collect()
}

fn write(path: &Path, text: &str) -> Result<(), AnalyzeError> {
    std::fs::write(path, text).map_err(|source| AnalyzeError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// The listed logs and everything under `logs/`; what could not be read is
/// noted (the `node_logs` checker says unknown when nothing was read).
pub fn read_logs(dir: &Path, listed: &[String]) -> (Vec<NodeLog>, Vec<String>) {
    let mut paths: BTreeSet<PathBuf> = listed.iter().map(|p| dir.join(p)).collect();
    let mut stack = vec![dir.join("logs")];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                paths.insert(p);
            }
        }
    }
    let mut logs = Vec::new();
    let mut notes = Vec::new();
    for p in paths {
        let shown = p
            .strip_prefix(dir)
            .unwrap_or(&p)
            .to_string_lossy()
            .into_owned();
        let read = std::fs::File::open(&p).and_then(|file| {
            use std::io::Read;
            let mut bytes = Vec::new();
            file.take(MAX_LOG_BYTES).read_to_end(&mut bytes)?;
            Ok(bytes)
        });
        match read {
            Ok(bytes) => {
                if bytes.len() as u64 == MAX_LOG_BYTES {
                    notes.push(format!(
                        "{shown}: only the first {MAX_LOG_BYTES} bytes were scanned"
                    ));
                }
                logs.push(NodeLog {
                    path: shown,
                    text: String::from_utf8_lossy(&bytes).into_owned(),
                });
            }
            Err(e) => notes.push(format!("{shown}: cannot read node log: {e}")),
        }
    }
    (logs, notes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::build::*;
    use crate::history::Phase;

    /// One false checker makes the run false; the JSON says so as Jepsen would.
    #[test]
    fn results_merge_and_serialise() {
        let h = history(vec![
            vec![activated(0.0, 1, 1, "dc-a")],
            read(0.0, 1.0, 1, "w1", "dc-a", 2),
        ]);
        let r = Results::compute(&h, &[]);
        assert_eq!(r.valid, Valid::False);
        assert_eq!(exit_code(r.valid), 1);
        let json: serde_json::Value = serde_json::to_value(&r).expect("serialises");
        assert_eq!(json["valid"], serde_json::json!(false));
        assert_eq!(json["checkers"]["node_logs"]["valid"], "unknown");
        assert_eq!(json["counts"]["ops"], 1);
        assert!(r.summary().ends_with("valid: false\n"));
    }

    /// `analyze` reads a run directory, finds logs, writes both outputs.
    #[test]
    fn analyze_a_run_directory() {
        let dir = std::env::temp_dir().join(format!("jepsen-analyze-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("logs/w1")).expect("mkdir");
        let mut h = history(vec![
            vec![activated(0.0, 1, 1, "dc-a"), phase(10.0, Phase::Heal)],
            read(20.0, 21.0, 1, "w1", "dc-a", 1),
        ]);
        h.meta.logs = vec!["w2.log".into()];
        std::fs::write(dir.join("history.jsonl"), h.to_jsonl()).expect("write");
        std::fs::write(dir.join("logs/w1/witness.log"), "fine\n").expect("write");
        std::fs::write(dir.join("w2.log"), "thread 'x' panicked at a.rs:1:1:\n").expect("write");
        let r = analyze(&dir).expect("analyses");
        let logs = &r
            .checkers
            .iter()
            .find(|(n, _)| n == "node_logs")
            .expect("ran")
            .1;
        assert_eq!(logs.valid, Valid::False);
        assert!(
            logs.anomalies[0].message.starts_with("w2.log:1:"),
            "{logs:?}"
        );
        assert!(dir.join("results.json").exists());
        let html = std::fs::read_to_string(dir.join("timeline.html")).expect("html");
        assert!(html.contains("<svg"));
        std::fs::write(dir.join("history.jsonl"), "{\"event\":\"op\"}\n").expect("write");
        let err = analyze(&dir).expect_err("bad history").to_string();
        assert!(err.contains("history.jsonl:1"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
