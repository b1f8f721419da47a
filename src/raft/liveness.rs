//! Fast failover: noticing that a leader's process is gone instead of waiting out its lease.
//!
//! openraft lets a follower refuse every vote while the leader lease it holds (the election
//! timeout's maximum, renewed by each heartbeat) runs, and a candidate's election timer fires
//! below that maximum: after a leader dies, the first election is refused and the second wins,
//! so failover takes about two election timeouts. But a leader killed on its host leaves an
//! unmistakable trace on every follower: the kernel closes its sockets, so every peer
//! connection it had opened to this core ends, and none reopens.
//!
//! A core counts, per node, the peer connections that node has open to it (the node is named
//! by the `from_node` of the requests on each connection). When the last one closes:
//! - a voter of a group that node led waits a little (two heartbeats, so a live leader that only
//!   redialled is seen again), then starts an election itself if a quorum of the other voters
//!   answers it and none of them is more up to date (so exactly one runs, and a node cut off
//!   from its peers, which sees its leader's connections close too, does not raise its term)
//!   ([`crate::raft::group::Group::take_over`]);
//! - a voter asked for its vote while its leader has been gone that long treats the request
//!   like one of a leadership transfer, which openraft grants despite the lease
//!   (`src/net/conn.rs`, `raft_vote`).
//!
//! The lease only protects a live leader from disruption, and lease-based reads, which corelog
//! does not use (linearizable consumes use a read index, confirmed by a quorum). Bypassing it
//! on this evidence cannot elect a leader that Raft's log rules would not: the vote still
//! requires the candidate's log to be at least as up to date. A leader isolated by the network
//! (connections stay open, data stops) is not "gone": there the election timers decide, as
//! before.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::raft::types::NodeId;

/// Peer connections each node has open to this core.
#[derive(Default)]
pub struct PeerLiveness {
    links: RefCell<HashMap<NodeId, Link>>,
}

#[derive(Default)]
struct Link {
    open: usize,
    /// When the last connection closed (`None` while one is open, or before any closed).
    gone_since: Option<Instant>,
}

impl PeerLiveness {
    /// A connection from `node` started carrying its requests.
    pub fn opened(&self, node: NodeId) {
        let mut links = self.links.borrow_mut();
        let link = links.entry(node).or_default();
        link.open += 1;
        link.gone_since = None;
    }

    /// A connection from `node` closed; true when it was the last one.
    pub fn closed(&self, node: NodeId) -> bool {
        self.closed_at(node, Instant::now())
    }

    fn closed_at(&self, node: NodeId, now: Instant) -> bool {
        let mut links = self.links.borrow_mut();
        let link = links.entry(node).or_default();
        link.open = link.open.saturating_sub(1);
        if link.open == 0 {
            link.gone_since = Some(now);
            true
        } else {
            false
        }
    }

    /// How long `node` has had no connection open to this core, after having had one;
    /// `None` while one is open or if none ever was.
    pub fn gone_for(&self, node: NodeId) -> Option<Duration> {
        self.gone_for_at(node, Instant::now())
    }

    fn gone_for_at(&self, node: NodeId, now: Instant) -> Option<Duration> {
        let links = self.links.borrow();
        let link = links.get(&node)?;
        match (link.open, link.gone_since) {
            (0, Some(since)) => Some(now.saturating_duration_since(since)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_gone_only_once_its_last_connection_closed() {
        let live = PeerLiveness::default();
        let t0 = Instant::now();
        assert_eq!(
            live.gone_for_at(1, t0),
            None,
            "never connected: no evidence"
        );
        live.opened(1);
        live.opened(1);
        assert!(!live.closed_at(1, t0), "one connection is still open");
        assert_eq!(live.gone_for_at(1, t0), None);
        assert!(live.closed_at(1, t0), "the last one closed");
        let later = t0 + Duration::from_millis(120);
        assert_eq!(live.gone_for_at(1, later), Some(Duration::from_millis(120)));
        assert_eq!(
            live.gone_for_at(2, later),
            None,
            "other nodes are unaffected"
        );
        live.opened(1);
        assert_eq!(live.gone_for_at(1, later), None, "it came back");
    }
}
