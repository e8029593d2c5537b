"""The IAM policies in docs/launcher.md: valid JSON, each action's resource in the form AWS accepts for it, S3 objects
only under the launcher's prefix, and every AWS call in launcher/ allowed to the user's credentials."""

from __future__ import annotations

import ast
import fnmatch
import json
import re
from typing import Any

import boto3
import pytest
from botocore import xform_name

from launcher import jobs
from launcher.settings import Settings
from tests.conftest import ROOT

DOC = ROOT / "docs" / "launcher.md"
SETTINGS = Settings(
    region="eu-west-1",
    role_arn="arn:aws:iam::123456789012:role/sae-sagemaker",
    bucket="team-sae-runs",
    image_repository="sae-censorship",
)
PLACEHOLDERS = {
    "REGION": SETTINGS.region,
    "ACCOUNT_ID": "123456789012",
    "BUCKET": SETTINGS.bucket,
    "PREFIX": SETTINGS.s3_prefix,
    "REPOSITORY": SETTINGS.image_repository,
    "ROLE_NAME": "sae-sagemaker",
    "SECRET_ID": SETTINGS.wandb_secret_id,
}

# AWS's Service Authorization Reference: the resource each action takes. Actions that take none accept only "*".
STAR_ONLY = {"ecr:GetAuthorizationToken", "cloudwatch:PutMetricData", "sts:GetCallerIdentity"}
_REGION, _ACCOUNT = r"[a-z]{2}(-[a-z]+)+-\d", r"\d{12}"
_REPOSITORY = rf"arn:aws:ecr:{_REGION}:{_ACCOUNT}:repository/[a-z0-9._/-]+"
_BUCKET = r"arn:aws:s3:::[a-z0-9.-]{3,63}"
_OBJECT = _BUCKET + r"/.+"
_LOG_GROUP = rf"arn:aws:logs:{_REGION}:{_ACCOUNT}:log-group:[^:*]+(:\*)?"
_LOG_STREAM = rf"arn:aws:logs:{_REGION}:{_ACCOUNT}:log-group:[^:*]+:(\*|log-stream:.+)"
_SECRET = rf"arn:aws:secretsmanager:{_REGION}:{_ACCOUNT}:secret:[\w/+=.@-]+-\*"  # AWS appends "-" and 6 characters
_TRAINING_JOB = rf"arn:aws:sagemaker:{_REGION}:{_ACCOUNT}:training-job/[\w*-]+"
_ROLE = rf"arn:aws:iam::{_ACCOUNT}:role/[\w+=,.@/-]+"
RESOURCE_FORMS = {
    **dict.fromkeys(
        ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability", "ecr:CreateRepository",
         "ecr:DescribeRepositories", "ecr:DescribeImages", "ecr:InitiateLayerUpload", "ecr:UploadLayerPart",
         "ecr:CompleteLayerUpload", "ecr:PutImage"],
        _REPOSITORY,
    ),
    **dict.fromkeys(["s3:CreateBucket", "s3:ListBucket"], _BUCKET),
    **dict.fromkeys(["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"], _OBJECT),
    **dict.fromkeys(["logs:CreateLogGroup", "logs:CreateLogStream", "logs:DescribeLogStreams"], _LOG_GROUP),
    **dict.fromkeys(["logs:PutLogEvents", "logs:GetLogEvents"], _LOG_STREAM),
    **dict.fromkeys(
        ["secretsmanager:GetSecretValue", "secretsmanager:CreateSecret", "secretsmanager:PutSecretValue",
         "secretsmanager:DescribeSecret"],
        _SECRET,
    ),
    **dict.fromkeys(
        ["sagemaker:CreateTrainingJob", "sagemaker:DescribeTrainingJob", "sagemaker:AddTags"], _TRAINING_JOB
    ),
    **dict.fromkeys(["iam:PassRole", "iam:GetRole", "iam:SimulatePrincipalPolicy"], _ROLE),
}  # fmt: skip
# What the docker CLI calls to push (AWS's "IAM permissions for pushing an image"), and what a training job needs of
# its role (the SageMaker guide's CreateTrainingJob execution-role permissions).
DOCKER_PUSH = {"ecr:CompleteLayerUpload", "ecr:UploadLayerPart", "ecr:InitiateLayerUpload", "ecr:PutImage",
               "ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetAuthorizationToken"}  # fmt: skip
