//! `corelog certs`: a certificate authority and the node and client certificates it signs,
//! written with rcgen into one directory (the *TLS dir*), which [`crate::net::tls`] reads back.
//!
//! Layout of a TLS dir:
//!
//! | file            | what                                                          | mode |
//! |-----------------|---------------------------------------------------------------|------|
//! | `ca.pem`        | the CA certificate (self-signed, signs leaves only)           | 0644 |
//! | `ca-key.pem`    | the CA private key (PKCS#8)                                   | 0600 |
//! | `NAME.pem`      | one leaf certificate per node or client name                  | 0644 |
//! | `NAME-key.pem`  | that leaf's private key (PKCS#8)                              | 0600 |
//!
//! Rules:
//! - **The CA is reused** when both `ca.pem` and `ca-key.pem` exist: every certificate of a
//!   cluster must chain to one CA, and silently making a new one would lock out every node and
//!   client issued before. Exactly one of the two present is an error, never "repaired" by
//!   overwriting. A loaded CA is checked: its key must match its certificate, it must be a CA
//!   and must not have expired.
//! - **Roles are marked in the subject**: CN = NAME (the subject the ACL names), OU =
//!   [`NODE_OU`] or [`CLIENT_OU`]. Node certificates carry serverAuth *and* clientAuth (a node
//!   accepts connections and dials its peers) and the SANs `localhost`, `127.0.0.1`, `::1` plus
//!   every `--san`; client certificates carry clientAuth only and no SANs, so one can never
//!   serve the port.
//! - Names become file names and ACL subjects, so they are restricted to `[A-Za-z0-9._-]`,
//!   start with a letter or digit, and must not collide with the CA's or a key's file name.
//! - Every input is validated before anything is written. Each file is written to a temporary
//!   name and renamed, so a crash never leaves half a PEM; private keys are created with mode
//!   0600, so they are never readable by others, not even briefly. Re-issuing an existing name
//!   replaces its certificate and key (signed by the same CA).
//! - Each new CA's common name carries a suffix from its own public key (`corelog CA 1a2b…`):
//!   verifiers look issuers up by name, and with one name for every CA a certificate from
//!   another CA would be reported as a bad signature rather than an unknown issuer.
//! - Keys are ECDSA P-256. Leaves are valid for [`LEAF_VALIDITY_DAYS`] but never past the CA;
//!   validity starts [`BACKDATE_SECS`] in the past to tolerate clock skew between machines.

use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, DnsName};
use x509_parser::time::ASN1Time;

/// The CA certificate's file name inside a TLS dir.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA private key's file name inside a TLS dir.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// Organizational unit that marks a node certificate (may `admin` and `replicate` under the
/// default policy).
pub const NODE_OU: &str = "corelog-node";
/// Organizational unit of a client certificate.
pub const CLIENT_OU: &str = "corelog-client";
/// The node certificate `serve` creates when started with no TLS flags.
pub const DEV_NODE_NAME: &str = "node";
/// The client certificate `serve` creates when started with no TLS flags; client commands
/// default to it.
pub const DEV_CLIENT_NAME: &str = "client";
/// SANs every node certificate carries, so a node on loopback works without `--san`.
pub const DEFAULT_NODE_SANS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
/// Longest certificate name: RFC 5280's upper bound for a common name.
pub const NAME_BYTES_MAX: usize = 64;
/// Most `--san` values one run accepts.
pub const SAN_COUNT_MAX: usize = 64;
/// How long a new CA is valid.
pub const CA_VALIDITY_DAYS: i64 = 20 * 365;
/// How long a new leaf certificate is valid (never beyond its CA).
pub const LEAF_VALIDITY_DAYS: i64 = 10 * 365;
/// How far in the past validity starts, so a machine whose clock is a little behind the
/// issuer's still accepts a certificate issued just now.
pub const BACKDATE_SECS: i64 = 3600;

