"""Benchmarks that print ratios and write JSON; speed is measured here, never in timed tests.

    python src/bench.py throughput [--json FILE] [--quick]   # the kit against Hugging Face Trainer
    python src/bench.py quality                              # bf16 against fp32, same budget
    python src/bench.py dropout-ab                           # backbone dropout 0.1 against 0.0

Each subcommand lives in its own module under src/bertreg/benchmarks/.
"""

import importlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # runs from the repo root with no install

from bertreg.errors import UserError, cli  # noqa: E402

SUBCOMMANDS = {
    "throughput": "bertreg.benchmarks.throughput",
    "quality": "bertreg.benchmarks.quality",
    "dropout-ab": "bertreg.benchmarks.dropout_ab",
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in SUBCOMMANDS:
        raise UserError(f"usage: python src/bench.py {{{'|'.join(SUBCOMMANDS)}}} [options]")
    name = sys.argv.pop(1)
    sys.argv[0] = f"bench.py {name}"
    importlib.import_module(SUBCOMMANDS[name]).main()


if __name__ == "__main__":
    cli(main)
