"""Build, tag and push the image to ECR, under a tag that names its content.

The tag hashes git's object ids of exactly what the image is built from (IMAGE_INPUTS) and the lock, so an image
already in ECR is not built or pushed again; files that differ from the commit give a ``-dirty`` tag. The docker
login password goes to ``docker login`` on stdin, never on a command line or in a log. The build runs with the docker
CLI (with buildx, or its classic builder without) or podman; any other tool is refused before anything is built.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.aws import client_for
from launcher.errors import EXIT_FAILED, LauncherError
from launcher.settings import Settings

logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
LOCK = "docker/container.lock"
# What the image is built from (the Dockerfile, and what it copies in past .dockerignore): a change to any of them is
# a new image; a change to anything else is not.
IMAGE_INPUTS = (
    "Dockerfile",
    ".dockerignore",
    "docker/container.lock",
    "docker/cuda.lock",
    "docker/install.sh",
    "docker/train",
    "container_src",
)
# SageMaker's training instances are x86_64; a build on an ARM laptop must still produce that.
PLATFORM = "linux/amd64"
STDERR_FD = 2
# What the docker CLI without the buildx plugin (and podman) says to --provenance: the sign to build again without it.
NO_BUILDX = "unknown flag: --provenance"


@dataclass(frozen=True)
class Image:
    uri: str
    """repository URI with the tag"""
    tag: str
    commit: str
    digest: str | None
    """sha256 digest in ECR; None when not pushed (a dry run)"""
    pushed: bool = False

    @property
    def reference(self) -> str:
        """What a job runs: the digest when known, so the job runs exactly the pushed bytes."""
        return f"{self.uri.rsplit(':', 1)[0]}@{self.digest}" if self.digest else self.uri


def _git(*args: str, root: Path, env: dict[str, str] | None = None) -> str:
    try:
        out = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True, env={**os.environ, **(env or {})}
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        raise LauncherError(
            f"git {' '.join(args)} failed in {root}: the image tag is made from git's view of the image's files, "
            f"so push from a git checkout ({str(detail).strip()})",
            EXIT_FAILED,
        ) from None
    return out.stdout


def git_commit(root: Path = ROOT) -> str:
    return _git("rev-parse", "HEAD", root=root).strip()


def _image_entries(tree: str, root: Path) -> str:
    """``git ls-tree`` of IMAGE_INPUTS in ``tree``: a line per path with its mode and object id."""
    return _git("ls-tree", tree, "--", *IMAGE_INPUTS, root=root)


def _working_tree(root: Path) -> str:
    """A git tree of the image's files as they are in the working copy, untracked ones included (ignored ones are
    not, as .dockerignore keeps them out too). Built in a throwaway index, so the user's index is left alone."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        _git("read-tree", "HEAD", root=root, env=env)
        _git("add", "--all", "--", *IMAGE_INPUTS, root=root, env=env)
        return _git("write-tree", root=root, env=env).strip()


def content_tag(root: Path = ROOT) -> tuple[str, str]:
    """(tag, commit): a hash of the image's files and one of the lock, with ``-dirty`` when those files are not
    the commit's."""
    commit = git_commit(root)
    current = _image_entries(_working_tree(root), root)
    lock_hash = hashlib.sha256((root / LOCK).read_bytes()).hexdigest()[:12]
    tag = f"{hashlib.sha256(current.encode()).hexdigest()[:12]}-{lock_hash}"
    if current != _image_entries("HEAD", root):
        tag += "-dirty"
        logger.warning("the image's files differ from commit %s: building %s from the working copy", commit[:12], tag)
    return tag, commit


def repository_uri(ecr: Any, name: str) -> str | None:
    """The repository's URI, or None when it does not exist yet."""
    try:
        return ecr.describe_repositories(repositoryNames=[name])["repositories"][0]["repositoryUri"]
    except ecr.exceptions.RepositoryNotFoundException:
        return None


def ensure_repository(ecr: Any, name: str) -> str:
    """The repository's URI, creating the repository (immutable tags, scan on push) when it is missing."""
    if uri := repository_uri(ecr, name):
        return uri
    logger.info("creating ECR repository %s", name)
    repo = ecr.create_repository(
        repositoryName=name,
        imageTagMutability="IMMUTABLE",  # a content tag must never point at other bytes
        imageScanningConfiguration={"scanOnPush": True},
    )
    return repo["repository"]["repositoryUri"]


def pushed_digest(ecr: Any, repository: str, tag: str) -> str | None:
    try:
        images = ecr.describe_images(repositoryName=repository, imageIds=[{"imageTag": tag}])["imageDetails"]
    except ecr.exceptions.ImageNotFoundException:
        return None
    return images[0]["imageDigest"] if images else None


def _docker(docker: str, *args: str, stdin: str | None = None, quiet: bool = False) -> None:
    logger.info("docker %s", " ".join(args))
    try:
        # docker's own output goes to stderr: stdout carries only the launcher's result.
        out = subprocess.PIPE if quiet else STDERR_FD
        result = subprocess.run([docker, *args], input=stdin, text=True, stdout=out, stderr=out, check=False, cwd=ROOT)
    except FileNotFoundError:
        raise LauncherError(
            f"{docker!r} not found: install the Docker CLI, or pass --image to use a pushed image", EXIT_FAILED
        ) from None
    if result.returncode != 0:
        detail = f": {(result.stderr or '').strip()[-500:]}" if quiet else ""
        raise LauncherError(f"docker {args[0]} failed with status {result.returncode}{detail}", EXIT_FAILED)


