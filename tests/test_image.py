"""How the launcher builds the image: the build command for docker with and without buildx and for podman, which
CLI a --docker name is, and the fall-back to the classic builder. No engine runs here: the CLIs are stub scripts
that record their arguments (and the one without buildx refuses --provenance as the real CLI does)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from launcher import ecr
from launcher.errors import LauncherError

COMMIT = "0123456789abcdef"


def test_build_command_per_tool() -> None:
    """docs/launcher.md: "with `--provenance=false` where the docker CLI has buildx"; any other tool is refused."""
    buildx = ecr.build_command("docker", True, "sae:t", COMMIT)
    assert buildx[:4] == ["build", "--platform", "linux/amd64", "--provenance=false"]
    assert buildx[-5:] == ["-t", "sae:t", "-f", "Dockerfile", "."]
    assert f"org.opencontainers.image.revision={COMMIT}" in buildx
    classic = ecr.build_command("docker", False, "sae:t", COMMIT)
    assert "--provenance=false" not in classic and classic == [a for a in buildx if a != "--provenance=false"]
    podman = ecr.build_command("podman", True, "sae:t", COMMIT)
    assert "--provenance=false" not in podman and podman[podman.index("--format") + 1] == "docker"
    with pytest.raises(LauncherError, match="docker or podman"):
        ecr.build_command("nerdctl", True, "sae:t", COMMIT)


def stub(folder: Path, name: str, body: str) -> Path:
    """A stub CLI: appends its argv to calls.jsonl beside it, then runs ``body``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    log = folder / "calls.jsonl"
    record = f"import json,sys; open({str(log)!r},'a').write(json.dumps(sys.argv[1:])+chr(10))"
    path.write_text(f'#!/bin/sh\n{sys.executable} -c "{record}" "$@"\n{body}\n')
    path.chmod(0o755)
    return path


def calls(folder: Path) -> list[list[str]]:
    return [json.loads(line) for line in (folder / "calls.jsonl").read_text().splitlines()]


def test_which_tool(tmp_path: Path) -> None:
    """docs/container.md: "or podman (`--docker podman`, or podman-docker's `docker`; built with `--format docker`)" """
    assert ecr.build_tool(str(stub(tmp_path / "a", "docker", "exit 0"))) == "docker"
    assert ecr.build_tool(str(stub(tmp_path / "b", "podman", "exit 0"))) == "podman"
    # podman-docker installs a `docker` script that runs podman
    assert ecr.build_tool(str(stub(tmp_path / "c", "docker", 'exec /usr/bin/podman "$@"'))) == "podman"
    with pytest.raises(LauncherError, match="neither the docker CLI nor podman"):
        ecr.build_tool(str(stub(tmp_path / "d", "nerdctl", "exit 0")))
    with pytest.raises(LauncherError, match="not found"):
        ecr.build_tool(str(tmp_path / "missing" / "docker"))
    for folder in "abcd":  # telling them apart runs none of them
        assert not (tmp_path / folder / "calls.jsonl").exists()


def test_docker_without_buildx_builds_again_with_the_classic_builder(tmp_path: Path) -> None:
    """docs/container.md: "the launcher retries that way when the CLI refuses `--provenance`" """
    no_buildx = 'case "$*" in *--provenance*) echo "unknown flag: --provenance" >&2; exit 125;; esac'
    docker = stub(tmp_path, "docker", no_buildx)
    ecr.build(str(docker), "docker", "sae:t", COMMIT)
    first, second = calls(tmp_path)
    assert "--provenance=false" in first and "--provenance=false" not in second
    assert second == ecr.build_command("docker", False, "sae:t", COMMIT)


def test_docker_with_buildx_builds_once_and_a_failed_build_is_reported(tmp_path: Path) -> None:
    """docs/container.md: "the docker CLI with the buildx plugin (`--provenance=false`)" """
    docker = stub(tmp_path / "ok", "docker", "exit 0")
    ecr.build(str(docker), "docker", "sae:t", COMMIT)
    assert calls(tmp_path / "ok") == [ecr.build_command("docker", True, "sae:t", COMMIT)]
    broken = stub(tmp_path / "bad", "docker", "echo 'failed to solve: base image' >&2; exit 1")
    with pytest.raises(LauncherError, match="build failed with status 1"):
        ecr.build(str(broken), "docker", "sae:t", COMMIT)
    assert len(calls(tmp_path / "bad")) == 1  # no second try for a build that failed for another reason


def test_podman_builds_in_dockers_format(tmp_path: Path) -> None:
    """docs/launcher.md: "and with `--format docker` under `--docker podman`" """
    podman = stub(tmp_path, "podman", "exit 0")
    ecr.build(str(podman), "podman", "sae:t", COMMIT)
    assert calls(tmp_path) == [ecr.build_command("podman", False, "sae:t", COMMIT)]


@pytest.mark.parametrize("instance", ["ml.p3.2xlarge", "ml.p3dn.24xlarge", "ml.g3s.xlarge", "ml.p2.xlarge"])
def test_gpus_older_than_turing_are_refused_before_any_aws_call(instance: str) -> None:
    """README: "GPUs older than Turing (ml.p2, ml.g3, ml.p3) are refused by the launcher" """
    from launcher import jobs

    for mode in ("train", "viz"):
        with pytest.raises(LauncherError, match=f"{instance}: its .* GPU predates Turing.*CUDA 13") as err:
            jobs.check_instance(mode, instance, jobs.config_of(mode, {}))
        assert ("device=cpu" in str(err.value)) == (mode == "viz")
    # viz on its CPU, when asked, is allowed, with a warning
    warnings = jobs.check_instance("viz", instance, jobs.config_of("viz", {"device": "cpu"}))
    assert any("no usable GPU" in w for w in warnings)
    assert jobs.check_instance("train", "ml.g4dn.xlarge", jobs.config_of("train", {}))  # T4: works, fp32 warning