JOB_NEEDS = {"cloudwatch:PutMetricData", "logs:CreateLogStream", "logs:PutLogEvents", "logs:CreateLogGroup",
             "logs:DescribeLogStreams", "s3:GetObject", "s3:PutObject", "s3:ListBucket", "ecr:GetAuthorizationToken",
             "ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage",
             "secretsmanager:GetSecretValue"}  # fmt: skip
# A boto3 call whose IAM action is not "<service>:<Operation>".
IAM_ACTION_OF = {
    ("s3", "head_bucket"): "s3:ListBucket",
    ("s3", "list_objects_v2"): "s3:ListBucket",
    ("s3", "delete_objects"): "s3:DeleteObject",
    ("s3", "upload_file"): "s3:PutObject",
    ("s3", "download_file"): "s3:GetObject",
}
TRANSFER_METHODS = {"s3": {"upload_file", "download_file"}}


def _policies(text: str) -> dict[str, dict[str, Any]]:
    """Each ```json block after a ``<!-- policy: NAME -->`` line, by NAME, placeholders filled in."""
    found = re.findall(r"<!-- policy: ([\w-]+) -->\s*```json\n(.*?)```", text, flags=re.DOTALL)
    policies = {}
    for name, body in found:
        for placeholder, value in PLACEHOLDERS.items():
            body = re.sub(rf"\b{placeholder}\b", value, body)
        policies[name] = json.loads(body)
    return policies


@pytest.fixture(scope="module")
def policies() -> dict[str, dict[str, Any]]:
    found = _policies(DOC.read_text())
    assert set(found) == {"trust", "job-role", "user"}
    return found


def _listed(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def _statements(policy: dict[str, Any]) -> list[dict[str, Any]]:
    assert policy["Version"] == "2012-10-17"
    return policy["Statement"]


def _resource_problems(policy: dict[str, Any]) -> list[str]:
    problems = []
    for statement in _statements(policy):
        actions, resources = _listed(statement["Action"]), _listed(statement["Resource"])
        for action in actions:
            if action in STAR_ONLY:
                if resources != ["*"]:
                    problems.append(f"{action} accepts only Resource '*', not {resources}")
            elif action not in RESOURCE_FORMS:
                problems.append(f"{action}: not in this test's table of resource forms; add it")
            elif "*" in resources or not any(re.fullmatch(RESOURCE_FORMS[action], r) for r in resources):
                problems.append(f"{action}: no resource of its form in {resources}")
        for resource in resources:  # a resource that none of the statement's actions takes is a mistake too
            if resource != "*" and not any(re.fullmatch(RESOURCE_FORMS.get(a, "$^"), resource) for a in actions):
                problems.append(f"{resource}: none of {actions} takes it")
    return problems


def _allows(policy: dict[str, Any], action: str, resource: str | None = None) -> bool:
    return any(
        statement["Effect"] == "Allow"
        and any(fnmatch.fnmatchcase(action, a) for a in _listed(statement["Action"]))
        and (resource is None or any(fnmatch.fnmatchcase(resource, r) for r in _listed(statement["Resource"])))
        for statement in _statements(policy)
    )


def test_the_policies_take_each_action_on_its_resource_form(policies: dict[str, dict[str, Any]]) -> None:
    """docs/launcher.md: "checks these policies against AWS's resource rules"."""
    assert _resource_problems(policies["job-role"]) == []
    assert _resource_problems(policies["user"]) == []
    [trust] = _statements(policies["trust"])
    assert trust == {"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}
    # the check itself: the mistakes the README once had are caught
    wrong = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["ecr:GetAuthorizationToken", "ecr:BatchGetImage"],
         "Resource": "arn:aws:ecr:eu-west-1:123456789012:repository/sae"},
        {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
         "Resource": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:sae-censorship/wandb"},
    ]}  # fmt: skip
    problems = "\n".join(_resource_problems(wrong))
    assert "ecr:GetAuthorizationToken accepts only Resource '*'" in problems
    assert "secretsmanager:GetSecretValue: no resource of its form" in problems
    assert "ecr:BatchGetImage" not in problems


def test_the_job_role_has_what_a_training_job_needs(policies: dict[str, dict[str, Any]]) -> None:
    """docs/launcher.md: "pull the image, write the job's logs and metrics, and read the W&B secret"."""
    role = policies["job-role"]
    assert {action for action in JOB_NEEDS if not _allows(role, action)} == set()
    secret_arn = f"arn:aws:secretsmanager:{SETTINGS.region}:123456789012:secret:{SETTINGS.wandb_secret_id}-AbC123"
    assert _allows(role, "secretsmanager:GetSecretValue", secret_arn)
    stream = f"arn:aws:logs:{SETTINGS.region}:123456789012:log-group:/aws/sagemaker/TrainingJobs:log-stream:j/algo-1"
    assert _allows(role, "logs:PutLogEvents", stream)


