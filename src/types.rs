//! Typed identifiers that cross module boundaries, so an offset can never be passed where a
//! position or a Raft index is expected.

use std::fmt;

/// The logical offset of one record in a partition. Offsets are dense: every record gets the
/// next one, and control batches (Raft membership or blank entries) take none.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Offset(pub u64);

impl Offset {
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The offset `n` records after this one.
    pub fn plus(self, n: u64) -> Offset {
        Offset(self.0.checked_add(n).expect("offset overflow"))
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A partition number within a node.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Partition(pub u32);

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
