//! Correctness while loading: what consumers check about every record they receive.
//!
//! Each consumer keeps one [`PartitionVerifier`] for the partition it reads. While the run
//! goes, it checks what can be judged on the spot:
//! - offsets are dense: every record's offset is the previous one + 1 (the node promises
//!   dense offsets, so a skipped offset is a lost record whoever wrote it);
//! - every record is an intact loadgen record (magic, length, CRC32C: see `record.rs`);
//! - records of this run come from a producer that writes to this partition.
//!
//! Whether a missing or repeated *sequence number* is a violation depends on whether the
//! producer's batch was acknowledged, and an acknowledgement can arrive after the consumer
//! already saw the records (or never, when the batch failed). So, per producer, the verifier
//! only *records* the irregularities — holes (sequences skipped), refills (a skipped sequence
//! arriving later: reordered), repeats (a sequence seen twice) — and [`final_check`] judges
//! them at the end against the producer's [`Acked`] set:
//! - a hole is a violation if it holds an acknowledged record (lost);
//! - a refill or repeat is a violation if the record was acknowledged (reordered or duplicated
//!   acknowledged records); a failed batch may or may not have been applied, so it may show up
//!   anywhere, or not at all;
//! - after the last record seen, acknowledged records never delivered are lost (or the
//!   consumer ran out of drain time: the message says which).
//!
//! The consumer starts before any producer of this run sends (at the partition's end, or
//! earlier), so every record of this run lies after its start offset: sequence 0 is expected
//! first, and a consumer that starts at offset 0 simply sees older runs' records first, which
//! it checks for integrity only (`other_runs`).

use std::collections::HashMap;

use crate::record::{self, Header, RecordError};

/// Ranges one [`Ranges`] holds before it gives up precise tracking.
pub const RANGES_MAX: usize = 1 << 20;
/// Violation messages kept for the report (all are counted).
pub const SAMPLES_MAX: usize = 20;

/// What went wrong, by kind (the JSON's `violations_by_kind` keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ViolationKind {
    /// An offset was skipped.
    OffsetGap,
    /// An offset came again, or went backwards.
    OffsetRegression,
    /// A record failed its checksum, length or magic check.
    Corrupt,
    /// A record of this run from a producer that does not write to this partition.
    WrongPartition,
    /// Acknowledged records skipped over (a hole in a producer's sequence).
    MissingAcked,
    /// Acknowledged records never delivered after the last one seen.
    Undelivered,
    /// An acknowledged record delivered after records its producer sent later.
    Reordered,
    /// An acknowledged record delivered twice.
    Duplicate,
    /// A sequence number its producer never sent.
    UnknownSequence,
    /// Too many irregularities to track precisely: verification is incomplete.
    Untracked,
}

impl ViolationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ViolationKind::OffsetGap => "offset_gap",
            ViolationKind::OffsetRegression => "offset_regression",
            ViolationKind::Corrupt => "corrupt",
            ViolationKind::WrongPartition => "wrong_partition",
            ViolationKind::MissingAcked => "missing_acked",
            ViolationKind::Undelivered => "undelivered",
            ViolationKind::Reordered => "reordered",
            ViolationKind::Duplicate => "duplicate",
            ViolationKind::UnknownSequence => "unknown_sequence",
            ViolationKind::Untracked => "untracked",
        }
    }
}

/// Violations found: counted by kind, the first few kept as messages.
#[derive(Debug, Default, Clone)]
pub struct Violations {
    pub by_kind: HashMap<ViolationKind, u64>,
    pub samples: Vec<String>,
}

impl Violations {
    pub fn add(&mut self, kind: ViolationKind, message: String) {
        *self.by_kind.entry(kind).or_insert(0) += 1;
        if self.samples.len() < SAMPLES_MAX {
            self.samples.push(format!("{}: {message}", kind.as_str()));
        }
    }

    pub fn total(&self) -> u64 {
        self.by_kind.values().sum()
    }

    pub fn merge(&mut self, other: Violations) {
        for (kind, n) in other.by_kind {
            *self.by_kind.entry(kind).or_insert(0) += n;
        }
        for s in other.samples {
            if self.samples.len() < SAMPLES_MAX {
                self.samples.push(s);
            }
        }
    }
}

/// A set of sequence numbers as sorted, disjoint, non-adjacent inclusive ranges. Irregular
/// sequences are rare in a healthy run, so this stays tiny; past [`RANGES_MAX`] ranges it
/// stops adding and says so (`overflowed`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Ranges {
    ranges: Vec<(u64, u64)>,
    overflowed: bool,
}

