//! The payload loadgen writes into every record, and its check. Pure functions over bytes.
//!
//! Format, version 1 (all integers little-endian):
//!
//! ```text
//! offset  size  field
//!      0     4  magic "LGR1"
//!      4     8  run id: random per loadgen run, so records of other runs are told apart
//!     12     4  producer id (0 .. producers-1 within the run)
//!     16     8  sequence number of the record within its producer (dense, from 0)
//!     24     8  intended send time, ns since the run's clock epoch (same process)
//!     32     4  total record length in bytes (this header included)
//!     36     4  CRC32C of bytes [0, 36) followed by bytes [40, length)
//!     40     …  padding up to --record-bytes: pseudo-random bytes from --seed
//! ```
//!
//! The checksum covers everything but itself, so any flipped or dropped byte is caught, and
//! the length field catches records cut short or padded.

use bytes::{BufMut, BytesMut};

/// Marks a loadgen record, and its format version.
pub const MAGIC: [u8; 4] = *b"LGR1";
/// Bytes of the header: the smallest record loadgen can write.
pub const HEADER_BYTES: usize = 40;
/// The largest record loadgen writes (a produce request must fit in the node's frame limit).
pub const RECORD_BYTES_MAX: usize = 1 << 20;

const CRC_AT: usize = 36;

/// The fields of a record's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub run_id: u64,
    pub producer: u32,
    pub seq: u64,
    pub sent_ns: u64,
}

/// Why a record is not an intact loadgen record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// Shorter than the header.
    TooShort { len: usize },
    /// Does not start with the magic: corrupt, or written by another client.
    BadMagic { found: [u8; 4] },
    /// The length field disagrees with the record's actual length.
    BadLength { stated: u32, actual: usize },
    /// The checksum does not match the contents.
    BadChecksum { stored: u32, computed: u32 },
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordError::TooShort { len } => {
                write!(
                    f,
                    "{len} bytes, shorter than the {HEADER_BYTES}-byte header"
                )
            }
            RecordError::BadMagic { found } => write!(
                f,
                "bad magic {found:02x?}: corrupt, or not written by loadgen"
            ),
            RecordError::BadLength { stated, actual } => {
                write!(f, "length field says {stated} bytes, record has {actual}")
            }
            RecordError::BadChecksum { stored, computed } => write!(
                f,
                "checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
            ),
        }
    }
}

/// Appends one record of `record_bytes` bytes to `out`; its filler is the first
/// `record_bytes - HEADER_BYTES` bytes of `padding`.
pub fn encode(out: &mut BytesMut, header: &Header, record_bytes: usize, padding: &[u8]) {
    assert!(
        (HEADER_BYTES..=RECORD_BYTES_MAX).contains(&record_bytes),
        "record size {record_bytes} outside {HEADER_BYTES}..={RECORD_BYTES_MAX}"
    );
    let pad = record_bytes - HEADER_BYTES;
    assert!(
        padding.len() >= pad,
        "padding of {} bytes for a {pad}-byte fill",
        padding.len()
    );
    let start = out.len();
    out.reserve(record_bytes);
    out.put_slice(&MAGIC);
    out.put_u64_le(header.run_id);
    out.put_u32_le(header.producer);
    out.put_u64_le(header.seq);
    out.put_u64_le(header.sent_ns);
    out.put_u32_le(record_bytes as u32);
    out.put_u32_le(0);
    out.put_slice(&padding[..pad]);
    let record = &mut out[start..];
    let crc = checksum(record);
    record[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Checks a record and returns its header.
pub fn decode(value: &[u8]) -> Result<Header, RecordError> {
    if value.len() < HEADER_BYTES {
        return Err(RecordError::TooShort { len: value.len() });
    }
    let magic: [u8; 4] = take(value, 0);
    if magic != MAGIC {
        return Err(RecordError::BadMagic { found: magic });
    }
    let stated = u32::from_le_bytes(take(value, 32));
    if stated as usize != value.len() {
        return Err(RecordError::BadLength {
            stated,
            actual: value.len(),
        });
    }
    let stored = u32::from_le_bytes(take(value, CRC_AT));
    let computed = checksum(value);
    if stored != computed {
        return Err(RecordError::BadChecksum { stored, computed });
    }
    Ok(Header {
        run_id: u64::from_le_bytes(take(value, 4)),
        producer: u32::from_le_bytes(take(value, 12)),
        seq: u64::from_le_bytes(take(value, 16)),
        sent_ns: u64::from_le_bytes(take(value, 24)),
    })
}

/// CRC32C of the record without its checksum field.
fn checksum(record: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&record[..CRC_AT]);
    crc32c::crc32c_append(crc, &record[CRC_AT + 4..])
}

/// `N` bytes at `at`; the caller has checked the length.
fn take<const N: usize>(value: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&value[at..at + N]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            run_id: 0x1122_3344_5566_7788,
            producer: 7,
            seq: 12_345,
            sent_ns: 987_654_321,
        }
    }

    fn one(record_bytes: usize) -> Vec<u8> {
        let padding: Vec<u8> = (0..record_bytes).map(|i| (i * 31) as u8).collect();
        let mut out = BytesMut::new();
        encode(&mut out, &header(), record_bytes, &padding);
        out.to_vec()
    }

    #[test]
    fn a_record_round_trips_at_every_size() {
        for size in [HEADER_BYTES, HEADER_BYTES + 1, 100, 1024, 65_536] {
            let r = one(size);
            assert_eq!(r.len(), size);
            assert_eq!(decode(&r), Ok(header()));
        }
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let r = one(100);
        for at in 0..r.len() {
            let mut bad = r.clone();
            bad[at] ^= 0x5A;
            assert!(decode(&bad).is_err(), "flip at byte {at} went unnoticed");
        }
    }

    #[test]
    fn cut_and_extended_records_are_caught() {
        let r = one(100);
        assert!(matches!(
            decode(&r[..99]),
            Err(RecordError::BadLength { .. })
        ));
        assert!(matches!(
            decode(&r[..10]),
            Err(RecordError::TooShort { len: 10 })
        ));
        let mut long = r.clone();
        long.push(0);
        assert!(matches!(decode(&long), Err(RecordError::BadLength { .. })));
    }

    #[test]
    fn foreign_records_are_told_apart() {
        assert!(matches!(
            decode(b"hello, this is a line from corelog produce!"),
            Err(RecordError::BadMagic { .. })
        ));
    }
}
