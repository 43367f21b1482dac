//! The `[tls]` table of a witness's and an agent's own file: where its
//! certificate, key and the cluster CA live, or `insecure = true`.
//!
//! ```toml
//! [tls]
//! ca = "/etc/witness/tls/ca.pem"
//! cert = "/etc/witness/tls/peer-1.pem"
//! key = "/etc/witness/tls/peer-1.key"
//! # deny = "/etc/witness/tls/deny.txt"
//! ```
//!
//! A file without a `[tls]` table is refused: plaintext is never a default.
//! `insecure = true` (and no files) runs without TLS, for a developer's
//! laptop; the process warns at every start.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::Problem;
use crate::trust::TlsFiles;

/// The `[tls]` table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// The cluster CA's certificate (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// This process's certificate (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// Its private key (PEM), mode 0600 or 0640.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Certificates refused whatever their chain: one identity URI or
    /// `serial:<hex>` per line. Re-read with the certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny: Option<PathBuf>,
    /// Run without TLS. For a developer's laptop only: anyone who reaches
    /// the ports can act as any witness, agent or operator.
    #[serde(default)]
    pub insecure: bool,
}

/// The message for a file with no `[tls]` table.
pub const MISSING_HINT: &str = "add a [tls] table with ca, cert and key (make them with `witness \
                                certs`, see docs/SECURITY.md); only on a developer's laptop, \
                                `insecure = true` instead";

impl TlsSection {
    /// Resolve relative paths against `origin`'s directory.
    pub fn resolve_paths(&mut self, origin: &Path) {
        for path in [&mut self.ca, &mut self.cert, &mut self.key, &mut self.deny]
            .into_iter()
            .flatten()
        {
            if !path.as_os_str().is_empty() && path.is_relative() {
                *path = super::node::resolve(origin, path);
            }
        }
    }

    /// The files to load, or `None` when `insecure = true`.
    pub fn files(&self) -> Option<TlsFiles> {
        if self.insecure {
            return None;
        }
        Some(TlsFiles {
            ca: self.ca.clone().unwrap_or_default(),
            cert: self.cert.clone().unwrap_or_default(),
            key: self.key.clone().unwrap_or_default(),
            deny: self.deny.clone(),
        })
    }

    pub fn check(section: Option<&TlsSection>, problems: &mut Vec<Problem>) {
        let Some(tls) = section else {
            problems.push(Problem::new("tls", "there is no [tls] table", MISSING_HINT));
            return;
        };
        let given: Vec<&str> = [
            ("ca", &tls.ca),
            ("cert", &tls.cert),
            ("key", &tls.key),
            ("deny", &tls.deny),
        ]
        .into_iter()
        .filter(|(_, p)| p.as_ref().is_some_and(|p| !p.as_os_str().is_empty()))
        .map(|(k, _)| k)
        .collect();
        if tls.insecure {
            if !given.is_empty() {
                problems.push(Problem::new(
                    "tls.insecure",
                    format!(
                        "insecure = true, yet tls.{} {} set",
                        given.join(", tls."),
                        if given.len() == 1 { "is" } else { "are" }
                    ),
                    "remove insecure = true to use the certificates, or remove the files to run \
                     without TLS",
                ));
            }
            return;
        }
        for key in ["ca", "cert", "key"] {
            if !given.contains(&key) {
                problems.push(Problem::new(
                    format!("tls.{key}"),
                    format!("tls.{key} is missing"),
                    "set ca, cert and key (made by `witness certs`, see docs/SECURITY.md); \
                     only on a developer's laptop, insecure = true instead",
                ));
            }
        }
    }
}
