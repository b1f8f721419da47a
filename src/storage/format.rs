//! The on-disk batch format, version 1: pure functions over byte slices (no I/O), so they are
//! easy to test and fuzz.
//!
//! Every write unit is a **batch**. All integers are little-endian.
//!
//! ```text
//! byte  size  field
//!    0     4  magic         b"CLOG"
//!    4     1  version       1
//!    5     1  attributes    bit 0: control batch (opaque payload, no records); others 0
//!    6     2  reserved      0
//!    8     4  crc32c        CRC32C (Castagnoli) of bytes [12, length)
//!   12     4  length        total batch bytes, header included
//!   16     8  base_offset   offset of the first record
//!   24     8  timestamp_ms  append time, milliseconds since the Unix epoch
//!   32     8  term          Raft term that wrote the batch (0 outside Raft)
//!   40     8  raft_index    Raft log index of the batch (0 outside Raft)
//!   48     4  record_count  records in the batch (0 for control batches)
//!   52     4  reserved      0
//!   56     …  body          record_count × ([u32 value length][value bytes]),
//!                           or, for a control batch, the opaque payload
//! ```
//!
//! A batch is valid only if its magic, version, attributes, reserved fields and length are sane
//! **and** its CRC matches **and** its body parses exactly into `record_count` records. Nothing
//! unchecked is returned to a reader. A header that is entirely zero marks the end of the data
//! in a file (files are zero-padded to the block size and pre-allocated with zeros).

use bytes::{BufMut, Bytes, BytesMut};

use crate::types::Offset;

pub const MAGIC: [u8; 4] = *b"CLOG";
pub const VERSION: u8 = 1;
pub const HEADER_BYTES: usize = 56;
/// Bytes of framing per record inside a batch body.
pub const RECORD_OVERHEAD_BYTES: usize = 4;
/// The largest batch the format admits (the configured limit is usually lower).
pub const BATCH_BYTES_MAX: usize = 64 << 20;
pub const ATTR_CONTROL: u8 = 0x01;

const CRC_START: usize = 12;

/// Who wrote a batch and when; carried in its header.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchMeta {
    pub timestamp_ms: i64,
    pub term: u64,
    pub raft_index: u64,
}

/// A decoded, validated batch header.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub attributes: u8,
    pub crc: u32,
    pub length: u32,
    pub base_offset: Offset,
    pub record_count: u32,
    pub meta: BatchMeta,
}

impl Header {
    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }

    /// The offset after the batch's last record.
    pub fn next_offset(&self) -> Offset {
        self.base_offset.plus(self.record_count as u64)
    }
}

/// Why bytes are not a valid batch.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// An all-zero header: the end of the data, not damage.
    #[error("end of data (zero header)")]
    End,
    /// The slice ends before the batch does; `needed` is the full batch length if known.
    #[error("batch truncated: {needed} bytes needed, {have} available")]
    Truncated { needed: usize, have: usize },
    #[error("bad magic")]
    BadMagic,
    #[error("unsupported version {0}")]
    BadVersion(u8),
    #[error("bad attributes or reserved fields")]
    BadFlags,
    #[error("bad batch length {0}")]
    BadLength(u32),
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    BadCrc { stored: u32, computed: u32 },
    #[error("records do not fill the batch body")]
    BadRecords,
}

/// Bytes a batch of these values occupies.
pub fn batch_len<V: AsRef<[u8]>>(values: &[V]) -> usize {
    HEADER_BYTES
        + values
            .iter()
            .map(|v| RECORD_OVERHEAD_BYTES + v.as_ref().len())
            .sum::<usize>()
}

/// Encodes a batch of records starting at `base_offset`.
pub fn encode_batch<V: AsRef<[u8]>>(base_offset: Offset, values: &[V], meta: BatchMeta) -> Bytes {
    let len = batch_len(values);
    let mut buf = BytesMut::with_capacity(len);
    put_header(&mut buf, 0, len, base_offset, values.len() as u32, meta);
    for v in values {
        let v = v.as_ref();
        buf.put_u32_le(v.len() as u32);
        buf.put_slice(v);
    }
    seal(buf)
}