const CA_COMMON_NAME: &str = "corelog CA";
const CA_NAME_SUFFIX_BYTES: usize = 6;
const ORGANIZATION: &str = "corelog";
const KEY_FILE_MODE: u32 = 0o600;
const CERT_FILE_MODE: u32 = 0o644;
// Only the owner needs to list the directory that holds private keys.
const DIR_MODE: u32 = 0o700;
const SECS_PER_DAY: i64 = 86_400;

/// What a leaf certificate is for.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// A node: serves the port and dials peers (serverAuth + clientAuth).
    Node,
    /// A client: only connects (clientAuth).
    Client,
}

impl Role {
    /// The organizational unit that marks this role in the subject.
    pub fn organizational_unit(self) -> &'static str {
        match self {
            Role::Node => NODE_OU,
            Role::Client => CLIENT_OU,
        }
    }
}

/// A certificate and its private key on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertPaths {
    /// The paths of `name`'s certificate and key in `dir`.
    pub fn new(dir: &Path, name: &str) -> CertPaths {
        CertPaths {
            cert: cert_path(dir, name),
            key: key_path(dir, name),
        }
    }
}

/// One certificate `write_certs` issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedCert {
    pub name: String,
    pub role: Role,
    pub paths: CertPaths,
}

/// What `write_certs` did, for the command to print.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertsReport {
    pub dir: PathBuf,
    /// The CA files; the certificate is what clients and nodes must trust.
    pub ca: CertPaths,
    /// True when a new CA was created, false when the one in `dir` was reused.
    pub ca_created: bool,
    /// Every certificate issued, nodes first, in the order given.
    pub issued: Vec<IssuedCert>,
}

/// The development certificates `serve` uses when started with no TLS flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevCerts {
    pub dir: PathBuf,
    pub ca_cert: PathBuf,
    /// [`DEV_NODE_NAME`]'s certificate: the node serves with it.
    pub node: CertPaths,
    /// [`DEV_CLIENT_NAME`]'s certificate: client commands connect with it.
    pub client: CertPaths,
    /// True when this call wrote anything (first start, or a dev certificate was missing).
    pub created: bool,
}

/// Why certificates could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("invalid certificate name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },

    #[error("certificate name {name:?} is given twice: each name gets one certificate")]
    DuplicateName { name: String },

    #[error("invalid --san {san:?}: {reason}")]
    InvalidSan { san: String, reason: String },

    #[error("{count} --san values given; at most {max} are allowed")]
    TooManySans { count: usize, max: usize },

    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "{} exists but {} does not, and a CA needs both: restore the missing file, or move {} \
         away to create a new CA (then re-issue every certificate)",
        present.display(), missing.display(), present.display()
    )]
    CaIncomplete { present: PathBuf, missing: PathBuf },

    #[error("CA certificate {} is unusable: {detail}", path.display())]
    BadCaCert { path: PathBuf, detail: String },

    #[error("CA key {} is unusable: {detail}", path.display())]
    BadCaKey { path: PathBuf, detail: String },

    #[error("CA key {} does not belong to CA certificate {}", key.display(), cert.display())]
    CaKeyMismatch { cert: PathBuf, key: PathBuf },

    #[error(
        "CA certificate {} is not valid now (valid {not_before} to {not_after}); move ca.pem and \
         ca-key.pem away to create a new CA, then re-issue every certificate",
        path.display()
    )]
    CaNotValid {
        path: PathBuf,
        not_before: String,
        not_after: String,
    },

    #[error("cannot generate the certificate for {name:?}: {source}")]
    Generate {
        name: String,
        #[source]
        source: rcgen::Error,
    },

    #[error("the system clock is unusable for certificate validity: {detail}")]
    Clock { detail: String },
}

/// The path of the CA certificate in `dir`.
pub fn ca_cert_path(dir: &Path) -> PathBuf {
    dir.join(CA_CERT_FILE)
}

/// The path of the CA key in `dir`.
pub fn ca_key_path(dir: &Path) -> PathBuf {
    dir.join(CA_KEY_FILE)
}

/// The path of `name`'s certificate in `dir`.
pub fn cert_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.pem"))
}

