"""The container's entry point.

    python -m container_src train [--preset NAME] [--config FILE] [--key value ...]
    python -m container_src viz [--key value ...]
    python -m container_src bench [--key value ...]
    python -m container_src MODE --help    # the mode's keys: type, default, meaning
    train [--key value ...]          # the same, from the image's PATH (SageMaker runs `docker run IMAGE train`)

SageMaker always passes `train`, so a `mode` hyperparameter overrides the mode on the command line. Any error is
logged, written to ``output/failure`` (SageMaker's FailureReason) and ends the process with a non-zero status:
2 for a problem with the configuration or the inputs, 143 when stopped by SIGTERM (130 by SIGINT), 1 for anything
else.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from container_src.config import SCHEMAS, BenchConfig, ConfigError, Resolved, RunConfig, TrainConfig, VizConfig, resolve
from container_src.config_sources import parse_cli, pick_mode
from container_src.interrupt import Interrupted
from container_src.paths import ContainerPaths

logger = logging.getLogger("container_src")

EXIT_OK, EXIT_ERROR, EXIT_CONFIG = 0, 1, 2


def _train(resolved: Resolved[TrainConfig], paths: ContainerPaths) -> Any:
    from container_src.train import run_train

    return run_train(resolved, paths)


def _viz(resolved: Resolved[VizConfig], paths: ContainerPaths) -> Any:
    from container_src.viz import run_viz

    return run_viz(resolved, paths)


def _bench(resolved: Resolved[BenchConfig], paths: ContainerPaths) -> Any:
    from container_src.bench import run_bench

    return run_bench(resolved, paths)


# Each mode: its config schema (config.SCHEMAS) and its runner, imported only when it runs.
MODES: dict[str, tuple[type[RunConfig], Callable[[Any, ContainerPaths], Any]]] = {
    mode: (SCHEMAS[mode], runner) for mode, runner in (("train", _train), ("viz", _viz), ("bench", _bench))
}


def _usage(argv: list[str]) -> str:
    """The entry point's usage, then the keys of the mode named first in ``argv`` (of every mode when none is)."""
    from container_src.config_doc import usage

    return f"{__doc__ or ''}\n{usage(argv[0] if argv else None)}"


def _setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout, force=True
    )
    # Progress bars write a new line per update when stdout is not a terminal, which floods CloudWatch; the
    # [metric] lines carry the progress instead.
    if not sys.stdout.isatty():
        os.environ.setdefault("TQDM_DISABLE", "1")


def _write_failure(paths: ContainerPaths, mode: str, exc: BaseException) -> None:
    reason = f"{mode} failed: {exc}" if isinstance(exc, ConfigError) else f"{mode} failed: {type(exc).__name__}: {exc}"
    try:
        paths.failure_file.parent.mkdir(parents=True, exist_ok=True)
        paths.failure_file.write_text(" ".join(reason.split())[:1024] + "\n")
    except OSError as write_error:
        logger.error("could not write %s: %s", paths.failure_file, write_error)


def _stop(signum: int, _frame: Any) -> None:
    raise Interrupted(f"stopped by {signal.Signals(signum).name}", signum)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["help"] or "-h" in argv or "--help" in argv:  # also after a mode: `bench --help`
        sys.stdout.write(_usage(argv))
        return EXIT_OK
    _setup_logging()
    # SIGTERM (docker stop, StopTrainingJob) ends every mode with 143 and a failure file. In the image Python is
    # PID 1 (docker/train execs it), which the kernel does not stop on a signal it has no handler for. Training
    # installs its own handler, which saves a checkpoint first.
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        return _run(argv)
    finally:
        if previous is not None:  # None: a handler installed outside Python, which cannot be put back from here
            signal.signal(signal.SIGTERM, previous)


def _run(argv: list[str]) -> int:
    paths = ContainerPaths.from_env()
    mode = argv.pop(0) if argv and not argv[0].startswith("-") else "train"
    paths.failure_file.unlink(missing_ok=True)  # a stale reason from an earlier run would mislead
    try:
        hyperparameters = paths.read_hyperparameters()
        cli = parse_cli(argv)
        argv_mode, mode = mode, pick_mode(mode, hyperparameters, cli)
        if argv_mode != mode and not paths.in_job():  # SageMaker always says `train`; locally this may surprise
            logger.warning("mode %s from the hyperparameters or --mode, not %s", mode, argv_mode)
        # As soon as the mode is known to be train (after reading the hyperparameters and flags, before any other
        # check), so that a train run that fails after that leaves no earlier SAE in model/ that could pass for its
        # own. Until then (the mode unread, or another one, such as viz, which reads that SAE) model/ is left
        # alone. SageMaker's model/ starts empty anyway.
        if mode == "train" and (archive := paths.archive_previous_model()):
            logger.warning("moved what an earlier run left in %s to %s", paths.model_dir, archive)
        if mode not in MODES:
            raise ConfigError(f"mode={mode!r}: unknown mode; available: {', '.join(MODES)}")
        logger.info("mode %s, base dir %s", mode, paths.base)
        schema, runner = MODES[mode]
        # a job's hyperparameters are its own; a local tree's serve every mode run on it
        resolved = resolve(hyperparameters, cli, schema, shared_tree=not paths.in_job())
        resolved.mode = mode
        runner(resolved, paths)
        return EXIT_OK
    except ConfigError as exc:
        logger.error("%s", exc)
        _write_failure(paths, mode, exc)
        return EXIT_CONFIG
    except BaseException as exc:
        if isinstance(exc, Interrupted):
            logger.error("%s", exc)
            _write_failure(paths, mode, exc)
            return 128 + exc.signum  # the shell's convention: 143 for SIGTERM, 130 for SIGINT
        if isinstance(exc, SystemExit | KeyboardInterrupt):
            _write_failure(paths, mode, exc)
            raise
        logger.exception("%s failed", mode)
        _write_failure(paths, mode, exc)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