/// Checks that `body` is exactly `count` records (`[u32 len][value]` each) — the body of a
/// batch that arrived from elsewhere (a Raft entry) before it is stored.
pub fn check_records_body(count: u32, body: &[u8]) -> Result<(), FormatError> {
    let mut at = 0usize;
    for _ in 0..count {
        let Some(len) = body.get(at..at + RECORD_OVERHEAD_BYTES) else {
            return Err(FormatError::BadRecords);
        };
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        at = at
            .checked_add(RECORD_OVERHEAD_BYTES + len)
            .filter(|&end| end <= body.len())
            .ok_or(FormatError::BadRecords)?;
    }
    if at != body.len() {
        return Err(FormatError::BadRecords);
    }
    Ok(())
}

/// Encodes a batch from an already encoded records body (see [`check_records_body`], which
/// the caller must have run).
pub fn encode_records_body(base_offset: Offset, count: u32, body: &[u8], meta: BatchMeta) -> Bytes {
    let len = HEADER_BYTES + body.len();
    let mut buf = BytesMut::with_capacity(len);
    put_header(&mut buf, 0, len, base_offset, count, meta);
    buf.put_slice(body);
    seal(buf)
}

/// Seals a batch around a records body that was built with [`HEADER_BYTES`] of room in front
/// of it (`buf` = room + body): the header is written into the room and the CRC computed, so
/// the body is never copied. See [`check_records_body`], which the caller must have run.
pub fn encode_in_place(
    mut buf: BytesMut,
    base_offset: Offset,
    count: u32,
    meta: BatchMeta,
) -> Bytes {
    assert!(buf.len() >= HEADER_BYTES, "no room for a header");
    let len = buf.len();
    let body = buf.split_off(HEADER_BYTES);
    buf.clear();
    put_header(&mut buf, 0, len, base_offset, count, meta);
    // Still one allocation: the header went into the room, so this is O(1).
    buf.unsplit(body);
    seal(buf)
}

/// Encodes a control batch (no records) carrying an opaque payload, e.g. a Raft membership
/// entry. It occupies no offset: `base_offset` is the offset of the next record.
pub fn encode_control(base_offset: Offset, payload: &[u8], meta: BatchMeta) -> Bytes {
    let len = HEADER_BYTES + payload.len();
    let mut buf = BytesMut::with_capacity(len);
    put_header(&mut buf, ATTR_CONTROL, len, base_offset, 0, meta);
    buf.put_slice(payload);
    seal(buf)
}

fn put_header(
    buf: &mut BytesMut,
    attributes: u8,
    len: usize,
    base_offset: Offset,
    record_count: u32,
    meta: BatchMeta,
) {
    assert!(
        len <= BATCH_BYTES_MAX,
        "batch of {len} bytes exceeds the format limit"
    );
    buf.put_slice(&MAGIC);
    buf.put_u8(VERSION);
    buf.put_u8(attributes);
    buf.put_u16_le(0);
    buf.put_u32_le(0); // crc, filled by seal()
    buf.put_u32_le(len as u32);
    buf.put_u64_le(base_offset.get());
    buf.put_i64_le(meta.timestamp_ms);
    buf.put_u64_le(meta.term);
    buf.put_u64_le(meta.raft_index);
    buf.put_u32_le(record_count);
    buf.put_u32_le(0);
    debug_assert_eq!(buf.len(), HEADER_BYTES);
}

fn seal(mut buf: BytesMut) -> Bytes {
    let crc = crc32c::crc32c(&buf[CRC_START..]);
    buf[8..12].copy_from_slice(&crc.to_le_bytes());
    buf.freeze()
}

/// Decodes and sanity-checks a header (not the CRC). `buf` starts at the batch.
pub fn decode_header(buf: &[u8]) -> Result<Header, FormatError> {
    if buf.len() < HEADER_BYTES {
        if buf.iter().all(|&b| b == 0) {
            return Err(FormatError::End);
        }
        return Err(FormatError::Truncated {
            needed: HEADER_BYTES,
            have: buf.len(),
        });
    }
    let h = &buf[..HEADER_BYTES];
    if h[..4] != MAGIC {
        if h.iter().all(|&b| b == 0) {
            return Err(FormatError::End);
        }
        return Err(FormatError::BadMagic);
    }
    if h[4] != VERSION {
        return Err(FormatError::BadVersion(h[4]));
    }
    let attributes = h[5];
    if attributes & !ATTR_CONTROL != 0 || u16_at(h, 6) != 0 || u32_at(h, 52) != 0 {
        return Err(FormatError::BadFlags);
    }
    let length = u32_at(h, 12);
    if (length as usize) < HEADER_BYTES || length as usize > BATCH_BYTES_MAX {
        return Err(FormatError::BadLength(length));
    }
    let record_count = u32_at(h, 48);
    if attributes & ATTR_CONTROL != 0 && record_count != 0 {
        return Err(FormatError::BadRecords);
    }
    let min_body = record_count as usize * RECORD_OVERHEAD_BYTES;
    if (length as usize) < HEADER_BYTES + min_body {
        return Err(FormatError::BadLength(length));
    }
    Ok(Header {
        attributes,
        crc: u32_at(h, 8),
        length,
        base_offset: Offset(u64_at(h, 16)),
        record_count,
        meta: BatchMeta {
            timestamp_ms: u64_at(h, 24) as i64,
            term: u64_at(h, 32),
            raft_index: u64_at(h, 40),
        },
    })
}

