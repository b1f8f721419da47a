//! Certificates, TLS configurations and ACL files, end to end: `corelog certs` output parsed
//! back with x509-parser, and real mutual-TLS handshakes over loopback TCP (rustls's blocking
//! `StreamOwned`, server and client in two threads) with the configurations the node uses.
//!
//! Every test works in its own directory under `CARGO_TARGET_TMPDIR` and connects only to
//! 127.0.0.1.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use corelog::certs::{self, CLIENT_OU, CertsError, NODE_OU, Role, ensure_dev_certs, write_certs};
use corelog::net::acl::{Acl, AclError, Action, LineProblem, Object, Policy};
use corelog::net::tls::{Identity, TlsError, client_config, peer_identity, server_config};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, ClientConnection, RootCertStore, ServerConfig,
    ServerConnection, StreamOwned,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

const PING: &[u8] = b"ping!";
const PONG: &[u8] = b"pong!";
/// Bounds every blocking read and write, so a broken handshake fails the test instead of
/// hanging it.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// `corelog certs`

#[test]
fn certs_writes_a_ca_and_a_certificate_and_key_per_name() {
    let dir = test_dir("certs-layout");
    let report =
        write_certs(&dir, &strings(&["n1", "n2"]), &strings(&["alice"]), &[]).expect("write certs");

    assert!(report.ca_created);
    assert_eq!(report.ca.cert, dir.join("ca.pem"));
    assert_eq!(report.ca.key, dir.join("ca-key.pem"));
    let issued: Vec<(&str, Role)> = report
        .issued
        .iter()
        .map(|c| (c.name.as_str(), c.role))
        .collect();
    assert_eq!(
        issued,
        vec![
            ("n1", Role::Node),
            ("n2", Role::Node),
            ("alice", Role::Client)
        ]
    );
    for file in [
        "ca.pem",
        "ca-key.pem",
        "n1.pem",
        "n1-key.pem",
        "n2.pem",
        "n2-key.pem",
        "alice.pem",
        "alice-key.pem",
    ] {
        assert!(dir.join(file).is_file(), "{file} missing");
    }
    // No temporary files are left behind.
    let leftovers: Vec<_> = fs::read_dir(&dir)
        .expect("list dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let ca = read_cert(&dir.join("ca.pem"));
    with_x509(&ca, |ca| {
        assert!(ca.is_ca());
        let name = &common_names(ca)[0];
        assert!(name.starts_with("corelog CA "), "{name}");
        let constraints = ca
            .basic_constraints()
            .expect("basic constraints")
            .expect("present");
        assert_eq!(constraints.value.path_len_constraint, Some(0));
    });
}

#[test]
fn node_certificates_serve_and_connect_with_loopback_and_extra_names() {
    let dir = test_dir("certs-node");
    write_certs(
        &dir,
        &strings(&["n1"]),
        &[],
        &strings(&["db.example.com", "10.1.2.3", "localhost"]),
    )
    .expect("write certs");
    let ca = read_cert(&dir.join("ca.pem"));
    let node = read_cert(&dir.join("n1.pem"));

    with_x509(&node, |cert| {
        assert_eq!(common_names(cert), vec!["n1"]);
        assert_eq!(organizational_units(cert), vec![NODE_OU]);
        assert!(!cert.is_ca());
        let eku = cert.extended_key_usage().expect("eku").expect("present");
        assert!(eku.value.server_auth && eku.value.client_auth);
        assert!(!eku.value.any);
        let sans = cert
            .subject_alternative_name()
            .expect("san")
            .expect("present");
        let names: Vec<String> = sans
            .value
            .general_names
            .iter()
            .map(|name| match name {
                GeneralName::DNSName(dns) => format!("dns:{dns}"),
                GeneralName::IPAddress(ip) => format!("ip:{ip:?}"),
                other => format!("other:{other:?}"),
            })
            .collect();
        let mut v6_loopback = [0u8; 16];
        v6_loopback[15] = 1;
        assert_eq!(
            names,
            vec![
                "dns:localhost".to_string(),
                format!("ip:{:?}", [127u8, 0, 0, 1]),
                format!("ip:{v6_loopback:?}"),
                "dns:db.example.com".to_string(),
                format!("ip:{:?}", [10u8, 1, 2, 3]),
            ],
            "localhost is listed once"
        );
        with_x509(&ca, |ca| {
            assert_eq!(cert.issuer(), ca.subject());
            cert.verify_signature(Some(ca.public_key()))
                .expect("signed by the CA");
        });
    });
}

#[test]
fn client_certificates_only_connect() {
    let dir = test_dir("certs-client");
    write_certs(
        &dir,
        &[],
        &strings(&["alice"]),
        &strings(&["db.example.com"]),
    )
    .expect("write certs");
    let client = read_cert(&dir.join("alice.pem"));
    with_x509(&client, |cert| {
        assert_eq!(common_names(cert), vec!["alice"]);
        assert_eq!(organizational_units(cert), vec![CLIENT_OU]);
        let eku = cert.extended_key_usage().expect("eku").expect("present");
        assert!(eku.value.client_auth);
        assert!(!eku.value.server_auth && !eku.value.any);
        assert!(
            cert.subject_alternative_name().expect("san").is_none(),
            "--san applies to node certificates only"
        );
    });
}

#[test]
fn private_keys_are_readable_by_their_owner_only() {
    let dir = test_dir("certs-modes");
    write_certs(&dir, &strings(&["n1"]), &strings(&["alice"]), &[]).expect("write certs");
    for key in ["ca-key.pem", "n1-key.pem", "alice-key.pem"] {
        let mode = file_mode(&dir.join(key));
        assert_eq!(mode & 0o077, 0, "{key} has mode {mode:o}");
        assert_eq!(mode & 0o600, 0o600, "{key} has mode {mode:o}");
    }
    for cert in ["ca.pem", "n1.pem", "alice.pem"] {
        let mode = file_mode(&dir.join(cert));
        assert_eq!(mode & 0o600, 0o600, "{cert} has mode {mode:o}");
    }
    // Re-issuing replaces the key file; the new one is just as private.
    write_certs(&dir, &strings(&["n1"]), &[], &[]).expect("re-issue");
    assert_eq!(file_mode(&dir.join("n1-key.pem")) & 0o077, 0);
}

#[test]
fn an_existing_ca_is_reused_and_signs_the_new_certificates() {
    let dir = test_dir("certs-ca-reuse");
    write_certs(&dir, &strings(&["n1"]), &[], &[]).expect("first run");
    let ca_cert = fs::read(dir.join("ca.pem")).expect("ca.pem");
    let ca_key = fs::read(dir.join("ca-key.pem")).expect("ca-key.pem");

    let report = write_certs(&dir, &[], &strings(&["bob"]), &[]).expect("second run");
    assert!(!report.ca_created);
    assert_eq!(fs::read(dir.join("ca.pem")).expect("ca.pem"), ca_cert);
    assert_eq!(
        fs::read(dir.join("ca-key.pem")).expect("ca-key.pem"),
        ca_key
    );
    assert_signed_by_ca(&dir, "bob");
    assert_signed_by_ca(&dir, "n1");

    // And the certificates of both runs talk to each other.
    let exchange = exchange(
        server_config(&dir, "n1").expect("server config"),
        client_config(&dir, "bob").expect("client config"),
        "localhost",
    );
    assert_eq!(exchange.client.expect("client side"), PONG);
}

#[test]
fn reissuing_a_name_replaces_its_certificate_under_the_same_ca() {
    let dir = test_dir("certs-reissue");
    write_certs(&dir, &strings(&["n1"]), &[], &[]).expect("first run");
    let first = fs::read(dir.join("n1.pem")).expect("n1.pem");
    let first_key = fs::read(dir.join("n1-key.pem")).expect("n1-key.pem");
    let report =
        write_certs(&dir, &strings(&["n1"]), &[], &strings(&["n1.example"])).expect("second run");
    assert!(!report.ca_created);
    assert_ne!(fs::read(dir.join("n1.pem")).expect("n1.pem"), first);
    assert_ne!(
        fs::read(dir.join("n1-key.pem")).expect("n1-key.pem"),
        first_key
    );
    assert_signed_by_ca(&dir, "n1");
    server_config(&dir, "n1").expect("the new certificate and key are a pair");
}

#[test]
fn half_a_ca_is_an_error_and_is_left_alone() {
    let dir = test_dir("certs-half-ca");
    write_certs(&dir, &[], &[], &[]).expect("create the CA");
    let ca_cert = fs::read(dir.join("ca.pem")).expect("ca.pem");

    fs::remove_file(dir.join("ca-key.pem")).expect("remove key");
    let err = write_certs(&dir, &strings(&["n1"]), &[], &[]).expect_err("no CA key");
    assert!(matches!(err, CertsError::CaIncomplete { .. }), "{err:?}");
    assert!(err.to_string().contains("ca-key.pem"), "{err}");
    assert_eq!(fs::read(dir.join("ca.pem")).expect("ca.pem"), ca_cert);
    assert!(!dir.join("n1.pem").exists());

    fs::rename(dir.join("ca.pem"), dir.join("ca-key.pem")).expect("swap");
    let err = write_certs(&dir, &[], &[], &[]).expect_err("no CA certificate");
    assert!(matches!(err, CertsError::CaIncomplete { .. }), "{err:?}");
}

#[test]
fn a_ca_key_from_another_ca_is_refused() {
    let dir = test_dir("certs-ca-mismatch");
    let other = test_dir("certs-ca-mismatch-other");
    write_certs(&dir, &[], &[], &[]).expect("CA one");
    write_certs(&other, &[], &[], &[]).expect("CA two");
    fs::copy(other.join("ca-key.pem"), dir.join("ca-key.pem")).expect("copy key");
    let err = write_certs(&dir, &strings(&["n1"]), &[], &[]).expect_err("mismatch");
    assert!(matches!(err, CertsError::CaKeyMismatch { .. }), "{err:?}");
}

#[test]
fn a_ca_file_that_is_not_a_ca_is_refused() {
    let dir = test_dir("certs-not-a-ca");
    write_certs(&dir, &strings(&["n1"]), &[], &[]).expect("write certs");
    fs::copy(dir.join("n1.pem"), dir.join("ca.pem")).expect("copy leaf");
    fs::copy(dir.join("n1-key.pem"), dir.join("ca-key.pem")).expect("copy key");
    let err = write_certs(&dir, &strings(&["n2"]), &[], &[]).expect_err("leaf as CA");
    assert!(matches!(err, CertsError::BadCaCert { .. }), "{err:?}");
}

#[test]
fn bad_input_leaves_the_directory_untouched() {
    let dir = test_dir("certs-bad-input").join("tls");
    let err = write_certs(&dir, &strings(&["../escape"]), &[], &[]).expect_err("bad name");
    assert!(matches!(err, CertsError::InvalidName { .. }), "{err:?}");
    let err =
        write_certs(&dir, &strings(&["same"]), &strings(&["same"]), &[]).expect_err("duplicate");
    assert!(matches!(err, CertsError::DuplicateName { .. }), "{err:?}");
    let err =
        write_certs(&dir, &strings(&["n1"]), &[], &strings(&["not a name"])).expect_err("bad san");
    assert!(matches!(err, CertsError::InvalidSan { .. }), "{err:?}");
    assert!(
        !dir.exists(),
        "nothing may be written before the input is valid"
    );
}

#[test]
fn dev_certs_are_created_once_then_reused() {
    let dir = test_dir("dev-certs").join("tls");
    let first = ensure_dev_certs(&dir).expect("first start");
    assert!(first.created);
    assert_eq!(first.ca_cert, dir.join("ca.pem"));
    assert_eq!(first.node.cert, dir.join("node.pem"));
    assert_eq!(first.node.key, dir.join("node-key.pem"));
    assert_eq!(first.client.cert, dir.join("client.pem"));
    assert_eq!(first.client.key, dir.join("client-key.pem"));
    let snapshot = read_all(&dir);

    let second = ensure_dev_certs(&dir).expect("restart");
    assert!(!second.created);
    assert_eq!(read_all(&dir), snapshot, "a restart rewrites nothing");

    // With the CA key removed the existing certificates still serve.
    fs::remove_file(dir.join("ca-key.pem")).expect("remove CA key");
    assert!(!ensure_dev_certs(&dir).expect("no CA key").created);
    server_config(&dir, certs::DEV_NODE_NAME).expect("dev node config");
}

#[test]
fn a_missing_dev_certificate_is_reissued_alone() {
    let dir = test_dir("dev-certs-missing");
    ensure_dev_certs(&dir).expect("first start");
    let node = fs::read(dir.join("node.pem")).expect("node.pem");
    let client = fs::read(dir.join("client.pem")).expect("client.pem");
    fs::remove_file(dir.join("client-key.pem")).expect("remove client key");

    assert!(ensure_dev_certs(&dir).expect("repair").created);
    assert_eq!(fs::read(dir.join("node.pem")).expect("node.pem"), node);
    assert_ne!(
        fs::read(dir.join("client.pem")).expect("client.pem"),
        client
    );
    assert_signed_by_ca(&dir, "client");
}

#[test]
fn without_a_ca_every_dev_certificate_is_reissued() {
    let dir = test_dir("dev-certs-no-ca");
    ensure_dev_certs(&dir).expect("first start");
    let node = fs::read(dir.join("node.pem")).expect("node.pem");
    fs::remove_file(dir.join("ca.pem")).expect("remove CA");
    fs::remove_file(dir.join("ca-key.pem")).expect("remove CA key");

    assert!(ensure_dev_certs(&dir).expect("new CA").created);
    assert_ne!(fs::read(dir.join("node.pem")).expect("node.pem"), node);
    assert_signed_by_ca(&dir, "node");
    assert_signed_by_ca(&dir, "client");
}

// ---------------------------------------------------------------------------------------------
// Mutual TLS over loopback

#[test]
fn mutual_tls_exchanges_bytes_and_the_server_sees_the_client_identity() {
    let dir = test_dir("mtls-dev");
    let dev = ensure_dev_certs(&dir).expect("dev certs");
    let exchange = exchange(
        server_config(&dev.dir, "node").expect("server config"),
        client_config(&dev.dir, "client").expect("client config"),
        "localhost",
    );
    let saw = exchange.server.expect("server side");
    assert_eq!(saw.received, PING);
    assert_eq!(
        saw.identity.expect("identity"),
        Identity {
            subject: "client".to_string(),
            is_node: false
        }
    );
    assert!(saw.tls13, "only TLS 1.3 is offered");
    assert_eq!(exchange.client.expect("client side"), PONG);
}

#[test]
fn a_node_dialing_a_peer_is_identified_as_a_node() {
    let dir = test_dir("mtls-peer");
    write_certs(&dir, &strings(&["n1", "n2"]), &[], &[]).expect("write certs");
    let exchange = exchange(
        server_config(&dir, "n1").expect("server config"),
        client_config(&dir, "n2").expect("client config"),
        "localhost",
    );
    let identity = exchange
        .server
        .expect("server side")
        .identity
        .expect("identity");
    assert_eq!(
        identity,
        Identity {
            subject: "n2".to_string(),
            is_node: true
        }
    );
    assert!(Policy::Default.allows(&identity, Object::Cluster, Action::Replicate));
}

#[test]
fn the_server_is_verified_by_ip_and_by_extra_san() {
    let dir = test_dir("mtls-names");
    write_certs(
        &dir,
        &strings(&["n1"]),
        &strings(&["alice"]),
        &strings(&["db.example.com"]),
    )
    .expect("write certs");
    // The TCP connection always goes to 127.0.0.1; the name is what the client checks.
    for name in ["127.0.0.1", "::1", "db.example.com"] {
        let exchange = exchange(
            server_config(&dir, "n1").expect("server config"),
            client_config(&dir, "alice").expect("client config"),
            name,
        );
        assert_eq!(exchange.client.expect(name), PONG);
    }
}

#[test]
fn a_server_name_not_in_the_certificate_is_rejected() {
    let dir = test_dir("mtls-wrong-name");
    ensure_dev_certs(&dir).expect("dev certs");
    let exchange = exchange(
        server_config(&dir, "node").expect("server config"),
        client_config(&dir, "client").expect("client config"),
        "elsewhere.example",
    );
    assert!(
        matches!(
            tls_error(&exchange.client),
            Some(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            ))
        ),
        "{:?}",
        exchange.client
    );
    assert!(exchange.server.is_err());
}

