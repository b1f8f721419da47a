//! End to end: the real `corelog` binary on loopback with real certificates, driven by the
//! client library (on a glommio executor), by the `corelog` client commands, and over the
//! stats endpoint's HTTP. Each test starts its own node on port 0 in its own directory under
//! `target/` (never tmpfs), except `serve_with_no_flags_...`, the only test on the default ports
//! 7400/7401.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::node::{
    Acked, NodeProcess, TestNode, assert_still_serves, produce_values, read_partition, run_cli,
    seed_records, server_error, verify_acked,
};
use common::{RemoveOnSuccess, run, test_dir};
use corelog::client::cluster::ClusterClient;
use corelog::client::{Client, ClientConfig, ClientError, Subscription};
use corelog::net::errors::ServerError;
use corelog::net::frame::Request;
use corelog::proto::{ConsumeRequest, ProduceRequest};

/// Two cores where the machine has them: partitions then live on different cores.
fn cores_flag() -> String {
    corelog::io::online_cpus().len().min(2).to_string()
}

/// Waits for `fut` at most `timeout`.
async fn within<T>(timeout: Duration, fut: impl std::future::Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(fut.await) }, async {
        corelog::io::sleep(timeout).await;
        None
    })
    .await
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn produce_then_consume_round_trips_on_every_partition() {
    let cores = cores_flag();
    let node = TestNode::start("e2e-roundtrip", &["--cores", &cores, "--partitions", "4"]);
    assert_eq!(node.partitions, 4);
    let config = node.client_config("client");
    let cores: u32 = cores.parse().expect("cores");
    run(|| async move {
        let client = Client::connect(config).await.expect("connect");
        let meta = client.metadata().await.expect("metadata");
        assert_eq!(meta.cores, cores);
        assert_eq!(meta.partitions.len(), 4);
        let owners: HashSet<u32> = meta.partitions.iter().map(|p| p.owner_core).collect();
        assert_eq!(
            owners.len() as u32,
            cores,
            "partitions spread over every core"
        );
        for p in 0..4u32 {
            let batches: Vec<Vec<Bytes>> = vec![
                vec![Bytes::from(format!("p{p}-first"))],
                vec![
                    Bytes::new(),
                    Bytes::from((0..=255u8).collect::<Vec<u8>>()),
                    Bytes::from(format!("p{p}-third")),
                ],
                vec![Bytes::from(vec![p as u8; 100 << 10])],
            ];
            let mut expected = Vec::new();
            for batch in batches {
                let r = client.produce(p, batch.clone()).await.expect("produce");
                assert_eq!(r.base_offset, expected.len() as u64, "dense offsets");
                assert_eq!(r.record_count as usize, batch.len());
                expected.extend(batch);
            }
            let stored = read_partition(&client, p).await;
            let stored: Vec<Bytes> = stored.into_values().collect();
            assert_eq!(stored, expected, "partition {p} reads back byte-identical");
        }
        let meta = client.metadata().await.expect("metadata");
        for info in &meta.partitions {
            assert_eq!(info.high_watermark, 5, "partition {}", info.partition);
            assert_eq!(info.log_start_offset, 0);
        }
    });
}

/// A client (and a cluster client) kept across two executors run one after the other on the same thread (a program
/// with phases, or a test) reconnects in the second: its first connection's I/O tasks ended
/// with the first executor, and a request on it would wait out the request timeout (30 s)
/// for an answer nothing reads.
#[test]
fn a_client_kept_across_two_executors_reconnects_in_the_second() {
    let node = TestNode::start("e2e-two-executors", &["--cores", "1", "--partitions", "1"]);
    let mut config = node.client_config("client");
    // A hang would show as a timeout error instead of a slow test.
    config.request_timeout = Duration::from_secs(5);
    let cluster_client = ClusterClient::new(config.clone());
    let client = run(|| async {
        let client = Client::connect(config).await.expect("connect");
        let r = client
            .produce(0, vec![Bytes::from_static(b"first executor")])
            .await
            .expect("produce on the first executor");
        assert_eq!(r.base_offset, 0);
        let r = cluster_client
            .produce(0, vec![Bytes::from_static(b"first, cluster client")])
            .await
            .expect("cluster client, first executor");
        assert_eq!(r.base_offset, 1);
        client
    });
    run(|| async {
        let r = client
            .produce(0, vec![Bytes::from_static(b"second executor")])
            .await
            .expect("produce on the second executor");
        assert_eq!(r.base_offset, 2);
        let r = cluster_client
            .produce(0, vec![Bytes::from_static(b"second, cluster client")])
            .await
            .expect("cluster client, second executor");
        assert_eq!(r.base_offset, 3);
        let stored: Vec<Bytes> = read_partition(&client, 0).await.into_values().collect();
        assert_eq!(
            stored,
            [
                &b"first executor"[..],
                &b"first, cluster client"[..],
                &b"second executor"[..],
                &b"second, cluster client"[..]
            ]
        );
    });
}

