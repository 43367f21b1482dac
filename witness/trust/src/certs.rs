//! `witness certs`: a cluster CA and the certificates of its witnesses,
//! agents and operators, for an installation without a PKI of its own.
//!
//! Keys are ECDSA P-256, written with mode 0600; certificates 0644. The CA
//! certificate names the cluster in its subject's organization, so issuing
//! needs only the CA's directory. An existing file is never overwritten
//! unless the caller says so (`--force`): a CA key replaced by accident
//! would strand every certificate it issued.
//!
//! Validity starts a day before issuance, so a host whose clock runs behind
//! (or a test that steps clocks) still accepts a fresh certificate.
//!
//! Sites with their own PKI issue the same certificates with openssl or
//! step-ca: docs/SECURITY.md shows how.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use super::identity::{Identity, Principal};

/// Default lifetime of the CA: ten years.
pub const CA_DAYS: u32 = 3650;
/// Default lifetime of a peer, agent or operator certificate: two years.
pub const LEAF_DAYS: u32 = 730;
/// Validity starts this long before issuance (clock skew).
const BACKDATE_SECS: i64 = 24 * 3600;

/// File names inside a CA directory.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";

/// A certificate and its key, PEM.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

fn fail(what: &str) -> impl Fn(rcgen::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn validity(params: &mut CertificateParams, now: i64, days: u32) -> Result<(), String> {
    if days == 0 {
        return Err("--days must be at least 1".into());
    }
    let start = OffsetDateTime::from_unix_timestamp(now - BACKDATE_SECS)
        .map_err(|e| format!("the clock reads an impossible time: {e}"))?;
    params.not_before = start;
    params.not_after = OffsetDateTime::from_unix_timestamp(now + i64::from(days) * 86_400)
        .map_err(|e| format!("--days {days} is too far in the future: {e}"))?;
    Ok(())
}

fn serial() -> SerialNumber {
    // 16 random bytes, high bit clear so the DER integer stays positive.
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from(bytes.to_vec())
}

/// A new CA for `cluster`.
pub fn make_ca(cluster: &str, days: u32, now: i64) -> Result<Issued, String> {
    super::identity::check_name(cluster).map_err(|e| format!("cluster name: {e}"))?;
    let key = KeyPair::generate().map_err(fail("generating the CA key"))?;
    let mut params = CertificateParams::default();
    validity(&mut params, now, days)?;
    params.serial_number = Some(serial());
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("Witness CA of {cluster}"));
    dn.push(DnType::OrganizationName, cluster);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params
        .self_signed(&key)
        .map_err(fail("signing the CA certificate"))?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A CA read back from its certificate and key.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub cluster: String,
}