impl Ranges {
    /// Adds `lo..=hi`, merging with neighbours.
    pub fn insert(&mut self, lo: u64, hi: u64) {
        assert!(lo <= hi, "empty range {lo}..={hi}");
        // The common case: appending at or after the end.
        if let Some(last) = self.ranges.last_mut()
            && lo >= last.0
        {
            if lo <= last.1.saturating_add(1) {
                last.1 = last.1.max(hi);
                return;
            }
        } else if !self.ranges.is_empty() {
            // Out of order: rebuild around the new range (rare).
            let mut merged = Vec::with_capacity(self.ranges.len() + 1);
            let (mut lo, mut hi) = (lo, hi);
            for &(a, b) in &self.ranges {
                if b.saturating_add(1) < lo || hi.saturating_add(1) < a {
                    merged.push((a, b));
                } else {
                    lo = lo.min(a);
                    hi = hi.max(b);
                }
            }
            merged.push((lo, hi));
            merged.sort_unstable();
            self.ranges = merged;
            return;
        }
        if self.ranges.len() >= RANGES_MAX {
            self.overflowed = true;
            return;
        }
        self.ranges.push((lo, hi));
    }

    /// Removes `seq`; returns whether it was there.
    pub fn remove(&mut self, seq: u64) -> bool {
        let i = self.ranges.partition_point(|&(_, hi)| hi < seq);
        let Some(&(lo, hi)) = self.ranges.get(i) else {
            return false;
        };
        if seq < lo {
            return false;
        }
        match (seq == lo, seq == hi) {
            (true, true) => {
                self.ranges.remove(i);
            }
            (true, false) => self.ranges[i].0 = seq + 1,
            (false, true) => self.ranges[i].1 = seq - 1,
            (false, false) => {
                self.ranges[i].1 = seq - 1;
                self.ranges.insert(i + 1, (seq + 1, hi));
            }
        }
        true
    }

    /// How many members lie in `lo..=hi`.
    pub fn count_in(&self, lo: u64, hi: u64) -> u64 {
        let start = self.ranges.partition_point(|&(_, b)| b < lo);
        let mut n = 0;
        for &(a, b) in &self.ranges[start..] {
            if a > hi {
                break;
            }
            n += b.min(hi) - a.max(lo) + 1;
        }
        n
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().copied()
    }

    pub fn overflowed(&self) -> bool {
        self.overflowed
    }
}

/// What one producer's acknowledgements say: it sent sequences `0..sent`, and those in
/// `failed` were not acknowledged (an error or a timeout: maybe applied, maybe not).
#[derive(Debug, Clone, Default)]
pub struct Acked {
    pub sent: u64,
    pub failed: Ranges,
}

impl Acked {
    /// Acknowledged sequences in `lo..=hi`.
    pub fn count_in(&self, lo: u64, hi: u64) -> u64 {
        if self.sent == 0 || lo >= self.sent {
            return 0;
        }
        let hi = hi.min(self.sent - 1);
        (hi - lo + 1) - self.failed.count_in(lo, hi)
    }
}

/// One producer's record stream as one consumer saw it.
#[derive(Debug, Clone, Default)]
pub struct Track {
    /// The sequence expected next: one past the highest seen.
    pub next_seq: u64,
    /// Sequences skipped and not (yet) seen.
    pub holes: Ranges,
    /// Sequences that arrived after higher ones (filling a hole).
    pub reordered: Ranges,
    /// Sequences seen more than once.
    pub repeated: Ranges,
    pub seen: u64,
}

/// The result of one consumer's verification, for [`final_check`].
#[derive(Debug, Clone)]
pub struct VerifierOutcome {
    pub label: String,
    pub tracks: HashMap<u32, Track>,
}

/// A record that passed the checks and belongs to this run.
#[derive(Debug, Clone, Copy)]
pub struct Ours {
    pub header: Header,
}

/// Checks the records of one partition as one consumer receives them (see the module doc).
pub struct PartitionVerifier {
    run_id: u64,
    label: String,
    next_offset: u64,
    tracks: HashMap<u32, Track>,
    /// Intact records written by other runs (or other loadgen processes).
    pub other_runs: u64,
}

impl PartitionVerifier {
    /// A verifier for a consumer starting at `start_offset`, for a partition that this run's
    /// `producers` write to. `label` names the partition in messages.
    pub fn new(run_id: u64, label: String, start_offset: u64, producers: &[u32]) -> Self {
        PartitionVerifier {
            run_id,
            label,
            next_offset: start_offset,
            tracks: producers.iter().map(|&p| (p, Track::default())).collect(),
            other_runs: 0,
        }
    }