/// Three clients (three sets of connections), each with three tasks that pipeline windows of
/// produce requests over four partitions on two cores.
#[test]
fn pipelined_produce_from_several_clients_keeps_per_partition_order_and_dense_offsets() {
    const CLIENTS: usize = 3;
    const TASKS: usize = 3;
    const WINDOWS: usize = 6;
    const WINDOW: usize = 8;
    const PARTITIONS: u32 = 4;
    let cores = cores_flag();
    let node = TestNode::start("e2e-pipelined", &["--cores", &cores, "--partitions", "4"]);
    let config = node.client_config("client");
    run(|| async move {
        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            let client = Rc::new(Client::connect(config.clone()).await.expect("connect"));
            // Open the connection to every owner core before pipelining.
            for p in 0..PARTITIONS {
                client.consume(p, 0, 1, Duration::ZERO).await.expect("warm");
            }
            clients.push(client);
        }
        let mut tasks = Vec::new();
        for (c, client) in clients.iter().enumerate() {
            for t in 0..TASKS {
                let client = client.clone();
                tasks.push(glommio::spawn_local(async move {
                    let mut acked: Vec<(u32, u64, Vec<Bytes>)> = Vec::new();
                    for w in 0..WINDOWS {
                        // Sent in this order on one connection per core; awaited together.
                        let window: Vec<(u32, Vec<Bytes>)> = (0..WINDOW)
                            .map(|i| {
                                let seq = w * WINDOW + i;
                                let p = (seq as u32 + t as u32) % PARTITIONS;
                                let records = (0..1 + seq % 3)
                                    .map(|r| Bytes::from(format!("c{c}/t{t}/s{seq:04}/r{r}")))
                                    .collect();
                                (p, records)
                            })
                            .collect();
                        let results = futures::future::join_all(
                            window
                                .iter()
                                .map(|(p, records)| client.produce(*p, records.clone())),
                        )
                        .await;
                        let mut last_in_partition: HashMap<u32, u64> = HashMap::new();
                        for ((p, records), result) in window.into_iter().zip(results) {
                            let r = result.expect("produce");
                            assert_eq!(r.record_count as usize, records.len());
                            if let Some(prev) = last_in_partition.insert(p, r.base_offset) {
                                assert!(
                                    r.base_offset > prev,
                                    "pipelined produces to partition {p} keep their send order"
                                );
                            }
                            acked.push((p, r.base_offset, records));
                        }
                    }
                    acked
                }));
            }
        }
        let mut acked = Vec::new();
        for task in tasks {
            acked.extend(task.await);
        }
        let reader = &clients[0];
        let mut total = 0;
        for p in 0..PARTITIONS {
            let stored = read_partition(reader, p).await;
            let expected: usize = acked
                .iter()
                .filter(|(q, _, _)| *q == p)
                .map(|(_, _, r)| r.len())
                .sum();
            assert_eq!(
                stored.len(),
                expected,
                "partition {p}: every record once, dense"
            );
            total += expected;
            for (_, base, records) in acked.iter().filter(|(q, _, _)| *q == p) {
                for (i, value) in records.iter().enumerate() {
                    assert_eq!(&stored[&(base + i as u64)], value, "partition {p}");
                }
            }
            // Each writer's records appear in its send order.
            let mut last_seq: HashMap<String, String> = HashMap::new();
            for value in stored.values() {
                let text = std::str::from_utf8(value).expect("utf8");
                let (writer, rest) = text.split_at(text.find("/s").expect("seq"));
                if let Some(prev) = last_seq.insert(writer.to_string(), rest.to_string()) {
                    assert!(
                        prev.as_str() < rest,
                        "partition {p}: {writer} {prev} then {rest}"
                    );
                }
            }
        }
        let sent: usize = (0..CLIENTS * TASKS * WINDOWS * WINDOW)
            .map(|i| 1 + (i % (WINDOWS * WINDOW)) % 3)
            .sum();
        assert_eq!(total, sent);
    });
}

