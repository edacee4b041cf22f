"""``python -m ops.chaos [--scenario NAME|all] [--events N] [--seconds S] [--json FILE]``

Runs the scenarios one after the other and prints, for each: events sent, answered 2xx,
applied, dead letters by reason, contacts created twice (must be 0), events lost (must be
0) and wall time, then its timeline. Exits 1 if any scenario failed. Logs stay in a
folder under /tmp, printed with each scenario.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from ops.chaos.scenarios import SCENARIOS, Pool, Size, run_scenario


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run, print; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m ops.chaos", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--scenario",
        action="append",
        choices=[*SCENARIOS, "all"],
        help="a scenario (repeatable), or all (the default)",
    )
    parser.add_argument("--events", type=int, default=240, help="events per scenario")
    parser.add_argument("--seconds", type=float, default=24.0, help="ingest time per scenario")
    parser.add_argument("--json", type=Path, help="also write the results here")
    options = parser.parse_args(argv)
    chosen = options.scenario or ["all"]
    names = list(SCENARIOS) if "all" in chosen else list(dict.fromkeys(chosen))
    size = Size(options.events, options.seconds)
    print(
        f"# {len(names)} scenarios, {size.events} events over {size.seconds:g} s each; "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, Python "
        f"{platform.python_version()}",
        flush=True,
    )
    results = []
    pool = Pool()
    started = time.monotonic()
    try:
        for name in names:
            print(f"\n## {name}", flush=True)
            result = run_scenario(name, size, pool=pool)
            results.append(result)
            print(result.report(), flush=True)
    finally:
        pool.close()
    print(f"\n# summary ({time.monotonic() - started:.0f} s)")
    for result in results:
        print(result.summary())
    if options.json:
        options.json.write_text(json.dumps([r.to_json() for r in results], indent=2))
    failed = [r.scenario for r in results if not r.ok and not r.skipped]
    if failed:
        print(f"\nFAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
