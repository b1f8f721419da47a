//! TLS for the one port: rustls configurations built from a TLS dir (the layout
//! [`crate::certs`] writes: `ca.pem`, `NAME.pem`, `NAME-key.pem`), and the identity of a peer
//! taken from its verified certificate.
//!
//! Rules:
//! - TLS 1.3 only, mutual authentication always: the server requires a client certificate
//!   that chains to `ca.pem` (there is no anonymous mode), and the client verifies the server
//!   against `ca.pem` alone (never the system roots: the cluster CA is the only authority).
//! - The ring provider is passed explicitly to every builder, never taken from the
//!   process-wide default, which another crate in the process could install differently.
//! - A node's or client's own certificate is checked when the configuration is built, because
//!   rustls would only fail at the first handshake, with an error that names no file: it must
//!   parse, be valid now, carry the extended key usage its side needs (serverAuth to serve,
//!   clientAuth to connect), be signed by a CA in `ca.pem` (when the file holds a lone leaf),
//!   and match its key. Every error names the file and the `corelog certs` command that makes
//!   a good one.
//! - [`peer_identity`] reads the subject (CN) and the node mark (OU [`NODE_OU`]) of a
//!   certificate that rustls has *already verified*; it does no verification itself. On a
//!   `futures_rustls::server::TlsStream` the certificates are
//!   `stream.get_ref().1.peer_certificates()`.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::certs::{self, NODE_OU};

/// Who is on the other end of a verified connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The certificate's common name: the subject ACL rules name.
    pub subject: String,
    /// The certificate is marked as a node's (OU [`NODE_OU`]): under the default policy only
    /// nodes may `admin` and `replicate`.
    pub is_node: bool,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_node {
            write!(f, "{} (node)", self.subject)
        } else {
            write!(f, "{} (client)", self.subject)
        }
    }
}

/// Why a TLS configuration could not be built, or a peer identified.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {} is missing; create it with `{hint}`", path.display())]
    MissingFile {
        what: &'static str,
        path: PathBuf,
        hint: String,
    },

    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{what} {} is not usable: {detail}; recreate it with `{hint}`", path.display())]
    BadFile {
        what: &'static str,
        path: PathBuf,
        detail: String,
        hint: String,
    },

    #[error(
        "certificate {} and key {} are not a usable pair: {source}; recreate both with `{hint}`",
        cert.display(), key.display()
    )]
    KeyPair {
        cert: PathBuf,
        key: PathBuf,
        // Boxed: rustls::Error is large, and every Result in this module carries TlsError.
        #[source]
        source: Box<rustls::Error>,
        hint: String,
    },

    #[error("TLS 1.3 is not available from the ring provider: {source}")]
    Protocol {
        #[source]
        source: Box<rustls::Error>,
    },

    #[error("cannot build the client-certificate verifier from {}: {source}", path.display())]
    Verifier {
        path: PathBuf,
        #[source]
        source: VerifierBuilderError,
    },

    #[error("the peer presented no certificate")]
    NoPeerCertificate,

    #[error("the peer's certificate is not usable: {detail}")]
    BadPeerCertificate { detail: String },
}

/// The server side of the port for node `name`: TLS 1.3, serving `NAME.pem`, and requiring a
/// client certificate signed by `ca.pem`.
pub fn server_config(tls_dir: &Path, name: &str) -> Result<Arc<ServerConfig>, TlsError> {
    let files = Files::new(tls_dir, name, Side::Server);
    let material = files.load()?;
    let provider = provider();
    let ca_path = files.ca.clone();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(material.roots), provider.clone())
            .build()
            .map_err(|source| TlsError::Verifier {
                path: ca_path,
                source,
            })?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Protocol {
            source: Box::new(source),
        })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(material.chain, material.key)
        .map_err(|source| files.key_pair_error(source))?;
    Ok(Arc::new(config))
}

