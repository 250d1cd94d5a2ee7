//! The cluster's private PKI: one CA (ECDSA P-256, 10 years) kept in the state directory, one
//! certificate per host for etcd client/peer TLS, Patroni's REST API, Patroni's etcd client
//! and PostgreSQL, and pgdeploy's own etcd administrator certificate.
//!
//! Layout under `<state dir>/tls/` (directory 0700, files 0600):
//! `ca.crt`, `ca.key`, `<host>.crt`, `<host>.key`, and [`ADMIN_CERT`]/[`ADMIN_KEY`].
//!
//! Identities in etcd (with etcd authentication on): a host certificate has no Common Name,
//! because etcd's JSON gateway (Patroni's way in) refuses any client certificate that has one;
//! Patroni authenticates with its own etcd user and password instead. Only etcd and Patroni
//! hosts' certificates may be used as TLS clients ([`Usage`]): etcd refuses every other host's
//! certificate at the handshake. The administrator certificate (Common Name `root`, client use
//! only) is etcd's root user for etcdctl; it is kept on the etcd hosts for root alone.
//!
//! Re-runs reuse what is there: a host certificate is re-issued only when its SANs differ
//! from the requested ones, it expires within [`RENEW_BEFORE_DAYS`], it was not signed by the
//! current CA, or its files are missing/unreadable. That keeps an unchanged plan unchanged.
//! A re-issue keeps the host's key (only a missing or unusable key is replaced), so a new
//! certificate always matches the key that every service on the host already has.

use crate::inventory::{Group, Host, Inventory};
use crate::secrets::{ensure_private_dir, tighten_mode, write_private};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use serde::Serialize;
use std::collections::BTreeSet;
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::GeneralName;

/// Validity of the CA.
pub const CA_VALIDITY_DAYS: i64 = 3650;
/// Validity of host certificates.
pub const HOST_VALIDITY_DAYS: i64 = 825;
/// A host certificate closer than this to its expiry is re-issued.
pub const RENEW_BEFORE_DAYS: i64 = 30;
/// not_before is set this far in the past, to tolerate clock skew between hosts.
const BACKDATE: Duration = Duration::hours(1);

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum PkiError {
    #[error("cannot create {path}: {source}")]
    #[diagnostic(help("check that the inventory directory is writable by this user"))]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    #[diagnostic(help("check free space and permissions of the state directory"))]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a usable CA ({reason})")]
    #[diagnostic(help(
        "restore ca.crt and ca.key from a backup, or bring the whole state with `pgdeploy state \
         import`. Deleting both creates a new CA, which a deployed cluster's hosts do not trust: \
         check and apply then refuse to run"
    ))]
    BadCa { path: PathBuf, reason: String },
    #[error("{path} exists but {missing} is missing")]
    #[diagnostic(help(
        "restore the missing file from a backup, or delete both to create a new CA"
    ))]
    HalfCa { path: PathBuf, missing: PathBuf },
    #[error("invalid host name {name:?} for a certificate file")]
    #[diagnostic(help("host names may contain only letters, digits, '-', '_' and '.'"))]
    BadHostName { name: String },
    #[error("cannot issue the certificate for {host}: {source}")]
    Issue { host: String, source: rcgen::Error },
}

/// pgdeploy's etcd administrator certificate and key in the state directory's `tls/` (never
/// a host's file name: those end in `.crt` and `.key`).
pub const ADMIN_CERT: &str = "etcd-root.client.pem";
pub const ADMIN_KEY: &str = "etcd-root.client-key.pem";
/// The administrator certificate's files on an etcd host, in [`TLS_DIR`] (never a host's
/// file name either).
pub const HOST_ADMIN_CERT: &str = "etcd-root.pem";
pub const HOST_ADMIN_KEY: &str = "etcd-root-key.pem";
/// The etcd user the administrator certificate names.
pub const ADMIN_USER: &str = "root";

