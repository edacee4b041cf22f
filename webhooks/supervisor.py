"""``contactsync up``: run the receiver, a worker, beat (and the sandbox) as child
processes, and stop them in an order that loses nothing.

Each child is the same command an operator would run on its own (``contactsync web``,
``worker``, ``beat``, ``sandbox``), started in its own session so that Ctrl-C reaches only
the supervisor, which then stops the receiver first (no new events), then the worker (a
warm shutdown finishes the commands in hand; anything else stays in the ledger), then beat
and the sandbox. If any child dies, the others are stopped too and ``up`` fails.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

STOP_TIMEOUT_S = {"web": 15.0, "worker": 40.0, "beat": 10.0, "sandbox": 5.0}


@dataclass
class Child:
    """One supervised process."""

    name: str
    argv: Sequence[str]
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self, env: Mapping[str, str]) -> None:
        """Start it in its own session (so a terminal's Ctrl-C does not reach it)."""
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and argv
            list(self.argv), env=dict(env), start_new_session=True, preexec_fn=_die_with_parent
        )

    def alive(self) -> bool:
        """Whether it is still running."""
        return self.process is not None and self.process.poll() is None

    def stop(self) -> int | None:
        """SIGTERM, wait its time, then SIGKILL; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S.get(self.name, 10.0))
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def _die_with_parent() -> None:
    """In the child: receive SIGTERM if the supervisor dies, so nothing is orphaned."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def cli_argv(*args: str) -> list[str]:
    """The argv that runs ``contactsync ARGS`` with this interpreter."""
    return [sys.executable, "-m", "webhooks.cli", *args]


def supervise(
    children: Sequence[Child],
    env: Mapping[str, str],
    *,
    on_ready: Callable[[], None] | None = None,
    ready: Callable[[], bool] | None = None,
) -> int:
    """Start ``children`` in order, wait for a signal or a death, stop them in order."""
    stopping = {"signal": 0}

    def _stop(signum: int, _frame: object) -> None:
        stopping["signal"] = signum

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    failed = None
    try:
        for child in children:
            child.start(env)
        announced = False
        while not stopping["signal"]:
            dead = [child for child in children if not child.alive()]
            if dead:
                failed = dead[0]
                break
            if not announced and (ready is None or ready()):
                announced = True
                if on_ready is not None:
                    on_ready()
            time.sleep(0.2)
    finally:
        order = {"web": 0, "worker": 1, "beat": 2, "sandbox": 3}
        for child in sorted(children, key=lambda c: order.get(c.name, 9)):
            child.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failed is not None:
        code = failed.process.returncode if failed.process else None
        print(f"contactsync up: {failed.name} exited ({code}); stopped the rest", file=sys.stderr)
        return 1
    print("contactsync up: stopped; everything accepted is in the ledger", file=sys.stderr)
    return 0


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment plus ``extra``."""
    env = dict(os.environ)
    env.update(extra)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env