/// Validates the batch at the start of `buf` completely (header, CRC, record framing) and
/// returns its header. `buf` may extend past the batch.
pub fn validate_batch(buf: &[u8]) -> Result<Header, FormatError> {
    let header = decode_header(buf)?;
    let len = header.length as usize;
    if buf.len() < len {
        return Err(FormatError::Truncated {
            needed: len,
            have: buf.len(),
        });
    }
    let computed = crc32c::crc32c(&buf[CRC_START..len]);
    if computed != header.crc {
        return Err(FormatError::BadCrc {
            stored: header.crc,
            computed,
        });
    }
    if !header.is_control() {
        let mut pos = HEADER_BYTES;
        for _ in 0..header.record_count {
            if pos + RECORD_OVERHEAD_BYTES > len {
                return Err(FormatError::BadRecords);
            }
            let value_len = u32_at(buf, pos) as usize;
            pos += RECORD_OVERHEAD_BYTES;
            if value_len > len - pos {
                return Err(FormatError::BadRecords);
            }
            pos += value_len;
        }
        if pos != len {
            return Err(FormatError::BadRecords);
        }
    }
    Ok(header)
}

/// A validated batch sharing its bytes (`Bytes`), so records are handed out without copies.
#[derive(Clone, Debug)]
pub struct Batch {
    header: Header,
    bytes: Bytes,
}

impl Batch {
    /// Validates the batch at the start of `bytes`; the returned batch holds exactly its bytes.
    pub fn parse(bytes: Bytes) -> Result<Batch, FormatError> {
        let header = validate_batch(&bytes)?;
        let bytes = bytes.slice(..header.length as usize);
        Ok(Batch { header, bytes })
    }

    /// Wraps a batch this process encoded itself (the appender's queue): the header is decoded
    /// but the CRC is not recomputed, which keeps the append path to one CRC per batch.
    pub(crate) fn from_encoded(bytes: Bytes) -> Batch {
        debug_assert!(validate_batch(&bytes).is_ok());
        let header = decode_header(&bytes).expect("an encoded batch has a valid header");
        assert_eq!(header.length as usize, bytes.len(), "encoded batch length");
        Batch { header, bytes }
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn base_offset(&self) -> Offset {
        self.header.base_offset
    }

    pub fn next_offset(&self) -> Offset {
        self.header.next_offset()
    }

    pub fn record_count(&self) -> u32 {
        self.header.record_count
    }

    pub fn is_control(&self) -> bool {
        self.header.is_control()
    }

    /// The whole encoded batch.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The opaque payload of a control batch (empty for record batches).
    pub fn control_payload(&self) -> Bytes {
        if self.is_control() {
            self.bytes.slice(HEADER_BYTES..)
        } else {
            Bytes::new()
        }
    }

    /// The bytes after the header: the records of a data batch, the payload of a control one.
    pub fn body(&self) -> Bytes {
        self.bytes.slice(HEADER_BYTES..)
    }

    /// The batch's records with their offsets.
    pub fn records(&self) -> Records {
        Records {
            bytes: self.bytes.clone(),
            pos: HEADER_BYTES,
            next: self.header.base_offset,
            remaining: if self.is_control() {
                0
            } else {
                self.header.record_count
            },
        }
    }
}

/// Iterator over a validated batch's records.
pub struct Records {
    bytes: Bytes,
    pos: usize,
    next: Offset,
    remaining: u32,
}

impl Iterator for Records {
    type Item = (Offset, Bytes);

