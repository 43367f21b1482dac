//! Certificates and keys from disk, and the rustls configurations built from
//! them: the checks every TLS handshake of a witness makes.
//!
//! - A **server** (a witness's gRPC and HTTP ports) demands a client
//!   certificate, checks its chain to the cluster CA (validity dates and the
//!   client-auth usage included), that it carries exactly one identity URI of
//!   this cluster, and that neither its serial nor its identity is on the
//!   deny list. The identity is read once per connection and handed to the
//!   services ([`super::conn::ConnInfo`]), which check the role per call.
//! - A **client** (a witness dialing a peer, an agent or `witnessctl` dialing
//!   a witness) presents its own certificate and accepts only a server whose
//!   certificate chains to the same CA, has the server-auth usage and the
//!   identity of a *peer* of the same cluster. Host names are not what is
//!   checked: the identity is (a witness's certificate may carry its DNS
//!   names and addresses too, for browsers and curl).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use super::identity::{Identity, Role};

/// ALPN of the gRPC port: HTTP/2 only.
pub const ALPN_GRPC: &[&[u8]] = &[b"h2"];
/// ALPN of the HTTP port: browsers and curl speak either.
pub const ALPN_HTTP: &[&[u8]] = &[b"h2", b"http/1.1"];

/// Where one process's TLS material lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA's certificate (PEM): the only issuer trusted.
    pub ca: PathBuf,
    /// This process's certificate (PEM), optionally followed by intermediates.
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8, SEC1 or PKCS#1); not readable by others.
    pub key: PathBuf,
    /// Optional deny list: one identity URI or `serial:<hex>` per line.
    pub deny: Option<PathBuf>,
}

/// The cryptography every handshake uses: aws-lc-rs, as tonic and reqwest.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Certificates refused whatever their chain says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DenyList {
    identities: BTreeSet<String>,
    /// Lower-case hex, no separators, no leading zeros.
    serials: BTreeSet<String>,
}

impl DenyList {
    /// Parse a deny file: blank lines and `#` comments ignored.
    pub fn parse(text: &str, origin: &Path) -> Result<DenyList, String> {
        let mut deny = DenyList::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            if let Some(hex) = line.strip_prefix("serial:") {
                let norm = normalize_serial(hex).ok_or_else(|| {
                    format!(
                        "{}:{}: {line:?} is not a serial number; write serial:<hex digits> as \
                         `witness certs show` prints it",
                        origin.display(),
                        n + 1
                    )
                })?;
                deny.serials.insert(norm);
            } else {
                let id = Identity::parse(line)
                    .map_err(|e| format!("{}:{}: {e}", origin.display(), n + 1))?;
                deny.identities.insert(id.uri());
            }
        }
        Ok(deny)
    }

    fn refuses(&self, cert: &CertInfo) -> Option<String> {
        if self.serials.contains(&cert.serial) {
            return Some(format!(
                "certificate serial {} is on the deny list",
                cert.serial
            ));
        }
        if self.identities.contains(&cert.identity.uri()) {
            return Some(format!("{} is on the deny list", cert.identity));
        }
        None
    }

    pub fn len(&self) -> usize {
        self.identities.len() + self.serials.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn normalize_serial(hex: &str) -> Option<String> {
    let digits: String = hex
        .chars()
        .filter(|c| !matches!(c, ':' | ' '))
        .collect::<String>()
        .to_ascii_lowercase();
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let trimmed = digits.trim_start_matches('0');
    Some(if trimmed.is_empty() { "0" } else { trimmed }.to_string())
}

/// What a certificate says, read with an X.509 parser.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    pub identity: Identity,
    /// Lower-case hex, no leading zeros.
    pub serial: String,
    /// End of validity, seconds since the Unix epoch.
    pub not_after: i64,
}

/// Read the identity, serial and expiry of a DER certificate.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, String> {
    use x509_parser::prelude::*;
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let mut uris = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name
                && uri.starts_with(super::identity::SCHEME)
            {
                uris.push(*uri);
            }
        }
    }
    let uri = match uris.as_slice() {
        [one] => *one,
        [] => {
            return Err(format!(
                "the certificate for {:?} carries no witness:// identity URI (make certificates \
                 with `witness certs`, or see docs/SECURITY.md for the form)",
                cert.subject().to_string()
            ));
        }
        many => {
            return Err(format!(
                "the certificate carries {} witness:// identities ({}); it must carry one",
                many.len(),
                many.join(", ")
            ));
        }
    };
    let identity = Identity::parse(uri)?;
    let serial = normalize_serial(&cert.raw_serial_as_string()).unwrap_or_else(|| "0".into());
    Ok(CertInfo {
        identity,
        serial,
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// End of validity of a DER certificate (the CA's has no identity URI).
pub fn not_after(der: &[u8]) -> Result<i64, String> {
    use x509_parser::prelude::*;
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    Ok(cert.validity().not_after.timestamp())
}

/// Everything loaded from one [`TlsFiles`], checked, and the configurations
/// built from it.
pub struct Material {
    /// Who this process is, from its own certificate.
    pub own: CertInfo,
    /// When the CA certificate expires (seconds since the epoch).
    pub ca_not_after: i64,
    /// The gRPC port's configuration.
    pub grpc_server: Arc<rustls::ServerConfig>,
    /// The HTTP port's configuration.
    pub http_server: Arc<rustls::ServerConfig>,
    /// Dialing a witness: its certificate must be a peer's of this cluster.
    pub client: Arc<rustls::ClientConfig>,
    roots: Arc<RootCertStore>,
    deny: Arc<DenyList>,
    /// The bytes read, to tell whether a reload changed anything.
    pub(super) fingerprint: Vec<u8>,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("own", &self.own)
            .field("ca_not_after", &self.ca_not_after)
            .finish_non_exhaustive()
    }
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| {
        format!(
            "reading {what} {}: {e}; make the cluster's certificates with `witness certs` (see \
             docs/SECURITY.md)",
            path.display()
        )
    })
}