#[test]
fn a_client_certificate_from_another_ca_is_rejected() {
    let dir = test_dir("mtls-other-ca");
    let other = test_dir("mtls-other-ca-client");
    ensure_dev_certs(&dir).expect("dev certs");
    write_certs(&other, &[], &strings(&["mallory"]), &[]).expect("other CA");
    // Mallory trusts the real CA, so only her own certificate is wrong.
    fs::copy(dir.join("ca.pem"), other.join("ca.pem")).expect("copy ca.pem");
    let mallory = client_config_unchecked(&other, "mallory");

    let exchange = exchange(
        server_config(&dir, "node").expect("server config"),
        mallory,
        "localhost",
    );
    assert!(
        matches!(
            tls_error(&exchange.server),
            Some(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            ))
        ),
        "{:?}",
        exchange.server.as_ref().err()
    );
    assert!(exchange.client.is_err(), "the client must not get a reply");
}

#[test]
fn a_client_without_a_certificate_is_rejected() {
    let dir = test_dir("mtls-anonymous");
    ensure_dev_certs(&dir).expect("dev certs");
    let anonymous = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls 1.3")
        .with_root_certificates(roots(&dir))
        .with_no_client_auth();

    let exchange = exchange(
        server_config(&dir, "node").expect("server config"),
        Arc::new(anonymous),
        "localhost",
    );
    assert!(
        matches!(
            tls_error(&exchange.server),
            Some(rustls::Error::NoCertificatesPresented)
        ),
        "{:?}",
        exchange.server.as_ref().err()
    );
    assert!(exchange.client.is_err(), "the client must not get a reply");
}

