//! [`ConfigError`]: what is wrong with a configuration and how to fix it.

use std::fmt;
use std::path::{Path, PathBuf};

/// One thing wrong with an otherwise well-formed configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The key, in TOML terms: `node.id`, `peer[id=3].addr`, `lease.lease_ttl`.
    pub key: String,
    /// What is wrong, with the offending values.
    pub message: String,
    /// What to do about it.
    pub fix: String,
}

impl Problem {
    pub(crate) fn new(
        key: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Problem {
            key: key.into(),
            message: message.into(),
            fix: fix.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}; {}", self.key, self.message, self.fix)
    }
}

/// Why a configuration file was refused. Every variant names the file (when
/// there is one), the key or position, what is wrong and what to do. The
/// caller's only sensible reaction is to show it and let the operator fix
/// the input.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("cannot read config file {}: {source}; check the path and its permissions", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The text is not TOML, or does not fit the schema: an unknown key, a
    /// missing required key, a value of the wrong type or format.
    #[error("{}", render_parse(.path, *.line, *.column, .context, .message, .hint))]
    Parse {
        path: PathBuf,
        /// 1-based; 0 when the parser gave no position.
        line: usize,
        /// 1-based, in characters.
        column: usize,
        /// Where in the file: the enclosing table and the offending line.
        context: String,
        /// The parser's own words (they name the key or value).
        message: String,
        /// What to do; empty when `message` already says it.
        hint: String,
    },
    /// Well-formed, but unsafe or inconsistent values. Lists every problem
    /// found, not only the first, so one edit fixes them all.
    #[error("{}", render_invalid(.path.as_deref(), .problems))]
    Invalid {
        path: Option<PathBuf>,
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The validation problems, empty for read and parse errors.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }

    /// Attach the file a validation error came from, if it has none yet.
    pub(crate) fn in_file(self, origin: &Path) -> Self {
        match self {
            ConfigError::Invalid {
                path: None,
                problems,
            } => ConfigError::Invalid {
                path: Some(origin.to_path_buf()),
                problems,
            },
            other => other,
        }
    }

    /// `Ok(())` when nothing was found, the problems otherwise.
    pub(crate) fn from_problems(problems: Vec<Problem>) -> Result<(), ConfigError> {
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                path: None,
                problems,
            })
        }
    }

    /// Turn a `toml` deserialisation error into a located, explained one.
    pub(crate) fn from_toml(
        origin: &Path,
        text: &str,
        err: &toml::de::Error,
        kind: FileKind,
    ) -> Self {
        let message = err.message().trim().to_string();
        let (line, column, context) = match err.span() {
            Some(span) => locate(text, span.start),
            None => (0, 0, String::new()),
        };
        let hint = hint_for(&message, kind);
        ConfigError::Parse {
            path: origin.to_path_buf(),
            line,
            column,
            context,
            message,
            hint,
        }
    }
}

/// Which schema a text was parsed against; picks the hints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FileKind {
    Node,
    Policy,
    /// `witness bgp`'s own file (bgp.toml, see `crate::bgp`).
    Bgp,
    /// Only checked for TOML syntax so far.
    Unknown,
}

fn render_parse(
    path: &Path,
    line: usize,
    column: usize,
    context: &str,
    message: &str,
    hint: &str,
) -> String {
    let at = if line == 0 {
        path.display().to_string()
    } else {
        format!("{}:{line}:{column}", path.display())
    };
    let context = if context.is_empty() {
        String::new()
    } else {
        format!("{context}: ")
    };
    let hint = if hint.is_empty() {
        String::new()
    } else {
        format!("; {hint}")
    };
    format!("{at}: {context}{message}{hint}")
}

fn render_invalid(path: Option<&Path>, problems: &[Problem]) -> String {
    let prefix = match path {
        Some(path) => format!("{}: ", path.display()),
        None => String::new(),
    };
    match problems {
        [one] => format!("{prefix}{one}"),
        many => {
            let mut out = format!("{prefix}{} problems:", many.len());
            for problem in many {
                out.push_str("\n  - ");
                out.push_str(&problem.to_string());
            }
            out
        }
    }
}

