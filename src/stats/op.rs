//! [`Op`]: the operations whose latency a core records, one histogram each.
//!
//! The list is a table: each line names a variant, its label (the `op` label in `/metrics` and
//! the key in `/stats`), its [`Scope`] and a doc comment. Adding an operation is one line here;
//! recording, merging and both renderings pick it up from [`Op::ALL`].

/// Where an op's latency is usually recorded. Only a guide for allocating histograms up front
/// ([`super::CoreStats::add_partition`]); any op may be recorded with or without a partition.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Recorded per partition (produce, consume, fsync).
    Partition,
    /// Recorded for the node as a whole (metadata, admin).
    Node,
}

/// Declares [`Op`] from a table of `Variant => ("label", Scope)` lines, so the enum, its
/// labels and the list of all ops can never disagree.
macro_rules! define_ops {
    ($( $(#[$doc:meta])* $variant:ident => ($label:literal, $scope:ident), )+) => {
        /// An operation whose latency is recorded into its own histogram.
        #[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Op {
            $( $(#[$doc])* $variant, )+
        }

        impl Op {
            /// Every op, in declaration order: the order of `/stats` and `/metrics`.
            pub const ALL: &'static [Op] = &[$(Op::$variant,)+];

            /// The label: lower-case snake case, stable (dashboards depend on it).
            pub const fn label(self) -> &'static str {
                match self {
                    $( Op::$variant => $label, )+
                }
            }

            /// Where this op is usually recorded.
            pub const fn scope(self) -> Scope {
                match self {
                    $( Op::$variant => Scope::$scope, )+
                }
            }
        }
    };
}

define_ops! {
    /// A Produce request, from its frame decoded to its response queued (includes the wait for
    /// durability): what a producer waits for.
    Produce => ("produce", Partition),
    /// A Consume request, including any long-poll wait for new data.
    Consume => ("consume", Partition),
    /// One batch pushed to a Subscribe stream, from commit to queued on the connection.
    Subscribe => ("subscribe", Partition),
    /// A Metadata request.
    Metadata => ("metadata", Node),
    /// A GetServers request.
    GetServers => ("get_servers", Node),
    /// An admin Join request.
    Join => ("join", Node),
    /// An admin Leave request.
    Leave => ("leave", Node),
    /// One group-commit flush of a partition: the writes plus the `fdatasync` that covers them
    /// (the commit's own, or one it waited for that started after its write completed).
    Fsync => ("fsync", Partition),
    /// One batch of Raft entries, from being handed to the partition's local log (proposed on
    /// the leader, received in an AppendEntries on a follower) to durable: the disk's part of
    /// replication.
    RaftAppend => ("raft_append", Partition),
    /// One Raft entry, from its append to the local log to its apply on this node: the wait
    /// for a quorum to hold it (commit) plus the apply. On a follower the commit is learned
    /// from the leader, so this includes the leader's next heartbeat or AppendEntries.
    RaftCommit => ("raft_commit", Partition),
    /// One call of the partition's state machine apply, for however many committed entries it
    /// was given.
    RaftApply => ("raft_apply", Partition),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for op in Op::ALL {
            let label = op.label();
            assert!(seen.insert(label), "duplicate label {label}");
            assert!(
                label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "label {label} is not snake case"
            );
        }
    }

    #[test]
    fn all_is_in_declaration_order() {
        assert!(Op::ALL.windows(2).all(|w| w[0] < w[1]));
    }
}
