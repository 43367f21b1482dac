//! `witness import-habeat FILE`: turn a habeat.yml into an agent TOML.
//!
//! habeat (reference/carbonio-ha.md) decided alone, on each node, from one
//! ping and the local Consul agent's gossip view, every five minutes. The
//! agent decides nothing: the witnesses' quorum does. So most of a
//! habeat.yml has no equivalent in an agent file, and saying so clearly is
//! half of this importer's job. What carries over:
//!
//! | habeat.yml | agent.toml |
//! | --- | --- |
//! | `local.role` `appserver` / `proxyserver` / `consulserver` | `agent.role` `mailstore` / `proxy` / `consul` |
//! | `local.whoami` `primary` / `secondary` | `agent.site` `dc-a` / `dc-b` (rename to match cluster.toml) |
//! | `<whoami>.appserver_vmname` / `proxyserver_vmname` | `agent.name` (its first label) |
//! | `<dc>.consul_vmnames` | `agent.witnesses` (`<name>:7400`: witnesses usually run on the svc nodes) |
//! | `local.threads` | cluster.toml `[directives] promote_threads` (a note) |
//! | `local.flush_cache`, `flush_arguments_a` | cluster.toml `[directives] flush_cache`, `flush_cache_all_services` (a note) |
//! | `local.restart_replica` | cluster.toml `[directives] restart_replicas` (a note) |
//! | `local.disable_ha_module` | cluster.toml `[directives] stop_ha_module_on_old_site` (a note) |
//! | `<whoami>.proxy_switch.<switch>.activate` / `deactivate` / `deativate` | `[[hooks.activate]]` / `[[hooks.deactivate]]`, when a command converts to argv |
//!
//! Everything else gets a [`Note`] saying why it has no equivalent: the ping
//! target and the provider (Consul, HetrixTools, vCenter) are replaced by
//! the witnesses' probes and quorum, the lock files by the directive
//! ledger, the timer by continuous detection and leases, the failed side's
//! host names by the directives in the cluster policy. Secrets (the Consul
//! token, provider credentials) are never copied.
//!
//! Both known variants are read: the repository's (`/etc/habeat`, keys as
//! at HEAD) and the documented one (`/etc/hamon`, with proxy and Consul
//! server keys and the `deativate` spelling). Samples of each are in
//! `testdata/`. What a failover does (promotion threads, cache flush,
//! replica restarts, the HA-module stop) is cluster policy now, the same
//! for every agent, so those keys become notes naming the cluster.toml
//! `[directives]` key and value to set, and comments in the output. A habeat shell command is converted to an argv only when it
//! contains no shell syntax and names its program by absolute path;
//! otherwise it is written commented out with a note. The output always
//! parses with [`AgentConfig::parse`](super::AgentConfig::parse); lines a
//! person must check are marked `EDIT`.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_norway::{Mapping, Value};

use super::check;
use super::defaults;

/// Port of a witness's gRPC endpoint (the witness default).
const WITNESS_PORT: u16 = 7400;
/// Timeout given to an imported hook command. habeat ran them with none.
const IMPORTED_HOOK_TIMEOUT: &str = "30s";
/// Characters that mean a habeat command relies on a shell.
const SHELL_SYNTAX: &[char] = &[
    ';', '|', '&', '$', '<', '>', '`', '\'', '"', '\\', '*', '?', '(', ')', '[', ']', '{', '}',
    '~', '#', '!', '\n', '\r', '=',
];

/// The result of an import.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Imported {
    /// The agent TOML, with comments.
    pub toml: String,
    /// What has no equivalent, or needs a person, and why.
    pub notes: Vec<Note>,
}

/// One habeat key that did not carry over as is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// The habeat key, e.g. `local.provider`.
    pub key: String,
    /// Why, and what to do instead.
    pub why: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.why)
    }
}