#[test]
fn long_poll_consume_wakes_on_new_data_and_expires_empty() {
    let node = TestNode::start("e2e-long-poll", &["--partitions", "1"]);
    let config = node.client_config("client");
    run(|| async move {
        let client = Rc::new(Client::connect(config.clone()).await.expect("connect"));
        // Nothing arrives: the wait expires with no records.
        let started = Instant::now();
        let empty = client
            .consume(0, 0, 1 << 20, Duration::from_millis(300))
            .await
            .expect("consume");
        let waited = started.elapsed();
        assert!(empty.records.is_empty());
        assert_eq!(empty.high_watermark, 0);
        assert!(
            waited >= Duration::from_millis(250),
            "a long poll waits: {waited:?}"
        );
        // A record produced by another client wakes the waiting consume at once.
        let waiter = {
            let client = client.clone();
            glommio::spawn_local(async move {
                let started = Instant::now();
                let r = client
                    .consume(0, 0, 1 << 20, Duration::from_secs(20))
                    .await
                    .expect("consume");
                (r, started.elapsed())
            })
        };
        corelog::io::sleep(Duration::from_millis(200)).await;
        let producer = Client::connect(config).await.expect("connect");
        producer
            .produce(0, vec![Bytes::from("wake up")])
            .await
            .expect("produce");
        let (r, waited) = within(Duration::from_secs(10), waiter)
            .await
            .expect("the waiting consume returns");
        assert_eq!(r.records.len(), 1);
        assert_eq!(r.records[0].value, Bytes::from("wake up"));
        assert_eq!(r.high_watermark, 1);
        assert!(
            waited >= Duration::from_millis(150) && waited < Duration::from_secs(5),
            "woken by the produce, not by the timeout: {waited:?}"
        );
    });
}

#[test]
fn subscribe_streams_no_more_events_than_credits_until_more_are_granted() {
    let node = TestNode::start("e2e-subscribe", &["--partitions", "2"]);
    let config = node.client_config("client");
    run(|| async move {
        let client = Client::connect(config).await.expect("connect");
        for i in 0..5 {
            client
                .produce(1, vec![Bytes::from(format!("r{i}"))])
                .await
                .expect("produce");
        }
        // max_bytes 1: one batch per event.
        let sub = client.subscribe(1, 0, 1, 2).await.expect("subscribe");
        let mut next = 0u64;
        for _ in 0..2 {
            expect_event(&sub, &mut next).await;
        }
        assert_no_event(&sub).await;
        sub.grant(3);
        for _ in 0..3 {
            expect_event(&sub, &mut next).await;
        }
        // Out of credits: a new record is not pushed until a credit arrives.
        client
            .produce(1, vec![Bytes::from("r5")])
            .await
            .expect("produce");
        assert_no_event(&sub).await;
        sub.grant(1);
        expect_event(&sub, &mut next).await;
        // With a credit and no data, the subscription waits and wakes on the next produce.
        sub.grant(1);
        assert_no_event(&sub).await;
        client
            .produce(1, vec![Bytes::from("r6")])
            .await
            .expect("produce");
        expect_event(&sub, &mut next).await;
        assert_eq!(next, 7);
        // Cancel ends the stream.
        sub.cancel();
        let end = within(Duration::from_secs(10), sub.next())
            .await
            .expect("the cancel is answered");
        assert!(end.is_err(), "no event after the cancel: {end:?}");
    });
}

async fn expect_event(sub: &Subscription, next: &mut u64) {
    let event = within(Duration::from_secs(10), sub.next())
        .await
        .expect("an event within 10 s")
        .expect("an event");
    assert_eq!(event.records.len(), 1, "one batch per event");
    let record = &event.records[0];
    assert_eq!(record.offset, *next, "no gap, no repeat");
    assert_eq!(record.value, Bytes::from(format!("r{next}")));
    *next += 1;
}

async fn assert_no_event(sub: &Subscription) {
    if let Some(event) = within(Duration::from_millis(300), sub.next()).await {
        panic!("an event beyond the credits granted: {event:?}");
    }
}

