"""What the receiver's gunicorn worker class is worth on its own: gunicorn's gthread against
``contactsync web``'s :class:`webhooks.server.LingeringThreadWorker`, serving the same
trivial WSGI app (:func:`app`: reads the body, answers 202 with a short JSON body) in the
same shape, under the same ``wrk`` load, in alternating phases.

No database, no broker, no Flask: what differs between the two is only how a kept-alive
connection's next request reaches a thread, so the gunicorn processes' CPU per request is
the figure to read (the machine's speed drifts between phases; each round's ratio is
printed, and their median).

    python -m ops.bench.server [--workers 4 --threads 8] [--connections 16] [--think-ms 0]
                               [--seconds 10 --rounds 4]

Needs ``wrk`` (``apt-get install wrk``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ops.bench.common import cpu_s, machine, say
from ops.bench.ingest import children, free_port, median, wait_http
from webhooks.cli import WEB_WORKER_CLASS

CLASSES = {"gthread": "gthread", "lingering": WEB_WORKER_CLASS}

ANSWER = b'{"event_id":"evt_1","commands":[1],"duplicate":false}'

SCRIPT = """
wrk.method = "POST"
wrk.body = '{"id":"evt_1","type":"contact.upsert","match":{"email":"ann@example.com"}}'
wrk.headers["Content-Type"] = "application/json"
local think = tonumber(os.getenv("THINK_MS") or "0")
function delay() return think end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %d %d\\n", summary.requests,
    summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.timeout + summary.errors.status,
    latency:percentile(50), latency:percentile(99), summary.duration))
end
"""


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Read the body, answer 202 with a short JSON body."""
    environ["wsgi.input"].read()
    start_response(
        "202 Accepted",
        [("Content-Type", "application/json"), ("Content-Length", str(len(ANSWER)))],
    )
    return [ANSWER]


@dataclass
class Phase:
    round: int
    server: str
    requests_per_s: float
    errors: int
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float


def serve(
    worker_class: str, args: argparse.Namespace, log: Path
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    with log.open("ab") as output:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "gunicorn", "--worker-class", worker_class),
                *("--workers", str(args.workers), "--threads", str(args.threads)),
                *("--bind", f"127.0.0.1:{port}", "--no-control-socket", "ops.bench.server:app"),
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[2],
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/", process, f"gunicorn ({worker_class})", log)
    except RuntimeError:
        process.kill()
        raise
    return process, port


def load(port: int, script: Path, args: argparse.Namespace, seconds: float) -> list[int]:
    done = subprocess.run(
        [
            shutil.which("wrk") or "wrk",
            *(f"-t{args.wrk_threads}", f"-c{args.connections}", f"-d{seconds:g}s"),
            *("--timeout", "10s", "-s", str(script), f"http://127.0.0.1:{port}/webhooks/x"),
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "THINK_MS": str(args.think_ms)},
    )
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return [int(x) for x in line.split()[1:]]
    raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")


def phase(
    round_: int,
    name: str,
    process: subprocess.Popen[bytes],
    port: int,
    script: Path,
    args: argparse.Namespace,
) -> Phase:
    pids = children(process.pid)
    before = cpu_s(pids)
    requests, errors, p50_us, p99_us, duration_us = load(port, script, args, args.seconds)
    spent = cpu_s(pids) - before
    return Phase(
        round_,
        name,
        round(requests / (duration_us / 1e6), 1),
        errors,
        round(p50_us / 1000, 2),
        round(p99_us / 1000, 2),
        round(1e6 * spent / max(requests, 1), 1),
    )


def table(phases: Sequence[Phase]) -> list[str]:
    lines = [
        "| round | worker class | requests/s | p50 ms | p99 ms | errors | server CPU µs/request |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {p.round} | {p.server} | {p.requests_per_s:.0f} | {p.p50_ms} | {p.p99_ms} | "
        f"{p.errors} | {p.cpu_us_per_request:.0f} |"
        for p in phases
    ]
    rounds = sorted({p.round for p in phases})
    by = {(p.round, p.server): p for p in phases}
    cpu = [
        by[r, "lingering"].cpu_us_per_request / by[r, "gthread"].cpu_us_per_request for r in rounds
    ]
    rate = [by[r, "lingering"].requests_per_s / by[r, "gthread"].requests_per_s for r in rounds]
    lines += [
        "",
        f"lingering ÷ gthread, per round: CPU per request {median(cpu):.2f} "
        f"({min(cpu):.2f}-{max(cpu):.2f}), requests/s {median(rate):.2f} "
        f"({min(rate):.2f}-{max(rate):.2f})",
    ]
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ops.bench.server", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--workers", type=int, default=4, help="gunicorn processes (4)")
    parser.add_argument("--threads", type=int, default=8, help="threads per process (8)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (16)")
    parser.add_argument(
        "--think-ms", type=int, default=0, help="each connection's wait before its next request (0)"
    )
    parser.add_argument("--wrk-threads", type=int, default=2, help="wrk threads (2)")
    parser.add_argument("--seconds", type=float, default=10, help="per phase (10)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of one phase each (4)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        say("wrk is not on the path (apt-get install wrk)")
        return 2
    info = machine()
    with tempfile.TemporaryDirectory(prefix="contactsync-server-") as folder:
        script = Path(folder) / "post.lua"
        script.write_text(SCRIPT)
        servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
        try:
            for name, cls in CLASSES.items():
                servers[name] = serve(cls, args, Path(folder) / f"{name}.log")
            for _process, port in servers.values():
                load(port, script, args, 2)  # warm-up
            phases = []
            for round_ in range(1, args.rounds + 1):
                for name, (process, port) in servers.items():
                    phases.append(phase(round_, name, process, port, script, args))
                    say(f"  round {round_} {name}: {phases[-1]}")
        finally:
            for process, _port in servers.values():
                process.send_signal(signal.SIGTERM)
            for process, _port in servers.values():
                process.wait(30)
    print(
        f"machine: {info['nproc']} CPUs ({info['cpu']}), Python {info['python']}; "
        f"revision {info['revision']}\n"
        f"gunicorn {args.workers} x {args.threads}; wrk {args.connections} connections, "
        f"think {args.think_ms} ms, {args.seconds:g} s phases\n"
    )
    print("\n".join(table(phases)))
    if args.json:
        args.json.write_text(json.dumps([vars(p) for p in phases], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