#[test]
fn a_client_certificate_cannot_serve() {
    let dir = test_dir("mtls-client-serves");
    ensure_dev_certs(&dir).expect("dev certs");
    // server_config refuses this outright (next test); build the config by hand to show the
    // handshake itself fails too.
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(&dir)), provider())
        .build()
        .expect("verifier");
    let impostor = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls 1.3")
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            read_chain(&dir.join("client.pem")),
            read_key(&dir.join("client-key.pem")),
        )
        .expect("server config");

    let exchange = exchange(
        Arc::new(impostor),
        client_config(&dir, "client").expect("client config"),
        "localhost",
    );
    assert!(
        matches!(
            tls_error(&exchange.client),
            Some(rustls::Error::InvalidCertificate(
                CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. }
            ))
        ),
        "{:?}",
        exchange.client
    );
    assert!(exchange.server.is_err());
}

#[test]
fn a_server_from_another_ca_is_rejected_by_the_client() {
    let dir = test_dir("mtls-server-other-ca");
    let other = test_dir("mtls-server-other-ca-server");
    ensure_dev_certs(&dir).expect("dev certs");
    ensure_dev_certs(&other).expect("other dev certs");
    let exchange = exchange(
        server_config(&other, "node").expect("server config"),
        client_config(&dir, "client").expect("client config"),
        "localhost",
    );
    assert!(
        matches!(
            tls_error(&exchange.client),
            Some(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            ))
        ),
        "{:?}",
        exchange.client
    );
}

