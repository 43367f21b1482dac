//! The built-in Carbonio actions, as argv arrays.
//!
//! These are the commands habeat ran (reference/carbonio-ha.md §3), minus
//! its shell: habeat built `su - zextras -c '/opt/zextras/bin/carbonio …
//! <name>'` strings with `os.popen`, so a quote in an account name returned
//! by the CLI itself broke out of the quoting. Here every command is an
//! [`Invocation`]: an argv vector and a timeout for
//! [`hooks::run_argv`](super::hooks::run_argv), and every value put into
//! it is a [`Hostname`] or an [`Account`], types that can only be built
//! from a value that passed [`check`](super::check) (a plain host name; a
//! narrow e-mail address: no spaces, no quotes, no leading `-`).
//!
//! # The commands
//!
//! With `flavor = "ha"` (`carbonio ha …`, deprecated in 25.9.0 but kept)
//! or `"mailreplica"` (`carbonio MailReplica …`, 25.9.0 on), `<ns>` below:
//!
//! | action | argv |
//! | --- | --- |
//! | promote (sync) | `carbonio --sync <ns> promoteAccounts source_mail_host <host> threads <n>` |
//! | account status | `carbonio --json <ns> getAccountStatus mailHost <host>` |
//! | flush cache | `zmprov fc [-a] account <name>` |
//! | restart replica | `carbonio --json <ns> pauseReplicas accounts <name>`, then `… restartReplicas accounts <name>` |
//! | HA module | `carbonio <ns> doStopService module` / `doStartService module` |
//!
//! `--sync` makes the promotion wait and exit 0 Successful, 1 Failed,
//! 2 Stopped, 3 Removed, 4 Interrupted ([`PromoteExit`]); habeat threw that
//! code away, we do not. The account list for the per-account actions must
//! be read with `getAccountStatus mailHost <failed host>` *before* the
//! promotion (afterwards the accounts live elsewhere), as habeat did.
//!
//! # Running as `zextras`: `runuser`, not setuid
//!
//! The agent runs as root (it pets the watchdog and runs fence hooks); the
//! Carbonio CLI must run as `zextras`. Two ways were weighed:
//!
//! - `CommandExt::uid/gid`: no helper program, but std then *drops every
//!   supplementary group* (it calls `setgroups(0)` when root), sets no
//!   `HOME`/`USER`/`LOGNAME`, and restoring the groups needs an unsafe
//!   `pre_exec` (std runs `pre_exec` after `setuid`, too late for
//!   `setgroups`) with our own user database lookup.
//! - util-linux `runuser -u zextras -- argv…` (chosen): initialises the
//!   user's groups and environment the way `su` does, resolves the user
//!   when the command runs, needs no unsafe code, executes argv directly
//!   (no shell: `-u` mode takes the command as argv, and `--` ends
//!   runuser's own options), and stays in the caller's process group and
//!   session (checked: it does not `setsid` in `-u` mode), so killing the
//!   hook's group kills the CLI too. It ships with util-linux on both
//!   Debian/Ubuntu and RHEL. It is what `su - zextras -c` did for habeat,
//!   without the login shell.
//!
//! When the agent does not run as root it cannot switch users at all;
//! then the argv is run as is (tests, or an agent started as `zextras`).
//!
//! # `getAccountStatus` output
//!
//! The reference gives the field names (per account `accountId,
//! accountName, accountMailHost, paused, mailboxId, sequence, itemId`; per
//! replica `accountId, itemId, sequence, mailboxId, destination,
//! available, priority, canConnectToKafka`) and that the accounts are the
//! list `response.values`, but **not how replicas nest inside an
//! account**. This parser assumes a `replicas` array in each account
//! object, and is conservative: anything it cannot read with certainty
//! (not JSON, no `response`, a missing or non-integer `sequence`/`itemId`,
//! no `replicas` array, no replica on the destination) means *not caught
//! up*, which makes a failback refuse rather than lose mail. Check the
//! shape against a real Carbonio before relying on an automatic failback.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::check;
use super::config::{CarbonioFlavor, CarbonioSection};

