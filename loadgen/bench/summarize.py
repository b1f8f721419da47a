#!/usr/bin/env python3
"""Turns a run.sh output directory into the README's tables (markdown on stdout).

Every figure is set beside the baseline measured right before its record size's rows
(baseline-<size>.json) as a ratio; targets are issue 4's, for the 1 KiB rows.
"""

import json
import sys
from pathlib import Path

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "target/loadgen-bench")


def load(name):
    path = OUT / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def ms(us):
    return f"{us / 1000:.2f}"


def node_extra(name):
    """Node and loadgen CPU: "ran% / waited%" of the wall time (waited: runnable, but
    another process had the CPU); reactor stalls; fsync p50/p99 (µs) of one row."""
    cpu = load(f"{name}.cpu") or {}
    node = load(f"{name}.node") or {}
    before = load(f"{name}.node-before") or {}
    run = load(name) or {}
    wall = cpu.get("wall_s") or 0
    pct = (lambda s: 100 * s / wall) if wall else (lambda s: 0)
    node_pct = f"{pct(cpu.get('node_cpu_s', 0)):.0f}% / {pct(cpu.get('node_runqueue_wait_s', 0)):.0f}%"
    lg_pct = f"{pct(run.get('loadgen_cores_run_s', 0)):.0f}% / " \
             f"{pct(run.get('loadgen_cores_runqueue_wait_s', 0)):.0f}%"
    stalls = node.get("reactor", {}).get("stalls", 0) - \
        before.get("reactor", {}).get("stalls", 0)
    fsync = node.get("ops", {}).get("fsync", {}).get("merged", {})
    synced = fsync.get("count", 0) - \
        before.get("ops", {}).get("fsync", {}).get("merged", {}).get("count", 0)
    fsyncs = f"{fsync.get('p50', 0)}/{fsync.get('p99', 0)}" if synced else "—"
    return node_pct, lg_pct, stalls, fsyncs


def verdict(ok):
    return "**met**" if ok else "**missed**"


def main():
    lines = []
    for size in (1024, 100):
        b = load(f"baseline-{size}")
        if b is None:
            continue
        disk, loop = b["disk"], b["loopback_tcp"]["mb_per_s"]
        ceiling = b["ceiling_mb_per_s"]
        sync4k = disk["sync_4k_rewrite_latency_us"]["p50"]
        label = "1 KiB" if size == 1024 else "100 B"
        target = size == 1024
        lines.append(f"\n**{label} records** — baseline right before these rows: raw disk write "
                     f"{disk['write_mb_per_s']:.0f} MB/s, loopback TCP {loop:.0f} MB/s "
                     f"(ceiling {ceiling:.0f} MB/s), disk read {disk['read_mb_per_s']:.0f} MB/s, "
                     f"1 MiB write + fdatasync {disk['write_sync_fallocated_mb_per_s']:.0f} MB/s "
                     f"(fallocated blocks), 4 KiB write + fdatasync p50 {sync4k} µs / p99 "
                     f"{disk['sync_4k_rewrite_latency_us']['p99']} µs (written blocks); "
                     f"load average {b.get('load_average')}.\n")
        lines.append("| workload | records/s | MB/s | p50 ms | p99 ms | baseline (same run) "
                     "| ratio | target | node ran / waited | loadgen ran / waited | stalls | fsync p50/p99 µs |")
        lines.append("|---|---:|---:|---:|---:|---|---:|---|---:|---:|---:|---:|")

        def row(name, title, flow, base_name, base, ratio, tgt):
            r = load(name)
            if r is None:
                return
            f = r[flow]
            lat = f["latency_us"]
            n, g, stalls, fsyncs = node_extra(name)
            errs = "" if r["violations"] == 0 and r["errors"] == 0 else \
                f" (violations {r['violations']}, errors {r['errors']})"
            lines.append(
                f"| {title}{errs} | {f['records_per_s']:,.0f} | {f['mb_per_s']:.1f} "
                f"| {ms(lat['p50'])} | {ms(lat['p99'])} | {base_name} {base} "
                f"| {ratio(r):.2f} | {tgt(r) if target else '—'} | {n} | {g} "
                f"| {stalls} | {fsyncs} |")

        row(f"produce-{size}", "produce only, max (closed loop)", "produce",
            "ceiling", f"{ceiling:.0f} MB/s",
            lambda r: r["produce"]["mb_per_s"] / ceiling,
            lambda r: f"≥ 0.5: {verdict(r['produce']['mb_per_s'] >= 0.5 * ceiling)}")
        row(f"catchup-{size}", "consume only, catch-up from offset 0 (disk)", "consume",
            "disk read", f"{disk['read_mb_per_s']:.0f} MB/s",
            lambda r: r["consume"]["mb_per_s"] / disk["read_mb_per_s"],
            lambda r: "none")
        row(f"tail-{size}", "consume only, tail (16 consumers, tail cache)", "consume",
            "loopback", f"{loop:.0f} MB/s",
            lambda r: r["consume"]["mb_per_s"] / loop,
            lambda r: f"≥ 0.8: {verdict(r['consume']['mb_per_s'] >= 0.8 * loop)}")
        row(f"mixed-{size}", "mixed: produce", "produce",
            "ceiling", f"{ceiling:.0f} MB/s",
            lambda r: r["produce"]["mb_per_s"] / ceiling, lambda r: "none")
        row(f"mixed-{size}", "mixed: consume", "consume",
            "ceiling", f"{ceiling:.0f} MB/s",
            lambda r: r["consume"]["mb_per_s"] / ceiling, lambda r: "none")
        row(f"mixed-{size}", "mixed: end-to-end", "end_to_end",
            "4 KiB sync p50", f"{sync4k} µs",
            lambda r: r["end_to_end"]["latency_us"]["p50"] / sync4k, lambda r: "none")
        row(f"single-{size}", "1 in flight, 1 record: p50", "produce",
            "4 KiB sync p50", f"{sync4k} µs",
            lambda r: r["produce"]["latency_us"]["p50"] / sync4k,
            lambda r: f"p50 ≤ 1.5×: "
                      f"{verdict(r['produce']['latency_us']['p50'] <= 1.5 * sync4k)}")
        row(f"single-{size}", "1 in flight, 1 record: p99", "produce",
            "4 KiB sync p50", f"{sync4k} µs",
            lambda r: r["produce"]["latency_us"]["p99"] / sync4k,
            lambda r: f"p99 ≤ 3×: "
                      f"{verdict(r['produce']['latency_us']['p99'] <= 3 * sync4k)}")
        row(f"half-{size}", "half of max rate (open loop)", "produce",
            "2 ms", "(absolute)",
            lambda r: r["produce"]["latency_us"]["p99"] / 2000,
            lambda r: f"p99 ≤ 2 ms: {verdict(r['produce']['latency_us']['p99'] <= 2000)}")
    end = load("baseline-end")
    if end:
        d = end["disk"]
        lines.append(f"\nBaseline at the end of the run: raw disk write {d['write_mb_per_s']:.0f} "
                     f"MB/s, loopback {end['loopback_tcp']['mb_per_s']:.0f} MB/s, 4 KiB write + "
                     f"fdatasync p50 {d['sync_4k_rewrite_latency_us']['p50']} µs; load average "
                     f"{end.get('load_average')}.")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
