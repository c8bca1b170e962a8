"""Start-up time of ``dormant --help``, ``dormant methods`` and ``dormant relearn --help``, three
ways in one run: the entry point as installed (``dormant.cli_root``: the root's help and the
registry listings without the full command line), the full command line (``dormant.cli``,
which every other command loads, now without torch), and the full command line after
``import torch``: what every command paid before the command line stopped importing torch
(the issue's 2.8 s). ``ratio`` is the last over the first.

Each case runs as a fresh interpreter, as a user's shell starts it; rounds alternate the two
sides so that load from other processes hits both, and the median of each is reported.
Prints a JSON list (one object per command) to stdout.

    .venv/bin/python benchmarks/cli_startup.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SIDES = {
    "entry point": "from dormant.cli_root import entry; entry()",
    "full command line": "from dormant.cli import entry; entry()",
    "with torch, as before": "import torch; from dormant.cli import entry; entry()",
}
COMMANDS = (["--help"], ["methods"], ["relearn", "--help"])


def _seconds(code: str, args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import sys; sys.argv = ['dormant', *{args!r}]; "
                    + code], check=True, capture_output=True,
                   env={**os.environ, "COLUMNS": "100"})
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    rounds = ap.parse_args().rounds
    out = []
    for args in COMMANDS:
        times: dict[str, list[float]] = {side: [] for side in SIDES}
        for _ in range(rounds):
            for side, code in SIDES.items():
                times[side].append(_seconds(code, args))
        new, full, before = (statistics.median(times[s]) for s in SIDES)
        out.append({"command": "dormant " + " ".join(args), "rounds": rounds,
                    "entry_point_s": round(new, 3), "full_cli_s": round(full, 3),
                    "with_torch_s": round(before, 3), "ratio": round(before / new, 2)})
        print(f"dormant {' '.join(args)}: {new:.2f} s, full {full:.2f} s, with torch "
              f"{before:.2f} s", file=sys.stderr)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
