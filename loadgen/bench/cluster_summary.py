#!/usr/bin/env python3
"""Turns a cluster.sh output directory into the README's replicated-produce table (markdown).

Each 3-node row is set beside the single-node row of the same round as a ratio. Bytes written
per payload byte per replica = Σ over the nodes of Δ /proc/PID/io write_bytes around the
loadgen run / (acknowledged records × record bytes × replicas). Node CPU per record = Σ over
the nodes of the CPU time they ran around the loadgen run / acknowledged records (warm-up
included in both).

Under the table, per round, what the target (0.5 × the single node's max row) asks of the one
disk: every replica of a one-host cluster writes every byte to it, so the cluster must make
3 × 0.5 × the single node's MB/s durable. Beside it, the most any writer of that round made
durable: `loadgen baseline` (1 MiB write + fdatasync, in one file and in three at once), the
single node at 128 in flight, and the cluster at 128 in flight (× 3 replicas).
"""

import json
import sys
from pathlib import Path

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "target/loadgen-cluster")
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 2


def load(name):
    path = OUT / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def amplification(name):
    """(bytes written per payload byte per replica, node CPU µs per record, CPU shares)."""
    run, nodes = load(name), load(f"{name}.nodes")
    if not run or not nodes:
        return None, None, "—"
    records = run["produce_detail"]["acked_records"]
    payload = records * run["config"]["record_bytes"]
    written = sum(n["write_bytes"] for n in nodes["nodes"])
    wall = nodes["wall_s"] or 1
    cpu = " / ".join(f"{100 * n['cpu_s'] / wall:.0f}%·{100 * n['runqueue_wait_s'] / wall:.0f}%"
                     for n in nodes["nodes"])
    if payload == 0:
        return None, None, cpu
    cpu_us = 1e6 * sum(n["cpu_s"] for n in nodes["nodes"]) / records
    return written / (payload * nodes["replicas"]), cpu_us, cpu


def main():
    print("| round | workload | nodes | records/s | MB/s | p50 ms | p99 ms | × single node "
          "(same round) | bytes written / payload byte / replica | node CPU µs / record (Σ nodes) "
          "| node CPU ran·waited | reroutes | errors |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for r in range(1, ROUNDS + 1):
        for row, label in (("produce", "produce, max (64 × 1 KiB, 32 in flight)"),
                           ("saturate", "produce, saturating (64 × 1 KiB, 128 in flight)"),
                           ("single", "1 in flight, 1 record")):
            base = load(f"r{r}-single-{row}")
            for kind in ("single", "cluster"):
                name = f"r{r}-{kind}-{row}"
                run = load(name)
                if run is None:
                    continue
                p = run["produce"]
                lat = p["latency_us"]
                amp, cpu_us, cpu = amplification(name)
                if kind == "cluster" and base and base["produce"]["records_per_s"]:
                    ratio = (f"{p['records_per_s'] / base['produce']['records_per_s']:.2f} "
                             f"(p99 {lat['p99'] / max(base['produce']['latency_us']['p99'], 1):.1f}×)")
                else:
                    ratio = "—"
                print(f"| {r} | {label} | {'3 (cluster)' if kind == 'cluster' else '1'} "
                      f"| {p['records_per_s']:,.0f} | {p['mb_per_s']:.1f} "
                      f"| {lat['p50'] / 1000:.2f} | {lat['p99'] / 1000:.2f} | {ratio} "
                      f"| {'—' if amp is None else f'{amp:.3f}'} "
                      f"| {'—' if cpu_us is None else f'{cpu_us:.1f}'} | {cpu} "
                      f"| {run['produce_detail'].get('reroutes', 0)} | {run['errors']} |")
    print()
    for r in range(1, ROUNDS + 1):
        line = disk_ceiling(r)
        if line:
            print(f"- round {r}: {line}")


def disk_ceiling(r):
    """What 0.5 × the single node's max row asks of this round's disk, against the most any
    writer of the round made durable on it, as one sentence."""
    baseline, single = load(f"r{r}-baseline"), load(f"r{r}-single-produce")
    if not baseline or not single:
        return None
    disk = baseline["disk"]
    one, three = disk["write_sync_fallocated_mb_per_s"], disk[
        "write_sync_fallocated_replica_files_mb_per_s"]
    needed = 3 * 0.5 * single["produce"]["mb_per_s"]
    seen = [(one, "baseline: 1 MiB write + fdatasync, one file"),
            (three, "baseline: the same, three files at once")]
    for kind, replicas in (("single", 1), ("cluster", 3)):
        run = load(f"r{r}-{kind}-saturate")
        if run:
            seen.append((replicas * run["produce"]["mb_per_s"],
                         f"{'the single node' if kind == 'single' else 'the cluster'}, "
                         f"128 in flight{'' if replicas == 1 else ', × 3 replicas'}"))
    best = max(seen)
    others = "; ".join(f"{mb:.0f} MB/s {what}" for mb, what in seen if (mb, what) != best)
    return (f"0.5 × the single node's max row needs the three replicas to make "
            f"3 × 0.5 × {single['produce']['mb_per_s']:.0f} = {needed:.0f} MB/s durable on this "
            f"one disk; the most made durable in this round: {best[0]:.0f} MB/s ({best[1]}; "
            f"{others}).")


if __name__ == "__main__":
    main()
