//! loadgen: the throughput and latency tool for corelog.
//!
//! The node's network protocol is not built yet (see the node issue), so this binary only
//! prints its usage; the workload flags arrive with the client library.

use clap::Parser;

/// Measure a corelog node's throughput and latency.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {}

fn main() {
    let _args = Args::parse();
    eprintln!("loadgen: not implemented yet: it needs the corelog node protocol (see README)");
    std::process::exit(2);
}
