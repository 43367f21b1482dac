//! Who may call what: the role checks every RPC passes before it does
//! anything (DESIGN.md §8).
//!
//! The caller is read from the connection's certificate, checked once at
//! the TLS handshake ([`crate::trust`]); the checks here are per call:
//!
//! | service | allowed callers |
//! | --- | --- |
//! | `Raft` | a `peer` whose id is the message's `from_id`, and a member (any peer id while this node has no membership yet: a joiner learns it from the leader); `Hello` from any peer of the cluster, as itself |
//! | `Witness` | an `agent`; its site and name are the certificate's, and a body naming another is refused |
//! | `Admin` reads | a `viewer` or an `operator` |
//! | `Admin` writes | an `operator`, recorded in history under the certificate's name |
//!
//! A follower that forwards a call to the leader connects with its own peer
//! certificate and names the original caller in [`FORWARDED_HEADER`]; the
//! leader takes that name only from a member peer, and checks the named
//! caller's role as if it had called directly. The header on a call from
//! anything but a member peer is refused.
//!
//! On a node whose file says `insecure = true` there are no certificates:
//! every call is allowed and names in request bodies are taken as given
//! ([`Caller::Insecure`]).

use tonic::Status;

use crate::raft::identity::Identity as Membership;
use crate::raft::types::NodeId;
use std::sync::Arc;

use crate::trust::{ConnInfo, Identity, Principal, Role, Trust};

/// Metadata key marking a request a follower forwarded to the leader; its
/// value is the original caller's identity URI and certificate serial
/// (`<uri> serial:<hex>`; `insecure` on a plaintext cluster). The leader
/// checks that identity against its own deny list too, so a follower whose
/// deny list is stale cannot let a revoked caller through.
pub const FORWARDED_HEADER: &str = "x-witness-forwarded";

/// The value of [`FORWARDED_HEADER`] on a plaintext cluster.
pub const INSECURE_CALLER: &str = "insecure";

/// The caller a call acts for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A plaintext node: no identity is known.
    Insecure,
    /// Proven by a certificate (directly, or forwarded by a member peer).
    Principal(Principal),
}

/// The value a follower puts in [`FORWARDED_HEADER`] when it forwards
/// `request` to the leader: who is on the other end of the connection
/// (forwarded requests are never forwarded again).
pub fn forwarded_header<T>(
    trust: Option<&Trust>,
    request: &tonic::Request<T>,
) -> Result<String, Status> {
    let Some(trust) = trust else {
        return Ok(INSECURE_CALLER.to_string());
    };
    let caller = connection_caller(trust, request)?;
    Ok(format!(
        "{} serial:{}",
        caller.identity.uri(),
        caller.serial
    ))
}

fn describe(p: &Principal) -> String {
    format!("{} {:?}", p.role(), p.name())
}

/// The caller `request` acts for: its certificate's principal, or the one a
/// member peer forwarded it for.
pub fn caller<T>(
    trust: Option<&Trust>,
    members: &Membership,
    request: &tonic::Request<T>,
) -> Result<Caller, Status> {
    let Some(trust) = trust else {
        return Ok(Caller::Insecure);
    };
    let direct = direct(trust, request)?;
    let Some(value) = request.metadata().get(FORWARDED_HEADER) else {
        return Ok(Caller::Principal(direct));
    };
    let Principal::Peer { id } = direct else {
        return Err(Status::permission_denied(format!(
            "{} sent {FORWARDED_HEADER}: only a witness may forward a call for another caller",
            describe(&direct)
        )));
    };
    if !members.members().contains_key(&id) {
        return Err(Status::permission_denied(format!(
            "witness node {id} is not a member, so it may not forward calls"
        )));
    }
    let value = value.to_str().unwrap_or_default();
    let (uri, serial) = match value.split_once(' ') {
        Some((uri, rest)) => (uri, rest.strip_prefix("serial:")),
        None => (value, None),
    };
    let named = Identity::parse(uri)
        .map_err(|e| Status::invalid_argument(format!("{FORWARDED_HEADER} from node {id}: {e}")))?;
    let cluster = trust.own().cluster;
    if named.cluster != cluster {
        return Err(Status::permission_denied(format!(
            "node {id} forwarded a call for {named}, not of cluster {cluster:?}"
        )));
    }
    if let Some(why) = trust.current().denies(&named, serial) {
        tracing::warn!("refused a call node {id} forwarded for {named}: {why}");
        return Err(Status::unauthenticated(format!(
            "{named} is not trusted by the leader: {why}"
        )));
    }
    Ok(Caller::Principal(named.principal))
}