/// What a certificate may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A TLS server only (a host that is no etcd or Patroni client: HAProxy).
    Server,
    /// Server and client (etcd members, Patroni members).
    ServerAndClient,
    /// A TLS client only (the administrator certificate).
    Client,
}

impl Usage {
    fn ekus(self) -> Vec<ExtendedKeyUsagePurpose> {
        match self {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::ServerAndClient => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        }
    }
    fn matches(self, server: bool, client: bool) -> bool {
        match self {
            Usage::Server => server && !client,
            Usage::ServerAndClient => server && client,
            Usage::Client => !server && client,
        }
    }
}

/// Where pgdeploy puts TLS material on a host. Each reader has its own copy of the host's
/// certificate next to its copy of the key, and a role replaces the two together (`pair` in
/// the role's files), so no service reads a certificate with a key it does not belong to.
pub const TLS_DIR: &str = "/etc/pgdeploy/tls";

/// TLS file paths on one host.
#[derive(Debug, Clone, Serialize)]
pub struct TlsPaths {
    pub ca: String,
    /// Host certificate (public, 0644), paired with `key`.
    pub cert: String,
    /// Host key owned by root (0600), for root's tools (etcdctl health checks).
    pub key: String,
    /// etcd's copy of the certificate and of the key (owned by etcd).
    pub etcd_cert: String,
    pub etcd_key: String,
    /// Patroni's copy of the certificate and of the key (owned by postgres; REST API and
    /// etcd client).
    pub patroni_cert: String,
    pub patroni_key: String,
    /// pgdeploy's etcd administrator certificate and key (root 0600; etcd hosts only).
    pub admin_cert: String,
    pub admin_key: String,
    /// pgBackRest's certificate (Common Name = the host's name) and key, owned by postgres
    /// (database and repository hosts).
    pub pgbackrest_cert: String,
    pub pgbackrest_key: String,
}

pub fn tls_paths(host_name: &str) -> TlsPaths {
    TlsPaths {
        ca: format!("{TLS_DIR}/ca.crt"),
        cert: format!("{TLS_DIR}/{host_name}.crt"),
        key: format!("{TLS_DIR}/{host_name}.key"),
        etcd_cert: format!("{TLS_DIR}/etcd.crt"),
        etcd_key: format!("{TLS_DIR}/etcd.key"),
        patroni_cert: format!("{TLS_DIR}/patroni.crt"),
        patroni_key: format!("{TLS_DIR}/patroni.key"),
        admin_cert: format!("{TLS_DIR}/{HOST_ADMIN_CERT}"),
        admin_key: format!("{TLS_DIR}/{HOST_ADMIN_KEY}"),
        pgbackrest_cert: format!("{TLS_DIR}/pgbackrest.crt"),
        pgbackrest_key: format!("{TLS_DIR}/pgbackrest.key"),
    }
}

/// A host name that is safe as a file name in the state directory.
fn is_file_safe(host_name: &str) -> bool {
    !host_name.is_empty()
        && !host_name.starts_with('.')
        && host_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// SANs for a host's certificate: its addresses plus 127.0.0.1, its name plus localhost
/// (etcd listens on 127.0.0.1 too; local tools connect there). A Patroni host's also names
/// the DNS name clients use: HAProxy passes TCP through, so `sslmode=verify-full` against
/// that name holds whichever member leads. Only etcd and Patroni hosts are TLS clients.
pub fn cert_request(inv: &Inventory, host: &Host) -> (Vec<IpAddr>, Vec<String>, Usage) {
    let mut ips: Vec<IpAddr> = Vec::new();
    for a in std::iter::once(&host.address).chain(host.address6.iter()) {
        if let Ok(ip) = a.parse::<IpAddr>() {
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    }
    let lo: IpAddr = IpAddr::from([127, 0, 0, 1]);
    if !ips.contains(&lo) {
        ips.push(lo);
    }
    let mut dns = vec![host.name.clone()];
    // A host given by name (not by IP) gets that name too.
    if host.address.parse::<IpAddr>().is_err() && host.address != host.name {
        dns.push(host.address.clone());
    }
    dns.push("localhost".into());
    if let Some(d) = &inv.dns {
        if host.groups.contains(&Group::Patroni) {
            dns.push(d.name.trim_end_matches('.').to_string());
        }
    }
    let client = host.groups.contains(&Group::Etcd) || host.groups.contains(&Group::Patroni);
    let usage = if client {
        Usage::ServerAndClient
    } else {
        Usage::Server
    };
    (ips, dns, usage)
}

/// A host certificate and its key (PEM), and whether this call created it.
#[derive(Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
    /// True when the certificate was (re-)issued by this call, false when reused.
    pub reissued: bool,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .field("reissued", &self.reissued)
            .finish()
    }
}

