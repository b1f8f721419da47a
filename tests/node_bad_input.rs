//! Bad input and load against the real `corelog` binary on loopback, with real certificates.
//!
//! Each test starts a node, has a well-behaved client produce some records, does one bad thing
//! on its own connection (bytes written with a raw TCP socket, or inside TLS with rustls's
//! blocking `StreamOwned` and the crate's `FrameDecoder`), checks the answer the protocol
//! promises (docs/PROTOCOL.md §6–§8: a typed error or a close, of the offending connection
//! only), and then checks that the node still serves a good client and that every record
//! acknowledged before is still there, byte-identical.

mod common;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::node::{
    Acked, Ending, RawConn, TestNode, assert_still_serves, error_count, read_partition,
    read_until_closed, rss_bytes_of, run_cli, seed_records, server_error, tcp, tls_config,
};
use corelog::Partition;
use corelog::client::Client;
use corelog::net::errors::ServerError;
use corelog::net::frame::{Request, Response};
use corelog::net::preamble::{ConnKind, Preamble};
use corelog::proto::{
    ConsumeRequest, MetadataRequest, ProduceRequest, SubscribeCancel, SubscribeRequest,
};

/// Frame kind bytes used raw.
const KIND_PRODUCE: u8 = 0x01;
const KIND_CONSUME: u8 = 0x02;
const KIND_METADATA: u8 = 0x06;
const KIND_PRODUCE_RESPONSE: u8 = 0x81;

fn produce(partition: u32, value: &str) -> Request {
    Request::Produce(ProduceRequest {
        partition,
        records: vec![Bytes::from(value.to_string())],
    })
}

fn consume(partition: u32, offset: u64) -> Request {
    Request::Consume(ConsumeRequest {
        partition,
        offset,
        max_bytes: 0,
        max_wait_ms: 0,
        linearizable: false,
    })
}

fn metadata() -> Request {
    Request::Metadata(MetadataRequest {})
}

/// The base offset of a produce answer; panics on anything else.
fn produced(response: Response) -> u64 {
    match response {
        Response::Produce(r) => r.base_offset,
        other => panic!("expected a produce response, got {other:?}"),
    }
}

fn bad_request(response: &Response) -> bool {
    matches!(server_error(response), ServerError::BadRequest { .. })
}

#[test]
fn garbage_instead_of_a_preamble_is_closed_without_a_reply() {
    let node = TestNode::start("bad-preamble", &["--partitions", "2"]);
    let mut acked = seed_records(&node, 3, "before");
    let good = Preamble::new(ConnKind::Client, 0).encode();
    let mut wrong_version = good;
    wrong_version[4] = 9;
    let mut unknown_kind = good;
    unknown_kind[5] = 7;
    let no_such_core = Preamble::new(ConnKind::Client, 200).encode();
    let cases: [(&str, &[u8]); 5] = [
        (
            "an HTTP request",
            b"GET / HTTP/1.1\r\nHost: corelog\r\n\r\n",
        ),
        // A TLS ClientHello record header: a TLS client that skipped the preamble.
        (
            "a TLS record",
            &[0x16, 0x03, 0x01, 0x00, 0xF0, 0x01, 0x00, 0x00, 0xEC],
        ),
        ("a wrong version", &wrong_version),
        ("an unknown kind", &unknown_kind),
        ("a core the node does not have", &no_such_core),
    ];
    for (what, bytes) in cases {
        let mut sock = tcp(node.listen);
        sock.write_all(bytes).expect("send");
        let reply = read_until_closed(&mut sock);
        assert!(reply.is_empty(), "{what}: the server replied {reply:?}");
    }
    // Half a preamble, then EOF.
    let mut sock = tcp(node.listen);
    sock.write_all(&good[..4]).expect("send");
    sock.shutdown(std::net::Shutdown::Write).expect("shutdown");
    assert!(read_until_closed(&mut sock).is_empty(), "half a preamble");

    let bad = node.stats_json()["bad_preambles"].as_u64().unwrap_or(0);
    assert!(bad >= 6, "/stats counts the bad preambles: {bad}");
    assert_still_serves(&node, &mut acked, "after-bad-preambles");
}

