"""Push the image, and start, follow and fetch the SageMaker jobs (train, viz, bench, sweeps).

    python launcher/submit.py push                         # build, tag and push the image (skipped when unchanged)
    python launcher/submit.py secret [--force]             # store the W&B key (asked for, hidden) in Secrets Manager
    python launcher/submit.py --mode train [--config FILE] [--set key=value ...] [--spot] [--wait] [--dry-run]
    python launcher/submit.py --mode train --sweep k=32,64 --sweep lr=1e-4,3e-4      # one job per combination
    python launcher/submit.py --mode train --sweep k=32,64 --sweep-together          # one job, both SAEs
    python launcher/submit.py --mode viz --from-job sae-train-... --wait --download data/dashboards
    python launcher/submit.py follow JOB_NAME [--download DIR]

Settings (region, role, bucket, image repository) come from launcher/settings.toml or SAE_* variables (see
launcher/settings.py). Every check of the input runs before the first AWS call; then the read-only look-ups (the
earlier jobs that --from-job and --resume-from name, the W&B secret, an S3 export's manifest) and the SageMaker SDK's
checks of each request run before anything is pushed or uploaded. Exit status: 0 done, 2 bad input, 1 an AWS, Docker
or job failure, 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: make the project's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from botocore.exceptions import ClientError, NoCredentialsError

from launcher import ecr, jobs
from launcher.aws import client_for, ensure_bucket
from launcher.channels import check_same_run, planned_uri, resume_checkpoints, trained_model_artifact, upload_dir
from launcher.errors import EXIT_FAILED, EXIT_INPUT, EXIT_INTERRUPTED, EXIT_OK, LauncherError
from launcher.follow import describe, download_target, follow_and_fetch
from launcher.plan import Plan, prepare
from launcher.secret import read_key, secret_exists, store_wandb_key
from launcher.settings import Settings
from launcher.upload import BUCKET_SETTING, read_manifest, remote_fingerprint, s3_errors, upload_export

logger = logging.getLogger("launcher")
ACTIONS = ("push", "secret", "follow")
DEFAULT_PROMPTS = Path("data/prompts")
PLANNED_IMAGE_TAG = "planned"  # the image of the requests the SDK checks before the push, which names the real one


def _common(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--settings", type=Path, help="settings file (default launcher/settings.toml)")
    parser.add_argument("--docker", default="docker", help="docker CLI to build and push with")
    return parser


def _submit_parser() -> argparse.ArgumentParser:
    p = _common(
        argparse.ArgumentParser(prog="submit.py", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    )
    p.add_argument("--mode", required=True, help="train, viz or bench")
    p.add_argument("--config", type=Path, help="JSON file of hyperparameters")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a hyperparameter (repeatable)")
    p.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="one job per value (repeatable: every combination)",
    )
    p.add_argument(
        "--sweep-together",
        action="store_true",
        help="train: the sweep's combinations as one job, every SAE on one forward pass (keys k, expansion_factor, "
        "d_sae, architecture, hook_name)",
    )
    p.add_argument("--prompts", default=str(DEFAULT_PROMPTS), help="exported prompts folder, or an s3:// prefix")
    p.add_argument("--model", help="channel model: a hub-cache folder or s3:// prefix (for network isolation)")
    p.add_argument(
        "--control",
        help="channel control, the control text: a dataset folder or s3:// prefix (train: with a validation split)",
    )
    p.add_argument("--tinystories", help="deprecated: the old name of --control")
    p.add_argument("--from-job", help="viz: use this finished training job's SAE as channel sae")
    p.add_argument("--sae", help="viz: channel sae as an s3:// URI (a model.tar.gz or an SAE prefix)")
    p.add_argument(
        "--network-isolation", action="store_true", help="no network in the job; needs --model and --control"
    )
    p.add_argument("--instance-type", default=jobs.DEFAULT_INSTANCE)
    p.add_argument("--volume-gb", type=int, default=50)
    p.add_argument("--max-run", type=int, default=24 * 3600, help="seconds of training at most")
    p.add_argument("--spot", action="store_true", help="managed spot training, resuming from S3 checkpoints")
    p.add_argument("--max-wait", type=int, help="spot: seconds to wait for capacity plus run (default 2 × max-run)")
    p.add_argument(
        "--resume-from", help="train: reuse this earlier job's checkpoints (it resumes where that one stopped)"
    )
    p.add_argument("--image", help="run this image URI instead of building and pushing the current one")
    p.add_argument(
        "--wait", action="store_true", help="follow the job(s) to the end, streaming the log of a single job"
    )
    p.add_argument(
        "--download", type=Path, metavar="DIR", help="after --wait: unpack model.tar.gz into DIR/<job name>/"
    )
    p.add_argument("--poll-seconds", type=float, default=20.0, help=argparse.SUPPRESS)
    p.add_argument("--dry-run", action="store_true", help="print the full request(s) and send nothing")
    return p


def _follow_parser() -> argparse.ArgumentParser:
    p = _common(
        argparse.ArgumentParser(prog="submit.py follow", description="Follow a job to its end; fetch its artifact.")
    )
    p.add_argument("job")
    p.add_argument("--download", type=Path, metavar="DIR")
    p.add_argument("--no-logs", action="store_true")
    p.add_argument("--poll-seconds", type=float, default=20.0, help=argparse.SUPPRESS)
    return p


def _check_no_secret(request: dict[str, Any]) -> None:
    """Last line of defence: the local W&B key must not appear anywhere in what is sent or printed."""
    if jobs.holds_wandb_key(json.dumps(request, default=str)):
        raise LauncherError("the W&B key appears in the job request; remove it (jobs get only WANDB_SECRET_ID)")


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n" for row in rows)


def _follow_and_fetch(names: list[str], args: argparse.Namespace, region: str, stream_logs: bool) -> int:
    again = [
        *(["--settings", str(args.settings)] if args.settings else []),
        *(["--download", str(args.download)] if args.download else []),
        *(["--no-logs"] if getattr(args, "no_logs", False) else []),
    ]
    status, rows = follow_and_fetch(
        names, region, poll_s=args.poll_seconds, dest=args.download, stream_logs=stream_logs, again=again
    )
    _write(_table([["job", "status", "artifact"], *rows]))
    return status


def _earlier_jobs(args: argparse.Namespace, settings: Settings) -> tuple[str | None, str | None, dict[str, Any]]:
    """(the sae channel of --from-job, the checkpoints of --resume-from and that job's description), None or empty
    when not given.

    Read-only describe calls, made before the image is pushed or anything is uploaded: a mistyped or unfinished job
    is refused before that work, not after it.
    """
    if not (args.from_job or args.resume_from):
        return None, None, {}
    sagemaker = client_for("sagemaker", settings.region)
    sae = trained_model_artifact(sagemaker, args.from_job) if args.from_job else None
    checkpoints, earlier = resume_checkpoints(sagemaker, args.resume_from) if args.resume_from else (None, {})
    return sae, checkpoints, earlier


def _channels(
    args: argparse.Namespace, plan: Plan, s3: Any, from_job_sae: str | None
) -> tuple[dict[str, str], dict[str, str]]:
    """Channel name -> S3 URI, and the tags they contribute (read-only: an S3 export's manifest gives its tag). Local
    folders go under prefixes named by their content, so their URIs are known before `_upload` puts them there."""
    channels: dict[str, str] = {}
    tags: dict[str, str] = {}
    prompts = plan.sources.get("prompts")
    if prompts and prompts.startswith("s3://"):
        channels["prompts"] = prompts
        tags["prompts-fingerprint"] = remote_fingerprint(s3, prompts)
    elif prompts:
        fingerprint = read_manifest(Path(prompts))["fingerprint"]
        tags["prompts-fingerprint"] = fingerprint
        channels["prompts"] = plan.settings.s3_uri("prompts", fingerprint[:16]) + "/"
    for name in ("model", "control"):
        if local := plan.local(name):
            channels[name] = planned_uri(local[0], plan.settings.s3_uri("channels", name), local[1])
        elif name in plan.sources:
            channels[name] = plan.sources[name]
    if from_job_sae:
        channels["sae"] = from_job_sae
        tags["from-job"] = args.from_job
    elif args.sae:
        channels["sae"] = args.sae
    return channels, tags


def _upload(plan: Plan, s3: Any, channels: dict[str, str], tags: dict[str, str]) -> None:
    """Upload the local folders to the prefixes `_channels` planned for them (the export checked again against its
    manifest, and against the fingerprint planned with: the push may have taken minutes)."""
    prompts = plan.sources.get("prompts")
    if prompts and not prompts.startswith("s3://"):
        expected = tags["prompts-fingerprint"]
        upload_export(Path(prompts), channels["prompts"], s3_client=s3, option=BUCKET_SETTING, expected=expected)
    for name in ("model", "control"):
        if local := plan.local(name):
            upload_dir(s3, local[0], channels[name], local[1])


def _environment(args: argparse.Namespace, settings: Settings) -> dict[str, str]:
    if args.network_isolation:
        logger.warning("network isolation: the job cannot reach Secrets Manager or W&B, so W&B logs offline")
        return {}
    if secret_exists(client_for("secretsmanager", settings.region), settings.wandb_secret_id):
        # the region too: the container's Secrets Manager client needs one, and boto3 reads AWS_DEFAULT_REGION
        return {"WANDB_SECRET_ID": settings.wandb_secret_id, "AWS_DEFAULT_REGION": settings.region}
    if os.environ.get("WANDB_API_KEY"):
        logger.warning(
            "WANDB_API_KEY is set here but not stored as secret %s; run `submit.py secret` first. "
            "Jobs log W&B offline (the key is never sent with the job).",
            settings.wandb_secret_id,
        )
    return {}


def _specs(
    args: argparse.Namespace,
    plan: Plan,
    channels: dict[str, str],
    tags: dict[str, str],
    *,
    checkpoint_from: str | None,
    environment: dict[str, str],
) -> list[jobs.JobSpec]:
    """One request per run, naming the planned image (the SDK checks them before the image is pushed)."""
    settings = plan.settings
    return [
        jobs.JobSpec(
            name=name,
            mode=args.mode,
            image=args.image or f"{settings.image_repository}:{PLANNED_IMAGE_TAG}",
            hyperparameters=hp,
            channels=channels,
            output_uri=settings.s3_uri("jobs"),
            instance_type=args.instance_type,
            volume_gb=args.volume_gb,
            max_run=args.max_run,
            spot=args.spot,
            max_wait=plan.max_wait,
            # Train jobs checkpoint to S3 under their own name: a spot restart of the job resumes from there.
            checkpoint_uri=(checkpoint_from or settings.s3_uri("checkpoints", name) + "/")
            if args.mode == "train"
            else None,
            network_isolation=args.network_isolation,
            environment=environment,
            tags={
                "mode": args.mode,
                **tags,
                **({"sweep": " ".join(f"{k}={v}" for k, v in run.items())} if run else {}),
            },
        )
        for name, run, hp in zip(plan.names, plan.runs, plan.values, strict=True)
    ]


def _create(args: argparse.Namespace, plan: Plan, specs: list[jobs.JobSpec], image: ecr.Image) -> list[list[str]]:
    """Send (or, in a dry run, print) each job's request; returns the table's rows."""
    sagemaker = client_for("sagemaker", plan.settings.region)
    rows = [["job", *(plan.runs[0].keys()), "instance", "spot", "state"]]
    submitted: list[str] = []
    sending = None  # a job whose request went out unanswered (Ctrl-C mid-call) may exist all the same
    try:
        for spec, run in zip(specs, plan.runs, strict=True):
            tags = {"git-commit": image.commit, "image-digest": image.digest or "unknown", **spec.tags}
            request = jobs.build_request(replace(spec, image=image.reference, tags=tags), plan.settings)
            _check_no_secret(request)
            if args.dry_run:
                _write(json.dumps(request, indent=2, default=str) + "\n")
                state = "dry run"
            else:
                sending = spec.name
                sagemaker.create_training_job(**request)
                sending = None
                submitted.append(spec.name)
                logger.info("submitted %s", spec.name)
                state = "submitted"
            rows.append([spec.name, *run.values(), args.instance_type, "yes" if args.spot else "no", state])
    except BaseException as exc:
        if submitted:
            logger.error(
                "%d of %d jobs were submitted before the error below and run on: %s. Follow them with "
                "`submit.py follow JOB`, or stop them with `aws sagemaker stop-training-job --training-job-name JOB`",
                len(submitted),
                len(specs),
                ", ".join(submitted),
            )
        if sending and not isinstance(exc, ClientError):  # SageMaker's refusal is an answer: nothing was created
            logger.error(
                "%s was being sent when the error below came, so it may have been created too: check with "
                "`aws sagemaker describe-training-job --training-job-name %s`",
                sending,
                sending,
            )
        raise
    return rows


def _submit(args: argparse.Namespace) -> int:
    plan = prepare(args)
    settings = plan.settings
    # From here on AWS is called: read-only look-ups and the SDK's checks, then the push, the uploads and the jobs.
    from_job_sae, checkpoint_from, earlier = _earlier_jobs(args, settings)
    environment = _environment(args, settings)
    s3 = client_for("s3", settings.region)
    channels, channel_tags = _channels(args, plan, s3, from_job_sae)
    if earlier:  # one run: --resume-from refuses a sweep
        check_same_run(args.resume_from, earlier, plan.values[0], channels)
    specs = _specs(args, plan, channels, channel_tags, checkpoint_from=checkpoint_from, environment=environment)
    for spec in specs:  # the SDK checks each request (the role with IAM, among others) before anything is pushed
        _check_no_secret(jobs.build_request(spec, settings))
    with s3_errors(f"s3://{settings.bucket}", BUCKET_SETTING):  # read-only in a dry run, which logs a creation
        ensure_bucket(s3, settings.bucket, settings.region, dry_run=args.dry_run)
    if args.image:
        digest = args.image.partition("@")[2] or None
        # which commit built another image is not known here: this checkout's HEAD need not be it
        image = ecr.Image(uri=args.image.partition("@")[0], tag="", commit="unknown", digest=digest)
    else:
        image = ecr.push(settings, docker=args.docker, dry_run=args.dry_run)
    if not args.dry_run:
        _upload(plan, s3, channels, channel_tags)
    _write(_table(_create(args, plan, specs, image)))
    if args.wait:
        return _follow_and_fetch(plan.names, args, settings.region, stream_logs=len(plan.names) == 1)
    return EXIT_OK


def _main(argv: list[str]) -> int:
    action = argv[0] if argv and argv[0] in ACTIONS else "submit"
    misplaced = next((a for a in argv if a in ACTIONS), None)
    if action == "submit" and misplaced and not any(a == "--mode" or a.startswith("--mode=") for a in argv):
        raise LauncherError(f"{misplaced}: an action comes first, before its options (submit.py {misplaced} …)")
    if action == "submit":
        return _submit(_submit_parser().parse_args(argv))
    if action == "follow":
        args = _follow_parser().parse_args(argv[1:])
        if args.download:
            download_target(args.download, args.job)
        settings = Settings.load(args.settings).require("region")
        describe(client_for("sagemaker", settings.region), args.job)  # an unknown name is bad input (status 2)
        return _follow_and_fetch([args.job], args, settings.region, stream_logs=not args.no_logs)
    if action == "push":
        args = _common(argparse.ArgumentParser(prog="submit.py push")).parse_args(argv[1:])
        image = ecr.push(Settings.load(args.settings), docker=args.docker)
        _write(f"{image.uri}\n{image.digest}\n")
        return EXIT_OK
    return _secret(argv[1:])


def _secret(argv: list[str]) -> int:
    parser = _common(
        argparse.ArgumentParser(
            prog="submit.py secret",
            description="Store the W&B key (from WANDB_API_KEY, or asked for without echo) in Secrets Manager.",
        )
    )
    parser.add_argument("--force", action="store_true", help="replace the key an existing secret holds")
    args = parser.parse_args(argv)
    settings = Settings.load(args.settings).require("region", "wandb_secret_id")
    key = read_key()  # checked before any AWS call
    secrets = client_for("secretsmanager", settings.region)
    arn = store_wandb_key(secrets, settings.wandb_secret_id, key, force=args.force)
    _write(f"stored the W&B key as {arn}; jobs get WANDB_SECRET_ID={settings.wandb_secret_id}\n")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("launcher").setLevel(logging.INFO)
    for noisy in ("botocore", "boto3", "sagemaker", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return _main(sys.argv[1:] if argv is None else list(argv))
    except LauncherError as exc:
        logger.error("%s", exc)
        return exc.status
    except KeyboardInterrupt:  # what was written stays whole: uploads write their record last, downloads swap in
        logger.error("interrupted (Ctrl-C); jobs already submitted run on")
        return EXIT_INTERRUPTED
    except NoCredentialsError:
        logger.error(
            "no AWS credentials found: configure them (aws configure, AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY). --dry-run needs them too: it reads the W&B secret's existence, the image's "
            "repository, any --from-job or --resume-from job and an S3 export's manifest, and only sends nothing"
        )
        return EXIT_INPUT
    except Exception as exc:  # an AWS error: the service's own message says what is wrong
        logger.error("%s: %s", type(exc).__name__, exc)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