    /// The offset the next record should have.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// Checks one record; returns its header when it is an intact record of this run.
    pub fn observe(&mut self, offset: u64, value: &[u8], out: &mut Violations) -> Option<Ours> {
        let label = &self.label;
        if offset != self.next_offset {
            if offset > self.next_offset {
                let skipped = if offset - self.next_offset == 1 {
                    format!("offset {} skipped", self.next_offset)
                } else {
                    format!("offsets {}..={} skipped", self.next_offset, offset - 1)
                };
                out.add(
                    ViolationKind::OffsetGap,
                    format!("{label}: {skipped} (the next record has offset {offset})"),
                );
            } else {
                out.add(
                    ViolationKind::OffsetRegression,
                    format!(
                        "{label}: offset {offset} delivered after offset {}",
                        self.next_offset - 1
                    ),
                );
            }
        }
        self.next_offset = self.next_offset.max(offset + 1);
        let header = match record::decode(value) {
            Ok(h) => h,
            Err(e) => {
                out.add(ViolationKind::Corrupt, corrupt_message(label, offset, &e));
                return None;
            }
        };
        if header.run_id != self.run_id {
            self.other_runs += 1;
            return None;
        }
        let Some(track) = self.tracks.get_mut(&header.producer) else {
            out.add(
                ViolationKind::WrongPartition,
                format!(
                    "{label}: offset {offset} holds producer {}'s sequence {}, but that \
                     producer writes to another partition",
                    header.producer, header.seq
                ),
            );
            return None;
        };
        track.seen += 1;
        let seq = header.seq;
        if seq >= track.next_seq {
            if seq > track.next_seq {
                track.holes.insert(track.next_seq, seq - 1);
            }
            track.next_seq = seq + 1;
        } else if track.holes.remove(seq) {
            track.reordered.insert(seq, seq);
        } else {
            track.repeated.insert(seq, seq);
        }
        Some(Ours { header })
    }

    pub fn into_outcome(self) -> VerifierOutcome {
        VerifierOutcome {
            label: self.label,
            tracks: self.tracks,
        }
    }
}

fn corrupt_message(label: &str, offset: u64, e: &RecordError) -> String {
    format!("{label}: offset {offset}: {e}")
}