impl Ca {
    /// Read `dir/ca.pem` and `dir/ca.key`.
    pub fn load(dir: &Path) -> Result<Ca, String> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|e| {
                format!(
                    "reading {}: {e}; make the CA first with `witness certs ca --cluster NAME \
                     --dir {}`",
                    path.display(),
                    dir.display()
                )
            })
        };
        Ca::from_pem(&read(CA_CERT)?, &read(CA_KEY)?)
    }

    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, String> {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| format!("the CA certificate is not PEM: {e}"))?;
        let cluster = {
            use x509_parser::prelude::*;
            let (_, cert) = X509Certificate::from_der(&der)
                .map_err(|e| format!("the CA certificate does not parse: {e}"))?;
            let org = cert
                .subject()
                .iter_organization()
                .next()
                .and_then(|o| o.as_str().ok())
                .map(str::to_string);
            org.ok_or("the CA certificate names no cluster (subject O=); was it made by `witness certs ca`?")?
        };
        let key = KeyPair::from_pem(key_pem).map_err(fail("reading the CA key"))?;
        let issuer =
            Issuer::from_ca_cert_der(&der, key).map_err(fail("reading the CA certificate"))?;
        Ok(Ca { issuer, cluster })
    }

    /// A certificate for `principal` of this CA's cluster. `hosts` (DNS
    /// names or IP addresses) are added as subject alternative names, for
    /// tools that check host names (browsers, curl); witnesses check the
    /// identity URI.
    pub fn issue(
        &self,
        principal: Principal,
        hosts: &[String],
        days: u32,
        now: i64,
    ) -> Result<Issued, String> {
        let identity = Identity::new(self.cluster.clone(), principal);
        let key = KeyPair::generate().map_err(fail("generating a key"))?;
        let mut params = CertificateParams::default();
        validity(&mut params, now, days)?;
        params.serial_number = Some(serial());
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, identity.uri());
        dn.push(DnType::OrganizationName, self.cluster.clone());
        params.distinguished_name = dn;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match identity.principal {
            // A witness serves (its ports) and dials (its peers).
            Principal::Peer { .. } => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            // Agents and operators only dial: their certificates cannot
            // stand in for a witness.
            _ => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        let uri = identity
            .uri()
            .try_into()
            .map_err(|e| format!("identity {identity}: {e}"))?;
        params.subject_alt_names.push(SanType::URI(uri));
        for host in hosts {
            let san = match host.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => {
                    let ok = !host.is_empty()
                        && host.len() <= 253
                        && host
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '*'));
                    if !ok {
                        return Err(format!(
                            "--host {host:?} is neither an IP address nor a DNS name"
                        ));
                    }
                    SanType::DnsName(
                        host.as_str()
                            .try_into()
                            .map_err(|e| format!("--host {host:?}: {e}"))?,
                    )
                }
            };
            params.subject_alt_names.push(san);
        }
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(fail("signing the certificate"))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The file stem `witness certs` uses for a principal's files.
pub fn stem(principal: &Principal) -> String {
    match principal {
        Principal::Peer { id } => format!("peer-{id}"),
        Principal::Agent { site, name } => format!("agent-{site}-{name}"),
        Principal::Viewer { name } => format!("viewer-{name}"),
        Principal::Operator { name } => format!("operator-{name}"),
    }
}

/// Write `issued` as `dir/<stem>.pem` (0644) and `dir/<stem>.key` (0600).
/// Refuses to replace an existing file unless `force`.
pub fn write(
    dir: &Path,
    stem: &str,
    issued: &Issued,
    force: bool,
) -> Result<(PathBuf, PathBuf), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let cert = dir.join(format!("{stem}.pem"));
    let key = dir.join(format!("{stem}.key"));
    if !force {
        for path in [&cert, &key] {
            if path.exists() {
                return Err(format!(
                    "{} exists; pass --force to replace it (certificates already issued from a \
                     replaced CA stop working)",
                    path.display()
                ));
            }
        }
    }
    write_file(&key, issued.key_pem.as_bytes(), 0o600)?;
    write_file(&cert, issued.cert_pem.as_bytes(), 0o644)?;
    Ok((cert, key))
}

/// Write `bytes` to `path` with `mode`, atomically: a temporary file in the
/// same directory, created with the mode (a key is never readable by others,
/// even for an instant), synced, then renamed over `path`.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let result = (|| {
        let mut file = options.open(&tmp)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // The umask may have narrowed the mode further; never widen a
            // key, but make a certificate readable as promised.
            file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("writing {}: {e}", path.display())
    })
}

/// Make a CA in `dir` (`ca.pem`, `ca.key`).
pub fn init_ca(
    dir: &Path,
    cluster: &str,
    days: u32,
    force: bool,
    now: i64,
) -> Result<(PathBuf, PathBuf), String> {
    let issued = make_ca(cluster, days, now)?;
    write(dir, "ca", &issued, force)
}

/// Issue a certificate from the CA in `ca_dir` into `out_dir`.
pub fn issue_into(
    ca_dir: &Path,
    out_dir: &Path,
    principal: Principal,
    hosts: &[String],
    days: u32,
    force: bool,
    now: i64,
) -> Result<(PathBuf, PathBuf), String> {
    let ca = Ca::load(ca_dir)?;
    let stem = stem(&principal);
    let issued = ca.issue(principal, hosts, days, now)?;
    write(out_dir, &stem, &issued, force)
}