/// Fault model: the node process dies at an arbitrary moment (SIGKILL) while several clients
/// have produce requests in flight; the machine keeps running. Every record the node
/// acknowledged was durable before the ack, so after a restart every acked record reads back
/// byte-identical at its offset, offsets stay dense, and nothing is there that was never sent.
/// Two rounds: the second kills the restarted node, which must keep the first round's data too.
#[test]
fn kill_9_during_produce_then_restart_keeps_every_acknowledged_record() {
    const PRODUCERS: usize = 6;
    const PARTITIONS: u32 = 4;
    let cores = cores_flag();
    let args = ["--cores", cores.as_str(), "--partitions", "4"];
    let mut node = TestNode::start("e2e-kill9", &args);
    let mut acked: Vec<Acked> = Vec::new();
    let mut sent: HashSet<Bytes> = HashSet::new();
    for (round, kill_after_acks) in [(0, 150usize), (1, 90)] {
        let config = node.client_config("client");
        let pid = node.pid();
        let (round_acked, round_sent) = run(move || async move {
            let client = Rc::new(Client::connect(config).await.expect("connect"));
            let acks = Rc::new(std::cell::Cell::new(0usize));
            let mut producers = Vec::new();
            for w in 0..PRODUCERS {
                let client = client.clone();
                let acks = acks.clone();
                producers.push(glommio::spawn_local(async move {
                    let mut acked = Vec::new();
                    let mut sent = Vec::new();
                    for seq in 0..100_000usize {
                        let p = ((w + seq) as u32) % PARTITIONS;
                        let records: Vec<Bytes> = (0..1 + (w + seq) % 4)
                            .map(|r| {
                                let pad = "x".repeat((seq * 37 + r * 101) % 3000);
                                Bytes::from(format!("k{round}/w{w}/s{seq}/r{r}/{pad}"))
                            })
                            .collect();
                        sent.extend(records.iter().cloned());
                        match client.produce(p, records.clone()).await {
                            Ok(r) => {
                                for (i, value) in records.into_iter().enumerate() {
                                    acked.push(Acked {
                                        partition: p,
                                        offset: r.base_offset + i as u64,
                                        value,
                                    });
                                }
                                acks.set(acks.get() + 1);
                            }
                            // The node died: this produce's outcome is unknown.
                            Err(
                                ClientError::Connection { .. }
                                | ClientError::Connect { .. }
                                | ClientError::Timeout { .. },
                            ) => {
                                break;
                            }
                            Err(e) => panic!("unexpected produce error: {e}"),
                        }
                    }
                    (acked, sent)
                }));
            }
            // SIGKILL once enough produces were acknowledged, with the others in flight.
            for _ in 0..30_000 {
                if acks.get() >= kill_after_acks {
                    break;
                }
                corelog::io::sleep(Duration::from_millis(1)).await;
            }
            assert!(acks.get() >= kill_after_acks, "produces were acknowledged");
            let killed = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .expect("kill");
            assert!(killed.success());
            let mut acked = Vec::new();
            let mut sent = Vec::new();
            for producer in producers {
                let (a, s) = within(Duration::from_secs(30), producer)
                    .await
                    .expect("producers notice the dead node");
                acked.extend(a);
                sent.extend(s);
            }
            (acked, sent)
        });
        node.kill9();
        assert!(round_acked.len() >= kill_after_acks);
        acked.extend(round_acked);
        sent.extend(round_sent);
        node.node = NodeProcess::start(&node.data_dir(), &args);
        let config = node.client_config("client");
        let acked = acked.clone();
        let sent = sent.clone();
        run(|| async move {
            let client = Client::connect(config)
                .await
                .expect("connect after restart");
            verify_acked(&client, &acked).await;
            for p in 0..PARTITIONS {
                for (offset, value) in read_partition(&client, p).await {
                    assert!(
                        sent.contains(&value),
                        "partition {p} offset {offset} holds a record nobody sent"
                    );
                }
            }
        });
    }
    assert_still_serves(&node, &mut acked, "after-kill9");
}

