//! The connection preamble: 8 plaintext bytes a client or peer sends right after the TCP
//! connection opens and before the TLS handshake, so the accepting core can hand the socket to
//! the core it is meant for before any TLS state exists.
//!
//! Format (docs/PROTOCOL.md, "Connection"):
//!
//! ```text
//! offset  size  field
//! 0       4     magic    b"CLNP" (0x43 0x4C 0x4E 0x50)
//! 4       1     version  1
//! 5       1     kind     1 = client, 2 = peer
//! 6       2     core     target core, u16 big-endian
//! ```
//!
//! The server never answers a bad preamble: it closes the connection. Whether `core` names a
//! core of this node is the server's check, not the codec's.

/// The first four bytes of every connection.
pub const PREAMBLE_MAGIC: [u8; 4] = *b"CLNP";

/// The one protocol version this build speaks.
pub const PROTOCOL_VERSION: u8 = 1;

/// The preamble's fixed size.
pub const PREAMBLE_BYTES: usize = 8;

/// Who is on the other end of a connection.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ConnKind {
    /// A client of the client API (produce, consume, ...).
    Client = 1,
    /// Another node of the cluster (Raft traffic).
    Peer = 2,
}

impl ConnKind {
    pub fn from_u8(byte: u8) -> Option<ConnKind> {
        match byte {
            1 => Some(ConnKind::Client),
            2 => Some(ConnKind::Peer),
            _ => None,
        }
    }
}

/// A decoded preamble.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Preamble {
    pub version: u8,
    pub kind: ConnKind,
    /// The core that should serve this connection.
    pub core: u16,
}

/// Why a preamble was refused. The server closes the connection in every case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreambleError {
    #[error("bad preamble magic {0:02x?}: not a corelog client (expected \"CLNP\")")]
    BadMagic([u8; 4]),
    #[error("unsupported protocol version {0} (this node speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion(u8),
    #[error("unknown connection kind {0} (expected 1 = client or 2 = peer)")]
    UnknownKind(u8),
}

impl Preamble {
    /// A preamble of the current protocol version.
    pub fn new(kind: ConnKind, core: u16) -> Preamble {
        Preamble {
            version: PROTOCOL_VERSION,
            kind,
            core,
        }
    }

    pub fn encode(&self) -> [u8; PREAMBLE_BYTES] {
        let core = self.core.to_be_bytes();
        let [m0, m1, m2, m3] = PREAMBLE_MAGIC;
        [
            m0,
            m1,
            m2,
            m3,
            self.version,
            self.kind as u8,
            core[0],
            core[1],
        ]
    }

    /// Checks magic, then version, then kind: a stranger is told apart from an old client.
    pub fn decode(bytes: &[u8; PREAMBLE_BYTES]) -> Result<Preamble, PreambleError> {
        let [m0, m1, m2, m3, version, kind, c0, c1] = *bytes;
        let magic = [m0, m1, m2, m3];
        if magic != PREAMBLE_MAGIC {
            return Err(PreambleError::BadMagic(magic));
        }
        if version != PROTOCOL_VERSION {
            return Err(PreambleError::UnsupportedVersion(version));
        }
        let kind = ConnKind::from_u8(kind).ok_or(PreambleError::UnknownKind(kind))?;
        Ok(Preamble {
            version,
            kind,
            core: u16::from_be_bytes([c0, c1]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};

    #[test]
    fn client_preamble_has_the_documented_bytes() {
        let bytes = Preamble::new(ConnKind::Client, 3).encode();
        assert_eq!(bytes, [0x43, 0x4C, 0x4E, 0x50, 0x01, 0x01, 0x00, 0x03]);
    }

    #[test]
    fn core_is_big_endian() {
        let bytes = Preamble::new(ConnKind::Peer, 0x0102).encode();
        assert_eq!(&bytes[5..], &[0x02, 0x01, 0x02]);
    }

    #[test]
    fn round_trips_every_kind_and_edge_cores() {
        for kind in [ConnKind::Client, ConnKind::Peer] {
            for core in [0, 1, 255, 256, u16::MAX] {
                let preamble = Preamble::new(kind, core);
                assert_eq!(Preamble::decode(&preamble.encode()), Ok(preamble));
            }
        }
    }

    #[test]
    fn bad_magic_is_rejected() {
        let mut bytes = Preamble::new(ConnKind::Client, 0).encode();
        bytes[..4].copy_from_slice(b"GET ");
        assert_eq!(
            Preamble::decode(&bytes),
            Err(PreambleError::BadMagic(*b"GET "))
        );
    }

    #[test]
    fn tls_client_hello_instead_of_preamble_is_bad_magic() {
        // A TLS client that skipped the preamble starts with a handshake record header.
        let bytes = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01];
        assert!(matches!(
            Preamble::decode(&bytes),
            Err(PreambleError::BadMagic(_))
        ));
    }

    #[test]
    fn other_versions_are_unsupported() {
        for version in [0, 2, 255] {
            let mut bytes = Preamble::new(ConnKind::Client, 0).encode();
            bytes[4] = version;
            assert_eq!(
                Preamble::decode(&bytes),
                Err(PreambleError::UnsupportedVersion(version))
            );
        }
    }

    #[test]
    fn unknown_connection_kinds_are_rejected() {
        for kind in [0, 3, 255] {
            let mut bytes = Preamble::new(ConnKind::Client, 0).encode();
            bytes[5] = kind;
            assert_eq!(
                Preamble::decode(&bytes),
                Err(PreambleError::UnknownKind(kind))
            );
        }
    }

    #[test]
    fn random_bytes_never_panic_and_only_valid_ones_decode() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x434c_4e50);
        for _ in 0..100_000 {
            let mut bytes: [u8; PREAMBLE_BYTES] = rng.random();
            if rng.random_bool(0.5) {
                bytes[..4].copy_from_slice(&PREAMBLE_MAGIC);
            }
            if let Ok(preamble) = Preamble::decode(&bytes) {
                assert_eq!(preamble.encode(), bytes);
            }
        }
    }
}
