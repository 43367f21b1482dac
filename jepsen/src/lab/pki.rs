//! The labs' certificates: a CA per cluster name and every certificate a
//! test or run needs, issued on first use with `witness certs`' own code
//! ([`witness::trust::certs`]), so every lab runs with mutual TLS as
//! production does.
//!
//! One [`Pki`] per cluster name per process ([`Pki::shared`]), in a
//! temporary directory removed when the process exits; certificates are
//! issued once and reused. A lab that needs a second, foreign CA (to show
//! it refused) makes its own with [`Pki::new`].

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use witness::trust::certs;
use witness::trust::{Principal, TlsFiles};

/// Lifetime of the labs' certificates, in days.
const DAYS: u32 = 30;

/// The operator name the labs' `witnessctl` calls carry.
pub const OPERATOR: &str = "tester";
/// The viewer the labs read the HTTP port as.
pub const VIEWER: &str = "observer";

/// A CA and the certificates issued from it.
pub struct Pki {
    dir: PathBuf,
    pub cluster: String,
    issued: Mutex<HashMap<String, TlsFiles>>,
    _temp: Option<tempfile::TempDir>,
}

impl Pki {
    /// A new CA for `cluster` in `dir`.
    pub fn new(dir: &Path, cluster: &str) -> Pki {
        certs::init_ca(dir, cluster, DAYS, false, witness::trust::unix_now())
            .unwrap_or_else(|e| panic!("making the lab CA in {}: {e}", dir.display()));
        Pki {
            dir: dir.to_path_buf(),
            cluster: cluster.to_string(),
            issued: Mutex::new(HashMap::new()),
            _temp: None,
        }
    }

    /// This process's CA for `cluster`.
    pub fn shared(cluster: &str) -> Arc<Pki> {
        static ALL: OnceLock<Mutex<HashMap<String, Arc<Pki>>>> = OnceLock::new();
        let mut all = ALL
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        all.entry(cluster.to_string())
            .or_insert_with(|| {
                let temp = tempfile::Builder::new()
                    .prefix("witness-lab-pki-")
                    .tempdir()
                    .expect("a temporary directory for the lab's certificates");
                let mut pki = Pki::new(temp.path(), cluster);
                pki._temp = Some(temp);
                Arc::new(pki)
            })
            .clone()
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join(certs::CA_CERT)
    }

    /// The CA's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A certificate for `principal` issued as if the clock read `now`
    /// (seconds since the epoch) and valid for `days`, into `out`: an
    /// expired one, or a replacement written over `out`'s files.
    pub fn issue_at(&self, principal: Principal, out: &Path, now: i64, days: u32) -> TlsFiles {
        let (cert, key) = certs::issue_into(
            &self.dir,
            out,
            principal,
            &["127.0.0.1".into()],
            days,
            true,
            now,
        )
        .unwrap_or_else(|e| panic!("issuing a lab certificate: {e}"));
        TlsFiles {
            ca: self.ca(),
            cert,
            key,
            deny: None,
        }
    }

    /// The files of `principal`'s certificate, issued on first use.
    pub fn files(&self, principal: Principal) -> TlsFiles {
        let stem = certs::stem(&principal);
        let mut issued = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(files) = issued.get(&stem) {
            return files.clone();
        }
        let (cert, key) = certs::issue_into(
            &self.dir,
            &self.dir,
            principal,
            &["127.0.0.1".into()],
            DAYS,
            true,
            witness::trust::unix_now(),
        )
        .unwrap_or_else(|e| panic!("issuing a lab certificate ({stem}): {e}"));
        let files = TlsFiles {
            ca: self.ca(),
            cert,
            key,
            deny: None,
        };
        issued.insert(stem, files.clone());
        files
    }

    pub fn peer(&self, id: u64) -> TlsFiles {
        self.files(Principal::Peer { id })
    }

    pub fn agent(&self, site: &str, name: &str) -> TlsFiles {
        self.files(Principal::Agent {
            site: site.into(),
            name: name.into(),
        })
    }

    pub fn operator(&self) -> TlsFiles {
        self.files(Principal::Operator {
            name: OPERATOR.into(),
        })
    }

    pub fn viewer(&self) -> TlsFiles {
        self.files(Principal::Viewer {
            name: VIEWER.into(),
        })
    }

    /// The `[tls]` table of a node or agent file presenting `files`.
    pub fn table(files: &TlsFiles) -> String {
        format!(
            "\n[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            files.ca.display(),
            files.cert.display(),
            files.key.display()
        )
    }

    /// The environment that makes `witnessctl` present `files`.
    pub fn ctl_env(files: &TlsFiles) -> [(&'static str, PathBuf); 3] {
        [
            ("WITNESS_CA", files.ca.clone()),
            ("WITNESS_CERT", files.cert.clone()),
            ("WITNESS_KEY", files.key.clone()),
        ]
    }

    /// An HTTP/1.0 GET over mutual TLS, as `files`' holder: (status, body),
    /// or `None` when the witness cannot be reached or refuses the handshake.
    pub fn https_get(files: &TlsFiles, addr: &str, path: &str) -> Option<(u16, String)> {
        let material = witness::trust::Material::load(files, witness::trust::unix_now())
            .unwrap_or_else(|e| panic!("the lab's client certificate: {e}"));
        let mut config = (*material.client).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).to_string();
        let name = rustls_name(&host)?;
        let conn = rustls::ClientConnection::new(Arc::new(config), name).ok()?;
        let tcp = TcpStream::connect(addr).ok()?;
        tcp.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        tcp.set_write_timeout(Some(Duration::from_secs(3))).ok()?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        write!(tls, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
        let mut buf = Vec::new();
        // A server that closes without close_notify still sent the reply.
        let _ = tls.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf).to_string();
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((code, body))
    }
}

fn rustls_name(host: &str) -> Option<rustls::pki_types::ServerName<'static>> {
    rustls::pki_types::ServerName::try_from(host.to_string()).ok()
}