/// The client side for `name` (a client, or a node dialing a peer): TLS 1.3, presenting
/// `NAME.pem`, and accepting only servers whose certificate is signed by `ca.pem`.
pub fn client_config(tls_dir: &Path, name: &str) -> Result<Arc<ClientConfig>, TlsError> {
    let files = Files::new(tls_dir, name, Side::Client);
    let material = files.load()?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Protocol {
            source: Box::new(source),
        })?
        .with_root_certificates(material.roots)
        .with_client_auth_cert(material.chain, material.key)
        .map_err(|source| files.key_pair_error(source))?;
    Ok(Arc::new(config))
}

/// The identity in a peer's certificate chain (end entity first, as rustls returns it from
/// `peer_certificates()`). Call it only on a chain rustls has verified.
pub fn peer_identity(certs: &[CertificateDer<'_>]) -> Result<Identity, TlsError> {
    let bad = |detail: String| TlsError::BadPeerCertificate { detail };
    let end_entity = certs.first().ok_or(TlsError::NoPeerCertificate)?;
    let (_, cert) = X509Certificate::from_der(end_entity)
        .map_err(|e| bad(format!("not an X.509 certificate ({e})")))?;
    let subject = cert.subject();
    let mut common_names = subject.iter_common_name();
    let common_name = common_names
        .next()
        .ok_or_else(|| bad("it has no common name (CN) to use as the subject".to_string()))?;
    // Two CNs would make "the subject" ambiguous, and an ACL could match the wrong one.
    if common_names.next().is_some() {
        return Err(bad("it has more than one common name (CN)".to_string()));
    }
    let subject_name = common_name
        .as_str()
        .map_err(|e| bad(format!("its common name is not a text string ({e})")))?;
    if subject_name.is_empty() {
        return Err(bad("its common name (CN) is empty".to_string()));
    }
    let is_node = subject
        .iter_organizational_unit()
        .any(|ou| matches!(ou.as_str(), Ok(unit) if unit == NODE_OU));
    Ok(Identity {
        subject: subject_name.to_string(),
        is_node,
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Which end of a connection a configuration is for: decides the extended key usage the own
/// certificate needs and the `corelog certs` flag that makes one.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Side {
    Server,
    Client,
}

/// What a configuration is built from.
struct Material {
    roots: RootCertStore,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

/// The three files one configuration reads, and how to make them.
struct Files {
    side: Side,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// The `corelog certs` command that writes good files for this name.
    hint: String,
}

impl Files {
    fn new(tls_dir: &Path, name: &str, side: Side) -> Files {
        let flag = match side {
            Side::Server => "--node",
            Side::Client => "--client",
        };
        Files {
            side,
            ca: certs::ca_cert_path(tls_dir),
            cert: certs::cert_path(tls_dir, name),
            key: certs::key_path(tls_dir, name),
            hint: format!("corelog certs --out {} {flag} {name}", tls_dir.display()),
        }
    }

    fn load(&self) -> Result<Material, TlsError> {
        let ca_certs = self.read_certs(&self.ca, "CA certificate")?;
        let mut roots = RootCertStore::empty();
        for der in &ca_certs {
            roots
                .add(der.clone())
                .map_err(|e| self.bad(&self.ca, "CA certificate", e.to_string()))?;
        }
        let chain = self.read_certs(&self.cert, "certificate")?;
        let key = self.read_key()?;
        self.check_own_certificate(&chain, &ca_certs)?;
        Ok(Material { roots, chain, key })
    }

    fn read_certs(
        &self,
        path: &Path,
        what: &'static str,
    ) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|iter| iter.collect::<Result<_, _>>())
            .map_err(|e| self.pem_error(path, what, e))?;
        if certs.is_empty() {
            return Err(self.bad(path, what, "it holds no PEM certificate".to_string()));
        }
        Ok(certs)
    }

    fn read_key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| self.pem_error(&self.key, "private key", e))
    }

    /// Catches the mistakes rustls would report only at the first handshake, without naming
    /// a file: see the module rules.
    fn check_own_certificate(
        &self,
        chain: &[CertificateDer<'static>],
        ca_certs: &[CertificateDer<'static>],
    ) -> Result<(), TlsError> {
        let bad = |detail: String| self.bad(&self.cert, "certificate", detail);
        let (_, leaf) = X509Certificate::from_der(&chain[0])
            .map_err(|e| bad(format!("not an X.509 certificate ({e})")))?;

        let validity = leaf.validity();
        if !validity.is_valid() {
            return Err(bad(format!(
                "it is not valid now (valid from {} to {})",
                validity.not_before, validity.not_after
            )));
        }

        let eku = leaf
            .extended_key_usage()
            .map_err(|e| bad(format!("its extended key usage cannot be read ({e})")))?;
        // No EKU extension at all means "any purpose" (RFC 5280 §4.2.1.12).
        if let Some(eku) = eku {
            let (allowed, needed) = match self.side {
                Side::Server => (
                    eku.value.server_auth,
                    "serverAuth (it is not a node certificate)",
                ),
                Side::Client => (eku.value.client_auth, "clientAuth"),
            };
            if !(allowed || eku.value.any) {
                return Err(bad(format!("it lacks the extended key usage {needed}")));
            }
        }

        // With intermediates in the file the leaf is not signed by a root directly; the
        // handshake then does the full path check, so only a lone leaf is checked here.
        if chain.len() == 1 {
            let signed_by_ca = ca_certs.iter().any(|der| {
                X509Certificate::from_der(der)
                    // The `verify` feature of x509-parser comes with rcgen's `ring` feature.
                    .map(|(_, ca)| leaf.verify_signature(Some(ca.public_key())).is_ok())
                    .unwrap_or(false)
            });
            if !signed_by_ca {
                return Err(bad(format!(
                    "it is not signed by the CA in {} (was it made with another CA?)",
                    self.ca.display()
                )));
            }
        }
        Ok(())
    }

    fn pem_error(&self, path: &Path, what: &'static str, error: pem::Error) -> TlsError {
        match error {
            pem::Error::Io(source) if source.kind() == io::ErrorKind::NotFound => {
                TlsError::MissingFile {
                    what,
                    path: path.to_path_buf(),
                    hint: self.hint.clone(),
                }
            }
            pem::Error::Io(source) => TlsError::Read {
                what,
                path: path.to_path_buf(),
                source,
            },
            pem::Error::NoItemsFound => self.bad(path, what, format!("it holds no PEM {what}")),
            other => self.bad(path, what, format!("it is not valid PEM ({other})")),
        }
    }

    fn bad(&self, path: &Path, what: &'static str, detail: String) -> TlsError {
        TlsError::BadFile {
            what,
            path: path.to_path_buf(),
            detail,
            hint: self.hint.clone(),
        }
    }

    fn key_pair_error(&self, source: rustls::Error) -> TlsError {
        TlsError::KeyPair {
            cert: self.cert.clone(),
            key: self.key.clone(),
            source: Box::new(source),
            hint: self.hint.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_chain_has_no_identity() {
        assert!(matches!(
            peer_identity(&[]),
            Err(TlsError::NoPeerCertificate)
        ));
    }

    #[test]
    fn garbage_is_not_a_peer_certificate() {
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x01, 0x02, 0x03]);
        assert!(matches!(
            peer_identity(&[garbage]),
            Err(TlsError::BadPeerCertificate { .. })
        ));
    }

    #[test]
    fn missing_files_name_the_command_that_makes_them() {
        let dir = Path::new("/nonexistent/corelog-tls");
        let err = server_config(dir, "n1").expect_err("no files");
        let message = err.to_string();
        assert!(matches!(err, TlsError::MissingFile { .. }), "{err:?}");
        assert!(
            message.contains("/nonexistent/corelog-tls/ca.pem"),
            "{message}"
        );
        assert!(
            message.contains("corelog certs --out /nonexistent/corelog-tls --node n1"),
            "{message}"
        );
        let err = client_config(dir, "alice").expect_err("no files");
        assert!(
            err.to_string()
                .contains("corelog certs --out /nonexistent/corelog-tls --client alice"),
            "{err}"
        );
    }

    #[test]
    fn identity_displays_its_role() {
        let node = Identity {
            subject: "n1".into(),
            is_node: true,
        };
        assert_eq!(node.to_string(), "n1 (node)");
    }
}