/// Judges one consumer's irregularities against what the producers had acknowledged (see the
/// module doc). `drained` says whether the consumer read up to the end of every acknowledged
/// record before it stopped.
pub fn final_check(
    outcome: &VerifierOutcome,
    acked: &HashMap<u32, Acked>,
    drained: bool,
    out: &mut Violations,
) {
    let label = &outcome.label;
    let mut producers: Vec<_> = outcome.tracks.keys().copied().collect();
    producers.sort_unstable();
    for producer in producers {
        let track = &outcome.tracks[&producer];
        let empty = Acked::default();
        let acks = acked.get(&producer).unwrap_or(&empty);
        if track.holes.overflowed()
            || track.reordered.overflowed()
            || track.repeated.overflowed()
            || acks.failed.overflowed()
        {
            out.add(
                ViolationKind::Untracked,
                format!(
                    "{label}: producer {producer}: more than {RANGES_MAX} irregular ranges; \
                     verification is incomplete"
                ),
            );
        }
        for (lo, hi) in track.holes.iter() {
            let n = acks.count_in(lo, hi);
            if n > 0 {
                out.add(
                    ViolationKind::MissingAcked,
                    format!(
                        "{label}: producer {producer}: {n} acknowledged record(s) among \
                         sequences {lo}..={hi} never delivered (later ones were)"
                    ),
                );
            }
        }
        for (lo, hi) in track.reordered.iter() {
            let n = acks.count_in(lo, hi);
            if n > 0 {
                out.add(
                    ViolationKind::Reordered,
                    format!(
                        "{label}: producer {producer}: {n} acknowledged record(s) among \
                         sequences {lo}..={hi} delivered after later ones"
                    ),
                );
            }
        }
        for (lo, hi) in track.repeated.iter() {
            let n = acks.count_in(lo, hi);
            if n > 0 {
                out.add(
                    ViolationKind::Duplicate,
                    format!(
                        "{label}: producer {producer}: {n} acknowledged record(s) among \
                         sequences {lo}..={hi} delivered more than once"
                    ),
                );
            }
        }
        if track.next_seq > acks.sent {
            out.add(
                ViolationKind::UnknownSequence,
                format!(
                    "{label}: producer {producer}: sequence {} delivered, but only {} were sent",
                    track.next_seq - 1,
                    acks.sent
                ),
            );
        }
        if track.next_seq < acks.sent {
            let n = acks.count_in(track.next_seq, acks.sent - 1);
            if n > 0 {
                let why = if drained {
                    "never delivered"
                } else {
                    "not delivered before the drain timeout"
                };
                let after = match track.next_seq {
                    0 => "of its".to_string(),
                    seq => format!("after sequence {} among its", seq - 1),
                };
                out.add(
                    ViolationKind::Undelivered,
                    format!(
                        "{label}: producer {producer}: {n} acknowledged record(s) {after} {} \
                         sent {why}",
                        acks.sent
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    const RUN: u64 = 42;

    fn rec(run_id: u64, producer: u32, seq: u64) -> Vec<u8> {
        let mut out = BytesMut::new();
        let header = Header {
            run_id,
            producer,
            seq,
            sent_ns: 0,
        };
        record::encode(&mut out, &header, 64, &[7u8; 64]);
        out.to_vec()
    }

    /// Feeds `(producer, seq)` records at consecutive offsets from 0; returns the live
    /// violations and the outcome.
    fn feed(records: &[(u32, u64)]) -> (Violations, VerifierOutcome) {
        let mut v = PartitionVerifier::new(RUN, "p0".into(), 0, &[0, 1]);
        let mut out = Violations::default();
        for (offset, &(p, s)) in records.iter().enumerate() {
            v.observe(offset as u64, &rec(RUN, p, s), &mut out);
        }
        (out, v.into_outcome())
    }

    fn acked(sent: u64, failed: &[(u64, u64)]) -> Acked {
        let mut a = Acked {
            sent,
            failed: Ranges::default(),
        };
        for &(lo, hi) in failed {
            a.failed.insert(lo, hi);
        }
        a
    }

    fn judge(outcome: &VerifierOutcome, acks: &[(u32, Acked)]) -> Violations {
        let map = acks.iter().cloned().collect();
        let mut out = Violations::default();
        final_check(outcome, &map, true, &mut out);
        out
    }

    #[test]
    fn an_in_order_stream_of_acknowledged_records_passes() {
        let (live, outcome) = feed(&[(0, 0), (1, 0), (0, 1), (1, 1), (0, 2)]);
        assert_eq!(live.total(), 0);
        let v = judge(&outcome, &[(0, acked(3, &[])), (1, acked(2, &[]))]);
        assert_eq!(v.total(), 0, "{:?}", v.samples);
    }

    #[test]
    fn a_hole_of_failed_records_is_not_a_gap() {
        // Producer 0's batch 2..=3 failed and was not applied.
        let (_, outcome) = feed(&[(0, 0), (0, 1), (0, 4), (0, 5)]);
        let v = judge(&outcome, &[(0, acked(6, &[(2, 3)])), (1, acked(0, &[]))]);
        assert_eq!(v.total(), 0, "{:?}", v.samples);
    }

    #[test]
    fn a_hole_of_acknowledged_records_is_a_violation() {
        let (_, outcome) = feed(&[(0, 0), (0, 1), (0, 4)]);
        let v = judge(&outcome, &[(0, acked(5, &[(2, 2)])), (1, acked(0, &[]))]);
        assert_eq!(v.by_kind.get(&ViolationKind::MissingAcked), Some(&1));
    }

    #[test]
    fn a_failed_batch_that_was_applied_late_is_not_a_violation() {
        // Batch 2..=3 failed (connection lost) but the node applied it after batch 4..=5.
        let (_, outcome) = feed(&[(0, 0), (0, 1), (0, 4), (0, 5), (0, 2), (0, 3)]);
        let v = judge(&outcome, &[(0, acked(6, &[(2, 3)])), (1, acked(0, &[]))]);
        assert_eq!(v.total(), 0, "{:?}", v.samples);
    }

    #[test]
    fn acknowledged_records_out_of_order_are_reordered_not_missing() {
        let (_, outcome) = feed(&[(0, 0), (0, 2), (0, 1)]);
        let v = judge(&outcome, &[(0, acked(3, &[])), (1, acked(0, &[]))]);
        assert_eq!(v.by_kind.get(&ViolationKind::Reordered), Some(&1));
        assert_eq!(v.by_kind.get(&ViolationKind::MissingAcked), None);
    }

    #[test]
    fn an_acknowledged_record_twice_is_a_duplicate() {
        let (_, outcome) = feed(&[(0, 0), (0, 1), (0, 1)]);
        let v = judge(&outcome, &[(0, acked(2, &[])), (1, acked(0, &[]))]);
        assert_eq!(v.by_kind.get(&ViolationKind::Duplicate), Some(&1));
        // A failed record seen twice is no promise broken.
        let v = judge(&outcome, &[(0, acked(2, &[(1, 1)])), (1, acked(0, &[]))]);
        assert_eq!(v.total(), 0, "{:?}", v.samples);
    }

    #[test]
    fn acknowledged_records_after_the_last_seen_are_undelivered() {
        let (_, outcome) = feed(&[(0, 0)]);
        let v = judge(&outcome, &[(0, acked(3, &[])), (1, acked(0, &[]))]);
        assert_eq!(v.by_kind.get(&ViolationKind::Undelivered), Some(&1));
        // ... unless they all failed.
        let v = judge(&outcome, &[(0, acked(3, &[(1, 2)])), (1, acked(0, &[]))]);
        assert_eq!(v.total(), 0, "{:?}", v.samples);
    }

    #[test]
    fn a_producer_that_never_showed_up_is_undelivered() {
        let (_, outcome) = feed(&[(0, 0)]);
        let v = judge(&outcome, &[(0, acked(1, &[])), (1, acked(4, &[]))]);
        assert_eq!(v.by_kind.get(&ViolationKind::Undelivered), Some(&1));
    }

    #[test]
    fn skipped_offsets_and_corrupt_records_are_caught_on_the_spot() {
        let mut v = PartitionVerifier::new(RUN, "p0".into(), 10, &[0]);
        let mut out = Violations::default();
        assert!(v.observe(10, &rec(RUN, 0, 0), &mut out).is_some());
        assert!(v.observe(12, &rec(RUN, 0, 2), &mut out).is_some());
        let mut bad = rec(RUN, 0, 3);
        bad[0] ^= 0x5A;
        assert!(v.observe(13, &bad, &mut out).is_none());
        assert!(v.observe(13, &rec(RUN, 0, 4), &mut out).is_some());
        assert_eq!(out.by_kind.get(&ViolationKind::OffsetGap), Some(&1));
        assert_eq!(out.by_kind.get(&ViolationKind::Corrupt), Some(&1));
        assert_eq!(out.by_kind.get(&ViolationKind::OffsetRegression), Some(&1));
        assert_eq!(v.next_offset(), 14);
    }

    #[test]
    fn other_runs_records_are_checked_for_integrity_only() {
        let mut v = PartitionVerifier::new(RUN, "p0".into(), 0, &[0]);
        let mut out = Violations::default();
        assert!(v.observe(0, &rec(RUN + 1, 9, 77), &mut out).is_none());
        assert!(v.observe(1, &rec(RUN, 0, 0), &mut out).is_some());
        assert_eq!(out.total(), 0);
        assert_eq!(v.other_runs, 1);
    }

    #[test]
    fn a_record_from_another_partitions_producer_is_a_violation() {
        let mut v = PartitionVerifier::new(RUN, "p0".into(), 0, &[0]);
        let mut out = Violations::default();
        v.observe(0, &rec(RUN, 3, 0), &mut out);
        assert_eq!(out.by_kind.get(&ViolationKind::WrongPartition), Some(&1));
    }

    #[test]
    fn ranges_merge_split_and_count() {
        let mut r = Ranges::default();
        r.insert(5, 9);
        r.insert(10, 12);
        r.insert(20, 20);
        r.insert(0, 1);
        assert_eq!(
            r.iter().collect::<Vec<_>>(),
            vec![(0, 1), (5, 12), (20, 20)]
        );
        assert_eq!(r.count_in(0, 100), 11);
        assert_eq!(r.count_in(8, 20), 6);
        assert!(r.remove(7));
        assert!(!r.remove(7));
        assert!(!r.remove(3));
        assert_eq!(
            r.iter().collect::<Vec<_>>(),
            vec![(0, 1), (5, 6), (8, 12), (20, 20)]
        );
        assert!(r.remove(20));
        assert!(r.remove(0));
        assert_eq!(r.count_in(0, 100), 8);
    }

    #[test]
    fn acked_counts_exclude_failed_and_unsent() {
        let a = acked(10, &[(2, 3), (8, 8)]);
        assert_eq!(a.count_in(0, 9), 7);
        assert_eq!(a.count_in(2, 3), 0);
        assert_eq!(a.count_in(9, 20), 1);
        assert_eq!(a.count_in(10, 20), 0);
    }
}