    fn next(&mut self) -> Option<(Offset, Bytes)> {
        if self.remaining == 0 {
            return None;
        }
        // The batch was validated, so the framing is known to be in bounds.
        let len = u32_at(&self.bytes, self.pos) as usize;
        let start = self.pos + RECORD_OVERHEAD_BYTES;
        let value = self.bytes.slice(start..start + len);
        self.pos = start + len;
        let offset = self.next;
        self.next = self.next.plus(1);
        self.remaining -= 1;
        Some((offset, value))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining as usize, Some(self.remaining as usize))
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> BatchMeta {
        BatchMeta {
            timestamp_ms: 1_700_000_000_000,
            term: 3,
            raft_index: 42,
        }
    }

    #[test]
    fn batch_round_trips_records_and_meta() {
        let values: Vec<&[u8]> = vec![b"hello", b"", b"world!"];
        let bytes = encode_batch(Offset(7), &values, meta());
        assert_eq!(bytes.len(), batch_len(&values));
        let batch = Batch::parse(bytes).unwrap();
        assert_eq!(batch.base_offset(), Offset(7));
        assert_eq!(batch.next_offset(), Offset(10));
        assert_eq!(batch.header().meta, meta());
        let got: Vec<(Offset, Bytes)> = batch.records().collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], (Offset(7), Bytes::from_static(b"hello")));
        assert_eq!(got[1], (Offset(8), Bytes::new()));
        assert_eq!(got[2], (Offset(9), Bytes::from_static(b"world!")));
    }

    #[test]
    fn a_batch_sealed_in_place_is_the_same_batch_and_its_body_is_not_moved() {
        let body = [&3u32.to_le_bytes()[..], b"abc", &0u32.to_le_bytes()].concat();
        let mut buf = BytesMut::zeroed(HEADER_BYTES);
        buf.extend_from_slice(&body);
        let body_at = buf[HEADER_BYTES..].as_ptr();
        let sealed = encode_in_place(buf, Offset(11), 2, meta());
        assert_eq!(sealed, encode_records_body(Offset(11), 2, &body, meta()));
        assert_eq!(
            sealed[HEADER_BYTES..].as_ptr(),
            body_at,
            "the body was copied"
        );
        let batch = Batch::parse(sealed).unwrap();
        assert_eq!((batch.base_offset(), batch.record_count()), (Offset(11), 2));
    }

    #[test]
    fn control_batch_takes_no_offset_and_keeps_payload() {
        let bytes = encode_control(Offset(5), b"membership", meta());
        let batch = Batch::parse(bytes).unwrap();
        assert!(batch.is_control());
        assert_eq!(batch.next_offset(), Offset(5));
        assert_eq!(batch.records().count(), 0);
        assert_eq!(&batch.control_payload()[..], b"membership");
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let bytes = encode_batch(Offset(1), &[b"abc".as_slice(), b"defgh"], meta());
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.to_vec();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                validate_batch(&damaged).is_err(),
                "flip of bit {bit} went undetected"
            );
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        let bytes = encode_batch(Offset(1), &[b"abc".as_slice(), b"defgh"], meta());
        for len in 0..bytes.len() {
            let err = validate_batch(&bytes[..len]).unwrap_err();
            assert!(
                matches!(err, FormatError::Truncated { .. } | FormatError::End),
                "cut at {len}: {err:?}"
            );
        }
    }

    #[test]
    fn zero_header_is_end_of_data() {
        assert_eq!(decode_header(&[0u8; 100]), Err(FormatError::End));
        assert_eq!(decode_header(&[0u8; 10]), Err(FormatError::End));
    }

    #[test]
    fn record_framing_that_overruns_the_batch_is_rejected_even_with_a_valid_crc() {
        let mut bytes = encode_batch(Offset(0), &[b"abcd".as_slice()], meta()).to_vec();
        // Claim a longer value, then re-seal so only the framing check can catch it.
        bytes[HEADER_BYTES..HEADER_BYTES + 4].copy_from_slice(&100u32.to_le_bytes());
        let crc = crc32c::crc32c(&bytes[CRC_START..]);
        bytes[8..12].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(validate_batch(&bytes), Err(FormatError::BadRecords));
    }

    #[test]
    fn random_garbage_never_parses_as_a_batch() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..10_000 {
            let len = rng.random_range(0..300);
            let mut buf: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if rng.random_bool(0.5) && buf.len() >= 4 {
                buf[..4].copy_from_slice(&MAGIC);
            }
            // Must not panic; a random CRC match is astronomically unlikely.
            assert!(validate_batch(&buf).is_err());
        }
    }
}