#[test]
fn acl_denies_produce_to_a_consume_only_client_and_everything_to_an_unlisted_one() {
    let dir = test_dir("e2e-acl");
    let _remove = RemoveOnSuccess(dir.clone());
    let tls = dir.join("tls");
    let tls_str = tls.display().to_string();
    let out = run_cli(
        &[
            "certs", "--out", &tls_str, "--node", "n1", "--client", "writer", "--client", "reader",
            "--client", "stranger",
        ],
        None,
        "",
    );
    assert!(out.status.success(), "{out:?}");
    let acl = dir.join("acl.csv");
    std::fs::write(
        &acl,
        "# writer does everything; reader only reads\nwriter, *, *\nreader, *, consume\n",
    )
    .expect("write the ACL");
    let mut node = NodeProcess::start(
        &dir.join("data"),
        &[
            "--partitions",
            "2",
            "--tls-dir",
            &tls_str,
            "--tls-name",
            "n1",
            "--acl",
            &acl.display().to_string(),
        ],
    );
    let addr = node.listen;
    let tls_dir = tls.clone();
    run(|| async move {
        let config = |name: &str| ClientConfig::new(addr, &tls_dir, name).expect("config");
        let writer = Client::connect(config("writer")).await.expect("writer");
        let acked = produce_values(&writer, 0, &[Bytes::from("w0"), Bytes::from("w1")]).await;

        let reader = Client::connect(config("reader"))
            .await
            .expect("reader reads metadata");
        let err = reader
            .produce(0, vec![Bytes::from("r")])
            .await
            .expect_err("reader may not produce");
        assert!(
            matches!(&err, ClientError::Server(ServerError::Unauthorized { action, object })
                if action == "produce" && object == "partition 0"),
            "{err}"
        );
        verify_acked(&reader, &acked).await;
        let sub = reader.subscribe(0, 0, 0, 1).await.expect("subscribe");
        let event = within(Duration::from_secs(10), sub.next())
            .await
            .expect("event")
            .expect("reader may subscribe");
        assert_eq!(event.records[0].value, Bytes::from("w0"));

        let err = Client::connect(config("stranger"))
            .await
            .err()
            .expect("stranger may not read metadata");
        assert!(
            matches!(&err, ClientError::Server(ServerError::Unauthorized { action, object })
                if action == "consume" && object == "cluster"),
            "{err}"
        );
        // Straight to the owner core, without metadata: still denied, request by request.
        let conn = corelog::client::Connection::connect(
            &config("stranger"),
            0,
            corelog::net::preamble::ConnKind::Client,
        )
        .await
        .expect("stranger completes TLS");
        for request in [
            Request::Produce(ProduceRequest {
                partition: 0,
                records: vec![Bytes::from("s")],
            }),
            Request::Consume(ConsumeRequest {
                partition: 0,
                offset: 0,
                max_bytes: 0,
                max_wait_ms: 0,
                linearizable: false,
            }),
        ] {
            let response = conn.request(request.clone()).await.expect("answered");
            assert!(
                matches!(server_error(&response), ServerError::Unauthorized { .. }),
                "{request:?}: {response:?}"
            );
        }
        let stored = read_partition(&writer, 0).await;
        assert_eq!(stored.len(), 2, "nothing but the writer's records");
    });
    // The client commands say it in one line and exit non-zero.
    let out = run_cli(
        &[
            "produce",
            "--addr",
            &addr.to_string(),
            "--tls-dir",
            &tls_str,
            "--tls-name",
            "reader",
            "--partition",
            "0",
            "--value",
            "nope",
        ],
        None,
        "",
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("not authorized: produce on partition 0"),
        "{err}"
    );
    let out = run_cli(
        &[
            "consume",
            "--addr",
            &addr.to_string(),
            "--tls-dir",
            &tls_str,
            "--tls-name",
            "reader",
            "--partition",
            "0",
        ],
        None,
        "",
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "w0\nw1\n");
    assert!(node.terminate().success());
}