// ---------------------------------------------------------------------------------------------
// Configuration errors name the file and the fix

#[test]
fn server_config_refuses_a_client_certificate() {
    let dir = test_dir("config-client-as-server");
    ensure_dev_certs(&dir).expect("dev certs");
    let err = server_config(&dir, "client").expect_err("client cert cannot serve");
    let message = err.to_string();
    assert!(matches!(err, TlsError::BadFile { .. }), "{err:?}");
    assert!(message.contains("client.pem"), "{message}");
    assert!(message.contains("serverAuth"), "{message}");
    assert!(message.contains("corelog certs --out"), "{message}");
}

#[test]
fn a_certificate_signed_by_another_ca_is_refused_at_load() {
    let dir = test_dir("config-other-ca");
    let other = test_dir("config-other-ca-source");
    ensure_dev_certs(&dir).expect("dev certs");
    ensure_dev_certs(&other).expect("other dev certs");
    fs::copy(other.join("node.pem"), dir.join("node.pem")).expect("copy cert");
    fs::copy(other.join("node-key.pem"), dir.join("node-key.pem")).expect("copy key");
    let err = server_config(&dir, "node").expect_err("foreign node cert");
    assert!(err.to_string().contains("not signed by the CA"), "{err}");
    let err = client_config(&dir, "node").expect_err("foreign node cert");
    assert!(err.to_string().contains("not signed by the CA"), "{err}");
}