/// The path of `name`'s private key in `dir`.
pub fn key_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}-key.pem"))
}

/// Writes (or reuses) the CA in `out` and issues one certificate per node and client name.
/// `sans` are added to every node certificate, after [`DEFAULT_NODE_SANS`].
pub fn write_certs(
    out: &Path,
    nodes: &[String],
    clients: &[String],
    sans: &[String],
) -> Result<CertsReport, CertsError> {
    // Validate everything before the first write, so a typo leaves the directory untouched.
    let wanted: Vec<(&str, Role)> = nodes
        .iter()
        .map(|n| (n.as_str(), Role::Node))
        .chain(clients.iter().map(|n| (n.as_str(), Role::Client)))
        .collect();
    for (i, (name, _)) in wanted.iter().enumerate() {
        validate_name(name)?;
        if wanted[..i].iter().any(|(earlier, _)| earlier == name) {
            return Err(CertsError::DuplicateName {
                name: (*name).to_string(),
            });
        }
    }
    let node_sans = node_sans(sans)?;
    let now = unix_now()?;

    create_dir(out)?;
    let ca_paths = CertPaths {
        cert: ca_cert_path(out),
        key: ca_key_path(out),
    };
    let (ca, ca_created) = match (exists(&ca_paths.cert)?, exists(&ca_paths.key)?) {
        (true, true) => (load_ca(&ca_paths, now)?, false),
        (false, false) => (create_ca(&ca_paths, now)?, true),
        (true, false) => {
            return Err(CertsError::CaIncomplete {
                present: ca_paths.cert,
                missing: ca_paths.key,
            });
        }
        (false, true) => {
            return Err(CertsError::CaIncomplete {
                present: ca_paths.key,
                missing: ca_paths.cert,
            });
        }
    };

    let mut issued = Vec::with_capacity(wanted.len());
    for (name, role) in wanted {
        let sans: &[SanType] = match role {
            Role::Node => &node_sans,
            Role::Client => &[],
        };
        let (cert_pem, key_pem) = issue(&ca, name, role, sans, now)?;
        let paths = CertPaths::new(out, name);
        // Key first: a crash in between leaves an old certificate beside a new key, which
        // rustls refuses to load as a pair (a clear error), never a silently wrong pairing.
        write_file(&paths.key, key_pem.as_bytes(), KEY_FILE_MODE)?;
        write_file(&paths.cert, cert_pem.as_bytes(), CERT_FILE_MODE)?;
        issued.push(IssuedCert {
            name: name.to_string(),
            role,
            paths,
        });
    }
    sync_dir(out)?;

    Ok(CertsReport {
        dir: out.to_path_buf(),
        ca: ca_paths,
        ca_created,
        issued,
    })
}

/// Makes sure `tls_dir` holds a CA, a [`DEV_NODE_NAME`] and a [`DEV_CLIENT_NAME`] certificate:
/// creates whatever is missing on first use and reuses what is there afterwards. Only
/// `ca.pem` is needed to reuse existing certificates, so deleting `ca-key.pem` (to stop
/// anyone issuing more) does not break a node that already has its certificates.
pub fn ensure_dev_certs(tls_dir: &Path) -> Result<DevCerts, CertsError> {
    let ca_cert = ca_cert_path(tls_dir);
    let node = CertPaths::new(tls_dir, DEV_NODE_NAME);
    let client = CertPaths::new(tls_dir, DEV_CLIENT_NAME);

    // Without ca.pem a new CA will be made, and a leaf kept from the old one would no longer
    // verify: re-issue both then.
    let ca_present = exists(&ca_cert)?;
    let node_ok = ca_present && exists(&node.cert)? && exists(&node.key)?;
    let client_ok = ca_present && exists(&client.cert)? && exists(&client.key)?;
    let created = !(node_ok && client_ok);
    if created {
        let nodes: Vec<String> = if node_ok {
            Vec::new()
        } else {
            vec![DEV_NODE_NAME.to_string()]
        };
        let clients: Vec<String> = if client_ok {
            Vec::new()
        } else {
            vec![DEV_CLIENT_NAME.to_string()]
        };
        write_certs(tls_dir, &nodes, &clients, &[])?;
    }
    Ok(DevCerts {
        dir: tls_dir.to_path_buf(),
        ca_cert,
        node,
        client,
        created,
    })
}

