//! The segment index: a sparse map from offset (and Raft index) to a batch's byte position in
//! the store file.
//!
//! The index is an accelerator, never the truth: it is validated against the store on open and
//! rebuilt from the store when it disagrees. That lets the appender skip `fdatasync` on it and
//! write it only in whole blocks: an entry is added at the first batch of a segment and then
//! whenever at least `index_interval_bytes` of store were written since the last entry, and a
//! 4 KiB block goes to disk only once it is full (or when the segment is sealed or closed).
//!
//! File format, version 1: a sequence of 4096-byte blocks, each self-checking:
//!
//! ```text
//! byte  size  field
//!    0  4080  up to 255 entries of 16 bytes:
//!               u32 offset relative to the segment's base offset
//!               u32 byte position of the batch in the store file
//!               u64 Raft index of the batch (0 outside Raft)
//! 4080     4  magic b"CLIX"
//! 4084     4  entry count in this block (1..=255; only the last block may be partial)
//! 4088     4  block number within the file
//! 4092     4  CRC32C of bytes [0, 4092)
//! ```
//!
//! Entries are ordered: offsets non-decreasing (a control batch shares its offset with the
//! next record batch), positions strictly increasing.

use crate::io::BLOCK_BYTES;
use crate::types::Offset;

pub const INDEX_BLOCK_BYTES: usize = BLOCK_BYTES as usize;
pub const ENTRY_BYTES: usize = 16;
pub const ENTRIES_PER_BLOCK: usize = 255;
const TRAILER_AT: usize = ENTRIES_PER_BLOCK * ENTRY_BYTES;
const MAGIC: [u8; 4] = *b"CLIX";

/// Where one batch starts.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub offset: Offset,
    pub position: u64,
    pub raft_index: u64,
}

/// The in-memory index of one segment.
#[derive(Clone, Debug)]
pub struct Index {
    base: Offset,
    entries: Vec<IndexEntry>,
    /// Blocks on disk that are full and match `entries`; later blocks are rewritten.
    blocks_persisted: usize,
}

impl Index {
    pub fn new(base: Offset) -> Index {
        Index {
            base,
            entries: Vec::new(),
            blocks_persisted: 0,
        }
    }

    /// Decodes an index file's bytes, keeping the longest prefix of valid blocks whose entries
    /// are ordered. Returns the index and whether anything after that prefix was dropped.
    pub fn decode(base: Offset, bytes: &[u8]) -> (Index, bool) {
        let mut index = Index::new(base);
        let mut damaged = false;
        for (block_no, block) in bytes.chunks(INDEX_BLOCK_BYTES).enumerate() {
            if block.len() < INDEX_BLOCK_BYTES || block.iter().all(|&b| b == 0) {
                damaged |= block.iter().any(|&b| b != 0);
                break;
            }
            match decode_block(base, block, block_no) {
                Some(entries) => {
                    let ordered = entries.iter().all(|e| index.accepts(e));
                    if !ordered {
                        damaged = true;
                        break;
                    }
                    let full = entries.len() == ENTRIES_PER_BLOCK;
                    index.entries.extend(entries);
                    if full && index.blocks_persisted == block_no {
                        index.blocks_persisted += 1;
                    } else {
                        // A partial block must be the last one.
                        let rest = &bytes[(block_no + 1) * INDEX_BLOCK_BYTES..];
                        damaged |= rest.iter().any(|&b| b != 0);
                        break;
                    }
                }
                None => {
                    damaged = true;
                    break;
                }
            }
        }
        (index, damaged)
    }

    fn accepts(&self, e: &IndexEntry) -> bool {
        if e.offset < self.base {
            return false;
        }
        match self.entries.last() {
            None => true,
            Some(last) => e.offset >= last.offset && e.position > last.position,
        }
    }

    pub fn base(&self) -> Offset {
        self.base
    }

    pub fn entries(&self) -> &[IndexEntry] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn last(&self) -> Option<&IndexEntry> {
        self.entries.last()
    }

    /// Bytes the index file holds once every entry is written.
    pub fn file_bytes(&self) -> u64 {
        (self.entries.len().div_ceil(ENTRIES_PER_BLOCK) * INDEX_BLOCK_BYTES) as u64
    }

    /// Appends an entry; entries must stay ordered.
    pub fn push(&mut self, e: IndexEntry) {
        assert!(
            self.accepts(&e),
            "index entry {e:?} out of order after {:?}",
            self.entries.last()
        );
        self.entries.push(e);
    }