#[test]
fn a_key_that_does_not_match_its_certificate_is_refused() {
    let dir = test_dir("config-key-mismatch");
    write_certs(&dir, &strings(&["n1", "n2"]), &[], &[]).expect("write certs");
    fs::copy(dir.join("n2-key.pem"), dir.join("n1-key.pem")).expect("copy key");
    let err = server_config(&dir, "n1").expect_err("mismatch");
    assert!(matches!(err, TlsError::KeyPair { .. }), "{err:?}");
    assert!(err.to_string().contains("n1-key.pem"), "{err}");
}

#[test]
fn missing_and_garbled_files_are_named() {
    let dir = test_dir("config-files");
    ensure_dev_certs(&dir).expect("dev certs");

    fs::write(dir.join("client-key.pem"), "not a key\n").expect("garble key");
    let err = client_config(&dir, "client").expect_err("garbled key");
    assert!(matches!(err, TlsError::BadFile { .. }), "{err:?}");
    assert!(err.to_string().contains("client-key.pem"), "{err}");

    fs::write(dir.join("node.pem"), "-----BEGIN CERTIFICATE-----\n!!!\n").expect("garble");
    let err = server_config(&dir, "node").expect_err("garbled cert");
    assert!(matches!(err, TlsError::BadFile { .. }), "{err:?}");
    assert!(err.to_string().contains("node.pem"), "{err}");

    fs::remove_file(dir.join("ca.pem")).expect("remove ca.pem");
    let err = server_config(&dir, "node").expect_err("no CA");
    assert!(matches!(err, TlsError::MissingFile { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("ca.pem"), "{message}");
    assert!(
        message.contains(&format!(
            "corelog certs --out {} --node node",
            dir.display()
        )),
        "{message}"
    );

    let err = client_config(&dir, "nobody").expect_err("no such name");
    assert!(matches!(err, TlsError::MissingFile { .. }), "{err:?}");
}

#[test]
fn peer_identity_needs_exactly_one_common_name() {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationalUnitName, NODE_OU);
    let no_cn = params.self_signed(&key).expect("cert");
    let err = peer_identity(&[no_cn.der().clone()]).expect_err("no CN");
    assert!(
        matches!(err, TlsError::BadPeerCertificate { .. }),
        "{err:?}"
    );

    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "n9");
    let with_cn = params.self_signed(&key).expect("cert");
    assert_eq!(
        peer_identity(&[with_cn.der().clone()]).expect("identity"),
        Identity {
            subject: "n9".to_string(),
            is_node: true
        }
    );
}