def login(ecr: Any, docker: str) -> None:
    data = ecr.get_authorization_token()["authorizationData"][0]
    user, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    _docker(docker, "login", "--username", user, "--password-stdin", data["proxyEndpoint"], stdin=password, quiet=True)


def build_tool(docker: str) -> str:
    """``docker`` or ``podman``: which CLI ``docker`` (a name on PATH or a path) is, from its file name and, for a
    script such as podman-docker's ``docker``, what it runs; refuses a tool this module cannot drive, before anything
    is built."""
    path = shutil.which(docker)
    if path is None:
        raise LauncherError(
            f"{docker!r} not found: install the Docker CLI (or podman), or pass --image to use a pushed image",
            EXIT_FAILED,
        )
    real = Path(path).resolve()
    try:
        head = real.read_bytes()[:4096]
    except OSError:
        head = b""
    if real.name.startswith("podman") or (head.startswith(b"#!") and b"podman" in head):
        return "podman"
    if real.name.startswith("docker") or Path(docker).name.startswith("docker"):
        return "docker"
    raise LauncherError(
        f"--docker {docker}: {real.name} is neither the docker CLI nor podman, the two tools the image is built "
        "with (docker with or without buildx, or podman); pass --docker docker or --docker podman",
        EXIT_FAILED,
    )


def build_command(tool: str, buildx: bool, local: str, commit: str) -> list[str]:
    """The build's arguments for ``tool`` (``docker`` or ``podman``); ``buildx``: whether docker has the buildx
    plugin. buildx gets ``--provenance=false``: one image manifest, no attestation index around it (SageMaker has been
    reported to refuse indexes); the classic builder makes no attestation and does not know the flag; podman writes
    Docker's manifest format (``--format docker``) instead of OCI's."""
    if tool not in ("docker", "podman"):
        raise LauncherError(f"cannot build with {tool!r}: the image is built with docker or podman", EXIT_FAILED)
    flags = ["--provenance=false"] if tool == "docker" and buildx else []
    if tool == "podman":
        flags = ["--format", "docker"]
    label = f"org.opencontainers.image.revision={commit}"
    return ["build", "--platform", PLATFORM, *flags, "--label", label, "-t", local, "-f", "Dockerfile", "."]


def _run_build(docker: str, args: list[str]) -> tuple[int, str]:
    """Run a build with its log on stderr as it comes; return its status and the log's last lines."""
    logger.info("%s %s", docker, " ".join(args))
    tail: deque[str] = deque(maxlen=20)
    with subprocess.Popen([docker, *args], stdout=STDERR_FD, stderr=subprocess.PIPE, text=True, cwd=ROOT) as proc:
        assert proc.stderr is not None
        for line in proc.stderr:
            sys.stderr.write(line)
            tail.append(line)
    return proc.returncode, "".join(tail)


def build(docker: str, tool: str, local: str, commit: str) -> None:
    """Build the image as ``local`` with ``tool``: docker tries buildx's flags first, and builds with the classic
    builder when the CLI has no buildx (it refuses --provenance before doing anything)."""
    status, tail = _run_build(docker, build_command(tool, tool == "docker", local, commit))
    if status != 0 and tool == "docker" and NO_BUILDX in tail:
        logger.info("%s has no buildx plugin: building with the classic builder, which makes no attestation", docker)
        status, tail = _run_build(docker, build_command(tool, False, local, commit))
    if status != 0:
        raise LauncherError(f"{docker} build failed with status {status}", EXIT_FAILED)


def push(settings: Settings, *, docker: str = "docker", dry_run: bool = False) -> Image:
    """Build, tag and push the image unless ECR already holds this content's tag."""
    settings.require("region", "image_repository")
    tool = build_tool(docker) if not dry_run else "docker"  # a tool it cannot drive is refused before any AWS call
    tag, commit = content_tag()
    ecr = client_for("ecr", settings.region)
    if dry_run:
        repo_uri = repository_uri(ecr, settings.image_repository)
        if repo_uri is None:
            account = client_for("sts", settings.region).get_caller_identity()["Account"]
            repo_uri = f"{account}.dkr.ecr.{settings.region}.amazonaws.com/{settings.image_repository}"
        return Image(uri=f"{repo_uri}:{tag}", tag=tag, commit=commit, digest=pushed_digest_or_none(ecr, settings, tag))
    repo_uri = ensure_repository(ecr, settings.image_repository)
    remote = f"{repo_uri}:{tag}"
    digest = pushed_digest(ecr, settings.image_repository, tag)
    if digest:
        logger.info("%s is already in ECR (%s); not building or pushing again", remote, digest)
        return Image(uri=remote, tag=tag, commit=commit, digest=digest)
    local = f"{settings.image_repository}:{tag}"
    build(docker, tool, local, commit)
    _docker(docker, "tag", local, remote)
    login(ecr, docker)
    _docker(docker, "push", remote)
    digest = pushed_digest(ecr, settings.image_repository, tag)
    if not digest:
        raise LauncherError(f"pushed {remote}, but ECR does not list it; check the push output above", EXIT_FAILED)
    logger.info("pushed %s (%s)", remote, digest)
    return Image(uri=remote, tag=tag, commit=commit, digest=digest, pushed=True)


def pushed_digest_or_none(ecr: Any, settings: Settings, tag: str) -> str | None:
    try:
        return pushed_digest(ecr, settings.image_repository, tag)
    except ecr.exceptions.RepositoryNotFoundException:
        return None
