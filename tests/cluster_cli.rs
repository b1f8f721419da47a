//! The client commands against a replicated cluster: real `corelog serve` processes on
//! loopback (one shared CA, node 1 `--cluster`, the others `--join`), driven only through the
//! `corelog` command line, as an operator would. Three nodes on this 2-core machine
//! oversubscribe the cores: fine for correctness, no timing here is a performance claim.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Output;
use std::time::{Duration, Instant};

use common::cluster::{CONVERGE, Cluster};
use common::node::{NodeProcess, run_cli};

const PARTITIONS: u32 = 2;

/// `corelog servers --json` as node `id` sees the cluster.
fn servers_seen_by(cluster: &Cluster, id: u64) -> Servers {
    let out = cluster.cli(&["servers"], id, &["--json"], "");
    assert!(out.status.success(), "servers --json: {out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("servers --json is not JSON ({e}): {}", stdout(&out)));
    Servers::from_json(&doc)
}

/// Waits until node `id` sees exactly `voters` as every partition's voters, no learners,
/// and a leader for every partition.
fn wait_for_voters_seen_by(cluster: &Cluster, id: u64, voters: &[u64]) -> Servers {
    let want: BTreeSet<u64> = voters.iter().copied().collect();
    let deadline = Instant::now() + CONVERGE;
    loop {
        let servers = servers_seen_by(cluster, id);
        let settled = (0..PARTITIONS).all(|p| {
            servers.voters_of(p) == want
                && servers.learners_of(p).is_empty()
                && servers.leader_of(p).is_some()
        });
        if settled {
            return servers;
        }
        assert!(
            Instant::now() < deadline,
            "node {id} never saw voters {want:?} with a leader for every partition; last: \
             {servers:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `servers --json`, parsed: node id → (address, led, voter, learner).
#[derive(Debug)]
struct Servers {
    version: u64,
    replicated: bool,
    nodes: BTreeMap<u64, ServerRow>,
}

#[derive(Debug)]
struct ServerRow {
    addr: String,
    led: Vec<u32>,
    voter: Vec<u32>,
    learner: Vec<u32>,
}

impl Servers {
    fn from_json(doc: &serde_json::Value) -> Servers {
        let list = |v: &serde_json::Value| -> Vec<u32> {
            v.as_array()
                .unwrap_or_else(|| panic!("expected an array: {doc}"))
                .iter()
                .map(|p| p.as_u64().expect("partition number") as u32)
                .collect()
        };
        let nodes = doc["servers"]
            .as_array()
            .unwrap_or_else(|| panic!("no servers array: {doc}"))
            .iter()
            .map(|s| {
                let id = s["id"].as_str().expect("id").parse().expect("numeric id");
                let row = ServerRow {
                    addr: s["rpc_addr"].as_str().expect("rpc_addr").to_string(),
                    led: list(&s["partitions_led"]),
                    voter: list(&s["partitions_voter"]),
                    learner: list(&s["partitions_learner"]),
                };
                (id, row)
            })
            .collect();
        Servers {
            version: doc["version"].as_u64().expect("version"),
            replicated: doc["replicated"].as_bool().expect("replicated"),
            nodes,
        }
    }

    fn voters_of(&self, p: u32) -> BTreeSet<u64> {
        self.members(|row| row.voter.contains(&p))
    }

    fn learners_of(&self, p: u32) -> BTreeSet<u64> {
        self.members(|row| row.learner.contains(&p))
    }

    fn leader_of(&self, p: u32) -> Option<u64> {
        self.members(|row| row.led.contains(&p)).into_iter().next()
    }

    fn members(&self, f: impl Fn(&ServerRow) -> bool) -> BTreeSet<u64> {
        self.nodes
            .iter()
            .filter(|(_, row)| f(row))
            .map(|(id, _)| *id)
            .collect()
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A number in the node's `/stats` document, 0 when absent (nothing counted yet).
fn stat(node: &NodeProcess, path: &[&str]) -> u64 {
    let doc = node.stats_json();
    let mut v = &doc;
    for key in path {
        v = &v[*key];
    }
    v.as_u64().unwrap_or(0)
}

/// Consume requests node answered for partition `p` (with records or not).
fn consumes_answered(node: &NodeProcess, p: u32) -> u64 {
    stat(
        node,
        &["ops", "consume", "partitions", &p.to_string(), "count"],
    )
}

/// Three nodes through the CLI only: `servers` lists every node with what it leads, votes in
/// and learns (table and JSON); `produce` to a follower is acknowledged (it follows the
/// leader); `consume --consistency linearizable` on a follower is answered by the leader;
/// `cluster leave` needs the admin right, then removes node 3 from every partition, and
/// `cluster join` adds it back.
#[test]
fn cluster_commands_list_route_to_the_leader_and_remove_a_node() {
    let mut cluster = Cluster::new("cluster_cli", PARTITIONS);
    cluster.start_nodes(3);
    let servers = wait_for_voters_seen_by(&cluster, 1, &[1, 2, 3]);
    assert_eq!(servers.version, 1);
    assert!(servers.replicated, "{servers:?}");
    for (id, row) in &servers.nodes {
        assert_eq!(
            row.addr,
            cluster.addr(*id).to_string(),
            "node {id}'s address"
        );
    }

    // The table: a header, then `id address led voter learner` per node by id, as node 2
    // sees it once it too has every voter and a leader (the last membership entry commits
    // with node 1 and node 3 alone).
    wait_for_voters_seen_by(&cluster, 2, &[1, 2, 3]);
    let out = cluster.cli(&["servers"], 2, &[], "");
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("a header").split_whitespace().collect();
    assert_eq!(
        header,
        ["id", "address", "led", "voter", "learner"],
        "{text}"
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 3, "one line per node:\n{text}");
    let mut led_anywhere = Vec::new();
    for (row, id) in rows.iter().zip(1u64..) {
        assert_eq!(row.len(), 5, "five columns, `-` for none:\n{text}");
        assert_eq!(row[0], id.to_string(), "ascending by id:\n{text}");
        assert_eq!(row[1], cluster.addr(id).to_string(), "{text}");
        assert_eq!(row[3], "0,1", "node {id} votes in every partition:\n{text}");
        assert_eq!(row[4], "-", "no learners:\n{text}");
        if row[2] != "-" {
            led_anywhere.extend(row[2].split(',').map(|p| p.parse::<u32>().expect("led")));
        }
    }
    led_anywhere.sort_unstable();
    assert_eq!(
        led_anywhere,
        [0, 1],
        "each partition has one leader:\n{text}"
    );

    // Produce through a follower of partition 0: acknowledged, offsets dense from 0.
    let leader = servers.leader_of(0).expect("partition 0 has a leader");
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let out = cluster.cli(
        &["produce"],
        follower,
        &["--tls-name", "client", "--partition", "0"],
        "alpha\nbeta\ngamma\n",
    );
    assert!(
        out.status.success(),
        "produce via follower {follower}: {out:?}"
    );
    assert_eq!(
        stdout(&out),
        "0\n1\n2\n",
        "one offset per line, in input order"
    );
    let out = cluster.cli(
        &["produce"],
        follower,
        &[
            "--tls-name",
            "client",
            "--partition",
            "0",
            "--value",
            "delta",
        ],
        "",
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "3\n");

    // A linearizable read given a follower's address is answered by the leader: the follower
    // answers no consume for partition 0, the leader one or more. A leadership change during
    // the read would blur that, so the read is tried again (a few times at most) if one
    // happened.
    let mut checked = false;
    for _attempt in 0..3 {
        let leader = wait_for_voters_seen_by(&cluster, 1, &[1, 2, 3])
            .leader_of(0)
            .unwrap();
        let follower = (1..=3).find(|id| *id != leader).unwrap();
        let before = (
            consumes_answered(cluster.node(leader), 0),
            consumes_answered(cluster.node(follower), 0),
        );
        let out = cluster.cli(
            &["consume"],
            follower,
            &[
                "--tls-name",
                "client",
                "--partition",
                "0",
                "--consistency",
                "linearizable",
            ],
            "",
        );
        assert!(out.status.success(), "linearizable consume: {out:?}");
        assert_eq!(stdout(&out), "alpha\nbeta\ngamma\ndelta\n");
        let after = (
            consumes_answered(cluster.node(leader), 0),
            consumes_answered(cluster.node(follower), 0),
        );
        if servers_seen_by(&cluster, 1).leader_of(0) != Some(leader) {
            continue;
        }
        assert!(after.0 > before.0, "the leader {leader} answered the read");
        assert_eq!(
            after.1, before.1,
            "the follower {follower} answered no read"
        );
        checked = true;
        break;
    }
    assert!(checked, "partition 0's leader kept changing");

    // A local read on the follower answers from its own log (it has caught up).
    let out = cluster.cli(
        &["consume"],
        follower,
        &["--tls-name", "client", "--partition", "0", "--from", "1"],
        "",
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "beta\ngamma\ndelta\n");

    // Membership changes need the admin right: a client certificate is refused, in one line.
    let out = cluster.cli(
        &["cluster", "leave"],
        1,
        &["--tls-name", "client", "--node-id", "3"],
        "",
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("admin"), "{}", stderr(&out));
    assert_eq!(
        servers_seen_by(&cluster, 1).voters_of(0).len(),
        3,
        "nothing changed"
    );

    // With the node certificate (the default for `cluster`), node 3 leaves every partition.
    let out = cluster.cli(&["cluster", "leave"], 1, &["--node-id", "3"], "");
    assert!(out.status.success(), "cluster leave: {out:?}");
    assert_eq!(
        stdout(&out),
        "partition 0: node 3 removed\npartition 1: node 3 removed\n"
    );
    let servers = wait_for_voters_seen_by(&cluster, 1, &[1, 2]);
    assert!(!servers.nodes.contains_key(&3), "{servers:?}");
    let out = cluster.cli(&["servers"], 1, &[], "");
    assert!(out.status.success(), "{out:?}");
    assert!(
        !stdout(&out).contains(&cluster.addr(3).to_string()),
        "{}",
        stdout(&out)
    );

    // The cluster still takes writes through any remaining node.
    let out = cluster.cli(
        &["produce"],
        2,
        &[
            "--tls-name",
            "client",
            "--partition",
            "1",
            "--value",
            "after",
        ],
        "",
    );
    assert!(out.status.success(), "{out:?}");

    // Leaving again changes nothing; `cluster join` re-adds the still running node 3, which
    // becomes a voter again (the groups have fewer voters than the replication factor, 3).
    let out = cluster.cli(&["cluster", "leave"], 2, &["--node-id", "3"], "");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        stdout(&out),
        "partition 0: node 3 was not a member\npartition 1: node 3 was not a member\n"
    );
    let addr3 = cluster.addr(3).to_string();
    let out = cluster.cli(
        &["cluster", "join"],
        2,
        &["--node-id", "3", "--node-addr", &addr3],
        "",
    );
    assert!(out.status.success(), "cluster join: {out:?}");
    assert_eq!(
        stdout(&out),
        "partition 0: node 3 added as a voter\npartition 1: node 3 added as a voter\n"
    );
    wait_for_voters_seen_by(&cluster, 1, &[1, 2, 3]);
}

/// A standalone node: `servers --json` lists it alone, leading every partition, not
/// replicated; `cluster leave` refuses in one line, since there is no membership to change.
#[test]
fn standalone_servers_json_and_cluster_leave_is_refused() {
    let node = common::node::TestNode::start("cluster_cli_standalone", &["--partitions", "2"]);
    let addr = node.listen.to_string();
    let tls = node.tls_dir.to_str().unwrap().to_string();
    let client = ["--addr", &addr, "--tls-dir", &tls];
    let out = run_cli(&[&["servers", "--json"][..], &client].concat(), None, "");
    assert!(out.status.success(), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let servers = Servers::from_json(&doc);
    assert!(!servers.replicated, "{doc}");
    assert_eq!(servers.nodes.len(), 1, "{doc}");
    let row = &servers.nodes[&1];
    assert_eq!(row.addr, addr);
    assert_eq!(row.led, [0, 1]);
    assert!(row.voter.is_empty() && row.learner.is_empty(), "{doc}");

    let out = run_cli(
        &[&["cluster", "leave", "--node-id", "2"][..], &client].concat(),
        None,
        "",
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("standalone"), "{}", stderr(&out));
}

/// A cluster of one has nobody to hand leadership to: SIGTERM stops it without warning that
/// it is "still the leader" after a hand-off (a regression: every partition warned).
#[test]
fn a_single_node_cluster_stops_on_sigterm_without_a_hand_off() {
    let dir = common::test_dir("cluster_cli_single_sigterm");
    let _cleanup = common::RemoveOnSuccess(dir.clone());
    let tls = dir.join("tls");
    common::cluster::make_certs(&tls);
    let tls_dir = tls.to_str().unwrap();
    let mut node = NodeProcess::start(
        &dir.join("n1"),
        &[
            "--tls-dir",
            tls_dir,
            "--tls-name",
            "node",
            "--node-id",
            "1",
            "--cluster",
        ],
    );
    let status = node.terminate();
    assert!(status.success(), "{status:?}\n{}", node.stderr());
    let stderr = node.stderr();
    assert!(
        !stderr.contains("still the leader after"),
        "a group of one has nobody to hand off to:\n{stderr}"
    );
}