/// Checks that `name` can be a file name in the TLS dir and an ACL subject.
pub fn validate_name(name: &str) -> Result<(), CertsError> {
    let invalid = |reason| {
        Err(CertsError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("it is empty");
    }
    if name.len() > NAME_BYTES_MAX {
        return invalid("it is longer than 64 bytes");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return invalid("use only letters, digits, '.', '_' and '-'");
    }
    // A leading '.' would hide the files (and collide with our temporary names); a leading
    // '-' reads like a command-line flag.
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return invalid("it must start with a letter or a digit");
    }
    if name == "ca" {
        return invalid("\"ca\" is the CA's own file name");
    }
    // NAME-key.pem is a key file: a certificate named "x-key" would overwrite x's key.
    if name.ends_with("-key") {
        return invalid("a name ending in \"-key\" collides with a key file name");
    }
    Ok(())
}

/// The SANs of a node certificate: the loopback defaults, then `extra`, without duplicates.
fn node_sans(extra: &[String]) -> Result<Vec<SanType>, CertsError> {
    if extra.len() > SAN_COUNT_MAX {
        return Err(CertsError::TooManySans {
            count: extra.len(),
            max: SAN_COUNT_MAX,
        });
    }
    let mut sans: Vec<SanType> = Vec::with_capacity(DEFAULT_NODE_SANS.len() + extra.len());
    let all = DEFAULT_NODE_SANS
        .iter()
        .copied()
        .chain(extra.iter().map(String::as_str));
    for san in all {
        let parsed = parse_san(san)?;
        if !sans.contains(&parsed) {
            sans.push(parsed);
        }
    }
    Ok(sans)
}

/// One `--san`: an IP address, or a DNS name (optionally a `*.` wildcard).
fn parse_san(san: &str) -> Result<SanType, CertsError> {
    let invalid = |reason: String| CertsError::InvalidSan {
        san: san.to_string(),
        reason,
    };
    let trimmed = san.trim();
    if let Ok(ip) = trimmed.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    // Check the syntax with the same rules TLS clients use for server names, so a SAN that
    // could never match is refused here rather than failing every handshake later.
    let host = trimmed.strip_prefix("*.").unwrap_or(trimmed);
    if DnsName::try_from(host).is_err() || host.parse::<IpAddr>().is_ok() {
        return Err(invalid(
            "expected an IP address or a DNS name such as node1.example.com".to_string(),
        ));
    }
    let name =
        Ia5String::try_from(trimmed.to_ascii_lowercase()).map_err(|e| invalid(e.to_string()))?;
    Ok(SanType::DnsName(name))
}

/// A CA able to sign, and when it stops being valid (leaves never outlive it).
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    not_after_unix: i64,
}

fn create_ca(paths: &CertPaths, now: i64) -> Result<Ca, CertsError> {
    let generate = |source| CertsError::Generate {
        name: "the CA".to_string(),
        source,
    };
    let key = KeyPair::generate().map_err(generate)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, ca_common_name(&key));
    dn.push(DnType::OrganizationName, ORGANIZATION);
    params.distinguished_name = dn;
    // Path length 0: this CA signs leaves only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let not_after_unix = now + CA_VALIDITY_DAYS * SECS_PER_DAY;
    set_validity(&mut params, now - BACKDATE_SECS, not_after_unix)?;

    let cert = params.self_signed(&key).map_err(generate)?;
    write_file(&paths.key, key.serialize_pem().as_bytes(), KEY_FILE_MODE)?;
    write_file(&paths.cert, cert.pem().as_bytes(), CERT_FILE_MODE)?;
    Ok(Ca {
        issuer: Issuer::new(params, key),
        not_after_unix,
    })
}