/// A key readable by every local user is refused: anyone on the host could
/// act as this process.
#[cfg(unix)]
fn check_key_mode(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::metadata(path).map_err(|e| format!("reading tls.key {}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o007 != 0 {
        return Err(format!(
            "tls.key {} has mode {mode:04o}: other users can read it; run `chmod 600 {}` (or \
             640 with the witness group owning it)",
            path.display(),
            path.display()
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_key_mode(_path: &Path) -> Result<(), String> {
    Ok(())
}

impl Material {
    /// Load and check `files`. The error names the file and says what to do.
    pub fn load(files: &TlsFiles, now: i64) -> Result<Material, String> {
        let ca_pem = read("tls.ca", &files.ca)?;
        let cert_pem = read("tls.cert", &files.cert)?;
        check_key_mode(&files.key)?;
        let key_pem = read("tls.key", &files.key)?;
        let deny_text = match &files.deny {
            Some(path) => Some(read("tls.deny", path)?),
            None => None,
        };

        let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&ca_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("tls.ca {}: {e}", files.ca.display()))?;
        if cas.is_empty() {
            return Err(format!(
                "tls.ca {} holds no PEM certificate",
                files.ca.display()
            ));
        }
        let mut roots = RootCertStore::empty();
        let mut ca_not_after = i64::MAX;
        for ca in &cas {
            roots.add(ca.clone()).map_err(|e| {
                format!(
                    "tls.ca {}: not a usable CA certificate: {e}",
                    files.ca.display()
                )
            })?;
            ca_not_after = ca_not_after.min(not_after(ca)?);
        }
        let roots = Arc::new(roots);

        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("tls.cert {}: {e}", files.cert.display()))?;
        let Some(leaf) = chain.first() else {
            return Err(format!(
                "tls.cert {} holds no PEM certificate",
                files.cert.display()
            ));
        };
        let own = cert_info(leaf).map_err(|e| format!("tls.cert {}: {e}", files.cert.display()))?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            format!(
                "tls.key {}: no private key found ({e}); it must be the PEM key made with the \
                 certificate",
                files.key.display()
            )
        })?;
        let deny = match (&files.deny, deny_text) {
            (Some(path), Some(text)) => DenyList::parse(&String::from_utf8_lossy(&text), path)?,
            _ => DenyList::default(),
        };
        let deny = Arc::new(deny);

        let provider = provider();
        // The own certificate must chain to the CA, and be valid now: a
        // process that starts with a credential nobody will accept fails
        // loudly here rather than at every handshake.
        let parsed = ParsedCertificate::try_from(leaf)
            .map_err(|e| format!("tls.cert {}: {e}", files.cert.display()))?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            &chain[1..],
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(now.max(0) as u64)),
            provider.signature_verification_algorithms.all,
        )
        .or_else(|e| {
            // An agent's or operator's certificate has no server-auth usage;
            // check its chain as a client certificate instead.
            if own.identity.role() == Role::Peer {
                Err(e)
            } else {
                verify_client_chain(&roots, &provider, leaf, &chain[1..], now)
            }
        })
        .map_err(|e| {
            format!(
                "tls.cert {} is not usable with tls.ca {}: {e}; reissue it from this CA \
                 (`witness certs`)",
                files.cert.display(),
                files.ca.display()
            )
        })?;
        if let Some(why) = deny.refuses(&own) {
            return Err(format!("tls.cert {}: {why}", files.cert.display()));
        }

        let client_verifier = Arc::new(CallerVerifier {
            inner: WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| format!("tls.ca {}: {e}", files.ca.display()))?,
            cluster: own.identity.cluster.clone(),
            deny: deny.clone(),
        });
        let server = |alpn: &[&[u8]]| -> Result<Arc<rustls::ServerConfig>, String> {
            let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_client_cert_verifier(client_verifier.clone())
                .with_single_cert(chain.clone(), key.clone_key())
                .map_err(|e| {
                    format!(
                        "tls.key {} does not belong to tls.cert {}: {e}",
                        files.key.display(),
                        files.cert.display()
                    )
                })?;
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Ok(Arc::new(config))
        };
        let grpc_server = server(ALPN_GRPC)?;
        let http_server = server(ALPN_HTTP)?;
        let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PeerVerifier {
                roots: roots.clone(),
                provider: provider.clone(),
                cluster: own.identity.cluster.clone(),
                deny: deny.clone(),
            }))
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map_err(|e| {
                format!(
                    "tls.key {} does not belong to tls.cert {}: {e}",
                    files.key.display(),
                    files.cert.display()
                )
            })?;
        client.alpn_protocols = ALPN_GRPC.iter().map(|p| p.to_vec()).collect();

        let mut fingerprint = Vec::new();
        for part in [&ca_pem, &cert_pem, &key_pem] {
            fingerprint.extend_from_slice(&(part.len() as u64).to_le_bytes());
            fingerprint.extend_from_slice(part);
        }
        if let Some(path) = &files.deny {
            fingerprint.extend_from_slice(path.as_os_str().as_encoded_bytes());
            fingerprint.extend_from_slice(&(deny.len() as u64).to_le_bytes());
            for id in deny.identities.iter().chain(&deny.serials) {
                fingerprint.extend_from_slice(id.as_bytes());
                fingerprint.push(b'\n');
            }
        }
        Ok(Material {
            own,
            ca_not_after,
            grpc_server,
            http_server,
            client: Arc::new(client),
            roots,
            deny,
            fingerprint,
        })
    }

    /// Why the deny list refuses `identity` (and, when known, the serial
    /// `serial` of its certificate): for a caller a peer forwarded, whose
    /// certificate this process never saw.
    pub fn denies(&self, identity: &Identity, serial: Option<&str>) -> Option<String> {
        if let Some(serial) = serial.and_then(normalize_serial)
            && self.deny.serials.contains(&serial)
        {
            return Some(format!("certificate serial {serial} is on the deny list"));
        }
        self.deny
            .identities
            .contains(&identity.uri())
            .then(|| format!("{identity} is on the deny list"))
    }

    /// Whether a client certificate accepted under older material is still
    /// trusted under this one (after a reload changed the CA or deny list).
    pub fn still_trusts(&self, chain: &[CertificateDer<'static>], now: i64) -> Result<(), String> {
        let Some(leaf) = chain.first() else {
            return Err("no certificate".into());
        };
        verify_client_chain(&self.roots, &provider(), leaf, &chain[1..], now)
            .map_err(|e| e.to_string())?;
        let info = cert_info(leaf)?;
        if let Some(why) = self.deny.refuses(&info) {
            return Err(why);
        }
        Ok(())
    }
}

