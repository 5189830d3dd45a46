"""SIGTERM ends a session as Ctrl-C does, so that the reports are still written.

CI runners stop a job that runs past its time limit with SIGTERM (GitHub Actions, GitLab,
``timeout``). By default that ends Python at once, and the session-end hooks that write
FINAL_REPORT and the HTML report never run; a KeyboardInterrupt lets pytest finish the
session as interrupted.
"""
from __future__ import annotations

import signal
import threading
from types import FrameType

import pytest


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"terminated by {signal.Signals(signum).name}")


def interrupt_on_sigterm(config: pytest.Config) -> None:
    """Turn SIGTERM into KeyboardInterrupt for this session, unless someone else handles it."""
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return
    signal.signal(signal.SIGTERM, _interrupt)
    config.add_cleanup(lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