/// `--addr` takes `IP:PORT` or `HOST:PORT`; anything else is refused before any connection,
/// in one line that names the flag and the address, with exit code 2. (No lookup is made for
/// these: they are malformed, and tests send nothing past loopback.)
#[test]
fn a_client_command_with_a_malformed_address_says_so_in_one_line_and_exits_2() {
    for (addr, why) in [
        ("no-port", "is not HOST:PORT"),
        ("localhost:http", "is not a port number"),
        ("localhost:70000", "is not a port number"),
        ("bad host:7400", "bad host:7400"),
    ] {
        let out = run_cli(
            &[
                "produce",
                "--partition",
                "0",
                "--addr",
                addr,
                "--value",
                "x",
            ],
            None,
            "",
        );
        assert_eq!(out.status.code(), Some(2), "--addr {addr}: {out:?}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "--addr {addr}: {err}");
        assert!(
            err.contains("--addr") && err.contains(why),
            "--addr {addr}: {err}"
        );
    }
}

#[test]
fn stats_endpoint_values_move_after_traffic() {
    let node = TestNode::start("e2e-stats", &["--partitions", "2"]);
    let (status, health) = node.http_get("/health");
    assert_eq!(status, 200, "{health}");
    let before = node.stats_json();
    let count = |doc: &serde_json::Value, path: &[&str]| -> u64 {
        let mut v = doc;
        for key in path {
            v = &v[*key];
        }
        v.as_u64()
            .unwrap_or_else(|| panic!("/stats has no number at {path:?}: {doc}"))
    };
    let produce_count = ["ops", "produce", "merged", "count"];
    assert_eq!(count(&before, &produce_count), 0);
    let config = node.client_config("client");
    run(|| async move {
        let client = Client::connect(config).await.expect("connect");
        for i in 0..20u8 {
            client
                .produce(1, vec![Bytes::from(vec![i; 100]), Bytes::from(vec![i; 50])])
                .await
                .expect("produce");
        }
        let got = client
            .consume(1, 0, 1 << 20, Duration::ZERO)
            .await
            .expect("consume");
        assert_eq!(got.records.len(), 40);
    });
    let after = node.stats_json();
    assert_eq!(count(&after, &produce_count), 20, "{after}");
    assert_eq!(
        count(&after, &["ops", "produce", "partitions", "1", "count"]),
        20
    );
    assert!(count(&after, &["ops", "produce", "merged", "max"]) > 0);
    assert!(count(&after, &["ops", "consume", "merged", "count"]) >= 1);
    assert!(count(&after, &["ops", "fsync", "merged", "count"]) >= 1);
    assert_eq!(count(&after, &["totals", "bytes_in"]), 20 * 150);
    assert_eq!(count(&after, &["totals", "records_in"]), 40);
    assert_eq!(count(&after, &["partitions", "1", "bytes_in"]), 20 * 150);
    assert_eq!(count(&after, &["partitions", "0", "bytes_in"]), 0);
    assert!(count(&after, &["totals", "bytes_out"]) >= 20 * 150);
    // What each partition's log holds: 40 records in 20 batches on partition 1, nothing on 0.
    assert_eq!(count(&after, &["partitions", "1", "log_start_offset"]), 0);
    assert_eq!(count(&after, &["partitions", "1", "high_watermark"]), 40);
    assert_eq!(count(&after, &["partitions", "1", "log_end_offset"]), 40);
    assert!(
        count(&after, &["partitions", "1", "log_bytes"]) > 20 * 150,
        "{after}"
    );
    assert_eq!(count(&after, &["partitions", "1", "segments"]), 1);
    assert_eq!(count(&after, &["partitions", "0", "high_watermark"]), 0);
    assert_eq!(count(&after, &["partitions", "0", "log_bytes"]), 0);
    assert_eq!(
        count(&after, &["totals", "log_bytes"]),
        count(&after, &["partitions", "1", "log_bytes"])
    );
    assert!(count(&after, &["connections", "opened"]) > count(&before, &["connections", "opened"]));

    let (status, metrics) = node.http_get("/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("# TYPE corelog_op_latency_seconds histogram"),
        "{metrics}"
    );
    let produce_observations: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("corelog_op_latency_seconds_count{") && l.contains("op=\"produce\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(produce_observations, 20.0, "{metrics}");
    assert!(
        metrics.contains("corelog_high_watermark{partition=\"1\"} 40\n"),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("corelog_op_latency_seconds_bucket{")
                && l.contains("op=\"produce\"")),
        "the produce histogram has buckets"
    );
}

/// The only test on the default ports (127.0.0.1:7400 and :7401): `corelog serve` with no flags
/// in an empty directory, and the client commands with their defaults next to it.
#[test]
fn serve_with_no_flags_works_in_an_empty_directory_with_the_default_client_commands() {
    let dir = test_dir("e2e-serve-defaults");
    let _remove = RemoveOnSuccess(dir.clone());
    common::node::wait_until_port_reusable(7400);
    common::node::wait_until_port_reusable(7401);
    let mut cmd = Command::new(common::node::corelog_bin());
    cmd.arg("serve").current_dir(&dir);
    let mut node = NodeProcess::spawn(cmd).unwrap_or_else(|e| {
        panic!(
            "`corelog serve` with no flags did not start (is something else on 127.0.0.1:7400 \
             or :7401?) {:?}:\n{}",
            e.status, e.stderr
        )
    });
    assert_eq!(node.listen.to_string(), "127.0.0.1:7400");
    assert_eq!(node.stats.to_string(), "127.0.0.1:7401");
    let cpus = corelog::io::online_cpus().len();
    assert_eq!(node.cores, cpus, "every core by default");
    assert_eq!(
        node.partitions as usize, cpus,
        "one partition per core by default"
    );
    let data = dir.join("corelog-data");
    assert_eq!(
        node.tls_dir.canonicalize().expect("tls dir"),
        data.join("tls").canonicalize().expect("tls dir")
    );
    for file in [
        "node.toml",
        "tls/ca.pem",
        "tls/client.pem",
        "tls/client-key.pem",
    ] {
        assert!(data.join(file).is_file(), "{file} in ./corelog-data");
    }

    let out = run_cli(
        &["produce", "--partition", "0"],
        Some(&dir),
        "alpha\nbeta\ngamma\n",
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        stdout(&out),
        "0\n1\n2\n",
        "one offset per line, as acknowledged"
    );
    let out = run_cli(
        &["produce", "--partition", "0", "--value", "delta"],
        Some(&dir),
        "",
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "3\n");

    let out = run_cli(
        &["consume", "--partition", "0", "--format", "json"],
        Some(&dir),
        "",
    );
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let expected = ["alpha", "beta", "gamma", "delta"];
    assert_eq!(lines.len(), expected.len(), "{lines:?}");
    for (i, (line, value)) in lines.iter().zip(expected).enumerate() {
        assert_eq!(line["offset"], i as u64);
        assert_eq!(line["value"], value);
    }
    let out = run_cli(
        &["consume", "--partition", "0", "--from", "1", "--count", "2"],
        Some(&dir),
        "",
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "beta\ngamma\n");

    let out = run_cli(&["servers"], Some(&dir), "");
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let row = text
        .lines()
        .find(|l| l.contains("127.0.0.1:7400"))
        .unwrap_or_else(|| panic!("no server at 127.0.0.1:7400 in:\n{text}"));
    let led: String = (0..cpus)
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",");
    assert!(row.trim_end().ends_with(&led), "{row}");

    let (status, _) = node.http_get("/health");
    assert_eq!(status, 200);
    assert!(node.terminate().success(), "{}", node.stderr());
}

