"""`python -m bench [--short] [--only gate|space|ledger|agents|examples]`: run the benchmarks and print every table.

Each benchmark prints its table as soon as it is done; the tables are printed again together at
the end (the report). Nothing is asserted: the tables hold ratios against baselines measured in
the same run. See BENCHMARKS.md for the figures and how to read them.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

from bench._common import load_average

BENCHMARKS = ("gate", "space", "ledger", "agents", "examples")


def _machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), model)
    except OSError:
        pass
    memory = ""
    try:
        with open("/proc/meminfo") as meminfo:
            kib = int(next(line.split()[1] for line in meminfo if line.startswith("MemTotal")))
            memory = f", {kib / 1024 / 1024:.1f} GiB memory"
    except (OSError, StopIteration, ValueError):
        pass
    versions = f"Python {platform.python_version()}"
    try:
        import torch

        versions += f", torch {torch.__version__} ({torch.get_num_threads()} threads)"
    except ImportError:
        pass
    return f"{platform.machine()}, {os.cpu_count()} CPUs ({model}){memory}; {versions}"


def _gate(short: bool) -> str:
    from bench import bench_gate

    return f"{bench_gate.TITLE}\n{bench_gate.format_table(bench_gate.run(short))}"


def _space(short: bool) -> str:
    from bench import bench_space

    rows = bench_space.run(short, settlement="lease")
    return f"{bench_space.TITLE}\n{bench_space.details('lease', rows)}\n{bench_space.format_table(rows)}"


def _ledger(short: bool) -> str:
    from bench import bench_ledger

    return ("Ledger deducts/s (escrow engineer's bench/bench_ledger.py): HTTP (requests.Session per client thread "
            "-> `python -m escrow serve`) vs straight on the Store, one escrow per client\n"
            f"{bench_ledger.format_table(bench_ledger.run(short))}")


def _agents(short: bool) -> str:
    from bench import bench_agents

    rows, facts = bench_agents.run(short)
    return f"{bench_agents.TITLE}\n{bench_agents.format_table(rows)}\n{bench_agents.summary(rows, facts)}"


def _examples(short: bool) -> str:
    from bench import bench_examples

    return f"{bench_examples.TITLE}\n{bench_examples.format_table(bench_examples.run(short))}"


RUNNERS = {"gate": _gate, "space": _space, "ledger": _ledger, "agents": _agents, "examples": _examples}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="fewer calls and shorter measurements (make bench)")
    parser.add_argument("--only", choices=BENCHMARKS, action="append",
                        help="run only this benchmark (may be given more than once)")
    args = parser.parse_args(argv)
    chosen = args.only or list(BENCHMARKS)
    print(f"machine: {_machine()}", flush=True)
    print(f"load average at start: {load_average()}; {'short' if args.short else 'full'} run of {', '.join(chosen)}",
          flush=True)
    report = []
    for name in chosen:
        started = time.monotonic()
        print(f"\n== {name}: load average {load_average()} ==", flush=True)
        table = RUNNERS[name](args.short)
        section = f"{table}\n({name}: {time.monotonic() - started:.0f} s; load average after: {load_average()})"
        print(section, flush=True)
        report.append(section)
    print("\n\n==================== report ====================")
    print(f"machine: {_machine()}")
    print("\n\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