fn load_ca(paths: &CertPaths, now: i64) -> Result<Ca, CertsError> {
    let bad_cert = |detail: String| CertsError::BadCaCert {
        path: paths.cert.clone(),
        detail,
    };
    let cert_pem = read_to_string(&paths.cert)?;
    let key_pem = read_to_string(&paths.key)?;
    let key = KeyPair::from_pem(&key_pem).map_err(|e| CertsError::BadCaKey {
        path: paths.key.clone(),
        detail: format!("not a PKCS#8 PEM private key ({e})"),
    })?;
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| bad_cert(format!("no PEM certificate in it ({e})")))?;
    let (_, x509) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| bad_cert(format!("not an X.509 certificate ({e})")))?;
    if !x509.is_ca() {
        return Err(bad_cert(
            "it is not a CA certificate (no basicConstraints CA:TRUE)".to_string(),
        ));
    }
    if x509.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(CertsError::CaKeyMismatch {
            cert: paths.cert.clone(),
            key: paths.key.clone(),
        });
    }
    let validity = x509.validity();
    let now_asn1 = asn1_time(now)?;
    if !validity.is_valid_at(now_asn1) {
        return Err(CertsError::CaNotValid {
            path: paths.cert.clone(),
            not_before: validity.not_before.to_string(),
            not_after: validity.not_after.to_string(),
        });
    }
    let not_after_unix = validity.not_after.timestamp();
    let issuer = Issuer::from_ca_cert_der(&der, key)
        .map_err(|e| bad_cert(format!("rcgen cannot sign with it ({e})")))?;
    Ok(Ca {
        issuer,
        not_after_unix,
    })
}

/// The CA's common name: [`CA_COMMON_NAME`] and a suffix taken from its (random) public key.
/// Verifiers find a certificate's issuer by name; if every CA had the same name, a certificate
/// from another CA would be reported as a bad signature instead of an unknown issuer.
fn ca_common_name(key: &KeyPair) -> String {
    let point = key.public_key_raw();
    // Skip the first byte: it is the constant 0x04 "uncompressed point" marker.
    let suffix: String = point
        .iter()
        .skip(1)
        .take(CA_NAME_SUFFIX_BYTES)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{CA_COMMON_NAME} {suffix}")
}

/// Issues one leaf certificate; returns (certificate PEM, key PEM).
fn issue(
    ca: &Ca,
    name: &str,
    role: Role,
    sans: &[SanType],
    now: i64,
) -> Result<(String, String), CertsError> {
    let generate = |source| CertsError::Generate {
        name: name.to_string(),
        source,
    };
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationalUnitName, role.organizational_unit());
    dn.push(DnType::OrganizationName, ORGANIZATION);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    // ECDSA keys only sign in TLS 1.3; they never encipher keys.
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match role {
        Role::Node => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Role::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.subject_alt_names = sans.to_vec();
    params.use_authority_key_identifier_extension = true;
    let not_after_unix = (now + LEAF_VALIDITY_DAYS * SECS_PER_DAY).min(ca.not_after_unix);
    set_validity(&mut params, now - BACKDATE_SECS, not_after_unix)?;

    let key = KeyPair::generate().map_err(generate)?;
    let cert = params.signed_by(&key, &ca.issuer).map_err(generate)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn set_validity(
    params: &mut CertificateParams,
    not_before_unix: i64,
    not_after_unix: i64,
) -> Result<(), CertsError> {
    params.not_before = asn1_time(not_before_unix)?.to_datetime();
    params.not_after = asn1_time(not_after_unix)?.to_datetime();
    Ok(())
}

fn asn1_time(unix_secs: i64) -> Result<ASN1Time, CertsError> {
    ASN1Time::from_timestamp(unix_secs).map_err(|e| CertsError::Clock {
        detail: format!("{unix_secs} seconds since 1970 is not a certificate time ({e})"),
    })
}

fn unix_now() -> Result<i64, CertsError> {
    let since_epoch =
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| CertsError::Clock {
                detail: format!("it reads before 1970 ({e})"),
            })?;
    i64::try_from(since_epoch.as_secs()).map_err(|_| CertsError::Clock {
        detail: "it reads too far in the future".to_string(),
    })
}