/// SIGTERM while a client has many large produce requests in flight: the node stops reading,
/// acknowledges every request it had read, exits 0, and after a restart holds exactly the
/// acknowledged records.
#[test]
fn sigterm_finishes_in_flight_produces_exits_0_and_the_data_survives_a_restart() {
    const REQUESTS: usize = 128;
    const RECORD_BYTES: usize = 128 << 10;
    let mut node = TestNode::start("e2e-sigterm", &["--partitions", "1"]);
    let config = node.client_config("client");
    let pid = node.pid();
    let (acked, after_signal) = run(move || async move {
        let client = Rc::new(Client::connect(config).await.expect("connect"));
        let signalled: Rc<std::cell::Cell<Option<Instant>>> = Rc::default();
        let tasks: Vec<_> = (0..REQUESTS)
            .map(|i| {
                let client = client.clone();
                let signalled = signalled.clone();
                glommio::spawn_local(async move {
                    let value = Bytes::from(vec![(i % 251) as u8; RECORD_BYTES]);
                    let result = client.produce(0, vec![value.clone()]).await;
                    let late = signalled.get().is_some();
                    (result, value, late)
                })
            })
            .collect();
        // Signal once the first produce is durable, with the rest in flight.
        let mut acked = Vec::new();
        let mut after_signal = 0;
        for (i, task) in tasks.into_iter().enumerate() {
            let (result, value, late) = within(Duration::from_secs(60), task)
                .await
                .expect("every produce finishes");
            match result {
                Ok(r) => {
                    acked.push(Acked {
                        partition: 0,
                        offset: r.base_offset,
                        value,
                    });
                    after_signal += usize::from(late);
                }
                // Sent but never read by the node before it stopped reading.
                Err(ClientError::Connection { .. } | ClientError::Connect { .. }) => {}
                Err(e) => panic!("produce {i}: {e} (a graceful stop answers what it read)"),
            }
            if i == 0 {
                let killed = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .expect("kill");
                assert!(killed.success());
                signalled.set(Some(Instant::now()));
            }
        }
        (acked, after_signal)
    });
    let status = node.wait_exit();
    assert!(
        status.success(),
        "exit status {status:?}:\n{}",
        node.stderr()
    );
    assert!(node.stderr().contains("shutting down"), "{}", node.stderr());
    eprintln!(
        "sigterm: {} of {REQUESTS} produces acknowledged, {after_signal} after the signal",
        acked.len()
    );
    assert!(
        after_signal >= 1,
        "requests in flight at the signal were acknowledged"
    );
    node.node = NodeProcess::start(&node.data_dir(), &["--partitions", "1"]);
    let config = node.client_config("client");
    let expected = acked.clone();
    run(|| async move {
        let client = Client::connect(config).await.expect("connect");
        verify_acked(&client, &expected).await;
        let stored = read_partition(&client, 0).await;
        assert_eq!(
            stored.len(),
            expected.len(),
            "the node holds exactly what it acknowledged"
        );
    });
    assert!(node.terminate().success());
}

#[test]
fn the_partition_count_is_fixed_at_first_start() {
    let mut node = TestNode::start("e2e-partitions-fixed", &["--partitions", "3"]);
    let mut acked = seed_records(&node, 2, "first-start");
    assert!(node.terminate().success());
    let data = node.data_dir();
    let failed = NodeProcess::try_start(&data, &["--partitions", "5"])
        .err()
        .expect("a restart with another partition count fails");
    assert_eq!(failed.status.and_then(|s| s.code()), Some(2), "{failed:?}");
    let message = failed
        .stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in:\n{}", failed.stderr));
    assert!(
        message.contains("created with 3 partitions")
            && message.contains("--partitions 5")
            && message.contains("fixed at first start"),
        "{message}"
    );
    // Without --partitions (or with the same count) it reopens everything.
    node.node = NodeProcess::start(&data, &[]);
    assert_eq!(node.partitions, 3);
    assert_still_serves(&node, &mut acked, "restart-default");
    assert!(node.terminate().success());
    node.node = NodeProcess::start(&data, &["--partitions", "3"]);
    assert_still_serves(&node, &mut acked, "restart-same");
}

