//! The directive ledger as the gRPC services show it: to agents inside
//! every `Verdict`, to operators through `ListDirectives`, and to
//! Prometheus through `/metrics`.

use witness_proto::{DirectiveInfo, Gate};

use crate::state::ledger::{Directive, DirectiveState, Ledger};

/// One directive, with its action as JSON for agents and in words for
/// people.
pub fn info(d: &Directive) -> DirectiveInfo {
    let mut out = DirectiveInfo {
        id: d.id(),
        epoch: d.epoch,
        name: d.spec.name.clone(),
        site: d.spec.site.clone(),
        role: d.spec.role.clone(),
        state: d.state.name().to_string(),
        description: d.spec.action.to_string(),
        // Cannot fail: the action is strings, integers and booleans.
        action_json: serde_json::to_string(&d.spec.action).unwrap_or_default(),
        after: d.spec.after.clone(),
        generation: d.generation,
        attempts: d.attempts,
        max_attempts: d.spec.max_attempts,
        claim_ttl_ms: d.spec.claim_ttl_ms,
        best_effort: d.spec.best_effort,
        last_error: d.last_error.clone().unwrap_or_default(),
        ..DirectiveInfo::default()
    };
    match &d.state {
        DirectiveState::Claimed { agent, .. } => out.agent = agent.clone(),
        DirectiveState::Done {
            agent,
            exit_code,
            output_tail,
            ..
        } => {
            out.agent = agent.clone();
            out.exit_code = Some(*exit_code);
            out.output_tail = output_tail.clone();
        }
        DirectiveState::Failed {
            reason,
            agent,
            exit_code,
            output_tail,
            ..
        } => {
            out.agent = agent.clone().unwrap_or_default();
            out.exit_code = *exit_code;
            out.output_tail = output_tail.clone();
            out.last_error = reason.clone();
        }
        DirectiveState::Pending
        | DirectiveState::Superseded { .. }
        | DirectiveState::Unreachable => {}
    }
    out
}

/// The current epoch's gates, each with whether it is open.
pub fn gates(ledger: &Ledger) -> Vec<Gate> {
    ledger
        .gates
        .iter()
        .map(|(role, names)| Gate {
            role: role.clone(),
            directives: names.clone(),
            open: ledger.gate_open(role),
        })
        .collect()
}

/// The site and role of directive `name` of `epoch`, current or kept from
/// an earlier epoch; `unknown` for one the ledger does not hold (any more).
pub fn site_and_role(ledger: &Ledger, epoch: u64, name: &str) -> (String, String) {
    ledger
        .directives
        .iter()
        .chain(&ledger.past)
        .find(|d| d.epoch == epoch && d.spec.name == name)
        .map_or_else(
            || ("unknown".to_string(), "unknown".to_string()),
            |d| (d.spec.site.clone(), d.spec.role.clone()),
        )
}

/// The `outcome` of an accepted report, from the state the directive moved
/// to: `done`, `failed` (no attempt left), `retry` (it failed and is
/// pending again), or that state's name.
pub fn report_outcome(state: &str) -> &str {
    match state {
        "pending" => "retry",
        other => other,
    }
}

/// How many of `directives` are in each state, for every state (zeros
/// included, so a dashboard sees each series from the start).
pub fn count_by_state(directives: &[Directive]) -> [(&'static str, u64); 6] {
    let mut counts = DirectiveState::NAMES.map(|name| (name, 0));
    for d in directives {
        if let Some(slot) = counts.iter_mut().find(|(name, _)| *name == d.state.name()) {
            slot.1 += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ledger::{Action, DirectiveSpec};

    fn directive(epoch: u64, name: &str, state: DirectiveState) -> Directive {
        Directive {
            epoch,
            spec: DirectiveSpec {
                name: name.into(),
                site: "dc-b".into(),
                role: "mailstore".into(),
                action: Action::StopHaModule,
                after: Vec::new(),
                max_attempts: 1,
                claim_ttl_ms: 1_000,
                best_effort: false,
            },
            state,
            attempts: 0,
            generation: 0,
            last_error: None,
        }
    }

    #[test]
    fn a_report_is_labelled_with_its_directives_site_and_role() {
        let ledger = Ledger {
            epoch: 3,
            directives: vec![directive(3, "promote", DirectiveState::Pending)],
            past: vec![directive(2, "stop", DirectiveState::Pending)],
            ..Ledger::default()
        };
        let known = ("dc-b".to_string(), "mailstore".to_string());
        assert_eq!(site_and_role(&ledger, 3, "promote"), known);
        assert_eq!(site_and_role(&ledger, 2, "stop"), known);
        let unknown = ("unknown".to_string(), "unknown".to_string());
        assert_eq!(site_and_role(&ledger, 2, "promote"), unknown);
        assert_eq!(report_outcome("pending"), "retry");
        assert_eq!(report_outcome("done"), "done");
    }

    #[test]
    fn directives_are_counted_by_state_with_zeros() {
        let counts = count_by_state(&[
            directive(3, "a", DirectiveState::Pending),
            directive(3, "b", DirectiveState::Pending),
            directive(3, "c", DirectiveState::Unreachable),
        ]);
        assert_eq!(
            counts,
            [
                ("pending", 2),
                ("claimed", 0),
                ("done", 0),
                ("failed", 0),
                ("superseded", 0),
                ("unreachable", 1)
            ]
        );
    }
}