/// A tonic interceptor that refuses, before the message is even read, a
/// call to `service` from a certificate whose role is not in `allowed`: a
/// caller with the wrong certificate cannot make the server buffer a large
/// message (the Raft service's limit is tens of MiB). The handlers then
/// make their finer checks (node id, membership, site, forwarding).
pub fn gate(
    trust: Option<Arc<Trust>>,
    service: &'static str,
    allowed: &'static [Role],
    needs: &'static str,
) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, Status> + Clone {
    move |request| {
        let Some(trust) = trust.as_deref() else {
            return Ok(request);
        };
        let principal = direct(trust, &request)?;
        if allowed.contains(&principal.role()) {
            return Ok(request);
        }
        Err(Status::permission_denied(format!(
            "{} may not use the {service} service: {needs}",
            describe(&principal)
        )))
    }
}

/// The principal of the connection itself (never a forwarded one).
fn direct<T>(trust: &Trust, request: &tonic::Request<T>) -> Result<Principal, Status> {
    Ok(connection_caller(trust, request)?
        .identity
        .principal
        .clone())
}

/// The certificate on the connection itself, still trusted.
pub(crate) fn connection_caller<T>(
    trust: &Trust,
    request: &tonic::Request<T>,
) -> Result<Arc<crate::trust::Caller>, Status> {
    let caller = request
        .extensions()
        .get::<ConnInfo>()
        .and_then(|info| info.caller.clone())
        .ok_or_else(|| {
            Status::unauthenticated(
                "this witness accepts only mutual TLS with a certificate of the cluster CA",
            )
        })?;
    trust.still_trusts(&caller).map_err(|why| {
        Status::unauthenticated(format!("{} is no longer trusted: {why}", caller.identity))
    })?;
    Ok(caller)
}

/// `Raft` calls: a member peer speaking as `from_id`, never forwarded.
pub fn require_peer<T>(
    trust: Option<&Trust>,
    members: &Membership,
    request: &tonic::Request<T>,
    from_id: NodeId,
    membership_required: bool,
) -> Result<(), Status> {
    let Some(trust) = trust else {
        return Ok(());
    };
    if request.metadata().contains_key(FORWARDED_HEADER) {
        return Err(Status::permission_denied(
            "Raft messages are never forwarded; refused",
        ));
    }
    match direct(trust, request)? {
        Principal::Peer { id } if id == from_id => {}
        Principal::Peer { id } => {
            return Err(Status::permission_denied(format!(
                "the certificate of witness node {id} may not send Raft messages as node \
                 {from_id}"
            )));
        }
        other => {
            return Err(Status::permission_denied(format!(
                "{} may not use the Raft service: only witnesses (peer certificates) may",
                describe(&other)
            )));
        }
    }
    if membership_required {
        require_member(Some(trust), members, from_id)?;
    }
    Ok(())
}

/// The membership half of [`require_peer`], for a caller that runs the
/// envelope's identity checks in between (their refusal says more, e.g.
/// "another cluster").
pub fn require_member(
    trust: Option<&Trust>,
    members: &Membership,
    from_id: NodeId,
) -> Result<(), Status> {
    if trust.is_none() {
        return Ok(());
    }
    let view = members.members();
    // A node with no membership yet is a joiner waiting to be admitted:
    // the leader that admits it is the first to write to it.
    if !view.is_empty() && !view.contains_key(&from_id) {
        return Err(Status::permission_denied(format!(
            "witness node {from_id} is not a member of this cluster: an operator adds it with \
             `witnessctl members add --id {from_id} …`"
        )));
    }
    Ok(())
}