/// Why a habeat.yml could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum HabeatError {
    // The I/O error is in the message, not a `#[source]`: shown through
    // anyhow's chain it would otherwise appear twice.
    #[error("cannot read {}: {error}; check the path (habeat's is /etc/habeat/habeat.yml, the docs' /etc/hamon/habeat.yml)", .path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: {message}; fix the YAML there (indent with spaces, never tabs; write `key: value`, one per line)", at(.path, *.line, *.column))]
    Yaml {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{}: {key}: {message}; {fix}", .path.display())]
    Shape {
        path: PathBuf,
        key: String,
        message: String,
        fix: String,
    },
}

fn at(path: &Path, line: usize, column: usize) -> String {
    if line == 0 {
        path.display().to_string()
    } else {
        format!("{}:{line}:{column}", path.display())
    }
}

/// Read and import a habeat.yml.
pub fn load(path: &Path) -> Result<Imported, HabeatError> {
    let text = std::fs::read_to_string(path).map_err(|error| HabeatError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    import(&text, path)
}

/// Import the habeat.yml `text`, read from `origin` (used in messages).
pub fn import(text: &str, origin: &Path) -> Result<Imported, HabeatError> {
    let shape = |key: &str, message: String, fix: &str| HabeatError::Shape {
        path: origin.to_path_buf(),
        key: key.to_string(),
        message,
        fix: fix.to_string(),
    };
    let root: Value = serde_norway::from_str(text).map_err(|e| {
        let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        HabeatError::Yaml {
            path: origin.to_path_buf(),
            line,
            column,
            message: e.to_string(),
        }
    })?;
    let Some(top) = root.as_mapping() else {
        return Err(shape(
            "(top level)",
            "is not a mapping".into(),
            "a habeat.yml is a mapping with local:, primary:, secondary: and consul: sections",
        ));
    };
    let Some(local) = top.get("local").and_then(Value::as_mapping) else {
        return Err(shape(
            "local",
            "there is no `local:` section".into(),
            "is this a habeat.yml? it starts with local: (whoami, dc_check, role, …)",
        ));
    };

    let mut imp = Importer {
        notes: Vec::new(),
        out: String::new(),
    };
    let role_text = string(local, "role").ok_or_else(|| {
        shape(
            "local.role",
            "is missing or not a string".into(),
            "set it to appserver, proxyserver or consulserver",
        )
    })?;
    let role = match role_text.as_str() {
        "appserver" => "mailstore",
        "proxyserver" => "proxy",
        "consulserver" => "consul",
        other => {
            return Err(shape(
                "local.role",
                format!("{other:?} is not a habeat role"),
                "habeat knows appserver, proxyserver and consulserver",
            ));
        }
    };
    let whoami = string(local, "whoami").ok_or_else(|| {
        shape(
            "local.whoami",
            "is missing or not a string".into(),
            "set it to the section of this node's own DC (primary or secondary)",
        )
    })?;
    let site = match whoami.as_str() {
        "primary" => "dc-a".to_string(),
        "secondary" => "dc-b".to_string(),
        other => {
            check::name(other).map_err(|why| {
                shape(
                    "local.whoami",
                    format!("cannot be a site name: {why}"),
                    "use primary or secondary, or a site name of [A-Za-z0-9._-]",
                )
            })?;
            other.to_string()
        }
    };
    let dc_check = string(local, "dc_check");
    let own = top.get(whoami.as_str()).and_then(Value::as_mapping);

    // ---- identity ------------------------------------------------------
    let vm_key = match role_text.as_str() {
        "appserver" => Some("appserver_vmname"),
        "proxyserver" => Some("proxyserver_vmname"),
        _ => None,
    };
    let vmname = vm_key.and_then(|k| own.and_then(|m| string(m, k)));
    let name = match vmname.as_deref().and_then(|v| v.split('.').next()) {
        Some(label) if check::name(label).is_ok() => label.to_string(),
        _ => {
            let fallback = format!("{role}-{site}");
            imp.note(
                &format!("{whoami}.{}", vm_key.unwrap_or("consul_vmnames")),
                format!(
                    "no usable host name for this node; agent.name is set to {fallback:?} (EDIT: \
                     use this node's name)"
                ),
            );
            fallback
        }
    };

    // ---- witnesses -----------------------------------------------------
    let mut dcs: Vec<String> = vec!["primary".into(), "secondary".into()];
    for extra in [Some(whoami.clone()), dc_check.clone()]
        .into_iter()
        .flatten()
    {
        if !dcs.contains(&extra) {
            dcs.push(extra);
        }
    }
    let mut witnesses: Vec<String> = Vec::new();
    for dc in &dcs {
        let Some(section) = top.get(dc.as_str()).and_then(Value::as_mapping) else {
            continue;
        };
        for vm in strings(section, "consul_vmnames") {
            let endpoint = format!("{vm}:{WITNESS_PORT}");
            if check::host_port(&endpoint).is_ok() && !witnesses.contains(&endpoint) {
                witnesses.push(endpoint);
            }
        }
    }
    let witnesses_guessed = witnesses.is_empty();
    if witnesses_guessed {
        witnesses = (1..=3)
            .map(|i| format!("witness{i}.example.invalid:{WITNESS_PORT}"))
            .collect();
        imp.note(
            "agent.witnesses",
            "habeat.yml names no Consul server nodes, so the witness endpoints are placeholders \
             (EDIT: list every witness as host:port)"
                .into(),
        );
    } else {
        imp.note(
            "<dc>.consul_vmnames",
            "used as the witness endpoints on port 7400, assuming the witnesses run on the \
             Consul server (svc) nodes; EDIT if they do not"
                .into(),
        );
    }

    // ---- [agent] -------------------------------------------------------
    imp.line("# agent.toml, generated by `witness import-habeat` from a habeat.yml.");
    imp.line("# Review every line marked EDIT, then check it with");
    imp.line("# `witness agent check-config --config agent.toml`. deploy/examples/agent-*.toml");
    imp.line("# documents every key. Disable habeat.timer and habeat.service once the");
    imp.line("# agent runs: two deciders on one node is exactly what this replaces.");
    imp.line("");
    imp.line("[agent]");
    imp.line(&format!("# From {whoami}.{}.", vm_key.unwrap_or("(none)")));
    imp.kv("name", &quote(&name));
    imp.line(&format!(
        "# habeat's `whoami: {whoami}`. EDIT: use the site's name from cluster.toml."
    ));
    imp.kv("site", &quote(&site));
    imp.line(&format!("# habeat's `role: {role_text}`."));
    imp.kv("role", &quote(role));
    if witnesses_guessed {
        imp.line("# EDIT: placeholders; list every witness (any one will do for renewals).");
    } else {
        imp.line("# From consul_vmnames: witnesses usually run on the svc nodes. EDIT if not.");
    }
    imp.kv("witnesses", &array(&witnesses));
    imp.line("# How long fencing may take; must fit in the cluster's lease.margin.");
    imp.kv(
        "fence_timeout",
        &quote(&humantime::format_duration(defaults::FENCE_TIMEOUT).to_string()),
    );

    // ---- [hooks] -------------------------------------------------------
    if role == "proxy" {
        imp.hooks(local, own, &whoami);
    }

    // ---- [carbonio] ----------------------------------------------------
    if role == "mailstore" {
        imp.line("");
        imp.line("[carbonio]");
        imp.line("# habeat ran `carbonio ha …`; \"mailreplica\" is the form for Carbonio 25.9.0+.");
        imp.kv("flavor", &quote("ha"));
        imp.line("# habeat ran the CLI with `su - zextras -c`; the agent uses runuser, no shell.");
        imp.kv("user", &quote(defaults::CARBONIO_USER));
        // What a failover does is cluster policy now: one [directives]
        // table for every agent, so two mailstores cannot disagree.
        let mut policy = Vec::new();
        if let Some(threads) = local.get("threads").and_then(Value::as_u64) {
            policy.push(("threads", "promote_threads", threads.to_string()));
        }
        for (habeat, ours) in [
            ("flush_cache", "flush_cache"),
            ("flush_arguments_a", "flush_cache_all_services"),
            ("restart_replica", "restart_replicas"),
            ("disable_ha_module", "stop_ha_module_on_old_site"),
        ] {
            if let Some(value) = local.get(habeat).and_then(Value::as_bool) {
                policy.push((habeat, ours, value.to_string()));
            }
        }
        if !policy.is_empty() {
            imp.line(
                "# Cluster policy now (cluster.toml [directives], `witnessctl policy apply`):",
            );
        }
        for (habeat, ours, value) in policy {
            imp.line(&format!("#   {ours} = {value}    (habeat local.{habeat})"));
            imp.note(
                &format!("local.{habeat}"),
                format!(
                    "what a failover does is cluster policy now: set {ours} = {value} in \
                     cluster.toml's [directives] table (applied with `witnessctl policy apply`)"
                ),
            );
        }
    }

    // ---- [watchdog] ----------------------------------------------------
    imp.line("");
    imp.line("[watchdog]");
    imp.line("# habeat had no fencing at all. \"required\" once /dev/watchdog exists.");
    imp.kv("mode", &quote("auto"));

    // ---- [tls] -----------------------------------------------------------
    imp.line("");
    imp.line("[tls]");
    imp.line(&format!(
        "# habeat spoke to nobody. Make this agent's certificate with `witness certs agent \
         --site {site} --name {name}` (docs/SECURITY.md)."
    ));
    imp.kv("ca", &quote("/etc/witness/tls/ca.pem"));
    imp.kv(
        "cert",
        &quote(&format!("/etc/witness/tls/agent-{site}-{name}.pem")),
    );
    imp.kv(
        "key",
        &quote(&format!("/etc/witness/tls/agent-{site}-{name}.key")),
    );

    imp.notes_for_the_rest(top, local, &whoami, &role_text);
    Ok(Imported {
        toml: imp.out,
        notes: imp.notes,
    })
}

struct Importer {
    notes: Vec<Note>,
    out: String,
}

impl Importer {
    fn note(&mut self, key: &str, why: String) {
        self.notes.push(Note {
            key: key.to_string(),
            why,
        });
    }

    fn line(&mut self, text: &str) {
        self.out.push_str(text);
        self.out.push('\n');
    }

    fn kv(&mut self, key: &str, value: &str) {
        self.line(&format!("{key} = {value}"));
    }

    /// The proxy switch commands of the documented variant, as hooks.
    fn hooks(&mut self, local: &Mapping, own: Option<&Mapping>, whoami: &str) {
        let Some(switch) = string(local, "proxy_switch").filter(|s| !s.is_empty()) else {
            return;
        };
        let lists = own
            .and_then(|m| m.get("proxy_switch"))
            .and_then(|m| m.get(switch.as_str()))
            .and_then(Value::as_mapping);
        let prefix = format!("{whoami}.proxy_switch.{switch}");
        let Some(lists) = lists else {
            self.note(
                &prefix,
                "local.proxy_switch is set but this node's section has no command lists; \
                 habeat itself failed with a KeyError here"
                    .into(),
            );
            return;
        };
        for (habeat, ours, enable) in [
            ("activate", "activate", "proxy_enable_activate"),
            ("deactivate", "deactivate", "proxy_enable_deactivate"),
            ("deativate", "deactivate", "proxy_enable_deactivate"),
        ] {
            let commands = strings(lists, habeat);
            if commands.is_empty() {
                continue;
            }
            let enabled = local.get(enable).and_then(Value::as_bool).unwrap_or(false);
            self.line("");
            self.line(&format!(
                "# From {prefix}.{habeat} (habeat's local.{enable} = {enabled})."
            ));
            for command in commands {
                match shell_free_argv(&command) {
                    Ok(argv) if enabled => {
                        self.line(&format!("[[hooks.{ours}]]"));
                        self.kv("argv", &array(&argv));
                        self.line("# EDIT: habeat had no timeout; pick one.");
                        self.kv("timeout", &quote(IMPORTED_HOOK_TIMEOUT));
                    }
                    Ok(argv) => {
                        self.line(&format!("# [[hooks.{ours}]]   (disabled in habeat)"));
                        self.line(&format!("# argv = {}", array(&argv)));
                        self.line(&format!("# timeout = {}", quote(IMPORTED_HOOK_TIMEOUT)));
                        self.note(
                            &format!("{prefix}.{habeat}"),
                            format!(
                                "{command:?} was disabled by local.{enable} = false; written \
                                 commented out"
                            ),
                        );
                    }
                    Err(why) => {
                        self.line(&format!(
                            "# EDIT, not converted: {}",
                            command.replace('\n', " ")
                        ));
                        self.note(
                            &format!("{prefix}.{habeat}"),
                            format!(
                                "{command:?} {why}; rewrite it as an argv array (or a script) \
                                 in [[hooks.{ours}]]"
                            ),
                        );
                    }
                }
            }
        }
        self.note(
            &prefix,
            "habeat never fenced: it switched traffic only when it decided to fail over. Add a \
             [[hooks.fence]] that withdraws this proxy's route or stops it, and an \
             [[hooks.unfence]] that restores it"
                .into(),
        );
    }

    /// A note for every key that has no equivalent.
    fn notes_for_the_rest(&mut self, top: &Mapping, local: &Mapping, whoami: &str, role: &str) {
        self.note(
            "habeat.timer",
            "habeat ran every 5 minutes and promoted after one lost ping and one \"not alive\" \
             from the local Consul agent; the witnesses probe continuously, need fail_after \
             consecutive failures seen by a majority of witnesses, and wait out the old site's \
             leases (cluster.toml [probe], [failover], [lease])"
                .into(),
        );
        for (key, _) in local {
            let Some(key) = key.as_str() else { continue };
            let why = match key {
                "whoami" | "role" | "threads" | "flush_cache" | "flush_arguments_a"
                | "restart_replica" | "disable_ha_module" => continue,
                "proxy_switch" | "proxy_enable_activate" | "proxy_enable_deactivate"
                    if role == "proxyserver" =>
                {
                    continue;
                }
                "proxy_switch" | "proxy_enable_activate" | "proxy_enable_deactivate" => {
                    "only habeat's proxyserver mode read it; this node is not a proxy, so its \
                     switch commands are not imported (each proxy's agent has its own hooks)"
                }
                "dc_check" => "the witnesses watch every site; there is no single \"DC to check\"",
                "checkDownFile" | "checkPromotionFile" | "checkRestartReplicaFile" => {
                    "habeat's empty lock files are replaced by the directive ledger in the \
                     witnesses' Raft log: each action is issued once per epoch and recorded with \
                     its result"
                }
                "provider" => {
                    "habeat asked one observer's provider whether the peer was alive; the \
                     witnesses' quorum replaces it, and Consul is only evidence, configured in \
                     the witnesses' files and cluster.toml (consul.mode), never a trigger"
                }
                _ => "not a key habeat reads; ignored",
            };
            self.note(&format!("local.{key}"), why.to_string());
        }
        if whoami == "primary" && role == "appserver" {
            self.note(
                "local.whoami",
                "habeat never promoted on the primary side; with witnesses either site can take \
                 over, and failback is manual unless cluster.toml says otherwise"
                    .into(),
            );
        }
        for (key, value) in top {
            let Some(key) = key.as_str() else { continue };
            match key {
                "local" => {}
                "consul" => self.note(
                    "consul",
                    "habeat read the local agent's /v1/agent/members (and never used its token); \
                     a witness reads Consul with the token from a file named in its own node \
                     file. Do not copy the token anywhere"
                        .into(),
                ),
                "hetrix" | "vcenter" => self.note(
                    key,
                    "external liveness providers have no equivalent: the witnesses in three sites \
                     are the outside view. Do not copy its credentials anywhere"
                        .into(),
                ),
                dc => match value.as_mapping() {
                    Some(section) => self.dc_notes(dc, section, whoami, role),
                    None => self.note(dc, "not a habeat section; ignored".into()),
                },
            }
        }
    }

    fn dc_notes(&mut self, dc: &str, section: &Mapping, whoami: &str, role: &str) {
        let own = dc == whoami;
        for (key, value) in section {
            let Some(key) = key.as_str() else { continue };
            let full = format!("{dc}.{key}");
            let shown = value
                .as_str()
                .map(str::to_string)
                .or_else(|| {
                    serde_norway::to_string(value)
                        .ok()
                        .map(|s| s.trim().to_string())
                })
                .unwrap_or_default();
            let why = match key {
                "appserver_ip" | "proxy_ip" => format!(
                    "habeat's ping target ({shown}); the witnesses probe each site's targets \
                     instead: put a tcp or http probe of this host in cluster.toml's [[site]] for \
                     {dc}"
                ),
                "appserver_vmname" if own => continue,
                "appserver_vmname" => format!(
                    "the failed mailstore to promote from ({shown}) belongs in cluster.toml: the \
                     promote directive of the other site names it as the source mail host"
                ),
                "proxyserver_vmname" if own => continue,
                "proxyserver_vmname" => format!(
                    "the peer proxy ({shown}) is not the agent's business: the witnesses decide \
                     which site's proxies serve"
                ),
                "consul_vmnames" => continue,
                "consul_ips" => "the Consul servers' addresses: the witnesses read Consul through \
                                 their local agent; there is no peers.json recovery (Consul is \
                                 not an authority here)"
                    .into(),
                "directorysrv_ip" => "unused by habeat as well; no equivalent".into(),
                "proxy_switch" if own && role == "proxyserver" => continue,
                "proxy_switch" if own => "this node is not a proxy, so its switch commands are \
                                          not imported; each proxy's agent has its own hooks"
                    .into(),
                "proxy_switch" => format!(
                    "the switch commands of another DC ({dc}); each proxy's agent carries its own \
                     hooks"
                ),
                _ => "not a key habeat reads; ignored".into(),
            };
            self.note(&full, why);
        }
    }
}

/// A habeat command string as an argv, when it is plain words with an
/// absolute program path.
fn shell_free_argv(command: &str) -> Result<Vec<String>, String> {
    if let Some(bad) = command.chars().find(|c| SHELL_SYNTAX.contains(c)) {
        return Err(format!("uses shell syntax ({bad:?})"));
    }
    let argv: Vec<String> = command.split_whitespace().map(str::to_string).collect();
    match argv.first() {
        None => Err("is empty".into()),
        Some(program) if !program.starts_with('/') => Err(format!(
            "runs {program:?} by name; the agent needs an absolute path (no PATH search)"
        )),
        Some(_) => Ok(argv),
    }
}

fn string(map: &Mapping, key: &str) -> Option<String> {
    map.get(key).and_then(Value::as_str).map(str::to_string)
}

fn strings(map: &Mapping, key: &str) -> Vec<String> {
    map.get(key)
        .and_then(Value::as_sequence)
        .map(|seq| {
            seq.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn array(items: &[String]) -> String {
    let parts: Vec<String> = items.iter().map(|s| quote(s)).collect();
    format!("[{}]", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::AgentConfig;
    use crate::config::Role;

    const REPO: &str = include_str!("testdata/habeat-repo.yml");
    const DOCS: &str = include_str!("testdata/habeat-docs.yml");

    fn imported(text: &str) -> (Imported, AgentConfig) {
        let imp = import(text, Path::new("habeat.yml")).expect("imports");
        let config = AgentConfig::parse(&imp.toml, Path::new("imported.toml"))
            .unwrap_or_else(|e| panic!("output does not parse: {e}\n{}", imp.toml));
        (imp, config)
    }

    fn noted(imp: &Imported, key: &str, words: &str) {
        assert!(
            imp.notes
                .iter()
                .any(|n| n.key == key && n.why.contains(words)),
            "no note on {key} saying {words:?}: {:#?}",
            imp.notes
        );
    }

    /// The repository variant becomes a mailstore agent with its Carbonio
    /// switches, and everything else is explained.
    #[test]
    fn repository_variant_imports() {
        let (imp, config) = imported(REPO);
        assert_eq!(config.agent.role, Role::Mailstore);
        assert_eq!(config.agent.site, "dc-b");
        assert_eq!(config.agent.name, "replica_mailbox");
        let carbonio = config.carbonio().expect("mailstore");
        assert_eq!(carbonio.user, "zextras");
        noted(
            &imp,
            "local.threads",
            "promote_threads = 5 in cluster.toml's [directives]",
        );
        noted(&imp, "local.flush_cache", "flush_cache = true");
        noted(
            &imp,
            "local.flush_arguments_a",
            "flush_cache_all_services = true",
        );
        noted(&imp, "local.restart_replica", "restart_replicas = false");
        noted(
            &imp,
            "local.disable_ha_module",
            "stop_ha_module_on_old_site = false",
        );
        // No Consul servers listed: placeholders, flagged.
        assert!(config.agent.witnesses[0].ends_with(".example.invalid:7400"));
        noted(&imp, "agent.witnesses", "placeholders");
        noted(&imp, "local.provider", "quorum");
        noted(&imp, "local.dc_check", "every site");
        noted(&imp, "local.checkPromotionFile", "directive ledger");
        noted(&imp, "primary.appserver_ip", "ping target");
        noted(&imp, "primary.appserver_vmname", "source mail host");
        noted(&imp, "secondary.appserver_ip", "ping target");
        noted(&imp, "consul", "token");
        noted(&imp, "habeat.timer", "5 minutes");
        assert!(
            !imp.toml.contains("00000000-0000"),
            "the token must not be copied"
        );
        assert!(imp.toml.contains("EDIT"));
    }

    /// The documented variant: witnesses from consul_vmnames, proxy and
    /// Consul-server keys explained, `deativate` understood.
    #[test]
    fn documented_variant_imports() {
        let (imp, config) = imported(DOCS);
        assert_eq!(config.agent.name, "mbox2");
        assert_eq!(config.agent.site, "dc-b");
        assert_eq!(
            config.agent.witnesses,
            [
                "svc1.example.com:7400",
                "svc3.example.com:7400",
                "svc2.example.com:7400"
            ]
        );
        assert!(config.carbonio().is_some());
        noted(&imp, "local.flush_cache", "flush_cache = false");
        noted(&imp, "<dc>.consul_vmnames", "Consul server");
        noted(&imp, "primary.consul_ips", "peers.json");
        noted(&imp, "primary.proxyserver_vmname", "witnesses decide");
        noted(&imp, "primary.directorysrv_ip", "unused");
        noted(&imp, "primary.proxy_ip", "ping target");
        noted(&imp, "local.proxy_switch", "not a proxy");
        noted(&imp, "secondary.proxy_switch", "not a proxy");
        assert!(config.hooks.activate.is_empty());
    }

    /// A proxy's switch commands become hooks when they are plain argv;
    /// shell lines and PATH lookups are left commented out with a note.
    #[test]
    fn proxy_commands_become_hooks_when_safe() {
        let text = r#"
local:
  whoami: secondary
  dc_check: primary
  role: proxyserver
  proxy_switch: bgp
  proxy_enable_activate: true
  proxy_enable_deactivate: true
secondary:
  proxyserver_vmname: proxy2.example.com
  consul_vmnames: [svc2.example.com]
  proxy_switch:
    bgp:
      activate:
        - /usr/sbin/birdc enable carbonio
        - birdc configure
        - /usr/bin/vtysh -c 'network 10.0.0.0/24'
      deativate:
        - /usr/sbin/birdc disable carbonio
"#;
        let (imp, config) = imported(text);
        assert_eq!(config.agent.role, Role::Proxy);
        assert_eq!(config.agent.name, "proxy2");
        assert_eq!(config.carbonio(), None);
        assert!(config.carbonio.is_none(), "no [carbonio] for a proxy");
        assert_eq!(config.hooks.activate.len(), 1);
        assert_eq!(
            config.hooks.activate[0].argv,
            ["/usr/sbin/birdc", "enable", "carbonio"]
        );
        assert_eq!(config.hooks.deactivate.len(), 1);
        assert!(config.hooks.fence.is_empty());
        noted(&imp, "secondary.proxy_switch.bgp.activate", "by name");
        noted(&imp, "secondary.proxy_switch.bgp.activate", "shell syntax");
        noted(&imp, "secondary.proxy_switch.bgp", "[[hooks.fence]]");
    }

    /// Disabled switch commands are kept, commented out.
    #[test]
    fn disabled_commands_are_commented_out() {
        let text = r#"
local: {whoami: primary, role: proxyserver, proxy_switch: bgp, proxy_enable_activate: false}
primary:
  proxy_switch: {bgp: {activate: ["/usr/sbin/birdc enable carbonio"]}}
"#;
        let (imp, config) = imported(text);
        assert!(config.hooks.activate.is_empty());
        assert!(
            imp.toml.contains("# argv = [\"/usr/sbin/birdc\""),
            "{}",
            imp.toml
        );
        noted(&imp, "primary.proxy_switch.bgp.activate", "disabled");
        noted(&imp, "primary.proxyserver_vmname", "no usable host name");
    }

    /// Broken YAML is located, with what to fix.
    #[test]
    fn bad_yaml_is_located() {
        let err = import(
            "local:\n  whoami: secondary\n\trole: appserver\n",
            Path::new("h.yml"),
        )
        .expect_err("tab");
        let shown = err.to_string();
        assert!(matches!(err, HabeatError::Yaml { line: 3, .. }), "{shown}");
        assert!(shown.starts_with("h.yml:3:"), "{shown}");
        assert!(shown.contains("never tabs"), "{shown}");
    }

    /// Valid YAML that is not a habeat.yml says what is missing.
    #[test]
    fn wrong_shape_says_what_is_missing() {
        let err = import("- a\n- b\n", Path::new("h.yml")).expect_err("list");
        assert!(err.to_string().contains("top level"), "{err}");
        let err =
            import("primary: {appserver_ip: 1.2.3.4}\n", Path::new("h.yml")).expect_err("no local");
        assert!(err.to_string().contains("no `local:` section"), "{err}");
        let err = import(
            "local: {whoami: secondary, role: mailbox}\n",
            Path::new("h.yml"),
        )
        .expect_err("bad role");
        let shown = err.to_string();
        assert!(
            shown.contains("local.role") && shown.contains("appserver"),
            "{shown}"
        );
        let err = import("local: {role: appserver}\n", Path::new("h.yml")).expect_err("no whoami");
        assert!(err.to_string().contains("local.whoami"), "{err}");
    }

    /// Only plain, absolute commands convert.
    #[test]
    fn shell_free_argv_table() {
        let ok = shell_free_argv("/usr/sbin/birdc  disable carbonio").expect("plain");
        assert_eq!(ok, ["/usr/sbin/birdc", "disable", "carbonio"]);
        for bad in [
            "",
            "birdc x",
            "/bin/a; /bin/b",
            "/bin/a $(id)",
            "/bin/a > /tmp/x",
            "/bin/a 'q'",
            "A=1 /bin/a",
        ] {
            assert!(shell_free_argv(bad).is_err(), "{bad:?}");
        }
    }
}
