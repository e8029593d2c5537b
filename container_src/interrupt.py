"""Stopping a run by SIGTERM or SIGINT: the `Interrupted` exception (status 128 + signal) and train's handler."""

from __future__ import annotations

import logging
import signal
from typing import Any

logger = logging.getLogger(__name__)


class Interrupted(BaseException):
    """The run was stopped by a signal. A BaseException, like KeyboardInterrupt, so that no library's
    ``except Exception`` (logging's emit, for one) swallows it."""

    def __init__(self, message: str, signum: int = signal.SIGTERM) -> None:
        super().__init__(message)
        self.signum = int(signum)


class StopRequest:
    """SIGTERM/SIGINT handling. During training the handler only sets a flag, which the loop checks after each
    step, so the signal never lands in the middle of a write; the run then saves a checkpoint. Before and after
    training it ends the run at once, except while the SAE is being published (the signal is held back then) and
    after that (the run is done)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)
    phase = "setup"
    requested: signal.Signals | None = None

    @classmethod
    def install(cls) -> None:
        cls.phase, cls.requested = "setup", None
        for signum in cls.SIGNALS:
            signal.signal(signum, cls.handle)

    @classmethod
    def handle(cls, signum: int, _frame: Any) -> None:
        cls.requested = signal.Signals(signum)
        logger.warning("received %s during %s", cls.requested.name, cls.phase)
        if cls.phase == "setup":
            raise Interrupted(f"stopped by {cls.requested.name} before training started; nothing to save", signum)
        if cls.phase == "finishing":
            raise cls.after_training()

    @classmethod
    def after_training(cls) -> Interrupted:
        name = cls.requested.name if cls.requested else "a signal"
        return Interrupted(
            f"stopped by {name} after training; the final checkpoint is saved, so running again evaluates and "
            "publishes the SAE without retraining",
            cls.requested or signal.SIGTERM,
        )