def test_s3_objects_only_under_the_launchers_prefix(policies: dict[str, dict[str, Any]]) -> None:
    """docs/launcher.md: "and the objects under its prefix".
    Every object resource is the prefix's, and what the launcher and its jobs write lies under it."""
    job_name = jobs.job_names("train", [{}])[0]
    written = [
        SETTINGS.s3_uri("prompts", "0123456789abcdef", "manifest.json"),
        SETTINGS.s3_uri("channels", "control", "0123456789abcdef", "data", "train.jsonl"),
        SETTINGS.s3_uri("checkpoints", job_name, "step-00000400", "cfg.json"),
        SETTINGS.s3_uri("jobs", job_name, "output", "model.tar.gz"),
    ]
    for name in ("job-role", "user"):
        objects = {
            resource
            for statement in _statements(policies[name])
            for resource in _listed(statement["Resource"])
            if re.fullmatch(_OBJECT, resource)
        }
        assert objects == {f"arn:aws:s3:::{SETTINGS.bucket}/{SETTINGS.s3_prefix}/*"}, name
        for uri in written:
            assert _allows(policies[name], "s3:PutObject", "arn:aws:s3:::" + uri.removeprefix("s3://")), uri
        assert not _allows(policies[name], "s3:PutObject", f"arn:aws:s3:::{SETTINGS.bucket}/elsewhere/x")
    arn = f"arn:aws:sagemaker:{SETTINGS.region}:123456789012:training-job/{job_name}"
    assert _allows(policies["user"], "sagemaker:CreateTrainingJob", arn)  # the jobs' names fit the policy's


def _launcher_calls(sources: dict[str, str]) -> set[tuple[str, str]]:
    """(service, boto3 method) for every call in ``sources`` of a method of a service the code makes clients of
    (``client_for("s3", …)``, ``boto3.client("s3")``), paginators included."""
    services = {
        service
        for text in sources.values()
        for service in re.findall(r"(?:client_for|boto3\.client)\(\s*\"([a-z0-9-]+)\"", text)
    }
    methods: dict[str, set[str]] = {}
    for service in services:
        model = boto3.client(service, region_name="us-east-1").meta.service_model
        for operation in model.operation_names:
            methods.setdefault(xform_name(operation), set()).add(service)
        for method in TRANSFER_METHODS.get(service, ()):
            methods.setdefault(method, set()).add(service)
    calls = set()
    for text in sources.values():
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            name = node.func.attr
            if name == "get_paginator" and node.args and isinstance(node.args[0], ast.Constant):
                name = str(node.args[0].value)
            calls |= {(service, name) for service in methods.get(name, ())}
    return calls


def _iam_action(service: str, method: str) -> str:
    if (service, method) in IAM_ACTION_OF:
        return IAM_ACTION_OF[(service, method)]
    model = boto3.client(service, region_name="us-east-1").meta.service_model
    operation = next(op for op in model.operation_names if xform_name(op) == method)
    return f"{model.signing_name}:{operation}"


def test_every_aws_call_of_the_launcher_is_allowed_to_the_user(policies: dict[str, dict[str, Any]]) -> None:
    """docs/launcher.md: "and that every AWS call in `launcher/` is allowed here".
    A new boto3 call in launcher/ fails this test until the user's policy in docs/launcher.md allows it."""
    user = policies["user"]
    sources = {str(path): path.read_text() for path in sorted((ROOT / "launcher").glob("*.py"))}
    calls = _launcher_calls(sources)
    assert {("s3", "upload_file"), ("sagemaker", "create_training_job"), ("logs", "get_log_events")} <= calls
    needed = {_iam_action(service, method) for service, method in calls}
    assert sorted(action for action in needed if not _allows(user, action)) == []
    assert _allows(user, "sagemaker:AddTags")  # CreateTrainingJob with tags needs it
    assert {action for action in DOCKER_PUSH if not _allows(user, action)} == set()
    # the check itself: a call the policy does not allow is found
    added = {"new.py": 's3 = client_for("s3")\ns3.put_bucket_policy(Bucket="b", Policy="{}")\n'}
    assert {_iam_action(s, m) for s, m in _launcher_calls(added)} == {"s3:PutBucketPolicy"}
    assert not _allows(user, "s3:PutBucketPolicy")