fn exists(path: &Path) -> Result<bool, CertsError> {
    path.try_exists().map_err(|source| CertsError::Io {
        op: "check for",
        path: path.to_path_buf(),
        source,
    })
}

fn create_dir(dir: &Path) -> Result<(), CertsError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|source| CertsError::Io {
            op: "create directory",
            path: dir.to_path_buf(),
            source,
        })
}

fn read_to_string(path: &Path) -> Result<String, CertsError> {
    fs::read_to_string(path).map_err(|source| CertsError::Io {
        op: "read",
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `bytes` to `path` through a temporary file created with `mode` and renamed over
/// `path`, so readers see the old file or the new one, never a torn one.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertsError> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    assert!(
        !file_name.is_empty(),
        "write_file needs a file path: {path:?}"
    );
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    let io_err = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| CertsError::Io { op, path, source }
    };
    // A leftover from a crash may have another mode; create_new below must make a fresh one.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("remove stale temporary file", &tmp)(e)),
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err("create", &tmp))?;
    file.write_all(bytes).map_err(io_err("write", &tmp))?;
    file.sync_all().map_err(io_err("sync", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("rename into place", path))
}

fn sync_dir(dir: &Path) -> Result<(), CertsError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| CertsError::Io {
            op: "sync directory",
            path: dir.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_invalid_name(name: &str) {
        match validate_name(name) {
            Err(CertsError::InvalidName { name: got, .. }) => assert_eq!(got, name),
            other => panic!("{name:?} should be refused, got {other:?}"),
        }
    }

    #[test]
    fn plain_names_are_accepted() {
        for name in [
            "node",
            "node-1",
            "client_a",
            "n1.example",
            "A9",
            "x".repeat(64).as_str(),
        ] {
            assert!(validate_name(name).is_ok(), "{name:?}");
        }
    }

    #[test]
    fn names_that_are_not_safe_file_names_or_subjects_are_refused() {
        for name in [
            "", "../etc", "a/b", ".hidden", "-flag", "a b", "a,b", "ca", "x-key",
        ] {
            assert_invalid_name(name);
        }
        assert_invalid_name(&"x".repeat(NAME_BYTES_MAX + 1));
        assert_invalid_name("nöde");
    }

    #[test]
    fn node_sans_start_with_loopback_and_drop_duplicates() {
        let sans = node_sans(&[
            "localhost".into(),
            "db.example.com".into(),
            "10.0.0.7".into(),
        ])
        .expect("valid sans");
        let ip = |s: &str| SanType::IpAddress(s.parse().expect("ip"));
        let dns = |s: &str| SanType::DnsName(Ia5String::try_from(s).expect("ia5"));
        assert_eq!(
            sans,
            vec![
                dns("localhost"),
                ip("127.0.0.1"),
                ip("::1"),
                dns("db.example.com"),
                ip("10.0.0.7"),
            ]
        );
    }

    #[test]
    fn wildcard_sans_are_accepted() {
        assert!(matches!(
            parse_san("*.cluster.example"),
            Ok(SanType::DnsName(_))
        ));
    }

    #[test]
    fn malformed_sans_are_refused() {
        for san in [
            "",
            "bad name",
            "a..b",
            "*.",
            "-x.example",
            "ünï.example",
            "*.10.0.0.1",
        ] {
            assert!(
                matches!(parse_san(san), Err(CertsError::InvalidSan { .. })),
                "{san:?} should be refused"
            );
        }
    }

    #[test]
    fn too_many_sans_are_refused() {
        let many: Vec<String> = (0..=SAN_COUNT_MAX)
            .map(|i| format!("n{i}.example"))
            .collect();
        assert!(matches!(
            node_sans(&many),
            Err(CertsError::TooManySans { .. })
        ));
    }
}