/// 1-based line and column of byte `offset`, and a description of where it
/// is: the enclosing `[table]` header (if any) and the line's text.
fn locate(text: &str, offset: usize) -> (usize, usize, String) {
    let offset = offset.min(text.len());
    // `offset` comes from the parser and is a char boundary; stay safe anyway.
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    let line_text = text[line_start..].lines().next().unwrap_or("").trim();

    let table = text[..line_start]
        .lines()
        .chain(std::iter::once(line_text))
        .filter_map(table_header)
        .next_back();
    let shown_line = if line_text.chars().count() > 80 {
        format!("{}…", line_text.chars().take(80).collect::<String>())
    } else {
        line_text.to_string()
    };
    let context = match table {
        Some(table) if table != line_text => format!("in {table}, `{shown_line}`"),
        _ if shown_line.is_empty() => String::new(),
        _ => format!("`{shown_line}`"),
    };
    (line, column, context)
}

/// `Some("[node]")` when `line` is a table or array-of-tables header.
fn table_header(line: &str) -> Option<&str> {
    let line = line.split('#').next().unwrap_or("").trim();
    let inner = line.strip_prefix('[')?.strip_suffix(']')?;
    let inner = inner
        .strip_prefix('[')
        .and_then(|i| i.strip_suffix(']'))
        .unwrap_or(inner);
    let is_key = !inner.is_empty()
        && inner
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ' '));
    is_key.then_some(line)
}

fn hint_for(message: &str, kind: FileKind) -> String {
    let examples = match kind {
        FileKind::Bgp => "deploy/bgp/bgp.toml documents every key",
        _ => "deploy/examples/ documents every key",
    };
    let node_only = ["`node`", "`peer`", "`raft`"];
    let policy_only = ["`lease`", "`probe`", "`site`", "`failover`", "`directives`"];
    if message.contains("unknown field") {
        // Both files have a [consul] table, with different keys.
        if kind == FileKind::Node
            && ["`mode`", "`server_sites`"]
                .iter()
                .any(|k| message.contains(&format!("unknown field {k}")))
            && message.contains("`token_file`")
        {
            return "consul.mode and consul.server_sites are cluster policy (cluster.toml); a \
                    node's [consul] only says how to reach the local agent"
                .into();
        }
        if kind == FileKind::Policy && message.contains("expected `mode` or `server_sites`") {
            return "the Consul agent's address, scheme, token_file, timeout and datacenter are \
                    node-local: they belong in each witness's own file, not in the cluster policy"
                .into();
        }
        if kind == FileKind::Node && policy_only.iter().any(|k| message.contains(k)) {
            return "lease timers, probes, sites and failover settings are cluster policy: they \
                    belong in cluster.toml (applied with `witnessctl policy apply`), not in a \
                    node's file"
                .into();
        }
        if kind == FileKind::Policy && node_only.iter().any(|k| message.contains(k)) {
            return "[node], [[peer]] and [raft] belong in a node's own file, not in the \
                    cluster policy; a file with a [node] table is read as a node config"
                .into();
        }
        return format!("remove the key or fix its spelling; {examples}");
    }
    if message.contains("missing field") {
        return format!("add the key; {examples}");
    }
    // Our own value parsers (listen addresses, max_drift) already say what
    // to write; a generic hint after that would only dilute it.
    if message.contains(" write ") {
        return String::new();
    }
    if message.contains("duration") || message.contains("time unit") {
        return "write durations as humantime strings with a unit, e.g. \"150ms\", \"3s\", \
                \"1m 30s\""
            .into();
    }
    match kind {
        FileKind::Unknown => "fix the TOML syntax at that position (see https://toml.io)".into(),
        _ => format!("fix the value at that position; {examples}"),
    }
}