    /// The entry of the last batch that starts at or before `offset`: reading forward from it
    /// finds the batch holding `offset`.
    pub fn lookup(&self, offset: Offset) -> Option<&IndexEntry> {
        let n = self.entries.partition_point(|e| e.offset <= offset);
        n.checked_sub(1).map(|i| &self.entries[i])
    }

    /// The entry of the last batch whose Raft index is at or before `raft_index`.
    pub fn lookup_raft_index(&self, raft_index: u64) -> Option<&IndexEntry> {
        let n = self.entries.partition_point(|e| e.raft_index <= raft_index);
        n.checked_sub(1).map(|i| &self.entries[i])
    }

    /// Drops every entry at or after byte `position` of the store.
    pub fn truncate_at_position(&mut self, position: u64) {
        let keep = self.entries.partition_point(|e| e.position < position);
        self.entries.truncate(keep);
        self.blocks_persisted = self.blocks_persisted.min(keep / ENTRIES_PER_BLOCK);
    }

    /// Blocks not yet on disk that are full now: `(block number, encoded block)`. The caller
    /// writes them and then calls [`Index::mark_persisted`].
    pub fn full_blocks_to_write(&self) -> Vec<(usize, Vec<u8>)> {
        let full = self.entries.len() / ENTRIES_PER_BLOCK;
        (self.blocks_persisted..full)
            .map(|b| (b, self.encode_block(b)))
            .collect()
    }

    /// The partially filled last block, if any (written at seal and close).
    pub fn partial_block(&self) -> Option<(usize, Vec<u8>)> {
        let full = self.entries.len() / ENTRIES_PER_BLOCK;
        if self.entries.len().is_multiple_of(ENTRIES_PER_BLOCK) {
            return None;
        }
        Some((full, self.encode_block(full)))
    }

    /// Every block, full and partial, for writing the whole index at once.
    pub fn encode_all_blocks(&self) -> Vec<Vec<u8>> {
        let blocks = self.entries.len().div_ceil(ENTRIES_PER_BLOCK);
        (0..blocks).map(|b| self.encode_block(b)).collect()
    }

    pub fn blocks_persisted(&self) -> usize {
        self.blocks_persisted
    }

    /// Records that the first `blocks` full blocks are on disk.
    pub fn mark_persisted(&mut self, blocks: usize) {
        assert!(blocks * ENTRIES_PER_BLOCK <= self.entries.len());
        self.blocks_persisted = self.blocks_persisted.max(blocks);
    }

    fn encode_block(&self, block_no: usize) -> Vec<u8> {
        let start = block_no * ENTRIES_PER_BLOCK;
        let end = (start + ENTRIES_PER_BLOCK).min(self.entries.len());
        assert!(start < end, "encoding empty index block {block_no}");
        let mut block = vec![0u8; INDEX_BLOCK_BYTES];
        for (i, e) in self.entries[start..end].iter().enumerate() {
            let at = i * ENTRY_BYTES;
            let rel = e.offset.get() - self.base.get();
            let rel = u32::try_from(rel).expect("relative offset fits in u32");
            let pos = u32::try_from(e.position).expect("store position fits in u32");
            block[at..at + 4].copy_from_slice(&rel.to_le_bytes());
            block[at + 4..at + 8].copy_from_slice(&pos.to_le_bytes());
            block[at + 8..at + 16].copy_from_slice(&e.raft_index.to_le_bytes());
        }
        block[TRAILER_AT..TRAILER_AT + 4].copy_from_slice(&MAGIC);
        block[TRAILER_AT + 4..TRAILER_AT + 8]
            .copy_from_slice(&((end - start) as u32).to_le_bytes());
        block[TRAILER_AT + 8..TRAILER_AT + 12].copy_from_slice(&(block_no as u32).to_le_bytes());
        let crc = crc32c::crc32c(&block[..INDEX_BLOCK_BYTES - 4]);
        block[INDEX_BLOCK_BYTES - 4..].copy_from_slice(&crc.to_le_bytes());
        block
    }
}

/// The last entry of one encoded block (block number `block_no`), if the block is valid: the
/// cheap check of a sealed segment reads only its index's last block.
pub fn last_entry_of_block(base: Offset, block: &[u8], block_no: usize) -> Option<IndexEntry> {
    if block.len() != INDEX_BLOCK_BYTES {
        return None;
    }
    decode_block(base, block, block_no).and_then(|entries| entries.last().copied())
}

