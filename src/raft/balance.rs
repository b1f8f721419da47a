//! Leader balancing: spreading the partitions' leaders over the nodes.
//!
//! A cluster starts with node 1 leading every partition (it bootstraps them; the others join
//! as followers), and after a failover the survivors keep what they took over. A leader does
//! more work than a follower (it takes the clients' writes and sends every record to each
//! follower), so one node leading everything is the cluster's bottleneck while the others idle.
//!
//! Every `--leader-balance-interval-ms`, each core of each node looks at the Raft groups it
//! hosts (partition `p` sits on core `p % cores` of every node, so a core's groups are the same
//! on every node) and counts how many of them each voter leads, as this node sees it. A node
//! that leads at least two more of them than some voter of one of its groups hands that group
//! to the voter that leads the fewest (openraft's leadership transfer; the most caught-up
//! among equals), at most one group per core per interval. Each transfer narrows the gap, and
//! a node never hands a group to one that would then lead more than it, so leaders settle at
//! counts that differ by at most one and stay there (no ping-pong). Only a group's leader acts
//! for it, and views that lag can only delay a transfer, not make a wrong one: the transfer
//! itself goes through Raft.

use std::collections::{BTreeMap, BTreeSet};

use crate::raft::types::NodeId;
use crate::types::Partition;

/// One group as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupView {
    pub partition: Partition,
    pub leader: Option<NodeId>,
    pub voters: BTreeSet<NodeId>,
    /// Voters that hold every entry this node's log held a moment before (this node leads
    /// the group), with how far their log goes; targets are taken from these only (a target
    /// too far behind to catch up when the transfer reaches it ignores it, and the group
    /// waits for an election; see [`caught_up`]).
    pub caught_up: BTreeMap<NodeId, u64>,
}

/// The voters a leader may hand its group to, with how far their log goes: those whose log
/// reaches `held`, what the leader's log held a moment before the check (or all of `last`, its
/// log now, without `held`).
///
/// Such a voter is at most that moment behind. Once a transfer starts the leader proposes
/// nothing more, and openraft's target waits (up to the minimum election timeout) until it
/// has flushed the leader's last entry before it runs; a target further behind would let that
/// wait run out, and the group would sit without a writable leader until an election.
/// Requiring all of `last` at the instant of the check almost never holds under sustained
/// writes: balancing then waited for a lull.
pub fn caught_up(
    matched: impl IntoIterator<Item = (NodeId, Option<u64>)>,
    last: Option<u64>,
    held: Option<u64>,
) -> BTreeMap<NodeId, u64> {
    let needed = held.map_or(last, |h| Some(h).min(last));
    matched
        .into_iter()
        .filter_map(|(id, m)| m.filter(|&i| Some(i) >= needed).map(|i| (id, i)))
        .collect()
}

