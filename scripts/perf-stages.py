#!/usr/bin/env python3
"""CPU share of each stage of Herald's embedded delivery path, from folded
stacks (`perf script | inferno-collapse-perf`), as in docs/performance.md.

    scripts/perf-stages.py STACKS.folded [STACKS2.folded ...]

Each stack is given to the first stage (in the order below) one of whose
patterns appears in any of its frames; the rest is "runtime and kernel".
With several files, prints one column per file.
"""
import re
import sys

# (stage, frame patterns), most specific first: a SQLite commit inside the
# attempt writer counts as a commit, the attempt writer's own work as
# attempt records, and so on.
STAGES = [
    ("SQLite WAL checkpoint", [r"sqlite3WalCheckpoint", r"walCheckpoint"]),
    ("SQLite commits (WAL frames, fdatasync)", [r"sqlite3PagerCommitPhaseOne", r"sqlite3WalFrames", r"sqlite3PagerSync"]),
    ("SQLite: event index at emit", [r"store::embedded::events::insert_event", r"record_events?\b", r"EventStore.*record_event"]),
    ("SQLite: attempt records", [r"store::embedded::attempts"]),
    ("SQLite: fan-out (index check, dedupe, schedule rows)", [r"store::embedded::schedule.*fan_out", r"claim_dedupe"]),
    ("SQLite: claims, holds, releases", [r"claim_due", r"store::embedded::held", r"release_held"]),
    ("SQLite: other", [r"sqlite3", r"rusqlite"]),
    ("event log append and reads", [r"log::embedded"]),
    ("delivery attempts (request, signing, envelope)", [r"delivery::attempt", r"delivery::client", r"delivery::destination", r"hyper_util::client", r"signing::"]),
    ("API: emit requests", [r"herald_api::"]),
    ("fan-out task", [r"herald_engine::fanout"]),
    ("shards and scheduler", [r"delivery::worker", r"delivery::scheduler", r"delivery::retries"]),
]
COMPILED = [(name, re.compile("|".join(pats))) for name, pats in STAGES]
OTHER = "runtime and kernel (not attributed)"


def shares(path):
    totals = {name: 0 for name, _ in STAGES}
    totals[OTHER] = 0
    for line in open(path, encoding="utf-8", errors="replace"):
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        for name, pattern in COMPILED:
            if pattern.search(stack):
                totals[name] += int(count)
                break
        else:
            totals[OTHER] += int(count)
    return totals


def main():
    files = sys.argv[1:]
    if not files:
        sys.exit(__doc__)
    columns = [shares(f) for f in files]
    print("| stage | " + " | ".join(files) + " |")
    print("|---|" + "---|" * len(files))
    for name in [n for n, _ in STAGES] + [OTHER]:
        cells = []
        for totals in columns:
            all_samples = sum(totals.values()) or 1
            cells.append(f"{100 * totals[name] / all_samples:.1f} %")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("| samples | " + " | ".join(str(sum(t.values())) for t in columns) + " |")


if __name__ == "__main__":
    main()