/// `corelog certs` writes a CA, a node and a client certificate; `serve` uses the node's, and
/// the client commands use the client's, from the same directory.
#[test]
fn certs_then_serve_with_its_node_certificate_and_client_commands_with_theirs() {
    let dir = test_dir("e2e-certs-cli");
    let _remove = RemoveOnSuccess(dir.clone());
    let tls = dir.join("certs");
    let tls_str = tls.display().to_string();
    let out = run_cli(
        &["certs", "--out", &tls_str, "--node", "n1", "--client", "c1"],
        None,
        "",
    );
    assert!(out.status.success(), "{out:?}");
    for file in [
        "ca.pem",
        "ca-key.pem",
        "n1.pem",
        "n1-key.pem",
        "c1.pem",
        "c1-key.pem",
    ] {
        assert!(tls.join(file).is_file(), "corelog certs wrote {file}");
    }
    let mut node = NodeProcess::start(
        &dir.join("data"),
        &[
            "--partitions",
            "2",
            "--tls-dir",
            &tls_str,
            "--tls-name",
            "n1",
        ],
    );
    assert_eq!(
        node.tls_dir, tls,
        "the node reports the TLS directory it uses"
    );
    assert!(
        !dir.join("data/tls").exists(),
        "no dev certificates were made"
    );
    let addr = node.listen.to_string();
    let client = |cmd: &str, extra: &[&str], stdin: &str| {
        let mut args = vec![
            cmd,
            "--addr",
            &addr,
            "--tls-dir",
            &tls_str,
            "--tls-name",
            "c1",
        ];
        args.extend_from_slice(extra);
        run_cli(&args, None, stdin)
    };
    let out = client("produce", &["--partition", "1"], "one\ntwo\n");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "0\n1\n");
    let out = client("consume", &["--partition", "1"], "");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "one\ntwo\n");
    let out = client("servers", &[], "");
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains(&addr), "{}", stdout(&out));
    // A certificate name that is not there is one clear line, exit 2.
    let out = run_cli(
        &[
            "servers",
            "--addr",
            &addr,
            "--tls-dir",
            &tls_str,
            "--tls-name",
            "nobody",
        ],
        None,
        "",
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(stderr(&out).starts_with("error: "), "{}", stderr(&out));
    assert!(node.terminate().success());
}

/// Regression: a fresh `Client` that pipelined produces to a core it had no connection to yet
/// opened one connection per concurrent request (each saw none and connected), so requests
/// sent in order travelled on different connections and were appended out of order
/// (`corelog produce` printed `1` then `0` for two stdin lines).
#[test]
fn a_fresh_client_pipelining_to_a_core_it_has_not_connected_to_keeps_send_order() {
    const REQUESTS: u64 = 16;
    let cores = cores_flag();
    let node = TestNode::start(
        "e2e-fresh-pipeline",
        &["--cores", &cores, "--partitions", "2"],
    );
    let config = node.client_config("client");
    run(|| async move {
        let client = Client::connect(config).await.expect("connect");
        let meta = client.metadata().await.expect("metadata");
        // The partition of the highest core: not core 0, which metadata already connected to.
        let partition = meta
            .partitions
            .iter()
            .max_by_key(|p| p.owner_core)
            .expect("partitions")
            .partition;
        let results = futures::future::join_all(
            (0..REQUESTS).map(|i| client.produce(partition, vec![Bytes::from(format!("{i}"))])),
        )
        .await;
        for (i, result) in results.into_iter().enumerate() {
            let r = result.expect("produce");
            assert_eq!(
                r.base_offset, i as u64,
                "request {i} was appended in send order"
            );
        }
    });
}

/// A node restarted on the same fixed ports right after a graceful shutdown, as an operator's
/// `restart` does. The shutdown closes client connections from the node's side, so their
/// TIME_WAIT (60 s) sits on the node's ports; binding must not trip over it.
#[test]
fn serve_restarts_on_the_same_fixed_ports_right_after_a_graceful_shutdown() {
    let dir = test_dir("e2e-restart-fixed-ports");
    let _remove = RemoveOnSuccess(dir.clone());
    let listen = format!("127.0.0.1:{}", common::node::free_port());
    let stats = format!("127.0.0.1:{}", common::node::free_port());
    let args = [
        "--partitions",
        "1",
        "--listen",
        &listen,
        "--stats-listen",
        &stats,
    ];
    let mut node = NodeProcess::start(&dir.join("data"), &args);
    // A connection open through the shutdown: the node closes it first.
    let mut conn = node.raw(0);
    let response = conn.call(
        1,
        &Request::Produce(ProduceRequest {
            partition: 0,
            records: vec![Bytes::from("kept")],
        }),
    );
    assert!(matches!(
        response,
        corelog::net::frame::Response::Produce(_)
    ));
    node.send_sigterm();
    let _ = conn.expect_end();
    assert!(node.wait_exit().success());
    let restarted = NodeProcess::try_start(&dir.join("data"), &args);
    match restarted {
        Ok(mut node) => assert!(node.terminate().success()),
        Err(e) => panic!("restart on {listen} failed: {}", e.stderr),
    }
}
