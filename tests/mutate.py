"""`make mutate`: mutmut over the modules that carry the contract, one module at a time, and a report of survivors.

Each module runs in its own folder, ``build/mutate/<module>/``, with the ``[tool.mutmut]`` settings of
pyproject.toml, ``only_mutate`` set to that module and the test files ``[tool.mutate.tests]`` names for it; mutmut
then runs, for each mutant, only the tests that reached the mutated function (its own coverage record). The report,
``build/mutate/report.md``, has the figures per module and every surviving mutant with its diff.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

logger = logging.getLogger("mutate")

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "mutate"
MUTMUT = str(Path(sys.executable).with_name("mutmut"))
# What the tests read beside the code (mutmut copies the code and tests/ itself).
LINKED = ("container_src", "launcher", "tests", "data", "docker", "docs", "Dockerfile", ".dockerignore", "README.md")
RESULT_LINE = re.compile(r"^\s*([\w.ǁ]+__mutmut_\d+): (.+)$")


def settings() -> tuple[dict[str, object], dict[str, list[str]]]:
    """The mutmut settings and, per module, the pytest arguments (test files, marker filter) its mutants run with."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return project["tool"]["mutmut"], project["tool"]["mutate"]["tests"]


def _toml_value(value: object) -> str:
    # JSON strings, numbers, booleans and arrays of them are valid TOML
    return json.dumps(value)


def prepare(module: str, mutmut_settings: dict[str, object], test_args: list[str]) -> Path:
    """A fresh folder for one module: links to the project, and a pyproject.toml whose [tool.mutmut] names it."""
    work = work_dir(module)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for name in LINKED:
        (work / name).symlink_to(ROOT / name)
    text = (ROOT / "pyproject.toml").read_text()
    text = text[: text.index("[tool.mutmut]")]  # pyproject.toml keeps the mutmut tables last
    table = {**mutmut_settings, "only_mutate": [module], "pytest_add_cli_args_test_selection": test_args}
    text += "[tool.mutmut]\n" + "".join(f"{key} = {_toml_value(value)}\n" for key, value in table.items())
    (work / "pyproject.toml").write_text(text)
    # The launcher's image tag is git's view of the image's files, and build/ is git-ignored: the folder is a git
    # repository of its own (one empty commit), so a push or a dry run works on mutmut's copy as on a checkout.
    identity = ["-c", "user.name=mutate", "-c", "user.email=mutate@localhost"]
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    subprocess.run(["git", *identity, "commit", "-q", "--allow-empty", "-m", "mutate"], cwd=work, check=True)
    return work


def results(work: Path) -> dict[str, str]:
    """Each mutant's status, as mutmut records it."""
    listed = subprocess.run(
        [MUTMUT, "results", "--all", "true"], cwd=work, capture_output=True, text=True, check=False
    ).stdout
    return {m.group(1): m.group(2).strip() for m in map(RESULT_LINE.match, listed.splitlines()) if m}


def diff(work: Path, mutant: str) -> str:
    shown = subprocess.run([MUTMUT, "show", mutant], cwd=work, capture_output=True, text=True, check=False).stdout
    return "\n".join(line for line in shown.splitlines() if line.startswith(("+", "-")) and line[:3] not in "+++---")


def work_dir(module: str) -> Path:
    return BUILD / module.replace("/", "_").removesuffix(".py")


def summary(module: str, seconds: float) -> dict[str, object]:
    """The counts and survivors of a module's last run, from mutmut's records in its folder."""
    work = work_dir(module)
    statuses = results(work)
    counts: dict[str, int] = {}
    for status in statuses.values():
        counts[status] = counts.get(status, 0) + 1
    survivors = {name: diff(work, name) for name, status in sorted(statuses.items()) if status == "survived"}
    logger.info("%s: %s", module, counts)
    return {
        "module": module,
        "counts": counts,
        "survivors": survivors,
        "seconds": "-" if math.isnan(seconds) else round(seconds),
    }


def run_module(module: str, max_children: int, only: list[str]) -> dict[str, object]:
    mutmut_settings, tests = settings()
    if module not in tests:
        raise SystemExit(f"{module} has no test files in [tool.mutate.tests] of pyproject.toml: add them there")
    work = prepare(module, mutmut_settings, tests[module])
    started = time.monotonic()
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(
        [MUTMUT, "run", "--max-children", str(max_children), *only], cwd=work, env=env, capture_output=True, text=True
    )
    (work / "mutmut-run.log").write_text(done.stdout + done.stderr)
    for failure in ("failed to collect stats", "Failed to run clean test"):
        if failure in done.stdout:  # the tests fail on the unmutated code: every mutant stays "not checked"
            logger.error("%s: mutmut says %r; see %s", module, failure, work / "mutmut-run.log")
    return summary(module, time.monotonic() - started)


def killed_share(counts: dict[str, int]) -> str:
    killed = counts.get("killed", 0) + counts.get("timeout", 0)
    tried = killed + counts.get("survived", 0)
    return f"{100 * killed / tried:.0f}%" if tried else "-"


def write_report(modules: list[dict[str, object]]) -> Path:
    """One table of figures per module (mutants, not tests), then each survivor with its diff."""
    lines = [
        "# Mutation report",
        "",
        "Counts are mutants (one-line changes of the code); killed share = (killed + timeout) / (killed + timeout +",
        "survived). `no tests`: no selected test reaches the mutated function.",
        "",
        "| module | mutants | killed | timeout | survived | no tests | other | killed share | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in modules:
        c: dict[str, int] = entry["counts"]  # pyright: ignore[reportAssignmentType]
        other = sum(n for s, n in c.items() if s not in {"killed", "timeout", "survived", "no tests"})
        lines.append(
            f"| {entry['module']} | {sum(c.values())} | {c.get('killed', 0)} | {c.get('timeout', 0)} | "
            f"{c.get('survived', 0)} | {c.get('no tests', 0)} | {other} | {killed_share(c)} | {entry['seconds']} |"
        )
    for entry in modules:
        survivors: dict[str, str] = entry["survivors"]  # pyright: ignore[reportAssignmentType]
        lines += ["", f"## Survivors in {entry['module']} ({len(survivors)})"]
        for name, change in survivors.items():
            lines += ["", f"`{name}`", "```diff", change, "```"]
    report = BUILD / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description="mutmut over the contract modules, one at a time")
    parser.add_argument("modules", nargs="*", help="source files (default: every module in [tool.mutate.tests])")
    parser.add_argument("--max-children", type=int, default=2, help="mutants tested at once")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: the report of the modules' last runs (those stopped early included: their unchecked "
        "mutants count as 'not checked')",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        default=[],
        metavar="PATTERN",
        help="mutmut's mutant names (`*` matches any text) to run, e.g. 'container_src.train.x_publish*' or the "
        "survivors of an earlier run after new tests; the others count as 'not checked'",
    )
    args = parser.parse_args(argv)
    modules = args.modules or list(settings()[1])
    BUILD.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        modules = [m for m in modules if (work_dir(m) / "mutants").is_dir()]
        report = write_report([summary(module, math.nan) for module in modules])  # nan: not timed by this run
    else:
        report = write_report([run_module(module, args.max_children, args.only) for module in modules])
    logger.info("report: %s", report.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