fn decode_block(base: Offset, block: &[u8], block_no: usize) -> Option<Vec<IndexEntry>> {
    let u32_at = |at: usize| u32::from_le_bytes(block[at..at + 4].try_into().expect("4 bytes"));
    if block[TRAILER_AT..TRAILER_AT + 4] != MAGIC {
        return None;
    }
    let crc = u32_at(INDEX_BLOCK_BYTES - 4);
    if crc32c::crc32c(&block[..INDEX_BLOCK_BYTES - 4]) != crc {
        return None;
    }
    let count = u32_at(TRAILER_AT + 4) as usize;
    if count == 0 || count > ENTRIES_PER_BLOCK || u32_at(TRAILER_AT + 8) as usize != block_no {
        return None;
    }
    let entries = (0..count)
        .map(|i| {
            let at = i * ENTRY_BYTES;
            IndexEntry {
                offset: base.plus(u32_at(at) as u64),
                position: u32_at(at + 4) as u64,
                raft_index: u64::from_le_bytes(block[at + 8..at + 16].try_into().expect("8")),
            }
        })
        .collect();
    Some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(offset: u64, position: u64) -> IndexEntry {
        IndexEntry {
            offset: Offset(offset),
            position,
            raft_index: offset + 1,
        }
    }

    fn encode_all(index: &Index) -> Vec<u8> {
        let mut bytes = Vec::new();
        for (_, block) in index.full_blocks_to_write() {
            bytes.extend(block);
        }
        if let Some((_, block)) = index.partial_block() {
            bytes.extend(block);
        }
        bytes
    }

    #[test]
    fn entries_round_trip_through_blocks() {
        let mut index = Index::new(Offset(1000));
        for i in 0..600 {
            index.push(entry(1000 + i * 3, i * 4096));
        }
        let bytes = encode_all(&index);
        assert_eq!(bytes.len(), 3 * INDEX_BLOCK_BYTES);
        let (decoded, damaged) = Index::decode(Offset(1000), &bytes);
        assert!(!damaged);
        assert_eq!(decoded.entries(), index.entries());
        assert_eq!(
            decoded.blocks_persisted(),
            2,
            "the partial block is rewritten later"
        );
    }

    #[test]
    fn lookup_finds_the_batch_at_or_before_an_offset() {
        let mut index = Index::new(Offset(10));
        index.push(entry(10, 0));
        index.push(entry(20, 5000));
        index.push(entry(20, 5100)); // a control batch before the record batch at 20
        index.push(entry(35, 9000));
        assert_eq!(index.lookup(Offset(9)), None);
        assert_eq!(index.lookup(Offset(10)).unwrap().position, 0);
        assert_eq!(index.lookup(Offset(19)).unwrap().position, 0);
        assert_eq!(index.lookup(Offset(20)).unwrap().position, 5100);
        assert_eq!(index.lookup(Offset(1000)).unwrap().position, 9000);
    }

    #[test]
    fn end_of_index_and_damage_keep_the_valid_prefix() {
        let mut index = Index::new(Offset(0));
        for i in 0..300 {
            index.push(entry(i, i * 100));
        }
        let mut bytes = encode_all(&index);
        // Trailing zeros (pre-allocated space) are the end of the index, not damage.
        bytes.extend(vec![0u8; INDEX_BLOCK_BYTES]);
        let (decoded, damaged) = Index::decode(Offset(0), &bytes);
        assert!(!damaged);
        assert_eq!(decoded.len(), 300);

        // A flipped bit in the second block drops that block only.
        bytes[INDEX_BLOCK_BYTES + 17] ^= 0x10;
        let (decoded, damaged) = Index::decode(Offset(0), &bytes);
        assert!(damaged);
        assert_eq!(decoded.len(), ENTRIES_PER_BLOCK);
    }

    #[test]
    fn truncating_by_position_forgets_persisted_blocks_past_the_cut() {
        let mut index = Index::new(Offset(0));
        for i in 0..600 {
            index.push(entry(i, i * 10));
        }
        index.mark_persisted(2);
        index.truncate_at_position(300 * 10);
        assert_eq!(index.len(), 300);
        assert_eq!(index.blocks_persisted(), 1);
        assert_eq!(index.full_blocks_to_write().len(), 0);
    }
}