// ---------------------------------------------------------------------------------------------
// ACL files on disk

#[test]
fn an_acl_file_loads_and_decides() {
    let dir = test_dir("acl-load");
    let path = dir.join("corelog.acl");
    fs::write(
        &path,
        "# who, what, how\nalice, 0, produce\nn1, *, replicate\n",
    )
    .expect("write");
    let policy = Policy::from_acl_file(Some(&path)).expect("load");
    let alice = Identity {
        subject: "alice".to_string(),
        is_node: false,
    };
    let n1 = Identity {
        subject: "n1".to_string(),
        is_node: true,
    };
    assert!(policy.allows(&alice, Object::Partition(0), Action::Produce));
    assert!(!policy.allows(&alice, Object::Partition(0), Action::Consume));
    assert!(!policy.allows(&alice, Object::Cluster, Action::Consume));
    assert!(policy.allows(&n1, Object::Partition(5), Action::Replicate));
    assert!(
        !policy.allows(&n1, Object::Cluster, Action::Admin),
        "not granted by the file"
    );
    match policy {
        Policy::File(acl) => {
            assert_eq!(acl.path(), path);
            assert_eq!(acl.len(), 2);
        }
        Policy::Default => panic!("a file was given"),
    }
}

#[test]
fn acl_file_errors_name_the_file_and_line() {
    let dir = test_dir("acl-errors");
    let path = dir.join("bad.acl");
    fs::write(&path, "alice, 0, produce\n\nbob, partition-1, consume\n").expect("write");
    let err = Acl::load(&path).expect_err("bad object");
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("{}:3: ", path.display())),
        "{message}"
    );
    assert!(message.contains("partition-1"), "{message}");

    fs::write(&path, b"alice, 0, produce\nb\xffb, 0, consume\n").expect("write");
    match Acl::load(&path) {
        Err(AclError::Line {
            line: 2,
            problem: LineProblem::NotUtf8,
            ..
        }) => {}
        other => panic!("expected a UTF-8 error on line 2, got {other:?}"),
    }

    let missing = dir.join("missing.acl");
    let err = Acl::load(&missing).expect_err("missing");
    assert!(matches!(err, AclError::Read { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.acl"), "{err}");
}

#[test]
fn an_oversized_acl_file_is_refused() {
    let dir = test_dir("acl-too-large");
    let path = dir.join("huge.acl");
    let line = "alice, 0, produce\n";
    let lines = (corelog::net::acl::ACL_FILE_BYTES_MAX as usize) / line.len() + 1;
    fs::write(&path, line.repeat(lines)).expect("write");
    let err = Acl::load(&path).expect_err("too large");
    assert!(matches!(err, AclError::TooLarge { .. }), "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// A fresh, empty directory for one test on the real filesystem under `target/`.
fn test_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("corelog-tls-tests")
        .join(format!("{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create test dir");
    dir
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

fn file_mode(path: &Path) -> u32 {
    fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

fn read_all(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(dir)
        .expect("list dir")
        .map(|e| {
            let e = e.expect("entry");
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).expect("read"),
            )
        })
        .collect();
    files.sort();
    files
}

fn read_cert(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).expect("PEM certificate")
}

fn read_chain(path: &Path) -> Vec<CertificateDer<'static>> {
    vec![read_cert(path)]
}

fn read_key(path: &Path) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_file(path).expect("PEM key")
}

fn with_x509<T>(der: &CertificateDer<'_>, f: impl FnOnce(&X509Certificate<'_>) -> T) -> T {
    let (rest, cert) = X509Certificate::from_der(der).expect("X.509");
    assert!(rest.is_empty(), "trailing bytes after the certificate");
    f(&cert)
}