/// What `witness certs show` prints of a certificate file.
pub fn describe(path: &Path) -> Result<String, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let pem = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let mut out = String::new();
    for der in CertificateDer::pem_slice_iter(&pem) {
        let der = der.map_err(|e| format!("{}: {e}", path.display()))?;
        use x509_parser::prelude::*;
        let (_, cert) = X509Certificate::from_der(&der)
            .map_err(|e| format!("{}: not a certificate: {e}", path.display()))?;
        let identity = match super::pki::cert_info(&der) {
            Ok(info) => info.identity.to_string(),
            Err(_) if cert.is_ca() => "(a CA)".to_string(),
            Err(e) => format!("(none: {e})"),
        };
        let not_before = cert.validity().not_before.timestamp();
        let not_after = cert.validity().not_after.timestamp();
        let hosts: Vec<String> = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::DNSName(d) => Some(d.to_string()),
                        GeneralName::IPAddress(ip) => match ip.len() {
                            4 => <[u8; 4]>::try_from(*ip)
                                .ok()
                                .map(|b| std::net::Ipv4Addr::from(b).to_string()),
                            16 => <[u8; 16]>::try_from(*ip)
                                .ok()
                                .map(|b| std::net::Ipv6Addr::from(b).to_string()),
                            _ => None,
                        },
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push_str(&format!(
            "{}\n  identity:   {identity}\n  subject:    {}\n  issuer:     {}\n  serial:     \
             serial:{}\n  valid from: {}\n  valid to:   {}\n",
            path.display(),
            cert.subject(),
            cert.issuer(),
            cert.raw_serial_as_string()
                .replace(':', "")
                .to_ascii_lowercase(),
            crate::format_unix(not_before),
            crate::format_unix(not_after),
        ));
        if !hosts.is_empty() {
            out.push_str(&format!("  hosts:      {}\n", hosts.join(", ")));
        }
    }
    if out.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Material, TlsFiles};

    fn now() -> i64 {
        crate::unix_now()
    }

    #[test]
    fn issued_certificates_load_with_their_identity_and_key_modes() {
        let dir = tempfile::tempdir().expect("tempdir");
        init_ca(dir.path(), "mail", 30, false, now()).expect("ca");
        let (cert, key) = issue_into(
            dir.path(),
            dir.path(),
            Principal::Peer { id: 2 },
            &["127.0.0.1".into(), "svc2.example.com".into()],
            10,
            false,
            now(),
        )
        .expect("peer");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode(&key), 0o600);
            assert_eq!(mode(&dir.path().join(CA_KEY)), 0o600);
            assert_eq!(mode(&cert), 0o644);
        }
        let material = Material::load(
            &TlsFiles {
                ca: dir.path().join(CA_CERT),
                cert,
                key,
                deny: None,
            },
            now(),
        )
        .expect("loads");
        assert_eq!(material.own.identity.uri(), "witness://mail/peer/2");
        let shown = describe(&dir.path().join("peer-2.pem")).expect("describe");
        assert!(shown.contains("witness://mail/peer/2"), "{shown}");
        assert!(shown.contains("svc2.example.com"), "{shown}");
    }

    #[test]
    fn nothing_is_overwritten_without_force() {
        let dir = tempfile::tempdir().expect("tempdir");
        init_ca(dir.path(), "mail", 30, false, now()).expect("ca");
        let err = init_ca(dir.path(), "mail", 30, false, now()).expect_err("refused");
        assert!(err.contains("--force"), "{err}");
        init_ca(dir.path(), "mail", 30, true, now()).expect("forced");
    }

    #[test]
    fn a_certificate_from_another_ca_or_expired_does_not_load() {
        let a = tempfile::tempdir().expect("tempdir");
        let b = tempfile::tempdir().expect("tempdir");
        init_ca(a.path(), "mail", 30, false, now()).expect("ca a");
        init_ca(b.path(), "mail", 30, false, now()).expect("ca b");
        let (cert, key) = issue_into(
            b.path(),
            b.path(),
            Principal::Operator { name: "eve".into() },
            &[],
            10,
            false,
            now(),
        )
        .expect("issue");
        let files = TlsFiles {
            ca: a.path().join(CA_CERT),
            cert: cert.clone(),
            key: key.clone(),
            deny: None,
        };
        let err = Material::load(&files, now()).expect_err("refused");
        assert!(err.contains("not usable with tls.ca"), "{err}");
        // Ten days after a one-day certificate expired.
        let files = TlsFiles {
            ca: b.path().join(CA_CERT),
            cert,
            key,
            deny: None,
        };
        Material::load(&files, now()).expect("valid now");
        let err = Material::load(&files, now() + 20 * 86_400).expect_err("refused");
        assert!(err.contains("xpired"), "{err}");
    }
}
