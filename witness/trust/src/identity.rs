//! Who a certificate says its holder is: one role and one identity, written
//! as a URI in the certificate's subject alternative names.
//!
//! ```text
//! witness://<cluster>/peer/<node id>          a witness (the Raft service)
//! witness://<cluster>/agent/<site>/<name>     an agent on an HA node (the Witness service)
//! witness://<cluster>/viewer/<name>           an operator who may only read (Admin)
//! witness://<cluster>/operator/<name>         an operator who may change things (Admin)
//! ```
//!
//! A certificate carries exactly one such URI; a certificate with none, two,
//! or one that does not parse is refused at the TLS handshake. Names follow
//! the same rule as everywhere else in the project (1–63 of
//! `[A-Za-z0-9._-]`), so an identity can be a metric label or a log field
//! without escaping.

use std::fmt;

use crate::NodeId;

/// The URI scheme of every identity.
pub const SCHEME: &str = "witness://";

/// The longest identifier (cluster, site, agent or operator name).
pub const MAX_NAME_LEN: usize = 63;

/// What a certificate's holder may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A witness: Raft between witnesses, and forwarding on behalf of a caller.
    Peer,
    /// An agent on an HA node: the Witness service, as its own site and name.
    Agent,
    /// Reads the Admin service: status, history, directives, policy, members.
    Viewer,
    /// Everything on the Admin service.
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Peer => "peer",
            Role::Agent => "agent",
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One role and one identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Principal {
    Peer { id: NodeId },
    Agent { site: String, name: String },
    Viewer { name: String },
    Operator { name: String },
}

impl Principal {
    pub fn role(&self) -> Role {
        match self {
            Principal::Peer { .. } => Role::Peer,
            Principal::Agent { .. } => Role::Agent,
            Principal::Viewer { .. } => Role::Viewer,
            Principal::Operator { .. } => Role::Operator,
        }
    }

    /// The name this principal is recorded under: the node id of a peer,
    /// `site/name` of an agent, the name of a viewer or operator.
    pub fn name(&self) -> String {
        match self {
            Principal::Peer { id } => id.to_string(),
            Principal::Agent { site, name } => format!("{site}/{name}"),
            Principal::Viewer { name } | Principal::Operator { name } => name.clone(),
        }
    }
}

/// A principal of one cluster: what a certificate's URI says.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    pub cluster: String,
    pub principal: Principal,
}

impl Identity {
    pub fn new(cluster: impl Into<String>, principal: Principal) -> Identity {
        Identity {
            cluster: cluster.into(),
            principal,
        }
    }

    pub fn role(&self) -> Role {
        self.principal.role()
    }

    /// The URI form, as written into a certificate.
    pub fn uri(&self) -> String {
        let c = &self.cluster;
        match &self.principal {
            Principal::Peer { id } => format!("{SCHEME}{c}/peer/{id}"),
            Principal::Agent { site, name } => format!("{SCHEME}{c}/agent/{site}/{name}"),
            Principal::Viewer { name } => format!("{SCHEME}{c}/viewer/{name}"),
            Principal::Operator { name } => format!("{SCHEME}{c}/operator/{name}"),
        }
    }

    /// Parse the URI form. The error says what is wrong with it.
    pub fn parse(uri: &str) -> Result<Identity, String> {
        let Some(rest) = uri.strip_prefix(SCHEME) else {
            return Err(format!("{uri:?} does not start with {SCHEME:?}"));
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let bad = |why: &str| {
            Err(format!(
                "{uri:?} is not a witness identity ({why}); expected {SCHEME}<cluster>/peer/<id>, \
                 …/agent/<site>/<name>, …/viewer/<name> or …/operator/<name>"
            ))
        };
        if parts.len() < 3 {
            return bad("too few parts");
        }
        for part in &parts {
            if let Err(why) = check_name(part) {
                return bad(&why);
            }
        }
        let cluster = parts[0].to_string();
        let principal = match (parts[1], &parts[2..]) {
            ("peer", [id]) => match id.parse::<NodeId>() {
                Ok(id) if id > 0 => Principal::Peer { id },
                _ => return bad("a peer's id is a positive integer"),
            },
            ("agent", [site, name]) => Principal::Agent {
                site: site.to_string(),
                name: name.to_string(),
            },
            ("viewer", [name]) => Principal::Viewer {
                name: name.to_string(),
            },
            ("operator", [name]) => Principal::Operator {
                name: name.to_string(),
            },
            ("peer" | "agent" | "viewer" | "operator", _) => {
                return bad("wrong number of parts for its role");
            }
            (role, _) => return bad(&format!("unknown role {role:?}")),
        };
        Ok(Identity { cluster, principal })
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

/// An identifier: 1–63 of `[A-Za-z0-9._-]`.
pub fn check_name(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("an empty name".into());
    }
    if value.len() > MAX_NAME_LEN {
        return Err(format!(
            "a name of {} bytes, more than {MAX_NAME_LEN}",
            value.len()
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!("{value:?} holds {c:?}; use only A-Z a-z 0-9 . _ -"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_round_trips_through_its_uri() {
        for principal in [
            Principal::Peer { id: 3 },
            Principal::Agent {
                site: "dc-a".into(),
                name: "mbox1".into(),
            },
            Principal::Viewer {
                name: "oncall".into(),
            },
            Principal::Operator {
                name: "alice".into(),
            },
        ] {
            let id = Identity::new("mail", principal);
            assert_eq!(Identity::parse(&id.uri()), Ok(id.clone()), "{id}");
        }
    }

    #[test]
    fn malformed_identities_are_refused_with_the_reason() {
        for (uri, why) in [
            ("https://mail/peer/1", "does not start with"),
            ("witness://mail/peer/0", "positive integer"),
            ("witness://mail/peer/x", "positive integer"),
            ("witness://mail/peer/1/2", "wrong number of parts"),
            ("witness://mail/agent/dc-a", "wrong number of parts"),
            ("witness://mail/root/alice", "unknown role"),
            ("witness://mail/operator/al ice", "use only"),
            ("witness://mail/operator/", "empty name"),
            ("witness://mail", "too few parts"),
        ] {
            let err = Identity::parse(uri).expect_err(uri);
            assert!(err.contains(why), "{uri}: {err}");
        }
        let long = format!("witness://mail/operator/{}", "a".repeat(64));
        assert!(
            Identity::parse(&long)
                .expect_err("refused")
                .contains("more than 63")
        );
    }
}