fn common_names(cert: &X509Certificate<'_>) -> Vec<String> {
    cert.subject()
        .iter_common_name()
        .map(|cn| cn.as_str().expect("text").to_string())
        .collect()
}

fn organizational_units(cert: &X509Certificate<'_>) -> Vec<String> {
    cert.subject()
        .iter_organizational_unit()
        .map(|ou| ou.as_str().expect("text").to_string())
        .collect()
}

fn assert_signed_by_ca(dir: &Path, name: &str) {
    let ca = read_cert(&dir.join("ca.pem"));
    let leaf = read_cert(&certs::cert_path(dir, name));
    with_x509(&leaf, |leaf| {
        with_x509(&ca, |ca| {
            leaf.verify_signature(Some(ca.public_key()))
                .unwrap_or_else(|e| panic!("{name}.pem is not signed by ca.pem: {e}"));
        })
    });
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(dir: &Path) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.add(read_cert(&dir.join("ca.pem"))).expect("CA");
    roots
}

/// A client config that trusts `dir/ca.pem` and presents `name`'s certificate, without the
/// load-time checks of `tls::client_config` (which would refuse a certificate from another
/// CA before any handshake).
fn client_config_unchecked(dir: &Path, name: &str) -> Arc<ClientConfig> {
    Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("tls 1.3")
            .with_root_certificates(roots(dir))
            .with_client_auth_cert(
                read_chain(&certs::cert_path(dir, name)),
                read_key(&certs::key_path(dir, name)),
            )
            .expect("client config"),
    )
}

