//! The loadgen binary's command line, without a node. The load tests need the node binary too,
//! so they live in the root package (`tests/loadgen_cli.rs`); having an integration test here
//! also makes `cargo test --workspace` build the loadgen binary before those tests look for it.

use std::process::Command;

fn loadgen(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .output()
        .expect("run loadgen")
}

#[test]
fn help_states_the_defaults_and_exits_0() {
    let out = loadgen(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "10 s mixed",
        "127.0.0.1:7400",
        "./corelog-data/tls",
        "--rate",
        "--json",
        "--hgrm",
        "--plot",
        "baseline",
        "--cluster",
        "--consume-from",
    ] {
        assert!(
            help.contains(needle),
            "--help should mention {needle}:\n{help}"
        );
    }
}

#[test]
fn baseline_has_its_own_help() {
    let out = loadgen(&["baseline", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--dir"));
}

#[test]
fn a_bad_flag_is_one_line_and_exit_2() {
    let out = loadgen(&["--in-flight", "0"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("--in-flight"), "{err}");
}

#[test]
fn consume_from_without_cluster_is_one_line_and_exit_2() {
    let out = loadgen(&["--consume-from", "follower"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("--cluster"), "{err}");
}
