//! The directive ledger as the gRPC services show it: to agents inside
//! every `Verdict`, to operators through `ListDirectives`.

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