/// The loaded CA.
pub struct Pki {
    dir: PathBuf,
    ca_cert_pem: String,
    ca_spki_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").field("dir", &self.dir).finish()
    }
}

fn io_read(path: &Path) -> Result<Option<String>, PkiError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PkiError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn write(path: &Path, data: &str) -> Result<(), PkiError> {
    write_private(path, data.as_bytes()).map_err(|source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn random_serial() -> SerialNumber {
    let mut b: [u8; 16] = rand::random();
    b[0] &= 0x7f; // positive
    b[0] |= 0x01; // no leading zero byte
    SerialNumber::from_slice(&b)
}

/// The DER of the first certificate in `pem` (None: no certificate there).
pub(crate) fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    if p.label != "CERTIFICATE" {
        return None;
    }
    Some(p.contents)
}

/// The normalized SAN set of a certificate request: IPs and lower-cased DNS names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum San {
    Ip(IpAddr),
    Dns(String),
}

fn wanted_sans(ips: &[IpAddr], dns_names: &[String]) -> BTreeSet<San> {
    ips.iter()
        .map(|i| San::Ip(*i))
        .chain(dns_names.iter().map(|d| San::Dns(d.to_ascii_lowercase())))
        .collect()
}

impl Pki {
    /// Load the CA from `<state_dir>/tls/`, or create it there if neither file exists.
    pub fn load_or_create(state_dir: &Path) -> Result<Pki, PkiError> {
        let dir = state_dir.join("tls");
        ensure_private_dir(&dir).map_err(|source| PkiError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        let cert_path = dir.join("ca.crt");
        let key_path = dir.join("ca.key");
        let cert = io_read(&cert_path)?;
        let key = io_read(&key_path)?;
        let (cert_pem, key_pem) = match (cert, key) {
            (Some(c), Some(k)) => {
                for p in [&cert_path, &key_path] {
                    tighten_mode(p).map_err(|source| PkiError::Write {
                        path: p.clone(),
                        source,
                    })?;
                }
                (c, k)
            }
            (None, None) => {
                let (c, k) = Self::create_ca()?;
                // Key first: a crash in between leaves a key without cert -> HalfCa error,
                // never a cert whose key is lost.
                write(&key_path, &k)?;
                write(&cert_path, &c)?;
                (c, k)
            }
            (Some(_), None) => {
                return Err(PkiError::HalfCa {
                    path: cert_path,
                    missing: key_path,
                })
            }
            (None, Some(_)) => {
                return Err(PkiError::HalfCa {
                    path: key_path,
                    missing: cert_path,
                })
            }
        };
        let bad = |reason: String| PkiError::BadCa {
            path: cert_path.clone(),
            reason,
        };
        let key = KeyPair::from_pem(&key_pem).map_err(|e| bad(format!("ca.key: {e}")))?;
        let der = pem_to_der(&cert_pem).ok_or_else(|| bad("not a PEM certificate".into()))?;
        let (_, x509) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| bad(format!("cannot parse: {e}")))?;
        if !x509.is_ca() {
            return Err(bad("not a CA certificate".into()));
        }
        if x509.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(bad("ca.key does not belong to ca.crt".into()));
        }
        let ca_spki_der = x509.public_key().raw.to_vec();
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| bad(format!("{e}")))?;
        Ok(Pki {
            dir,
            ca_cert_pem: cert_pem,
            ca_spki_der,
            issuer,
        })
    }

    fn create_ca() -> Result<(String, String), PkiError> {
        let err = |source| PkiError::Issue {
            host: "CA".into(),
            source,
        };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(err)?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "pgdeploy");
        dn.push(DnType::CommonName, "pgdeploy cluster CA");
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        p.not_before = now - BACKDATE;
        p.not_after = now + Duration::days(CA_VALIDITY_DAYS);
        p.serial_number = Some(random_serial());
        let cert = p.self_signed(&key).map_err(err)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// The CA certificate (PEM), to be installed on every host as /etc/pgdeploy/tls/ca.crt.
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    /// Directory holding the CA and host certificates.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The certificate of `host_name` with exactly these SANs and this usage (subject
    /// `O=pgdeploy, OU=<host>`, no Common Name). Reuses the stored one when it still fits (see
    /// module docs).
    pub fn issue(
        &self,
        host_name: &str,
        ips: &[IpAddr],
        dns_names: &[String],
        usage: Usage,
    ) -> Result<IssuedCert, PkiError> {
        if !is_file_safe(host_name) {
            return Err(PkiError::BadHostName {
                name: host_name.to_string(),
            });
        }
        let want = Profile {
            cn: None,
            ou: host_name.to_string(),
            sans: wanted_sans(ips, dns_names),
            usage,
        };
        self.issue_files(
            host_name,
            &self.dir.join(format!("{host_name}.crt")),
            &self.dir.join(format!("{host_name}.key")),
            &want,
        )
    }

    /// pgBackRest's certificate of `host_name`: the same names as the host's, Common Name =
    /// the host's name (pgBackRest admits TLS clients by it), server and client use. Kept
    /// like a host's, as `<host>.pgbackrest.crt`.
    pub fn issue_pgbackrest(
        &self,
        host_name: &str,
        ips: &[IpAddr],
        dns_names: &[String],
    ) -> Result<IssuedCert, PkiError> {
        if !is_file_safe(host_name) {
            return Err(PkiError::BadHostName {
                name: host_name.to_string(),
            });
        }
        let want = Profile {
            cn: Some(host_name.to_string()),
            ou: format!("pgbackrest {host_name}"),
            sans: wanted_sans(ips, dns_names),
            usage: Usage::ServerAndClient,
        };
        self.issue_files(
            &format!("pgBackRest on {host_name}"),
            &self.dir.join(format!("{host_name}.pgbackrest.crt")),
            &self.dir.join(format!("{host_name}.pgbackrest.key")),
            &want,
        )
    }

    /// pgdeploy's etcd administrator certificate: Common Name [`ADMIN_USER`] (etcd maps it to
    /// its root user over gRPC), client use only, no names. Kept like a host's.
    pub fn issue_admin(&self) -> Result<IssuedCert, PkiError> {
        let want = Profile {
            cn: Some(ADMIN_USER.to_string()),
            ou: "pgdeploy administrator".into(),
            sans: BTreeSet::new(),
            usage: Usage::Client,
        };
        self.issue_files(
            "etcd administrator",
            &self.dir.join(ADMIN_CERT),
            &self.dir.join(ADMIN_KEY),
            &want,
        )
    }

    fn issue_files(
        &self,
        what: &str,
        cert_path: &Path,
        key_path: &Path,
        want: &Profile,
    ) -> Result<IssuedCert, PkiError> {
        let stored_key = io_read(key_path)?;
        if let (Some(c), Some(k)) = (io_read(cert_path)?, stored_key.as_deref()) {
            if self.still_fits(&c, k, want) {
                for p in [cert_path, key_path] {
                    tighten_mode(p).map_err(|source| PkiError::Write {
                        path: p.to_path_buf(),
                        source,
                    })?;
                }
                return Ok(IssuedCert {
                    cert_pem: c,
                    key_pem: k.to_string(),
                    reissued: false,
                });
            }
        }
        let err = |source| PkiError::Issue {
            host: what.to_string(),
            source,
        };
        // A re-issue keeps the host's key: the new certificate then matches every copy of the
        // key already on the host, so no service ever reads a certificate and key that do not
        // belong together. Only a missing or unusable key is replaced.
        let (key, new_key) = match stored_key.as_deref().and_then(usable_key) {
            Some(k) => (k, false),
            None => (
                KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(err)?,
                true,
            ),
        };
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "pgdeploy");
        dn.push(DnType::OrganizationalUnitName, want.ou.as_str());
        if let Some(cn) = &want.cn {
            dn.push(DnType::CommonName, cn.as_str());
        }
        p.distinguished_name = dn;
        p.subject_alt_names = want
            .sans
            .iter()
            .map(|s| match s {
                San::Ip(ip) => Ok(SanType::IpAddress(*ip)),
                San::Dns(d) => d.clone().try_into().map(SanType::DnsName),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = want.usage.ekus();
        p.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        p.not_before = now - BACKDATE;
        p.not_after = now + Duration::days(HOST_VALIDITY_DAYS);
        p.serial_number = Some(random_serial());
        let cert = p.signed_by(&key, &self.issuer).map_err(err)?;
        let cert_pem = cert.pem();
        let key_pem = match stored_key {
            Some(k) if !new_key => k,
            _ => {
                let k = key.serialize_pem();
                write(key_path, &k)?;
                k
            }
        };
        write(cert_path, &cert_pem)?;
        Ok(IssuedCert {
            cert_pem,
            key_pem,
            reissued: true,
        })
    }

    /// Does the stored certificate match the request, belong to the key, come from this CA and
    /// have enough validity left?
    fn still_fits(&self, cert_pem: &str, key_pem: &str, want: &Profile) -> bool {
        let Some(der) = pem_to_der(cert_pem) else {
            return false;
        };
        let Ok((_, x509)) = x509_parser::parse_x509_certificate(&der) else {
            return false;
        };
        let Ok(key) = KeyPair::from_pem(key_pem) else {
            return false;
        };
        if x509.public_key().raw != key.subject_public_key_info().as_slice() {
            return false;
        }
        let Ok((_, ca_spki)) =
            <x509_parser::x509::SubjectPublicKeyInfo as x509_parser::prelude::FromDer<
                x509_parser::error::X509Error,
            >>::from_der(&self.ca_spki_der)
        else {
            return false;
        };
        if x509.verify_signature(Some(&ca_spki)).is_err() {
            return false;
        }
        match x509.validity().time_to_expiration() {
            Some(left) if left.whole_days() >= RENEW_BEFORE_DAYS => {}
            _ => return false,
        }
        let cns: Vec<&str> = x509
            .subject()
            .iter_common_name()
            .filter_map(|a| a.as_str().ok())
            .collect();
        if cns != want.cn.iter().map(String::as_str).collect::<Vec<_>>() {
            return false;
        }
        let (server, client) = match x509.extended_key_usage() {
            Ok(Some(e)) => (e.value.server_auth, e.value.client_auth),
            _ => return false,
        };
        if !want.usage.matches(server, client) {
            return false;
        }
        let sans = cert_sans(&x509).unwrap_or_default();
        sans == want.sans
    }
}