fn verify_client_chain(
    roots: &Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: i64,
) -> Result<(), rustls::Error> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    verifier
        .verify_client_cert(
            leaf,
            intermediates,
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(now.max(0) as u64)),
        )
        .map(|_| ())
}

fn refusal(why: String) -> rustls::Error {
    #[derive(Debug)]
    struct Why(String);
    impl std::fmt::Display for Why {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl std::error::Error for Why {}
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(Why(
        why,
    )))))
}

/// A server's check of a client: the CA chain (rustls's WebPKI verifier),
/// then this cluster's identity and the deny list.
#[derive(Debug)]
struct CallerVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    cluster: String,
    deny: Arc<DenyList>,
}

impl ClientCertVerifier for CallerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let info = cert_info(end_entity).map_err(refusal)?;
        if info.identity.cluster != self.cluster {
            return Err(refusal(format!(
                "{} belongs to cluster {:?}, not {:?}",
                info.identity, info.identity.cluster, self.cluster
            )));
        }
        if let Some(why) = self.deny.refuses(&info) {
            return Err(refusal(why));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A client's check of a witness: chain to the CA with the server-auth
/// usage, and a peer identity of this cluster. Which peer is checked by the
/// caller after the handshake ([`super::conn`]), where the expected node id
/// is known.
#[derive(Debug)]
struct PeerVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    cluster: String,
    deny: Arc<DenyList>,
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let info = cert_info(end_entity).map_err(refusal)?;
        if info.identity.cluster != self.cluster {
            return Err(refusal(format!(
                "the server is {}, of cluster {:?}, not {:?}",
                info.identity, info.identity.cluster, self.cluster
            )));
        }
        if info.identity.role() != Role::Peer {
            return Err(refusal(format!(
                "the server presented {}, which is not a witness's certificate",
                info.identity
            )));
        }
        if let Some(why) = self.deny.refuses(&info) {
            return Err(refusal(why));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_lists_take_identities_and_serials() {
        let deny = DenyList::parse(
            "# revoked 2026-12-01\nwitness://mail/operator/bob\nserial:00:0A:ff  # lost laptop\n\n",
            Path::new("deny.txt"),
        )
        .expect("valid deny list");
        assert_eq!(deny.len(), 2);
        assert!(deny.serials.contains("aff"));
        let err = DenyList::parse("serial:xyz\n", Path::new("deny.txt")).expect_err("refused");
        assert!(err.contains("deny.txt:1"), "{err}");
        let err = DenyList::parse("bob\n", Path::new("deny.txt")).expect_err("refused");
        assert!(err.contains("not start with"), "{err}");
    }
}