/// Which group `me` should hand to which voter, if any (see the module doc).
pub fn choose_transfer(me: NodeId, groups: &[GroupView]) -> Option<(Partition, NodeId)> {
    let mut led: BTreeMap<NodeId, usize> = BTreeMap::new();
    for g in groups {
        for v in &g.voters {
            led.entry(*v).or_default();
        }
        if let Some(l) = g.leader {
            *led.entry(l).or_default() += 1;
        }
    }
    let mine = led.get(&me).copied().unwrap_or(0);
    // (fewest led, most caught up, lowest partition, lowest node id) wins.
    let mut best: Option<(usize, std::cmp::Reverse<u64>, Partition, NodeId)> = None;
    for g in groups.iter().filter(|g| g.leader == Some(me)) {
        for (&to, &matched) in &g.caught_up {
            if to == me || !g.voters.contains(&to) {
                continue;
            }
            let theirs = led.get(&to).copied().unwrap_or(0);
            if mine < theirs + 2 {
                continue;
            }
            let key = (theirs, std::cmp::Reverse(matched), g.partition, to);
            if best.as_ref().is_none_or(|b| key < *b) {
                best = Some(key);
            }
        }
    }
    best.map(|(_, _, p, to)| (p, to))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(p: u32, leader: Option<NodeId>, voters: &[NodeId], me: NodeId) -> GroupView {
        GroupView {
            partition: Partition(p),
            leader,
            voters: voters.iter().copied().collect(),
            caught_up: if leader == Some(me) {
                voters
                    .iter()
                    .filter(|v| **v != me)
                    .map(|v| (*v, 100))
                    .collect()
            } else {
                BTreeMap::new()
            },
        }
    }

    /// Runs the balancer of every node until nobody moves; returns the leader of each group
    /// and how many transfers it took.
    fn settle(mut leaders: Vec<NodeId>, voters: &[NodeId]) -> (Vec<NodeId>, usize) {
        let mut moves = 0;
        loop {
            let mut moved = false;
            for &me in voters {
                let views: Vec<GroupView> = leaders
                    .iter()
                    .enumerate()
                    .map(|(p, l)| view(p as u32, Some(*l), voters, me))
                    .collect();
                if let Some((p, to)) = choose_transfer(me, &views) {
                    leaders[p.0 as usize] = to;
                    moved = true;
                    moves += 1;
                }
            }
            if !moved {
                return (leaders, moves);
            }
            assert!(moves < 100, "the balancer does not settle: {leaders:?}");
        }
    }

    fn counts(leaders: &[NodeId], voters: &[NodeId]) -> Vec<usize> {
        voters
            .iter()
            .map(|v| leaders.iter().filter(|l| *l == v).count())
            .collect()
    }

    #[test]
    fn a_node_leading_everything_spreads_its_leaders_and_they_stay() {
        for (partitions, nodes) in [(3, 3), (2, 3), (6, 3), (7, 3), (16, 3), (5, 5), (4, 2)] {
            let voters: Vec<NodeId> = (1..=nodes).collect();
            let (leaders, moves) = settle(vec![1; partitions], &voters);
            let c = counts(&leaders, &voters);
            let (min, max) = (c.iter().min().unwrap(), c.iter().max().unwrap());
            assert!(
                max - min <= 1,
                "{partitions} partitions on {nodes} nodes: leaders per node {c:?}"
            );
            assert!(
                moves <= partitions,
                "{partitions} partitions on {nodes} nodes: {moves} transfers"
            );
            // Balanced leaders stay put.
            assert_eq!(settle(leaders.clone(), &voters), (leaders, 0));
        }
    }

    #[test]
    fn one_more_than_another_node_is_balanced_enough() {
        let voters = [1, 2, 3];
        let views: Vec<GroupView> = [1, 1, 2, 3]
            .iter()
            .enumerate()
            .map(|(p, l)| view(p as u32, Some(*l), &voters, 1))
            .collect();
        assert_eq!(choose_transfer(1, &views), None);
    }

    #[test]
    fn only_a_caught_up_voter_of_the_group_is_a_target() {
        let voters = [1, 2, 3];
        let mut views: Vec<GroupView> = (0..3).map(|p| view(p, Some(1), &voters, 1)).collect();
        // Node 3 answers no replication anywhere; node 2 is a learner of partition 0 only
        // (not a voter there) and answers in partitions 1 and 2.
        for v in &mut views {
            v.caught_up.remove(&3);
        }
        views[0].voters.remove(&2);
        assert_eq!(choose_transfer(1, &views), Some((Partition(1), 2)));
        // The most caught-up among equals.
        views[2].caught_up.insert(2, 500);
        assert_eq!(choose_transfer(1, &views), Some((Partition(2), 2)));
    }

    #[test]
    fn a_voter_that_held_what_the_leader_held_a_moment_ago_is_caught_up() {
        // The leader's log is at 120 now and was at 100 when the check began.
        let matched = [(2, Some(110)), (3, Some(90)), (4, None), (5, Some(120))];
        assert_eq!(
            caught_up(matched, Some(120), Some(100)),
            BTreeMap::from([(2, 110), (5, 120)]),
            "under sustained writes a follower is behind the last entry at every instant"
        );
        // Without the earlier look, only the whole log counts.
        assert_eq!(
            caught_up(matched, Some(120), None),
            BTreeMap::from([(5, 120)])
        );
        // A log that shrank since (another leader's term): never more than the log now.
        assert_eq!(
            caught_up(matched, Some(105), Some(100_000)),
            BTreeMap::from([(2, 110), (5, 120)])
        );
    }

    #[test]
    fn a_node_that_leads_nothing_or_little_moves_nothing() {
        let voters = [1, 2, 3];
        let views: Vec<GroupView> = (0..3).map(|p| view(p, Some(2), &voters, 1)).collect();
        assert_eq!(choose_transfer(1, &views), None);
        // Groups without a leader (an election) count for nobody.
        let views: Vec<GroupView> = (0..3).map(|p| view(p, None, &voters, 1)).collect();
        assert_eq!(choose_transfer(1, &views), None);
    }
}