/// `Witness` calls: an agent. Returns its `(site, name)`, or `None` on a
/// plaintext node.
pub fn require_agent<T>(
    trust: Option<&Trust>,
    members: &Membership,
    request: &tonic::Request<T>,
) -> Result<Option<(String, String)>, Status> {
    match caller(trust, members, request)? {
        Caller::Insecure => Ok(None),
        Caller::Principal(Principal::Agent { site, name }) => Ok(Some((site, name))),
        Caller::Principal(other) => Err(Status::permission_denied(format!(
            "{} may not use the Witness service: only agents (agent certificates) may",
            describe(&other)
        ))),
    }
}

/// The agent fields of a `Witness` request checked against the caller's
/// certificate: an empty field takes the certificate's value, a different
/// one is refused (and logged: it is either a misconfigured agent or an
/// impersonation attempt).
pub fn agent_fields(
    proven: &Option<(String, String)>,
    site: &mut String,
    agent: &mut String,
    check_site: bool,
) -> Result<(), Status> {
    // Sizes before anything is compared, echoed or logged.
    if !agent.is_empty() {
        super::limits::name("agent", agent)?;
    }
    if check_site && !site.is_empty() {
        super::limits::name("site", site)?;
    }
    let Some((cert_site, cert_name)) = proven else {
        return Ok(());
    };
    let mut wrong = Vec::new();
    if agent.is_empty() {
        agent.clone_from(cert_name);
    } else if agent != cert_name {
        wrong.push(format!("agent {agent:?}"));
    }
    if check_site {
        if site.is_empty() {
            site.clone_from(cert_site);
        } else if site != cert_site {
            wrong.push(format!("site {site:?}"));
        }
    }
    if wrong.is_empty() {
        return Ok(());
    }
    let message = format!(
        "the certificate is agent {cert_site}/{cert_name}, but the request names {}: an agent \
         acts only as its certificate says (check agent.name and agent.site)",
        wrong.join(" and ")
    );
    tracing::warn!(certificate = %format!("{cert_site}/{cert_name}"), "refused: {message}");
    Err(Status::permission_denied(message))
}

/// `Admin` reads: a viewer or an operator.
pub fn require_viewer<T>(
    trust: Option<&Trust>,
    members: &Membership,
    request: &tonic::Request<T>,
) -> Result<(), Status> {
    match caller(trust, members, request)? {
        Caller::Insecure => Ok(()),
        Caller::Principal(p) if matches!(p.role(), Role::Viewer | Role::Operator) => Ok(()),
        Caller::Principal(other) => Err(Status::permission_denied(format!(
            "{} may not use the Admin service: it needs a viewer or operator certificate",
            describe(&other)
        ))),
    }
}

/// `Admin` writes: an operator. Returns the name to record: the
/// certificate's, or on a plaintext node the one the request gave.
pub fn require_operator<T>(
    trust: Option<&Trust>,
    members: &Membership,
    request: &tonic::Request<T>,
    claimed: &str,
) -> Result<String, Status> {
    match caller(trust, members, request)? {
        Caller::Insecure => Ok(claimed.to_string()),
        Caller::Principal(Principal::Operator { name }) => Ok(name),
        Caller::Principal(p @ Principal::Viewer { .. }) => Err(Status::permission_denied(format!(
            "{} may only read: this change needs an operator certificate",
            describe(&p)
        ))),
        Caller::Principal(other) => Err(Status::permission_denied(format!(
            "{} may not use the Admin service: it needs an operator certificate",
            describe(&other)
        ))),
    }
}
