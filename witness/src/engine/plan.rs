//! The directives of a new epoch, planned from the policy when the leader
//! proposes an activation (DESIGN.md §3.6, §3.7). Pure: the same policy and
//! the same move always give the same plan, and the plan is copied into the
//! `Activate` entry, so a later policy change never alters an epoch that is
//! already committed.
//!
//! For a move from site `from` to site `to`:
//! 1. `preflight` — only when moving back to the home site (the policy's
//!    `active = true` site) and the operator did not pass
//!    `--accept-data-loss`: Active Replica replicates only from the active
//!    mailstore, so the home site's replicas must have caught up before
//!    they are promoted.
//! 2. `promote` — the new site's mailstore promotes every account
//!    replicated from `from`'s mail hosts (after `preflight`).
//! 3. `flush-cache`, `restart-replicas` — after `promote`, when enabled.
//! 4. `stop-ha-module` — best effort, on `from`'s mailstore.
//! 5. the operator's `[[directives.command]]`s, in order.
//!
//! Gate: with `gate_proxies_on_promotion`, the new site's proxies run their
//! `activate` hooks only once `promote` is done. The first activation of a
//! cluster (no `from`) has nothing to promote and no directives.

use std::collections::BTreeMap;

use crate::config::Policy;
use crate::state::ledger::{Action, DirectiveSpec};

/// The role that runs the built-in Carbonio directives.
pub const MAILSTORE: &str = "mailstore";
/// The role gated on the promotion.
pub const PROXY: &str = "proxy";

/// An epoch's directives and gates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub directives: Vec<DirectiveSpec>,
    pub gates: BTreeMap<String, Vec<String>>,
}