/// What the server side of one exchange saw.
#[derive(Debug)]
struct ServerSaw {
    received: Vec<u8>,
    identity: Result<Identity, TlsError>,
    tls13: bool,
}

/// Both sides of one exchange: the client sends [`PING`], the server answers [`PONG`].
struct Exchange {
    server: io::Result<ServerSaw>,
    client: io::Result<Vec<u8>>,
}

/// Runs one connection over 127.0.0.1: a server thread accepting once, and a client on this
/// thread connecting with `server_name` as the name it verifies.
fn exchange(server: Arc<ServerConfig>, client: Arc<ClientConfig>, server_name: &str) -> Exchange {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let server_thread = thread::spawn(move || serve_once(listener, server));
    let client = connect_once(addr, client, server_name);
    let server = server_thread.join().expect("server thread panicked");
    Exchange { server, client }
}

fn serve_once(listener: TcpListener, config: Arc<ServerConfig>) -> io::Result<ServerSaw> {
    let (socket, _) = listener.accept()?;
    socket.set_read_timeout(Some(IO_TIMEOUT))?;
    socket.set_write_timeout(Some(IO_TIMEOUT))?;
    let connection = ServerConnection::new(config).map_err(io::Error::other)?;
    let mut stream = StreamOwned::new(connection, socket);
    let mut received = vec![0u8; PING.len()];
    stream.read_exact(&mut received)?;
    let identity = peer_identity(stream.conn.peer_certificates().unwrap_or_default());
    let tls13 = stream.conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
    stream.write_all(PONG)?;
    stream.flush()?;
    // Wait for the client's close_notify, so closing our socket cannot reset the connection
    // before the client has read the reply.
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    Ok(ServerSaw {
        received,
        identity,
        tls13,
    })
}

fn connect_once(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    server_name: &str,
) -> io::Result<Vec<u8>> {
    let name = ServerName::try_from(server_name.to_string()).map_err(io::Error::other)?;
    let socket = TcpStream::connect(addr)?;
    socket.set_read_timeout(Some(IO_TIMEOUT))?;
    socket.set_write_timeout(Some(IO_TIMEOUT))?;
    let connection = ClientConnection::new(config, name).map_err(io::Error::other)?;
    let mut stream = StreamOwned::new(connection, socket);
    stream.write_all(PING)?;
    stream.flush()?;
    let mut reply = vec![0u8; PONG.len()];
    stream.read_exact(&mut reply)?;
    stream.conn.send_close_notify();
    stream.flush()?;
    Ok(reply)
}

/// The rustls error behind an I/O error from a `StreamOwned`, if there is one.
fn tls_error<T>(result: &io::Result<T>) -> Option<rustls::Error> {
    result
        .as_ref()
        .err()?
        .get_ref()?
        .downcast_ref::<rustls::Error>()
        .cloned()
}
