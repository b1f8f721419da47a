//! The node started in-process on loopback with real TLS: produce, consume, subscribe,
//! metadata, routing to the owner core.

mod common;

use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use common::{run, test_dir};
use corelog::client::{Client, ClientConfig, ClientError};
use corelog::config::{NodeConfig, ServeArgs};
use corelog::net::errors::ServerError;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    serve: ServeArgs,
}

fn start_node(name: &str, extra: &[&str]) -> (corelog::node::NodeHandle, std::path::PathBuf) {
    let dir = test_dir(name);
    let data = dir.join("data");
    let mut argv = vec![
        "serve".to_string(),
        "--data-dir".into(),
        data.display().to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--stats-listen".into(),
        "127.0.0.1:0".into(),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    let args = Args::parse_from(argv);
    let config = NodeConfig::from_args(&args.serve, &corelog::io::online_cpus()).unwrap();
    let node = corelog::node::start(config).unwrap();
    (node, dir)
}

#[test]
fn produce_then_consume_on_every_partition() {
    let (node, _dir) = start_node("inproc-roundtrip", &["--partitions", "4"]);
    let addr = node.listen;
    let tls_dir = node.tls_dir.clone();
    run(|| async move {
        let cfg = ClientConfig::new(addr, &tls_dir, "client").unwrap();
        let client = Client::connect(cfg).await.unwrap();
        let meta = client.metadata().await.unwrap();
        assert_eq!(meta.partitions.len(), 4);
        for p in 0..4u32 {
            for i in 0..10u32 {
                let r = client
                    .produce(p, vec![Bytes::from(format!("p{p}-r{i}"))])
                    .await
                    .unwrap();
                assert_eq!(r.base_offset, i as u64);
            }
            let got = client.consume(p, 0, 1 << 20, Duration::ZERO).await.unwrap();
            assert_eq!(got.records.len(), 10);
            assert_eq!(got.high_watermark, 10);
            for (i, r) in got.records.iter().enumerate() {
                assert_eq!(r.offset, i as u64);
                assert_eq!(r.value, Bytes::from(format!("p{p}-r{i}")));
            }
        }
        let err = client
            .consume(9, 0, 1024, Duration::ZERO)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::Server(ServerError::UnknownPartition { .. })
            ),
            "{err}"
        );
        let err = client
            .consume(0, 100, 1024, Duration::ZERO)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::Server(ServerError::OffsetOutOfRange { .. })
            ),
            "{err}"
        );
    });
    node.shutdown();
    node.join().unwrap();
}

#[test]
fn long_poll_consume_wakes_on_new_data_and_subscribe_streams() {
    let (node, _dir) = start_node("inproc-longpoll", &["--partitions", "1"]);
    let addr = node.listen;
    let tls_dir = node.tls_dir.clone();
    run(|| async move {
        let cfg = ClientConfig::new(addr, &tls_dir, "client").unwrap();
        let client = std::rc::Rc::new(Client::connect(cfg).await.unwrap());
        let waiter = {
            let client = client.clone();
            glommio::spawn_local(async move {
                client
                    .consume(0, 0, 1 << 20, Duration::from_secs(10))
                    .await
                    .unwrap()
            })
        };
        corelog::io::sleep(Duration::from_millis(50)).await;
        client.produce(0, vec![Bytes::from("wake")]).await.unwrap();
        let got = waiter.await;
        assert_eq!(got.records[0].value, Bytes::from("wake"));

        let sub = client.subscribe(0, 0, 1 << 20, 2).await.unwrap();
        let first = sub.next().await.unwrap();
        assert_eq!(first.records[0].value, Bytes::from("wake"));
        client.produce(0, vec![Bytes::from("two")]).await.unwrap();
        let second = sub.next().await.unwrap();
        assert_eq!(second.records[0].offset, 1);
        sub.cancel();
    });
    node.shutdown();
    node.join().unwrap();
}

#[test]
fn a_second_node_on_the_same_data_dir_or_port_is_refused() {
    let (node, dir) = start_node("inproc-exclusive", &["--partitions", "1"]);
    let data = dir.join("data");
    let same_dir = Args::parse_from([
        "serve",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--stats-listen",
        "127.0.0.1:0",
    ]);
    let config = NodeConfig::from_args(&same_dir.serve, &corelog::io::online_cpus()).unwrap();
    let err = corelog::node::start(config)
        .err()
        .expect("second node must fail");
    assert!(err.contains("in use by another corelog"), "{err}");

    let other = test_dir("inproc-exclusive-other");
    let listen = node.listen.to_string();
    let same_port = Args::parse_from([
        "serve",
        "--data-dir",
        other.join("data").to_str().unwrap(),
        "--listen",
        listen.as_str(),
        "--stats-listen",
        "127.0.0.1:0",
    ]);
    let config = NodeConfig::from_args(&same_port.serve, &corelog::io::online_cpus()).unwrap();
    let err = corelog::node::start(config)
        .err()
        .expect("second node must fail");
    assert!(err.contains("cannot bind"), "{err}");
    node.shutdown();
    node.join().unwrap();
}

#[test]
fn peer_connections_need_a_node_certificate_and_carry_only_peer_frames() {
    use corelog::client::Connection;
    use corelog::net::frame::{Request, Response};
    use corelog::net::preamble::ConnKind;
    use corelog::proto::{MetadataRequest, RaftVote, RaftVoteRequest};

    let (node, _dir) = start_node("inproc-peer", &["--partitions", "1"]);
    let addr = node.listen;
    let tls_dir = node.tls_dir.clone();
    run(|| async move {
        // A Raft vote for a partition this node does not have.
        let vote = Request::RaftVote(RaftVoteRequest {
            partition: 99,
            from_node: 7,
            vote: Some(RaftVote {
                term: 1,
                node_id: 7,
                committed: false,
            }),
            ..RaftVoteRequest::default()
        });
        let refused = |resp: Response| match resp {
            Response::Error(err) => ServerError::from_response(&err),
            other => panic!("the request must be refused, got {other:?}"),
        };
        for (cert, is_node) in [("client", false), ("node", true)] {
            let cfg = ClientConfig::new(addr, &tls_dir, cert).unwrap();
            let conn = Connection::connect(&cfg, 0, ConnKind::Peer).await.unwrap();
            let err = refused(conn.request(vote.clone()).await.unwrap());
            match (is_node, &err) {
                (false, ServerError::Unauthorized { action, .. }) => {
                    assert_eq!(action, "replicate")
                }
                (true, ServerError::UnknownPartition { partition }) => assert_eq!(partition.0, 99),
                _ => panic!("{cert}: unexpected {err}"),
            }
            if is_node {
                // A client request on a peer connection is a bad request; the connection stays.
                let err = refused(
                    conn.request(Request::Metadata(MetadataRequest {}))
                        .await
                        .unwrap(),
                );
                assert!(matches!(err, ServerError::BadRequest { .. }), "{err}");
                let err = refused(conn.request(vote.clone()).await.unwrap());
                assert!(matches!(err, ServerError::UnknownPartition { .. }), "{err}");
            }
        }
    });
    node.shutdown();
    node.join().unwrap();
}
