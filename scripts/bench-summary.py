#!/usr/bin/env python3
"""The ratio and design-target summary of docs/benchmarks.md, generated from `squall bench --json` reports.

    python3 scripts/bench-summary.py REPORT.json [REPORT.json...]

Prints Markdown: the squall/peer throughput ratios for W1, W3, W5 (from the reports' own `ratios`),
W10 against the design targets and the best W1 peer, and the DESIGN.md performance targets with
met / not met, every figure taken from the JSON.
"""
import json
import sys


def fmt(v):
    if v >= 1e6:
        return f"{v / 1e6:.1f}M"
    return f"{v / 1000:.1f}k" if v >= 1000 else f"{v:.0f}"


def main(paths):
    rows, ratios = {}, []
    for p in paths:
        r = json.load(open(p))
        for x in r["rows"]:
            rows[(x["workload"], x["variant"], x["target"])] = x
        ratios += r["ratios"]

    def med(key):
        x = rows.get(key)
        if x and x["status"] == "ok" and x.get("msgs_per_sec"):
            return x["msgs_per_sec"]["median"]
        return None

    print("| W | variant | squall (durability) | peer (durability) | msgs/s squall / peer | throughput ratio | e2e p99 ratio |")
    print("|---|---|---|---|---|---|---|")
    for q in ratios:
        if q["workload"] not in ("W1", "W3", "W5"):
            continue
        s = med((q["workload"], q["variant"], q["squall"]))
        p = med((q["workload"], q["variant"], q["peer"]))
        e = f"{q['e2e_p99']:.2f}×" if q["e2e_p99"] is not None else "–"
        behind = " (behind)" if q["throughput"] < 1 else ""
        print(
            f"| {q['workload']} | {q['variant']} | {q['squall']} ({q['squall_durability']}) | "
            f"{q['peer']} ({q['peer_durability']}) | {fmt(s)} / {fmt(p)} | "
            f"**{q['throughput']:.2f}×**{behind} | {e} |"
        )
    print()
    for var, w1var, target in (("128B page-cache", "page-cache", 1_000_000), ("1KiB fsync", "fsync", 500_000)):
        s = med(("W10", var, "squall-embedded"))
        if s is None:
            continue
        cpu = rows[("W10", var, "squall-embedded")].get("cpu_us_per_msg")
        line = (
            f"- W10 {var}: squall-embedded {fmt(s)} msg/s = {s / target:.2f}× the design target of "
            f"{fmt(target)} msg/s ({cpu:.1f} µs CPU per message)"
        )
        peers = [(t, med(("W1", w1var, t))) for t in ("nats-js", "rabbitmq-classic", "rabbitmq-quorum")]
        peers = [(t, v) for t, v in peers if v]
        if peers:
            t, v = max(peers, key=lambda x: x[1])
            line += f"; {s / v:.2f}× the best W1 {w1var} peer over loopback ({t}, {fmt(v)} msg/s at 1 KiB)"
        print(line + ".")
    print()
    print("Design targets (DESIGN.md), checked against these reports:")
    print()

    def verdict(ok):
        return "met" if ok else "**not met**"

    w1 = rows.get(("W1", "fsync", "squall-serve"))
    if w1 and w1["status"] == "ok":
        s = w1["msgs_per_sec"]["median"]
        best = max(
            ((t, med(("W1", "fsync", t))) for t in ("nats-js", "rabbitmq-classic", "rabbitmq-quorum")),
            key=lambda x: x[1] or 0,
        )
        p99 = w1["publish_ack_us"]["p99"] / 1000
        print(f"- durable queue ≥ 100k msg/s: squall-serve W1 fsync {fmt(s)} msg/s: {verdict(s >= 100_000)}")
        if best[1]:
            print(
                f"- durable queue ≥ 3× the best peer ({best[0]}, {fmt(best[1])} msg/s): "
                f"{s / best[1]:.2f}×: {verdict(s >= 3 * best[1])}"
            )
        print(f"- publish-ack p99 ≤ 5 ms: {p99:.1f} ms: {verdict(p99 <= 5)}")
    s, p = med(("W1", "page-cache", "squall-serve")), med(("W1", "page-cache", "nats-js"))
    if s and p:
        print(f"- buffered ≥ 1.5× JetStream default: {s / p:.2f}×: {verdict(s >= 1.5 * p)}")
    for var in ("subs=1", "subs=4", "subs=16"):
        s, p = med(("W5", var, "squall-serve")), med(("W5", var, "nats-core"))
        if s and p:
            print(f"- fan-out ≥ NATS core's rate, {var}, over loopback: {s / p:.2f}×: {verdict(s >= p)}")
    for var, target in (("128B page-cache", 1_000_000), ("1KiB fsync", 500_000)):
        s = med(("W10", var, "squall-embedded"))
        if s:
            print(f"- in-process {var} ≥ {fmt(target)} msg/s: {fmt(s)}: {verdict(s >= target)}")


if __name__ == "__main__":
    main(sys.argv[1:])