#[test]
fn a_valid_preamble_then_garbage_fails_tls_and_is_closed() {
    let node = TestNode::start("preamble-then-garbage", &["--partitions", "1"]);
    let mut acked = seed_records(&node, 3, "before");
    let mut sock = tcp(node.listen);
    sock.write_all(&Preamble::new(ConnKind::Client, 0).encode())
        .expect("preamble");
    sock.write_all(&[b'x'; 300]).expect("garbage");
    let reply = read_until_closed(&mut sock);
    // At most a TLS alert record (content type 21), never a frame.
    assert!(
        reply.len() < 64 && reply.first().is_none_or(|&b| b == 21),
        "the server answered garbage with {reply:?}"
    );
    assert!(error_count(&node, "tls_handshake") >= 1);
    assert_still_serves(&node, &mut acked, "after-garbage-tls");
}

#[test]
fn a_frame_over_the_size_limit_gets_frame_too_large_then_the_connection_closes() {
    let node = TestNode::start(
        "frame-too-large",
        &["--partitions", "1", "--frame-bytes-max", "65536"],
    );
    let mut acked = seed_records(&node, 3, "before");

    // A produce frame under the limit is accepted.
    let mut conn = node.raw(0);
    let value = Bytes::from(vec![b'f'; 60_000]);
    let fits = Request::Produce(ProduceRequest {
        partition: 0,
        records: vec![value.clone()],
    });
    let offset = produced(conn.call(3, &fits));
    acked.push(Acked {
        partition: 0,
        offset,
        value,
    });

    // One byte over the limit is refused as soon as the header arrives: only the header is
    // sent (unread body bytes could make the server's close a reset that loses the answer).
    let frame_bytes: u32 = 65_537;
    let mut header = (frame_bytes - 4).to_be_bytes().to_vec();
    header.push(KIND_PRODUCE);
    header.extend_from_slice(&9u32.to_be_bytes());
    conn.write_bytes(&header).expect("send the header");
    let (corr, response) = conn.recv();
    assert_eq!(corr, 9, "the error names the frame's correlation id");
    assert_eq!(
        server_error(&response),
        ServerError::FrameTooLarge {
            frame_bytes: 65_537,
            frame_bytes_max: 65_536
        }
    );
    assert!(matches!(conn.expect_end(), Ending::Closed));

    // A length of 4 GiB is refused the same way, without the node allocating it.
    let mut conn = node.raw(0);
    let mut header = u32::MAX.to_be_bytes().to_vec();
    header.push(KIND_PRODUCE);
    header.extend_from_slice(&10u32.to_be_bytes());
    conn.write_bytes(&header).expect("send the header");
    let (corr, response) = conn.recv();
    assert_eq!(corr, 10);
    assert!(matches!(
        server_error(&response),
        ServerError::FrameTooLarge { frame_bytes, .. } if frame_bytes == 4 + u64::from(u32::MAX)
    ));
    assert!(matches!(conn.expect_end(), Ending::Closed));
    assert!(error_count(&node, "frame_too_large") >= 2);
    assert_still_serves(&node, &mut acked, "after-frame-too-large");
}

/// PROTOCOL.md §4/§7: "The whole frame must fit frame_bytes_max" and the batch limit "follows
/// the frame limit". But the node sets the log's batch limit to `frame_bytes_max` itself, and a
/// stored batch is larger than the frame that carried it (a 56-byte batch header, 4 bytes per
/// record instead of 2–6), so a produce frame near the limit is refused as a too-large batch.
#[test]
fn a_produce_frame_of_exactly_the_size_limit_is_accepted() {
    let node = TestNode::start(
        "frame-at-limit",
        &["--partitions", "1", "--frame-bytes-max", "65536"],
    );
    let mut acked = seed_records(&node, 1, "before");
    let mut conn = node.raw(0);
    let mut len = 65_000;
    let (request, value) = loop {
        let value = Bytes::from(vec![b'f'; len]);
        let request = Request::Produce(ProduceRequest {
            partition: 0,
            records: vec![value.clone()],
        });
        match request.frame_bytes() {
            65_536 => break (request, value),
            n if n < 65_536 => len += 1,
            n => panic!("no record length gives a 65536-byte frame (got {n})"),
        }
    };
    let offset = produced(conn.call(3, &request));
    acked.push(Acked {
        partition: 0,
        offset,
        value,
    });
    assert_still_serves(&node, &mut acked, "after-frame-at-limit");
}

