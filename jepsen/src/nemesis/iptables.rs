//! Our iptables rules inside one host namespace: installing them into our
//! own chains, listing them, and removing them exactly.
//!
//! Two chains are ours and nothing else is: `WJ-NEM-IN` in the filter table,
//! jumped to from `INPUT`, holds every drop rule; `WJ-NEM-NAT` in the nat
//! table, jumped to from `OUTPUT`, holds the latency steering. Heal deletes
//! the jumps and the chains, which returns the namespace to the state
//! `Topology::create` left it in. Every change to one namespace is one
//! `iptables-restore --noflush` transaction, so a rule set is applied whole
//! or not at all, and there is one tool call per namespace rather than one
//! per rule.

use crate::cmd::{self, TOOL_TIMEOUT};
use crate::error::Result;

/// The filter-table chain holding our drop rules.
pub const CHAIN_IN: &str = "WJ-NEM-IN";
/// The nat-table chain holding our DNAT steering.
pub const CHAIN_NAT: &str = "WJ-NEM-NAT";

/// Which of our tables a batch of rules goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    /// Drop rules, jumped to from `INPUT`.
    Filter,
    /// DNAT rules, jumped to from `OUTPUT`.
    Nat,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Nat => "nat",
        }
    }
    fn chain(self) -> &'static str {
        match self {
            Table::Filter => CHAIN_IN,
            Table::Nat => CHAIN_NAT,
        }
    }
    fn hook(self) -> &'static str {
        match self {
            Table::Filter => "INPUT",
            Table::Nat => "OUTPUT",
        }
    }
}

fn in_ns(ns: &str, tool: &str, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new("ip");
    c.args(["netns", "exec", ns, tool]).args(args);
    c
}

/// `iptables-save` of the namespace (all loaded tables).
pub fn save(ns: &str) -> Result<String> {
    let out = cmd::run(in_ns(ns, "iptables-save", &[]), None, TOOL_TIMEOUT)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The lines of `save` output that belong to table `table`.
fn section<'a>(saved: &'a str, table: &str) -> Vec<&'a str> {
    let header = format!("*{table}");
    let mut inside = false;
    let mut lines = Vec::new();
    for l in saved.lines() {
        if l == header {
            inside = true;
        } else if l == "COMMIT" {
            inside = false;
        } else if inside {
            lines.push(l);
        }
    }
    lines
}

/// Append `rules` (each the arguments after `-A <chain>`) to our chain in
/// `table`, creating the chain and its jump first if they are missing.
pub fn append(ns: &str, table: Table, rules: &[String]) -> Result<()> {
    if rules.is_empty() {
        return Ok(());
    }
    let saved = save_table(ns, table)?;
    let declared = format!(":{} ", table.chain());
    let have_chain = section(&saved, table.name())
        .iter()
        .any(|l| l.starts_with(&declared));
    let mut script = format!("*{}\n", table.name());
    if !have_chain {
        // Declaring a user chain in a --noflush restore also flushes it, so
        // only do it when the chain does not exist yet; otherwise faults
        // could not be stacked.
        script.push_str(&format!(":{} - [0:0]\n", table.chain()));
        // First in the hook, so our drops win over anything else that a
        // process under test might add to the same namespace.
        script.push_str(&format!("-I {} 1 -j {}\n", table.hook(), table.chain()));
    }
    for r in rules {
        script.push_str(&format!("-A {} {r}\n", table.chain()));
    }
    script.push_str("COMMIT\n");
    restore(ns, &script)
}

fn save_table(ns: &str, table: Table) -> Result<String> {
    let out = cmd::run(
        in_ns(ns, "iptables-save", &["-t", table.name()]),
        None,
        TOOL_TIMEOUT,
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn restore(ns: &str, script: &str) -> Result<()> {
    cmd::run(
        in_ns(ns, "iptables-restore", &["-w", "--noflush"]),
        Some(script.as_bytes()),
        TOOL_TIMEOUT,
    )
    .map(|_| ())
}

/// Our rules currently installed in `ns`, as `iptables-save` prints them
/// (jumps to our chains included).
pub fn ours(ns: &str) -> Result<Vec<String>> {
    let saved = save(ns)?;
    Ok(saved
        .lines()
        .filter(|l| l.contains(CHAIN_IN) || l.contains(CHAIN_NAT))
        .filter(|l| l.starts_with("-A"))
        .map(str::to_owned)
        .collect())
}

/// Remove our chains and the jumps to them from `ns`; leave everything
/// else. Idempotent: a namespace without our chains is left as it is.
pub fn remove_ours(ns: &str) -> Result<()> {
    let saved = save(ns)?;
    let mut script = String::new();
    for table in [Table::Filter, Table::Nat] {
        let lines = section(&saved, table.name());
        let declared = format!(":{} ", table.chain());
        if !lines.iter().any(|l| l.starts_with(&declared)) {
            continue;
        }
        script.push_str(&format!("*{}\n", table.name()));
        // Delete every jump to our chain, wherever it was put, then the
        // chain's rules, then the chain: a user chain that is still
        // referenced cannot be deleted.
        let suffix = format!(" -j {}", table.chain());
        for l in &lines {
            if let Some(rule) = l.strip_prefix("-A ")
                && rule.ends_with(&suffix)
                && !rule.starts_with(table.chain())
            {
                script.push_str(&format!("-D {rule}\n"));
            }
        }
        script.push_str(&format!(
            "-F {}\n-X {}\nCOMMIT\n",
            table.chain(),
            table.chain()
        ));
    }
    if script.is_empty() {
        Ok(())
    } else {
        restore(ns, &script)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the named table's lines are taken from a save.
    #[test]
    fn section_picks_one_table() {
        let saved = "# c\n*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j WJ-NEM-IN\nCOMMIT\n*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";
        assert_eq!(
            section(saved, "filter"),
            [":INPUT ACCEPT [0:0]", "-A INPUT -j WJ-NEM-IN"]
        );
        assert_eq!(section(saved, "nat"), [":OUTPUT ACCEPT [0:0]"]);
        assert!(section(saved, "mangle").is_empty());
    }
}