/// What a certificate must say.
struct Profile {
    /// The Common Name (None: the subject has none).
    cn: Option<String>,
    ou: String,
    sans: BTreeSet<San>,
    usage: Usage,
}

/// A stored host key that can be kept: it parses and is ECDSA P-256, like the ones issued here.
fn usable_key(pem: &str) -> Option<KeyPair> {
    KeyPair::from_pem(pem)
        .ok()
        .filter(|k| k.algorithm() == &PKCS_ECDSA_P256_SHA256)
}

fn cert_sans(x509: &x509_parser::certificate::X509Certificate<'_>) -> Option<BTreeSet<San>> {
    let ext = x509.subject_alternative_name().ok()??;
    let mut out = BTreeSet::new();
    for n in &ext.value.general_names {
        match n {
            GeneralName::DNSName(d) => {
                out.insert(San::Dns(d.to_ascii_lowercase()));
            }
            GeneralName::IPAddress(b) => {
                let ip = match b.len() {
                    4 => IpAddr::from(<[u8; 4]>::try_from(*b).ok()?),
                    16 => IpAddr::from(<[u8; 16]>::try_from(*b).ok()?),
                    _ => return None,
                };
                out.insert(San::Ip(ip));
            }
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use x509_parser::prelude::*;

    fn ips(s: &[&str]) -> Vec<IpAddr> {
        s.iter().map(|i| i.parse().unwrap()).collect()
    }

    fn parse(pem: &str) -> Vec<u8> {
        super::pem_to_der(pem).unwrap()
    }

    #[test]
    fn cert_request_includes_loopback() {
        let d = tempfile::tempdir().unwrap();
        let text = r#"
cluster: { name: demo }
groups:
  etcd:
    - { name: n1, address: 10.9.0.11 }
    - { name: n2, address: 10.9.0.12 }
    - { name: n3, address: 10.9.0.13 }
  patroni: [{ name: n1, address: 10.9.0.11 }, { name: n2, address: 10.9.0.12 }]
  haproxy: [{ name: lb1, address: 10.9.0.31 }]
"#;
        let (inv, _) = crate::inventory::load_str(text, "inv.yaml", d.path()).unwrap();
        let (ips, dns, usage) = cert_request(&inv, &inv.hosts()[0]);
        assert_eq!(usage, Usage::ServerAndClient);
        let lb = inv.hosts().into_iter().find(|h| h.name == "lb1").unwrap();
        assert_eq!(cert_request(&inv, &lb).2, Usage::Server);
        assert_eq!(
            ips,
            vec![
                "10.9.0.11".parse::<IpAddr>().unwrap(),
                "127.0.0.1".parse().unwrap()
            ]
        );
        assert_eq!(dns, vec!["n1".to_string(), "localhost".into()]);
    }

    #[test]
    fn ca_is_created_once_with_explicit_validity() {
        let d = tempfile::tempdir().unwrap();
        let a = Pki::load_or_create(d.path()).unwrap();
        let b = Pki::load_or_create(d.path()).unwrap();
        assert_eq!(a.ca_cert_pem(), b.ca_cert_pem());
        let der = parse(a.ca_cert_pem());
        let (_, c) = parse_x509_certificate(&der).unwrap();
        assert!(c.is_ca());
        let nb = c.validity().not_before.timestamp();
        let na = c.validity().not_after.timestamp();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        assert!(nb <= now && nb > now - 2 * 3600);
        let days = (na - now) / 86400;
        assert!(
            (CA_VALIDITY_DAYS - 1..=CA_VALIDITY_DAYS).contains(&days),
            "{days}"
        );
        c.verify_signature(None).unwrap();
        for f in ["ca.crt", "ca.key"] {
            let m = fs::metadata(d.path().join("tls").join(f)).unwrap();
            assert_eq!(m.permissions().mode() & 0o777, 0o600, "{f}");
        }
        let m = fs::metadata(d.path().join("tls")).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn host_cert_has_sans_usages_and_chains_to_ca() {
        let d = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(d.path()).unwrap();
        let c = pki
            .issue(
                "pg1",
                &ips(&["10.0.0.21", "127.0.0.1"]),
                &["pg1".into(), "localhost".into()],
                Usage::ServerAndClient,
            )
            .unwrap();
        assert!(c.reissued);
        assert!(c.key_pem.contains("PRIVATE KEY"));
        assert!(!format!("{c:?}").contains("PRIVATE KEY"));
        let der = parse(&c.cert_pem);
        let (_, x) = parse_x509_certificate(&der).unwrap();
        assert!(!x.is_ca());
        let ca_der = parse(pki.ca_cert_pem());
        let (_, ca) = parse_x509_certificate(&ca_der).unwrap();
        x.verify_signature(Some(ca.public_key())).unwrap();
        assert_eq!(x.issuer(), ca.subject());
        let eku = x.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        let sans = cert_sans(&x).unwrap();
        assert_eq!(
            sans,
            wanted_sans(
                &ips(&["127.0.0.1", "10.0.0.21"]),
                &["LOCALHOST".into(), "pg1".into()]
            )
        );
        // No Common Name: etcd's JSON gateway refuses a client certificate that has one.
        assert_eq!(x.subject().iter_common_name().count(), 0);
        assert!(x.subject().to_string().contains("OU=pg1"));
        let m = fs::metadata(d.path().join("tls/pg1.key")).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn reissue_only_when_needed() {
        let d = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(d.path()).unwrap();
        let a = pki
            .issue(
                "h1",
                &ips(&["10.0.0.1"]),
                &["h1".into()],
                Usage::ServerAndClient,
            )
            .unwrap();
        // Same request (also after reloading the CA): reused, byte for byte.
        let pki2 = Pki::load_or_create(d.path()).unwrap();
        let b = pki2
            .issue(
                "h1",
                &ips(&["10.0.0.1"]),
                &["h1".into()],
                Usage::ServerAndClient,
            )
            .unwrap();
        assert!(!b.reissued);
        assert_eq!(a.cert_pem, b.cert_pem);
        assert_eq!(a.key_pem, b.key_pem);
        // SAN change: re-issued.
        let c = pki2
            .issue(
                "h1",
                &ips(&["10.0.0.2"]),
                &["h1".into()],
                Usage::ServerAndClient,
            )
            .unwrap();
        assert!(c.reissued);
        assert_ne!(b.cert_pem, c.cert_pem);
        // ... under the same key, so the copies of the key on the host stay valid.
        assert_eq!(b.key_pem, c.key_pem);
        assert_eq!(
            fs::read_to_string(d.path().join("tls/h1.key")).unwrap(),
            c.key_pem
        );
        // A lost certificate is re-issued under the stored key too.
        fs::remove_file(d.path().join("tls/h1.crt")).unwrap();
        let c2 = pki2
            .issue(
                "h1",
                &ips(&["10.0.0.2"]),
                &["h1".into()],
                Usage::ServerAndClient,
            )
            .unwrap();
        assert!(c2.reissued);
        assert_eq!(c2.key_pem, c.key_pem);
        // A cert from another CA is replaced.
        let other = tempfile::tempdir().unwrap();
        let foreign = Pki::load_or_create(other.path()).unwrap();
        let f = foreign
            .issue(
                "h1",
                &ips(&["10.0.0.2"]),
                &["h1".into()],
                Usage::ServerAndClient,
            )
            .unwrap();
        fs::write(d.path().join("tls/h1.crt"), &f.cert_pem).unwrap();
        fs::write(d.path().join("tls/h1.key"), &f.key_pem).unwrap();
        let g = pki2
            .issue(
                "h1",
                &ips(&["10.0.0.2"]),
                &["h1".into()],
                Usage::ServerAndClient,
            )
            .unwrap();
        assert!(g.reissued);
        // Garbage on disk: replaced, a garbage key by a new key.
        fs::write(d.path().join("tls/h1.crt"), "junk").unwrap();
        fs::write(d.path().join("tls/h1.key"), "junk").unwrap();
        let h = pki2
            .issue(
                "h1",
                &ips(&["10.0.0.2"]),
                &["h1".into()],
                Usage::ServerAndClient,
            )
            .unwrap();
        assert!(h.reissued);
        assert!(h.key_pem.contains("PRIVATE KEY"));
        assert_eq!(
            fs::read_to_string(d.path().join("tls/h1.key")).unwrap(),
            h.key_pem
        );
    }

    /// A load balancer's certificate cannot be used as a TLS client (etcd refuses it at the
    /// handshake); a change of usage or a Common Name left from an older release re-issues
    /// the certificate under the same key; the administrator's is `CN=root`, client only.
    #[test]
    fn usage_and_common_name() {
        let d = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(d.path()).unwrap();
        let eku = |pem: &str| {
            let der = parse(pem);
            let (_, x) = parse_x509_certificate(&der).unwrap();
            let e = x.extended_key_usage().unwrap().unwrap().value.clone();
            let cn: Vec<String> = x
                .subject()
                .iter_common_name()
                .map(|a| a.as_str().unwrap().to_string())
                .collect();
            (e.server_auth, e.client_auth, cn)
        };
        let lb1 = |u| {
            pki.issue("lb1", &ips(&["10.0.0.31"]), &["lb1".into()], u)
                .unwrap()
        };
        let lb = lb1(Usage::Server);
        assert_eq!(eku(&lb.cert_pem), (true, false, vec![]));
        let again = lb1(Usage::Server);
        assert!(!again.reissued);
        let both = lb1(Usage::ServerAndClient);
        assert!(both.reissued);
        assert_eq!(both.key_pem, lb.key_pem);
        assert_eq!(eku(&both.cert_pem), (true, true, vec![]));
        // A certificate with a Common Name (as older releases issued) is re-issued.
        let key = KeyPair::from_pem(&both.key_pem).unwrap();
        let mut p = CertificateParams::new(vec!["lb1".to_string()]).unwrap();
        p.subject_alt_names = vec![
            SanType::IpAddress("10.0.0.31".parse().unwrap()),
            SanType::DnsName("lb1".try_into().unwrap()),
        ];
        p.distinguished_name.push(DnType::CommonName, "lb1");
        p.extended_key_usages = Usage::ServerAndClient.ekus();
        let now = OffsetDateTime::now_utc();
        p.not_before = now - Duration::days(1);
        p.not_after = now + Duration::days(400);
        fs::write(
            d.path().join("tls/lb1.crt"),
            p.signed_by(&key, &pki.issuer).unwrap().pem(),
        )
        .unwrap();
        let fixed = lb1(Usage::ServerAndClient);
        assert!(fixed.reissued);
        assert_eq!(eku(&fixed.cert_pem), (true, true, vec![]));
        let admin = pki.issue_admin().unwrap();
        assert_eq!(
            eku(&admin.cert_pem),
            (false, true, vec!["root".to_string()])
        );
        assert!(!pki.issue_admin().unwrap().reissued);
        for f in [ADMIN_CERT, ADMIN_KEY] {
            let m = fs::metadata(d.path().join("tls").join(f)).unwrap();
            assert_eq!(m.permissions().mode() & 0o777, 0o600, "{f}");
        }
    }

    #[test]
    fn near_expiry_is_reissued() {
        let d = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(d.path()).unwrap();
        // Hand-make a cert from the same CA that expires in 10 days.
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::new(vec!["h2".to_string()]).unwrap();
        let now = OffsetDateTime::now_utc();
        p.not_before = now - Duration::days(1);
        p.not_after = now + Duration::days(10);
        let cert = p.signed_by(&key, &pki.issuer).unwrap();
        fs::write(d.path().join("tls/h2.crt"), cert.pem()).unwrap();
        fs::write(d.path().join("tls/h2.key"), key.serialize_pem()).unwrap();
        let r = pki
            .issue("h2", &[], &["h2".into()], Usage::ServerAndClient)
            .unwrap();
        assert!(r.reissued);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let d = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(d.path()).unwrap();
        assert!(matches!(
            pki.issue("../x", &[], &[], Usage::Server),
            Err(PkiError::BadHostName { .. })
        ));
        fs::remove_file(d.path().join("tls/ca.key")).unwrap();
        assert!(matches!(
            Pki::load_or_create(d.path()),
            Err(PkiError::HalfCa { .. })
        ));
        fs::write(d.path().join("tls/ca.key"), "junk").unwrap();
        let e = Pki::load_or_create(d.path()).unwrap_err();
        assert!(matches!(e, PkiError::BadCa { .. }), "{e}");
    }
}