/// However a client's bytes arrive, the node reassembles its frames: a produce larger than 64
/// KiB (the size at which a frame gets a read buffer of its own) whose 9-byte header comes in
/// two pieces and its body in more, then a small produce and another large one that arrive in
/// one write behind the end of the first. All three are acknowledged in order, at consecutive
/// offsets, and read back intact.
#[test]
fn large_and_small_frames_split_anywhere_are_reassembled_in_order() {
    let node = TestNode::start("frame-pieces", &["--partitions", "1"]);
    let mut acked = seed_records(&node, 1, "before");
    let mut conn = node.raw(0);
    let values = [
        (11, Bytes::from(vec![b'a'; 100_000])),
        (12, Bytes::from_static(b"small")),
        (13, Bytes::from(vec![b'b'; 70_000])),
    ];
    let mut bytes = bytes::BytesMut::new();
    for (corr, value) in &values {
        produce_bytes(value.clone()).encode(*corr, &mut bytes);
    }
    // 3 and 4 bytes of the first header, then uneven pieces of its body; the rest (its end,
    // the small frame and the second large one) in one write.
    let mut from = 0;
    for to in [3, 7, 20_007, 20_008, 60_000, bytes.len()] {
        conn.write_bytes(&bytes[from..to]).expect("write a piece");
        from = to;
        // Not a bound: lets the node read each piece on its own.
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut last = None;
    for (corr, value) in values {
        let (got, response) = conn.recv();
        assert_eq!(got, corr, "answers in request order");
        let offset = produced(response);
        if let Some(last) = last {
            assert_eq!(offset, last + 1, "consecutive offsets");
        }
        last = Some(offset);
        acked.push(Acked {
            partition: 0,
            offset,
            value,
        });
    }
    assert_still_serves(&node, &mut acked, "after-pieces");
}

/// A client's produce of several MiB: its header alone buys a read buffer of at most 1 MiB
/// (`CLIENT_BUFFER_AHEAD_MAX_BYTES`), which then grows with the bytes received. Sent in
/// 256 KiB pieces so the node reads it across several buffers; acknowledged and read back
/// intact.
#[test]
fn a_client_frame_of_several_mib_is_read_as_it_arrives() {
    let node = TestNode::start("frame-growing", &["--partitions", "1"]);
    let mut acked = seed_records(&node, 1, "before");
    let mut conn = node.raw(0);
    let values: Vec<Bytes> = (0..3u8)
        .map(|i| Bytes::from(vec![b'm' + i; 1 << 20]))
        .collect();
    let mut bytes = bytes::BytesMut::new();
    Request::Produce(ProduceRequest {
        partition: 0,
        records: values.clone(),
    })
    .encode(21, &mut bytes);
    assert!(bytes.len() > 3 << 20);
    for piece in bytes.chunks(256 << 10) {
        conn.write_bytes(piece).expect("write a piece");
        // Not a bound: lets the node read each piece on its own.
        std::thread::sleep(Duration::from_millis(5));
    }
    let (corr, response) = conn.recv();
    assert_eq!(corr, 21);
    let base = produced(response);
    for (i, value) in values.into_iter().enumerate() {
        acked.push(Acked {
            partition: 0,
            offset: base + i as u64,
            value,
        });
    }
    assert_still_serves(&node, &mut acked, "after-several-mib");
}

fn produce_bytes(value: Bytes) -> Request {
    Request::Produce(ProduceRequest {
        partition: 0,
        records: vec![value],
    })
}

#[test]
fn a_truncated_frame_then_eof_closes_the_connection_and_appends_nothing() {
    let node = TestNode::start("truncated-frame", &["--partitions", "1"]);
    let mut acked = seed_records(&node, 3, "before");
    let mut conn = node.raw(0);
    let request = produce(0, &"truncated-".repeat(100));
    let mut frame = bytes::BytesMut::new();
    request.encode(5, &mut frame);
    conn.write_bytes(&frame[..frame.len() / 2])
        .expect("send half a frame");
    conn.close_write();
    assert!(matches!(conn.expect_end(), Ending::Closed));

    // Also a header cut short.
    let mut conn = node.raw(0);
    conn.write_bytes(&frame[..6])
        .expect("send part of a header");
    conn.close_write();
    assert!(matches!(conn.expect_end(), Ending::Closed));

    // And a frame large enough for a read buffer of its own (over 64 KiB), cut short.
    let mut large = bytes::BytesMut::new();
    produce_bytes(Bytes::from(vec![b't'; 100_000])).encode(6, &mut large);
    let mut conn = node.raw(0);
    conn.write_bytes(&large[..70_000])
        .expect("send most of a large frame");
    conn.close_write();
    assert!(matches!(conn.expect_end(), Ending::Closed));

    assert_still_serves(&node, &mut acked, "after-truncated");
    let config = node.client_config("client");
    let stored = common::run(|| async move {
        let client = Client::connect(config).await.expect("connect");
        read_partition(&client, 0).await
    });
    assert_eq!(stored.len(), 4, "only the acknowledged records: {stored:?}");
}

#[test]
fn a_body_that_is_not_protobuf_is_bad_request_and_the_connection_stays_usable() {
    let node = TestNode::start("bad-body", &["--partitions", "1"]);
    let mut acked = seed_records(&node, 3, "before");
    let mut conn = node.raw(0);
    let bodies: [(&str, u8, &[u8]); 4] = [
        ("an invalid wire type", KIND_PRODUCE, &[0xFF, 0xFF, 0xFF]),
        ("a truncated field", KIND_CONSUME, &[0x0A]),
        ("partition as bytes", KIND_PRODUCE, &[0x0A, 0x01, 0x41]),
        // Valid protobuf, but a produce with no records.
        ("no records", KIND_PRODUCE, &[0x08, 0x00]),
    ];
    for (i, (what, kind, body)) in bodies.into_iter().enumerate() {
        let corr = 100 + i as u32;
        conn.send_frame(kind, corr, body).expect("send");
        let (got, response) = conn.recv();
        assert_eq!(got, corr, "{what}");
        assert!(bad_request(&response), "{what}: {response:?}");
    }
    let offset = produced(conn.call(7, &produce(0, "after-bad-bodies")));
    acked.push(Acked {
        partition: 0,
        offset,
        value: Bytes::from("after-bad-bodies"),
    });
    assert!(error_count(&node, "bad_body") >= 3);
    assert_still_serves(&node, &mut acked, "after-bad-body");
}

#[test]
fn an_unknown_request_kind_is_bad_request_and_the_connection_stays_usable() {
    let node = TestNode::start("unknown-kind", &["--partitions", "1"]);
    let mut acked = seed_records(&node, 3, "before");
    let mut conn = node.raw(0);
    // An unassigned kind, a peer kind on a client connection, and a response kind.
    for (corr, kind) in [(11u32, 0x30u8), (12, 0x40), (13, KIND_PRODUCE_RESPONSE)] {
        conn.send_frame(kind, corr, &[0x08, 0x01]).expect("send");
        let (got, response) = conn.recv();
        assert_eq!(got, corr, "kind {kind:#04x}");
        assert!(bad_request(&response), "kind {kind:#04x}: {response:?}");
    }
    assert!(matches!(conn.call(14, &metadata()), Response::Metadata(_)));
    let offset = produced(conn.call(15, &produce(0, "after-unknown-kinds")));
    acked.push(Acked {
        partition: 0,
        offset,
        value: Bytes::from("after-unknown-kinds"),
    });

    // Correlation id 0 is the server's: BAD_REQUEST on id 0, and the connection closes.
    conn.send_frame(KIND_METADATA, 0, &[]).expect("send");
    let (corr, response) = conn.recv();
    assert_eq!(corr, 0);
    assert!(bad_request(&response), "{response:?}");
    assert!(matches!(conn.expect_end(), Ending::Closed));
    assert_still_serves(&node, &mut acked, "after-unknown-kind");
}

#[test]
fn an_unknown_partition_is_unknown_partition_and_the_connection_stays_usable() {
    let node = TestNode::start("unknown-partition", &["--partitions", "2"]);
    let mut acked = seed_records(&node, 3, "before");
    let mut conn = node.raw(0);
    let unknown = ServerError::UnknownPartition {
        partition: Partition(99),
    };
    assert_eq!(server_error(&conn.call(1, &produce(99, "x"))), unknown);
    assert_eq!(server_error(&conn.call(2, &consume(99, 0))), unknown);
    let subscribe = Request::Subscribe(SubscribeRequest {
        partition: 99,
        offset: 0,
        max_bytes: 0,
        credits: 4,
    });
    assert_eq!(server_error(&conn.call(3, &subscribe)), unknown);
    // The subscription ended with the error; a cancel is still answered.
    let cancelled = conn.call(3, &Request::SubscribeCancel(SubscribeCancel {}));
    assert!(
        matches!(cancelled, Response::SubscribeCancel(_)),
        "{cancelled:?}"
    );
    assert!(matches!(conn.call(4, &consume(0, 0)), Response::Consume(_)));
    assert_still_serves(&node, &mut acked, "after-unknown-partition");
}

#[test]
fn a_partition_on_the_wrong_core_is_wrong_core_with_the_owner_and_is_not_applied() {
    if corelog::io::online_cpus().len() < 2 {
        eprintln!("skipped: needs 2 CPUs for 2 cores");
        return;
    }
    let node = TestNode::start("wrong-core", &["--cores", "2", "--partitions", "4"]);
    let mut acked = seed_records(&node, 2, "before");
    let mut core0 = node.raw(0);
    let Response::Metadata(meta) = core0.call(1, &metadata()) else {
        panic!("metadata");
    };
    assert_eq!(meta.cores, 2);
    let elsewhere = meta
        .partitions
        .iter()
        .find(|p| p.owner_core != 0)
        .expect("a partition owned by core 1");
    let (p, owner) = (elsewhere.partition, elsewhere.owner_core);
    let hw_before = elsewhere.high_watermark;
    let wrong = ServerError::WrongCore {
        partition: Partition(p),
        core: owner,
    };
    assert_eq!(
        server_error(&core0.call(2, &produce(p, "misrouted"))),
        wrong
    );
    assert_eq!(server_error(&core0.call(3, &consume(p, 0))), wrong);
    // The owner core takes it; the misrouted produce was not applied.
    let mut owner_conn = node.raw(owner as u16);
    let offset = produced(owner_conn.call(1, &produce(p, "routed")));
    assert_eq!(offset, hw_before, "the wrong-core produce appended nothing");
    acked.push(Acked {
        partition: p,
        offset,
        value: Bytes::from("routed"),
    });
    assert!(error_count(&node, "wrong_core") >= 2);
    assert_still_serves(&node, &mut acked, "after-wrong-core");
}

#[test]
fn a_client_without_a_certificate_is_rejected_in_the_handshake() {
    let node = TestNode::start("no-client-cert", &["--partitions", "1"]);
    let mut acked = seed_records(&node, 3, "before");
    let anonymous = tls_config(&node.tls_dir.join("ca.pem"), None);
    expect_rejected(&node, anonymous);
    assert!(error_count(&node, "tls_handshake") >= 1);
    assert_still_serves(&node, &mut acked, "after-no-cert");
}

#[test]
fn a_certificate_from_another_ca_is_rejected_in_the_handshake() {
    let node = TestNode::start("other-ca", &["--partitions", "1"]);
    let mut acked = seed_records(&node, 3, "before");
    let other = node.dir.join("other-ca");
    let out = run_cli(
        &[
            "certs",
            "--out",
            &other.display().to_string(),
            "--client",
            "mallory",
        ],
        None,
        "",
    );
    assert!(out.status.success(), "{out:?}");
    // Mallory trusts the node's CA; only her own certificate is from elsewhere.
    let mallory = tls_config(
        &node.tls_dir.join("ca.pem"),
        Some((&other.join("mallory.pem"), &other.join("mallory-key.pem"))),
    );
    expect_rejected(&node, mallory);
    assert!(error_count(&node, "tls_handshake") >= 1);
    assert_still_serves(&node, &mut acked, "after-other-ca");
}

/// The handshake fails, or (TLS 1.3: the client finishes first) the first request gets no
/// answer and the connection ends.
fn expect_rejected(node: &TestNode, tls: Arc<rustls::ClientConfig>) {
    match RawConn::open(node.listen, 0, tls) {
        Err(_) => {}
        Ok(mut conn) => {
            // The server's alert may already have closed the socket.
            let _ = conn.send(1, &metadata());
            let _ = conn.expect_end();
        }
    }
}

#[test]
fn a_subject_the_acl_denies_gets_unauthorized_and_the_connection_stays_open() {
    let dir = common::test_dir("acl-denies-subject");
    let _remove = common::RemoveOnSuccess(dir.clone());
    let acl = dir.join("acl.csv");
    std::fs::write(
        &acl,
        "# only the dev client\nclient, *, *\nclient, cluster, consume\n",
    )
    .expect("write the ACL");
    let node = TestNode::start(
        "acl-denies-subject-node",
        &["--partitions", "2", "--acl", &acl.display().to_string()],
    );
    let mut acked = seed_records(&node, 3, "before");
    // eve is signed by the node's own CA, but the ACL does not name her.
    let out = run_cli(
        &[
            "certs",
            "--out",
            &node.tls_dir.display().to_string(),
            "--client",
            "eve",
        ],
        None,
        "",
    );
    assert!(out.status.success(), "{out:?}");
    let eve = corelog::net::tls::client_config(&node.tls_dir, "eve").expect("eve's config");
    let mut conn = RawConn::open(node.listen, 0, eve).expect("eve completes TLS");
    let denied = |action: &str, object: &str| ServerError::Unauthorized {
        action: action.to_string(),
        object: object.to_string(),
    };
    assert_eq!(
        server_error(&conn.call(1, &produce(0, "eve"))),
        denied("produce", "partition 0")
    );
    assert_eq!(
        server_error(&conn.call(2, &consume(0, 0))),
        denied("consume", "partition 0")
    );
    assert_eq!(
        server_error(&conn.call(3, &metadata())),
        denied("consume", "cluster")
    );
    let subscribe = Request::Subscribe(SubscribeRequest {
        partition: 0,
        offset: 0,
        max_bytes: 0,
        credits: 1,
    });
    assert_eq!(
        server_error(&conn.call(4, &subscribe)),
        denied("consume", "partition 0")
    );
    assert!(error_count(&node, "unauthorized") >= 3);
    assert_still_serves(&node, &mut acked, "after-acl-denies");
}

/// Fault model: a client pipelines 200 MiB of produce requests as fast as it can and never
/// reads a response. The node must not buffer what it cannot append yet: it stops reading the
/// connection while the flooded partition's append queue (64 MiB) is full or `in_flight_max`
/// responses wait to be written (TCP backpressure), so its RSS stays far below the bytes thrown
/// at it, and another client is served meanwhile, on the flooded partition and on another one
/// of the same core (`--cores 1`: the flood and the good client share it).
#[test]
fn a_client_that_floods_produce_requests_and_never_reads_leaves_node_memory_bounded() {
    const FLOOD_BYTES: usize = 200 << 20;
    const RECORD_BYTES: usize = 64 << 10;
    /// Growth over the idle RSS that the node may reach: queue and cache of the flooded
    /// partition, buffers, and slack.
    const RSS_GROWTH_BYTES_MAX: u64 = 160 << 20;
    let node = TestNode::start(
        "never-reads-produce",
        &[
            "--partitions",
            "2",
            "--cores",
            "1",
            "--segment-bytes",
            "268435456",
        ],
    );
    let mut acked = seed_records(&node, 3, "before");
    let request = Request::Produce(ProduceRequest {
        partition: 0,
        records: vec![Bytes::from(vec![b'w'; RECORD_BYTES])],
    });
    let flood = flood(
        &node,
        &request,
        FLOOD_BYTES / RECORD_BYTES,
        RSS_GROWTH_BYTES_MAX,
    );
    // Every flood request the node read was appended; those it had not read when the flooder
    // hung up may or may not be (they were never answered).
    let config = node.client_config("client");
    let stored = common::run(|| async move {
        let client = Client::connect(config).await.expect("connect");
        read_partition(&client, 0).await
    });
    let flooded = stored.values().filter(|v| v.len() == RECORD_BYTES).count();
    assert!(
        flooded > 0 && flooded <= flood.requests_sent,
        "{flooded} flood records stored"
    );
    acked.extend(flood.good_acked);
    assert_still_serves(&node, &mut acked, "after-produce-flood");
}

/// Fault model: a client pipelines consume requests for 1 MiB each and never reads a response.
/// Requests are tiny, responses large: unless the node bounds the response bytes it holds per
/// connection, `in_flight_max` (1024) responses of up to a frame each pile up in memory.
#[test]
fn a_client_that_floods_consume_requests_and_never_reads_leaves_node_memory_bounded() {
    const DATA_RECORDS: u32 = 32;
    const RECORD_BYTES: usize = 1 << 20;
    const RSS_GROWTH_BYTES_MAX: u64 = 256 << 20;
    let node = TestNode::start(
        "never-reads-consume",
        &[
            "--partitions",
            "2",
            "--cores",
            "1",
            "--segment-bytes",
            "268435456",
        ],
    );
    let mut acked = seed_records(&node, 3, "before");
    let mut conn = node.raw(0);
    for i in 0..DATA_RECORDS {
        let value = Bytes::from(vec![i as u8; RECORD_BYTES]);
        let request = Request::Produce(ProduceRequest {
            partition: 1,
            records: vec![value.clone()],
        });
        let offset = produced(conn.call(i + 1, &request));
        acked.push(Acked {
            partition: 1,
            offset,
            value,
        });
    }
    drop(conn);
    let request = Request::Consume(ConsumeRequest {
        partition: 1,
        offset: 3,
        max_bytes: RECORD_BYTES as u32,
        max_wait_ms: 0,
        linearizable: false,
    });
    let flood = flood(&node, &request, 1000, RSS_GROWTH_BYTES_MAX);
    acked.extend(flood.good_acked);
    assert_still_serves(&node, &mut acked, "after-consume-flood");
}

/// What [`flood`] saw.
struct Flood {
    requests_sent: usize,
    good_acked: Vec<Acked>,
}

/// Writes `request` `count` times on one connection to core 0, never reading, while sampling
/// the node's RSS and running a well-behaved client on partitions 0 and 1; then waits until
/// the node has settled (its RSS stops growing), and asserts the peak stayed within
/// `rss_growth_bytes_max` of the idle RSS and that the good client was served on both
/// partitions while the flooding connection was open.
fn flood(node: &TestNode, request: &Request, count: usize, rss_growth_bytes_max: u64) -> Flood {
    /// How long the flooder may be blocked on a write before it counts as backpressure.
    const WRITE_BLOCKED: Duration = Duration::from_secs(2);
    /// How long the flood (writing, then the node working through what it read) may last.
    const FLOOD_TIME_MAX: Duration = Duration::from_secs(120);
    let baseline = node.rss_bytes();
    let writing = Arc::new(AtomicBool::new(true));
    let stop = Arc::new(AtomicBool::new(false));
    let flooder = {
        let mut conn = node.raw(0);
        let writing = writing.clone();
        let mut frame = bytes::BytesMut::new();
        let request = request.clone();
        std::thread::spawn(move || {
            conn.stream
                .sock
                .set_write_timeout(Some(WRITE_BLOCKED))
                .expect("timeout");
            let mut sent = 0;
            let mut blocked = false;
            for corr in 1..=count as u32 {
                frame.clear();
                request.encode(corr, &mut frame);
                if conn.write_bytes(&frame).is_err() {
                    blocked = true;
                    break;
                }
                sent += 1;
            }
            writing.store(false, Ordering::Relaxed);
            (sent, blocked, conn)
        })
    };
    let peak = Arc::new(AtomicU64::new(baseline));
    let sampler = {
        let stop = stop.clone();
        let peak = peak.clone();
        let pid = node.pid();
        std::thread::spawn(move || {
            for _ in 0..100_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if let Some(rss) = rss_bytes_of(pid) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    // A good client, on its own connection, until the flooder is done and the node's memory
    // has settled.
    let config = node.client_config("client");
    let (good_acked, good_while_writing) = {
        let writing = writing.clone();
        let peak = peak.clone();
        common::run(|| async move {
            let client = Client::connect(config).await.expect("connect");
            let mut acked = Vec::new();
            let mut during = 0;
            let started = Instant::now();
            let mut settled_since = None;
            let mut last_peak = 0;
            for i in 0..100_000 {
                assert!(
                    started.elapsed() < FLOOD_TIME_MAX,
                    "the flood did not settle within {FLOOD_TIME_MAX:?}"
                );
                let flooding = writing.load(Ordering::Relaxed);
                let p = i % 2;
                let value = Bytes::from(format!("during-flood-p{p}-{i}"));
                let r = client
                    .produce(p, vec![value.clone()])
                    .await
                    .unwrap_or_else(|e| panic!("good produce {i} to partition {p}: {e}"));
                acked.push(Acked {
                    partition: p,
                    offset: r.base_offset,
                    value,
                });
                if flooding && p == 1 {
                    during += 1;
                }
                // Settled: the flooder stopped and the peak has not moved for a second.
                let now = peak.load(Ordering::Relaxed);
                if now != last_peak || flooding {
                    last_peak = now;
                    settled_since = None;
                } else if settled_since.get_or_insert_with(Instant::now).elapsed()
                    > Duration::from_secs(1)
                {
                    break;
                }
                corelog::io::sleep(Duration::from_millis(5)).await;
            }
            (acked, during)
        })
    };
    stop.store(true, Ordering::Relaxed);
    let (sent, blocked, conn) = flooder.join().expect("flooder");
    sampler.join().expect("sampler");
    let peak = peak.load(Ordering::Relaxed);
    let request_bytes = request.frame_bytes() * sent;
    eprintln!(
        "flood: {sent} requests, {} MiB sent (blocked: {blocked}); node RSS {} MiB idle, {} MiB \
         peak; {} good produces, {good_while_writing} to partition 1 while the flooder wrote",
        request_bytes >> 20,
        baseline >> 20,
        peak >> 20,
        good_acked.len(),
    );
    assert!(
        peak < baseline + rss_growth_bytes_max,
        "node RSS grew from {} MiB to {} MiB under the flood",
        baseline >> 20,
        peak >> 20
    );
    for p in 0..2 {
        assert!(
            good_acked.iter().any(|a| a.partition == p),
            "the good client was served on partition {p} during the flood"
        );
    }
    drop(conn);
    Flood {
        requests_sent: sent,
        good_acked,
    }
}

#[test]
fn idle_connections_beyond_the_limit_get_overloaded_on_id_0_and_others_are_served() {
    const PER_CORE: usize = 8;
    let cores = corelog::io::online_cpus().len().min(2);
    let connections_max = (PER_CORE * cores).to_string();
    let cores_flag = cores.to_string();
    let node = TestNode::start(
        "connection-limit",
        &[
            "--cores",
            &cores_flag,
            "--partitions",
            &cores_flag,
            "--connections-max",
            &connections_max,
        ],
    );
    let mut acked = seed_records(&node, 3, "before");
    wait_for_open_connections(&node, 0);
    // Fill core 0 with idle connections (each answered once, so the server counts it).
    let mut idle: Vec<RawConn> = (0..PER_CORE)
        .map(|i| {
            let mut conn = node.raw(0);
            assert!(
                matches!(conn.call(1, &metadata()), Response::Metadata(_)),
                "idle connection {i}"
            );
            conn
        })
        .collect();
    for _ in 0..4 {
        let mut conn = node.raw(0);
        let (corr, response) = conn.recv();
        assert_eq!(corr, 0, "a connection-level error");
        let err = server_error(&response);
        assert!(
            matches!(&err, ServerError::Overloaded { message } if message.contains("connection limit")),
            "{err}"
        );
        assert!(matches!(conn.expect_end(), Ending::Closed));
    }
    assert!(error_count(&node, "connection_limit") >= 4);
    if cores > 1 {
        // Core 1 has its own share and still serves.
        let mut other = node.raw(1);
        assert!(matches!(other.call(1, &metadata()), Response::Metadata(_)));
    }
    // Closing one idle connection frees its slot.
    drop(idle.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut conn = loop {
        let mut conn = node.raw(0);
        conn.send(1, &metadata()).expect("send");
        let (corr, response) = conn.recv();
        if corr == 1 {
            assert!(matches!(response, Response::Metadata(_)), "{response:?}");
            break conn;
        }
        assert!(Instant::now() < deadline, "the freed slot was never reused");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(matches!(conn.call(2, &metadata()), Response::Metadata(_)));
    drop(conn);
    drop(idle);
    wait_for_open_connections(&node, 0);
    assert_still_serves(&node, &mut acked, "after-connection-limit");
}

/// Waits (bounded) until `/stats` shows `open` connections.
fn wait_for_open_connections(node: &TestNode, open: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = node.stats_json()["connections"]["open"].as_u64();
        if now == Some(open) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{now:?} connections open, expected {open}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