/// Plan the directives of a move from `from` to `to`.
pub fn plan(policy: &Policy, from: Option<&str>, to: &str, accept_data_loss: bool) -> Plan {
    let Some(from) = from else {
        return Plan::default();
    };
    let d = &policy.directives;
    let hosts: Vec<String> = policy
        .sites
        .iter()
        .find(|s| s.name == from)
        .map(|s| s.mail_hosts.clone())
        .unwrap_or_default();
    let home = policy
        .sites
        .iter()
        .find(|s| s.active)
        .map(|s| s.name.as_str());
    let claim_ttl_ms = d.claim_ttl.as_millis() as u64;
    let spec = |name: &str, site: &str, action: Action, after: &[&str]| DirectiveSpec {
        name: name.to_string(),
        site: site.to_string(),
        role: MAILSTORE.to_string(),
        action,
        after: after.iter().map(|s| s.to_string()).collect(),
        max_attempts: d.max_attempts,
        claim_ttl_ms,
        best_effort: false,
    };

    let mut out = Plan::default();
    let promoting = d.promote && !hosts.is_empty();
    if promoting {
        let mut promote_after: Vec<&str> = Vec::new();
        if home == Some(to) && !accept_data_loss {
            out.directives.push(spec(
                "preflight",
                to,
                Action::ReplicaPreflight {
                    source_mail_hosts: hosts.clone(),
                },
                &[],
            ));
            promote_after.push("preflight");
        }
        out.directives.push(spec(
            "promote",
            to,
            Action::PromoteAccounts {
                source_mail_hosts: hosts.clone(),
                threads: d.promote_threads,
            },
            &promote_after,
        ));
        if d.flush_cache {
            out.directives.push(spec(
                "flush-cache",
                to,
                Action::FlushCache {
                    source_mail_hosts: hosts.clone(),
                    all_services: d.flush_cache_all_services,
                },
                &["promote"],
            ));
        }
        if d.restart_replicas {
            out.directives.push(spec(
                "restart-replicas",
                to,
                Action::RestartReplicas {
                    source_mail_hosts: hosts.clone(),
                },
                &["promote"],
            ));
        }
        if d.gate_proxies_on_promotion {
            out.gates
                .insert(PROXY.to_string(), vec!["promote".to_string()]);
        }
    }
    if d.stop_ha_module_on_old_site {
        let mut stop = spec("stop-ha-module", from, Action::StopHaModule, &[]);
        stop.best_effort = true;
        out.directives.push(stop);
    }
    for c in &d.commands {
        // A command may name a built-in directive this move does not plan
        // (no promotion on this move): it then has nothing to wait for.
        let after: Vec<&str> = c
            .after
            .iter()
            .map(String::as_str)
            .filter(|dep| out.directives.iter().any(|s| s.name == *dep))
            .collect();
        let mut command = spec(
            &c.name,
            to,
            Action::Command {
                command: c.name.clone(),
            },
            &after,
        );
        command.role = c.role.clone();
        out.directives.push(command);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CommandDirective, SitePolicy};
    use crate::state::ledger::validate_plan;

    fn policy() -> Policy {
        let site = |name: &str, active: bool, host: &str| {
            let text = format!(
                "name = {name:?}\nactive = {active}\nmail_hosts = [{host:?}]\n\
                 [[target]]\nname = \"mbox\"\nrole = \"mailstore\"\nkind = \"tcp\"\n\
                 address = \"127.0.0.1:1\"\n"
            );
            toml::from_str::<SitePolicy>(&text).expect("site")
        };
        Policy {
            sites: vec![
                site("dc-a", true, "mbox1.example.com"),
                site("dc-b", false, "mbox2.example.com"),
            ],
            ..Policy::default()
        }
    }

    fn names(plan: &Plan) -> Vec<(&str, &str, Vec<&str>)> {
        plan.directives
            .iter()
            .map(|d| {
                (
                    d.name.as_str(),
                    d.site.as_str(),
                    d.after.iter().map(String::as_str).collect(),
                )
            })
            .collect()
    }

    /// A failover away from the home site promotes the home site's
    /// accounts on the other site, and gates its proxies on the promotion.
    #[test]
    fn failover_promotes_the_old_sites_accounts_and_gates_the_proxies() {
        let plan = plan(&policy(), Some("dc-a"), "dc-b", false);
        assert_eq!(names(&plan), [("promote", "dc-b", vec![])]);
        assert_eq!(
            plan.directives[0].action,
            Action::PromoteAccounts {
                source_mail_hosts: vec!["mbox1.example.com".into()],
                threads: 4
            }
        );
        assert_eq!(plan.gates[PROXY], ["promote"]);
        validate_plan(&plan.directives, &plan.gates).expect("valid plan");
    }

    /// Moving back home needs the replica pre-flight first, unless the
    /// operator accepts data loss.
    #[test]
    fn failback_runs_the_preflight_unless_data_loss_is_accepted() {
        let back = plan(&policy(), Some("dc-b"), "dc-a", false);
        assert_eq!(
            names(&back),
            [
                ("preflight", "dc-a", vec![]),
                ("promote", "dc-a", vec!["preflight"])
            ]
        );
        let forced = plan(&policy(), Some("dc-b"), "dc-a", true);
        assert_eq!(names(&forced), [("promote", "dc-a", vec![])]);
    }

    /// Optional directives follow the promotion; the HA-module stop is best
    /// effort on the old site; commands keep only dependencies planned on
    /// this move; the first activation plans nothing.
    #[test]
    fn optional_directives_and_commands_are_ordered() {
        let mut p = policy();
        p.directives.flush_cache = true;
        p.directives.restart_replicas = true;
        p.directives.stop_ha_module_on_old_site = true;
        p.directives.commands.push(CommandDirective {
            name: "notify".into(),
            role: "mailstore".into(),
            after: vec!["preflight".into(), "flush-cache".into()],
            argv: None,
            timeout: None,
        });
        let plan = plan(&p, Some("dc-a"), "dc-b", false);
        assert_eq!(
            names(&plan),
            [
                ("promote", "dc-b", vec![]),
                ("flush-cache", "dc-b", vec!["promote"]),
                ("restart-replicas", "dc-b", vec!["promote"]),
                ("stop-ha-module", "dc-a", vec![]),
                ("notify", "dc-b", vec!["flush-cache"]),
            ]
        );
        assert!(plan.directives[3].best_effort);
        validate_plan(&plan.directives, &plan.gates).expect("valid plan");
        assert_eq!(super::plan(&p, None, "dc-a", false), Plan::default());
    }
}