/// A Carbonio server name that is safe to put into an argv.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Hostname(String);

impl Hostname {
    pub fn new(value: &str) -> Result<Hostname, CarbonioError> {
        check::hostname(value).map_err(|why| CarbonioError::BadValue {
            what: "host name",
            why,
        })?;
        Ok(Hostname(value.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An account name that is safe to put into an argv.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Account(String);

impl Account {
    pub fn new(value: &str) -> Result<Account, CarbonioError> {
        check::account(value).map_err(|why| CarbonioError::BadValue {
            what: "account name",
            why,
        })?;
        Ok(Account(value.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a Carbonio action could not be built or its output not read.
#[derive(Debug, thiserror::Error)]
pub enum CarbonioError {
    /// A value refused before it reached a command line.
    #[error("refusing {what}: {why}")]
    BadValue { what: &'static str, why: String },
    /// The CLI printed something that is not the expected JSON.
    #[error("cannot read the Carbonio CLI's output: {0}")]
    Output(String),
}

/// One command, ready for [`hooks::run_argv`](super::hooks::run_argv).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    pub argv: Vec<String>,
    pub timeout: Duration,
}

/// What the exit code of `promoteAccounts --sync` means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromoteExit {
    Successful,
    Failed,
    Stopped,
    Removed,
    Interrupted,
    /// Not one of the documented codes.
    Other(i32),
}

impl PromoteExit {
    pub fn from_code(code: i32) -> PromoteExit {
        match code {
            0 => PromoteExit::Successful,
            1 => PromoteExit::Failed,
            2 => PromoteExit::Stopped,
            3 => PromoteExit::Removed,
            4 => PromoteExit::Interrupted,
            other => PromoteExit::Other(other),
        }
    }
}

/// Builds the Carbonio commands for one agent.
#[derive(Clone, Debug)]
pub struct Carbonio {
    section: CarbonioSection,
    switch_user: bool,
}

impl Carbonio {
    /// Commands that switch to `section.user` with `runuser` when the agent
    /// runs as root, and run as the agent's own user otherwise.
    pub fn new(section: CarbonioSection) -> Carbonio {
        // SAFETY: geteuid has no preconditions and cannot fail.
        #[allow(unsafe_code)]
        let root = unsafe { libc::geteuid() } == 0;
        Carbonio::with_user_switch(section, root)
    }

    /// Commands that switch user (`runuser -u <user> -- …`) or not.
    pub fn with_user_switch(section: CarbonioSection, switch_user: bool) -> Carbonio {
        Carbonio {
            section,
            switch_user,
        }
    }

    /// `carbonio --sync <ns> promoteAccounts source_mail_host <host> threads <n>`:
    /// promote every account of the failed mailstore `source` onto this
    /// one, waiting for the end ([`PromoteExit`] reads the exit code).
    /// `threads` comes from the directive (the cluster policy's
    /// `[directives] promote_threads`).
    pub fn promote_accounts(&self, source: &Hostname, threads: u32) -> Invocation {
        let threads = threads.to_string();
        self.carbonio(
            &["--sync", self.ns(), "promoteAccounts", "source_mail_host"],
            &[source.as_str(), "threads", &threads],
            self.section.promote_timeout,
        )
    }

    /// `carbonio --json <ns> getAccountStatus mailHost <host>`: the accounts
    /// whose mailbox is on `mail_host`, with their replicas.
    pub fn account_status(&self, mail_host: &Hostname) -> Invocation {
        self.carbonio(
            &["--json", self.ns(), "getAccountStatus", "mailHost"],
            &[mail_host.as_str()],
            self.section.command_timeout,
        )
    }

    /// `zmprov fc [-a] account <name>`; `-a` ("all application services")
    /// when the directive says so (`[directives] flush_cache_all_services`).
    pub fn flush_cache(&self, account: &Account, all_services: bool) -> Invocation {
        let mut argv = vec![path(&self.section.zmprov), "fc".to_string()];
        if all_services {
            argv.push("-a".into());
        }
        argv.push("account".into());
        argv.push(account.as_str().into());
        self.wrap(argv, self.section.command_timeout)
    }

    /// `carbonio --json <ns> pauseReplicas accounts <name>`.
    pub fn pause_replicas(&self, account: &Account) -> Invocation {
        self.carbonio(
            &["--json", self.ns(), "pauseReplicas", "accounts"],
            &[account.as_str()],
            self.section.command_timeout,
        )
    }

    /// `carbonio --json <ns> restartReplicas accounts <name>`.
    pub fn restart_replicas(&self, account: &Account) -> Invocation {
        self.carbonio(
            &["--json", self.ns(), "restartReplicas", "accounts"],
            &[account.as_str()],
            self.section.command_timeout,
        )
    }

    /// `carbonio <ns> doStopService module`: the old site's HA module
    /// (the `stop-ha-module` directive).
    pub fn stop_ha_module(&self) -> Invocation {
        self.carbonio(
            &[self.ns(), "doStopService", "module"],
            &[],
            self.section.command_timeout,
        )
    }

    /// `carbonio <ns> doStartService module`.
    pub fn start_ha_module(&self) -> Invocation {
        self.carbonio(
            &[self.ns(), "doStartService", "module"],
            &[],
            self.section.command_timeout,
        )
    }

    fn ns(&self) -> &'static str {
        match self.section.flavor {
            CarbonioFlavor::Ha => "ha",
            CarbonioFlavor::MailReplica => "MailReplica",
        }
    }

    fn carbonio(&self, fixed: &[&str], values: &[&str], timeout: Duration) -> Invocation {
        let mut argv = vec![path(&self.section.carbonio)];
        argv.extend(fixed.iter().chain(values).map(|s| s.to_string()));
        self.wrap(argv, timeout)
    }

    fn wrap(&self, command: Vec<String>, timeout: Duration) -> Invocation {
        let argv = if self.switch_user {
            let mut argv = vec![
                path(&self.section.runuser),
                "-u".to_string(),
                self.section.user.clone(),
                "--".to_string(),
            ];
            argv.extend(command);
            argv
        } else {
            command
        };
        Invocation { argv, timeout }
    }
}

fn path(p: &Path) -> String {
    // Validation refuses non-UTF-8 paths.
    p.to_string_lossy().into_owned()
}

/// The accounts a `getAccountStatus` answer lists, split into names safe
/// to use and names refused (with why), so one odd account is reported
/// and skipped rather than failing the whole list or reaching `zmprov`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccountList {
    pub accounts: Vec<Account>,
    pub refused: Vec<(String, String)>,
}

/// Read the account names of a `getAccountStatus --json` answer.
pub fn parse_accounts(output: &str) -> Result<AccountList, CarbonioError> {
    let values = status_values(output)?;
    let mut list = AccountList::default();
    for (i, value) in values.iter().enumerate() {
        let Some(name) = value.get("accountName").and_then(Value::as_str) else {
            list.refused
                .push((format!("values[{i}]"), "has no accountName string".into()));
            continue;
        };
        match Account::new(name) {
            Ok(account) => list.accounts.push(account),
            Err(e) => list.refused.push((name.to_string(), e.to_string())),
        }
    }
    Ok(list)
}

/// The failback pre-flight's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Preflight {
    /// Every listed account has an available replica on the destination
    /// at the source's sequence and itemId.
    CaughtUp { accounts: usize },
    /// Not (or not provably) caught up: why, with up to
    /// [`MAX_PREFLIGHT_EXAMPLES`] examples.
    NotCaughtUp {
        reason: String,
        behind: usize,
        examples: Vec<String>,
    },
}

impl Preflight {
    pub fn caught_up(&self) -> bool {
        matches!(self, Preflight::CaughtUp { .. })
    }
}

/// Examples kept in a [`Preflight::NotCaughtUp`].
pub const MAX_PREFLIGHT_EXAMPLES: usize = 10;

/// Decide from `getAccountStatus mailHost <source> --json` output whether
/// every account's replica on `destination` has caught up with its source:
/// not paused, an `available` replica whose `destination` is
/// `destination`, with `sequence` and `itemId` equal to the account's.
/// Anything unreadable counts as not caught up.
pub fn replicas_caught_up(output: &str, destination: &Hostname) -> Preflight {
    let not = |reason: String| Preflight::NotCaughtUp {
        reason,
        behind: 0,
        examples: Vec::new(),
    };
    let values = match status_values(output) {
        Ok(values) => values,
        Err(e) => return not(e.to_string()),
    };
    if values.is_empty() {
        return not(
            "the source lists no accounts, so nothing proves the replicas are complete; check \
             the mailHost given to getAccountStatus"
                .into(),
        );
    }
    let mut behind = 0usize;
    let mut examples = Vec::new();
    for (i, account) in values.iter().enumerate() {
        if let Err(why) = account_caught_up(account, destination) {
            behind += 1;
            if examples.len() < MAX_PREFLIGHT_EXAMPLES {
                let name = account
                    .get("accountName")
                    .and_then(Value::as_str)
                    .map_or_else(|| format!("values[{i}]"), |n| clip(n, 80));
                examples.push(format!("{name}: {why}"));
            }
        }
    }
    if behind == 0 {
        Preflight::CaughtUp {
            accounts: values.len(),
        }
    } else {
        Preflight::NotCaughtUp {
            reason: format!(
                "{behind} of {} accounts have no replica on {destination} caught up with the source",
                values.len()
            ),
            behind,
            examples,
        }
    }
}

fn account_caught_up(account: &Value, destination: &Hostname) -> Result<(), String> {
    if account.get("paused").and_then(Value::as_bool) != Some(false) {
        return Err("replication is paused (or `paused` is missing)".into());
    }
    let sequence = integer(account, "sequence").ok_or("no integer sequence")?;
    let item_id = integer(account, "itemId").ok_or("no integer itemId")?;
    let replicas = account
        .get("replicas")
        .and_then(Value::as_array)
        .ok_or("no replicas array")?;
    let on_destination: Vec<&Value> = replicas
        .iter()
        .filter(|r| {
            r.get("destination")
                .and_then(Value::as_str)
                .is_some_and(|d| d.eq_ignore_ascii_case(destination.as_str()))
        })
        .collect();
    if on_destination.is_empty() {
        return Err(format!("no replica on {destination}"));
    }
    let mut why = String::new();
    for replica in on_destination {
        let available = replica.get("available").and_then(Value::as_bool) == Some(true);
        let r_seq = integer(replica, "sequence");
        let r_item = integer(replica, "itemId");
        if available && r_seq == Some(sequence) && r_item == Some(item_id) {
            return Ok(());
        }
        why = format!(
            "replica available={available}, sequence {} itemId {} vs source {sequence}/{item_id}",
            r_seq.map_or("?".into(), |v| v.to_string()),
            r_item.map_or("?".into(), |v| v.to_string()),
        );
    }
    Err(why)
}

/// An integer field, written as a JSON number or a string of digits.
fn integer(value: &Value, key: &str) -> Option<i64> {
    match value.get(key)? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().ok()
        }
        _ => None,
    }
}

/// `response.values` of a `--json` answer. The CLI may print a banner or a
/// warning before the JSON (the deprecation warning that broke habeat);
/// when the whole text is not JSON, it is read from the first line that
/// starts with `{`.
fn status_values(output: &str) -> Result<Vec<Value>, CarbonioError> {
    let parsed: Value = match serde_json::from_str(output.trim()) {
        Ok(v) => v,
        Err(first) => {
            let start = output
                .match_indices('{')
                .map(|(i, _)| i)
                .find(|&i| i == 0 || output[..i].ends_with('\n'));
            match start.map(|i| serde_json::from_str::<Value>(output[i..].trim())) {
                Some(Ok(v)) => v,
                _ => {
                    return Err(CarbonioError::Output(format!(
                        "not JSON ({first}); output starts with {:?}",
                        clip(output.trim(), 120)
                    )));
                }
            }
        }
    };
    let Some(response) = parsed.get("response") else {
        return Err(CarbonioError::Output(
            "no \"response\" in the answer (the CLI refused or reported an error)".into(),
        ));
    };
    match response.get("values").and_then(Value::as_array) {
        Some(values) => Ok(values.clone()),
        None => Err(CarbonioError::Output(
            "\"response\" has no \"values\" array".into(),
        )),
    }
}

fn clip(text: &str, max: usize) -> String {
    if text.chars().count() > max {
        format!("{}…", text.chars().take(max).collect::<String>())
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn host(s: &str) -> Hostname {
        Hostname::new(s).expect("valid host")
    }

    fn account(s: &str) -> Account {
        Account::new(s).expect("valid account")
    }

    fn cli(flavor: CarbonioFlavor, switch: bool) -> Carbonio {
        let section = CarbonioSection {
            flavor,
            ..CarbonioSection::default()
        };
        Carbonio::with_user_switch(section, switch)
    }

    fn argv(inv: &Invocation) -> Vec<&str> {
        inv.argv.iter().map(String::as_str).collect()
    }

    /// The `carbonio ha` commands are exactly habeat's, as argv.
    #[test]
    fn ha_flavor_argv_matches_the_reference() {
        let c = cli(CarbonioFlavor::Ha, false);
        let src = host("mbox1.example.com");
        let a = account("alice@example.com");
        let bin = "/opt/zextras/bin/carbonio";
        assert_eq!(
            argv(&c.promote_accounts(&src, 5)),
            [
                bin,
                "--sync",
                "ha",
                "promoteAccounts",
                "source_mail_host",
                "mbox1.example.com",
                "threads",
                "5"
            ]
        );
        assert_eq!(
            c.promote_accounts(&src, 5).timeout,
            crate::agent::defaults::PROMOTE_TIMEOUT
        );
        assert_eq!(
            argv(&c.account_status(&src)),
            [
                bin,
                "--json",
                "ha",
                "getAccountStatus",
                "mailHost",
                "mbox1.example.com"
            ]
        );
        assert_eq!(
            argv(&c.flush_cache(&a, true)),
            [
                "/opt/zextras/bin/zmprov",
                "fc",
                "-a",
                "account",
                "alice@example.com"
            ]
        );
        assert_eq!(
            argv(&c.pause_replicas(&a)),
            [
                bin,
                "--json",
                "ha",
                "pauseReplicas",
                "accounts",
                "alice@example.com"
            ]
        );
        assert_eq!(
            argv(&c.restart_replicas(&a)),
            [
                bin,
                "--json",
                "ha",
                "restartReplicas",
                "accounts",
                "alice@example.com"
            ]
        );
        assert_eq!(
            argv(&c.stop_ha_module()),
            [bin, "ha", "doStopService", "module"]
        );
        assert_eq!(
            argv(&c.start_ha_module()),
            [bin, "ha", "doStartService", "module"]
        );
    }

    /// The MailReplica flavor only changes the namespace word.
    #[test]
    fn mailreplica_flavor_uses_the_new_namespace() {
        let c = cli(CarbonioFlavor::MailReplica, false);
        let inv = c.promote_accounts(&host("mbox1.example.com"), 4);
        assert_eq!(
            argv(&inv)[1..4],
            ["--sync", "MailReplica", "promoteAccounts"]
        );
        let inv = c.account_status(&host("mbox1.example.com"));
        assert_eq!(argv(&inv)[2..4], ["MailReplica", "getAccountStatus"]);
    }

    /// The flush has no `-a` when the directive does not ask for it.
    #[test]
    fn flush_without_all_services() {
        let c = Carbonio::with_user_switch(CarbonioSection::default(), false);
        let a = account("bob@example.com");
        assert_eq!(
            argv(&c.flush_cache(&a, false)),
            [
                "/opt/zextras/bin/zmprov",
                "fc",
                "account",
                "bob@example.com"
            ]
        );
    }

    /// As root the command is wrapped in `runuser -u zextras --`, never a shell.
    #[test]
    fn user_switch_wraps_in_runuser() {
        let c = cli(CarbonioFlavor::Ha, true);
        let inv = c.account_status(&host("mbox2.example.com"));
        assert_eq!(
            argv(&inv)[..5],
            [
                "/usr/sbin/runuser",
                "-u",
                "zextras",
                "--",
                "/opt/zextras/bin/carbonio"
            ]
        );
        assert!(!inv.argv.iter().any(|a| a == "-c" || a.contains("sh")));
    }

    /// Hostile values never become a Hostname or an Account.
    #[test]
    fn hostile_values_are_refused() {
        for bad in [
            "mbox1; rm -rf /",
            "-rf",
            "--sync",
            "mbox 1",
            "mbox1\nx",
            "",
            "a'b",
        ] {
            let err = Hostname::new(bad).expect_err(bad);
            assert!(err.to_string().starts_with("refusing host name"), "{err}");
        }
        for bad in [
            "x@example.com; rm -rf /",
            "-a@example.com",
            "a b@example.com",
            "a\n@example.com",
            "a'@example.com",
        ] {
            let err = Account::new(bad).expect_err(bad);
            assert!(
                err.to_string().starts_with("refusing account name"),
                "{err}"
            );
        }
    }

    /// The documented `--sync` exit codes.
    #[test]
    fn promote_exit_codes() {
        assert_eq!(PromoteExit::from_code(0), PromoteExit::Successful);
        assert_eq!(PromoteExit::from_code(1), PromoteExit::Failed);
        assert_eq!(PromoteExit::from_code(2), PromoteExit::Stopped);
        assert_eq!(PromoteExit::from_code(3), PromoteExit::Removed);
        assert_eq!(PromoteExit::from_code(4), PromoteExit::Interrupted);
        assert_eq!(PromoteExit::from_code(9), PromoteExit::Other(9));
    }

    fn status(accounts: Value) -> String {
        json!({"response": {"values": accounts}}).to_string()
    }

    fn caught_up_account(name: &str, dest: &str) -> Value {
        json!({
            "accountId": "id-1", "accountName": name, "accountMailHost": "mbox2.example.com",
            "paused": false, "mailboxId": 7, "sequence": 1200, "itemId": 345,
            "replicas": [
                {"accountId": "id-1", "itemId": 300, "sequence": 1100, "mailboxId": 9,
                 "destination": "other.example.com", "available": true, "priority": 20,
                 "canConnectToKafka": true},
                {"accountId": "id-1", "itemId": 345, "sequence": 1200, "mailboxId": 9,
                 "destination": dest, "available": true, "priority": 10,
                 "canConnectToKafka": true}
            ]
        })
    }

    /// Accounts are read from `response.values`, odd names set aside.
    #[test]
    fn parse_accounts_reads_and_screens_names() {
        let out = status(json!([
            {"accountName": "alice@example.com"},
            {"accountName": "x'; reboot; '@example.com"},
            {"accountId": "no-name"},
            {"accountName": "bob@example.com"}
        ]));
        let list = parse_accounts(&out).expect("parses");
        let names: Vec<&str> = list.accounts.iter().map(Account::as_str).collect();
        assert_eq!(names, ["alice@example.com", "bob@example.com"]);
        assert_eq!(list.refused.len(), 2);
        assert!(list.refused[0].1.contains("refusing account name"));
    }

    /// A banner before the JSON is skipped; no JSON at all is an error.
    #[test]
    fn output_with_a_banner_still_parses() {
        let out = format!(
            "WARNING: ha is deprecated\n{}",
            status(json!([{"accountName": "a@b.example"}]))
        );
        assert_eq!(parse_accounts(&out).expect("parses").accounts.len(), 1);
        let err = parse_accounts("Error: cannot connect").expect_err("not json");
        assert!(err.to_string().contains("not JSON"), "{err}");
        let err = parse_accounts("{\"error\": \"denied\"}").expect_err("no response");
        assert!(err.to_string().contains("no \"response\""), "{err}");
    }

    /// Caught up only when every account's replica on the destination is
    /// available at the source's sequence and itemId.
    #[test]
    fn preflight_caught_up() {
        let dest = host("mbox1.example.com");
        let out = status(json!([
            caught_up_account("a@example.com", "mbox1.example.com"),
            caught_up_account("b@example.com", "MBOX1.example.com"),
        ]));
        assert_eq!(
            replicas_caught_up(&out, &dest),
            Preflight::CaughtUp { accounts: 2 }
        );
    }

    /// Table: every way of not being (provably) caught up.
    #[test]
    fn preflight_is_conservative() {
        let dest = host("mbox1.example.com");
        let base = caught_up_account("a@example.com", "mbox1.example.com");
        let with = |f: &dyn Fn(&mut Value)| {
            let mut v = base.clone();
            f(&mut v);
            status(json!([v]))
        };
        let cases: Vec<(&str, String, &str)> = vec![
            (
                "behind by sequence",
                with(&|v| v["replicas"][1]["sequence"] = json!(1199)),
                "sequence 1199",
            ),
            (
                "behind by itemId",
                with(&|v| v["replicas"][1]["itemId"] = json!(344)),
                "itemId 344",
            ),
            (
                "replica unavailable",
                with(&|v| v["replicas"][1]["available"] = json!(false)),
                "available=false",
            ),
            ("paused", with(&|v| v["paused"] = json!(true)), "paused"),
            (
                "paused missing",
                with(&|v| {
                    if let Some(o) = v.as_object_mut() {
                        o.remove("paused");
                    }
                }),
                "paused",
            ),
            (
                "no replica on dest",
                with(&|v| v["replicas"][1]["destination"] = json!("mbox3.example.com")),
                "no replica on",
            ),
            (
                "no replicas key",
                with(&|v| {
                    if let Some(o) = v.as_object_mut() {
                        o.remove("replicas");
                    }
                }),
                "no replicas array",
            ),
            (
                "sequence not a number",
                with(&|v| v["sequence"] = json!("12x")),
                "no integer sequence",
            ),
            ("no accounts", status(json!([])), "no accounts"),
            (
                "garbage",
                "Exception in thread main".to_string(),
                "not JSON",
            ),
            (
                "no response",
                "{\"status\": \"error\"}".to_string(),
                "no \"response\"",
            ),
            (
                "values not a list",
                "{\"response\": {\"values\": 3}}".to_string(),
                "no \"values\"",
            ),
        ];
        for (name, out, expect) in cases {
            match replicas_caught_up(&out, &dest) {
                Preflight::CaughtUp { .. } => panic!("{name}: counted as caught up"),
                Preflight::NotCaughtUp {
                    reason, examples, ..
                } => {
                    let all = format!("{reason} {examples:?}");
                    assert!(all.contains(expect), "{name}: {all}");
                }
            }
        }
        // Digit strings are numbers too.
        let strings = with(&|v| {
            v["sequence"] = json!("1200");
            v["replicas"][1]["sequence"] = json!("1200");
        });
        assert!(replicas_caught_up(&strings, &dest).caught_up());
    }

    /// One account behind among many: counted, with a bounded example list.
    #[test]
    fn preflight_counts_and_bounds_examples() {
        let dest = host("mbox1.example.com");
        let mut accounts: Vec<Value> = (0..30)
            .map(|i| {
                let mut a = caught_up_account(&format!("u{i}@example.com"), "mbox1.example.com");
                a["replicas"][1]["sequence"] = json!(1);
                a
            })
            .collect();
        accounts.push(caught_up_account("ok@example.com", "mbox1.example.com"));
        match replicas_caught_up(&status(json!(accounts)), &dest) {
            Preflight::NotCaughtUp {
                behind,
                examples,
                reason,
            } => {
                assert_eq!(behind, 30);
                assert_eq!(examples.len(), MAX_PREFLIGHT_EXAMPLES);
                assert!(reason.starts_with("30 of 31 accounts"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
}
