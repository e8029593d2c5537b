"""launcher/jobs.py's checks and names, each against the docs/launcher.md sentence it keeps (no AWS call: these run
before any, as docs/launcher.md's "First the checks that need no AWS call" says)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from container_src.config import TrainConfig, VizConfig
from launcher import jobs
from launcher.errors import LauncherError


def test_sweep_values_are_split_trimmed_and_each_refusal_names_the_flag() -> None:
    """docs/launcher.md: "several `--sweep` flags start one per combination"; `--sweep key=v1,v2` starts one job
    per value."""
    assert jobs.parse_sweep(["k= 32 , 64", "lr=1e-4"]) == {"k": ["32", "64"], "lr": ["1e-4"]}
    assert jobs.parse_sweep(["run_name=a=b,c", "K=1"]) == {"run_name": ["a=b", "c"], "K": ["1"]}  # the first = splits
    refusals = {
        "k=32,32": "--sweep 'k=32,32': a value is repeated",
        "1k=32": "--sweep '1k=32': expected key=v1,v2,… with no empty value, for example --sweep k=32,64",
        "k=": "--sweep 'k=': expected key=v1,v2",
        "k=32,,64": "no empty value",
    }
    for item, message in refusals.items():
        with pytest.raises(LauncherError) as refused:
            jobs.parse_sweep([item])
        assert message in str(refused.value)
    with pytest.raises(LauncherError, match=r"--sweep k: given twice; list all its values in one --sweep k=v1,v2"):
        jobs.parse_sweep(["k=32", "k=64"])
    assert jobs.combinations({}) == [{}]  # no sweep: one job
    assert jobs.combinations({"k": ["1", "2"], "lr": ["a"]}) == [{"k": "1", "lr": "a"}, {"k": "2", "lr": "a"}]


def test_set_keys_are_trimmed_values_kept_and_bad_items_refused() -> None:
    """docs/launcher.md: "`--config FILE` (JSON) and `--set key=value` become the hyperparameters"."""
    assert jobs.parse_assignments([" k =32", "run_name= a b"], "--set") == {"k": "32", "run_name": " a b"}
    assert jobs.parse_assignments(["run_name=a=b", "K=1"], "--set") == {"run_name": "a=b", "K": "1"}
    for item in ("k", "=32", "2k=1", "a-b=1"):
        with pytest.raises(LauncherError) as refused:
            jobs.parse_assignments([item], "--set")
        assert str(refused.value) == f"--set {item!r}: expected key=value, for example --set k=32"
    with pytest.raises(LauncherError) as refused:
        jobs.parse_assignments(["k=32", " k=64"], "--set")
    assert str(refused.value) == "--set k: given twice ('32' and '64'); keep one"


def test_sweep_together_is_one_saes_list_and_refuses_what_cannot_be_one_job() -> None:
    """docs/launcher.md: "Only per-SAE keys may be swept together"
    (`k`, `expansion_factor`, `d_sae`, `architecture`, `hook_name`); another key, or a `--set saes=…` beside it, is
    refused before anything is sent."""
    sweep = {"k": ["32", "64"], "expansion_factor": ["4"]}
    assert json.loads(jobs.sweep_together("train", sweep, {})) == [
        {"k": "32", "expansion_factor": "4"},
        {"k": "64", "expansion_factor": "4"},
    ]
    refusals = [
        (("viz", sweep, {}), "--sweep-together trains several SAEs in one train job; it cannot be used with viz"),
        (("train", {}, {}), "--sweep-together needs a --sweep, for example --sweep k=32,64 --sweep-together"),
        (
            ("train", sweep, {"saes": "[]"}),
            "--sweep-together writes `saes` itself; drop --set saes=… or --sweep-together",
        ),
        (
            ("train", {"lr": ["1", "2"], "k": ["3"], "context_size": ["8"]}, {}),
            "--sweep-together: context_size, lr cannot differ between the SAEs of one job (one trainer steps them "
            "all); sweep only architecture, k, expansion_factor, d_sae, hook_name together, or drop "
            "--sweep-together for one job per combination",
        ),
    ]
    for (mode, swept, sets), message in refusals:
        with pytest.raises(LauncherError) as refused:
            jobs.sweep_together(mode, swept, sets)
        assert str(refused.value) == message


def test_config_file_values_become_text_and_a_null_is_refused(tmp_path: Path) -> None:
    """docs/launcher.md: "`--config FILE` (JSON) and `--set key=value` become the hyperparameters"; a null would be the
    text "null"."""
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"k": 16, "lr": 0.5, "compile_sae": True, "run_name": "a", "hook_name": "b"}))
    assert jobs.read_config_file(path) == {
        "k": "16",
        "lr": "0.5",
        "compile_sae": "true",
        "run_name": "a",
        "hook_name": "b",
    }
    path.write_text(json.dumps({"b_key": None, "a_key": None, "k": 4}))
    with pytest.raises(LauncherError) as refused:
        jobs.read_config_file(path)
    assert str(refused.value) == f"--config {path}: a_key, b_key: null; leave the key out to keep its default"
    path.write_text("[1]")
    with pytest.raises(LauncherError) as refused:
        jobs.read_config_file(path)
    assert str(refused.value) == f"--config {path} must hold a JSON object of key: value pairs"


def test_the_wandb_key_is_found_from_eight_characters(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/launcher.md: "every value against this shell's `WANDB_API_KEY`" is checked
    (a value under 8 characters is no key: it would match ordinary text)."""
    monkeypatch.setenv("WANDB_API_KEY", " abcdefgh ")
    assert jobs.holds_wandb_key("team-abcdefgh-run")
    assert not jobs.holds_wandb_key("team-abcdefg")
    monkeypatch.setenv("WANDB_API_KEY", "abcdefg")
    assert not jobs.holds_wandb_key("team-abcdefg-run")
    monkeypatch.delenv("WANDB_API_KEY")
    assert not jobs.holds_wandb_key("anything")


def test_hyperparameters_take_mode_from_the_flag_and_refuse_a_config_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/launcher.md: "they are checked with the container's own schema for that mode before anything is sent"
    With `mode` from `--mode`, and so is every value against this shell's `WANDB_API_KEY`. A key of another mode is
    refused; a quoted mode equal to --mode is the same mode."""
    assert jobs.hyperparameters("train", {"mode": '"train"', "k": "8"}, {"k": "16"}) == {"mode": "train", "k": "16"}
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef")
    secret = "; store the W&B key with `submit.py secret` and jobs get only its Secrets Manager id"
    refusals = {
        ("tune", "", ""): "--mode 'tune': unknown mode; choose one of train, viz, bench",
        ("train", "mode=viz", ""): "mode=viz (from --config) disagrees with --mode train; the job's mode is --mode, so "
        "remove mode from --config or change --mode",
        (
            "train",
            "mode=trainX",
            "",
        ): "mode=trainX (from --config) disagrees with --mode train; the job's mode is --mode, "
        "so remove mode from --config or change --mode",
        (
            "train",
            "",
            "mode=bench",
        ): "mode=bench (from --set or --sweep) disagrees with --mode train; the job's mode is "
        "--mode, so remove mode from --set or --sweep or change --mode",
        ("train", "config=r.json", ""): "config (from --config): a path would be read inside the job, where only the "
        "image's files are; give the values themselves (in the --config FILE, or with --set), or preset=NAME",
        ("bench", "", "wandb_api_key=x"): "wandb_api_key: secrets never go in hyperparameters (this one names a "
        "credential)" + secret,
        ("train", "", "run_name=team-0123456789abcdef"): "run_name: secrets never go in hyperparameters (this one "
        "holds the value of WANDB_API_KEY)" + secret,
        ("train", "k=many", ""): "hyperparameters: k='many': expected int (not a number)",
        ("viz", "k=16", ""): "hyperparameters: configuration key 'k' (from the hyperparameters) belongs to train and "
        "bench, not VizConfig",
    }
    for (mode, in_config, in_sets), message in refusals.items():  # one key=value from --config or from --set
        base, sets = (jobs.parse_assignments([item] if item else [], "--set") for item in (in_config, in_sets))
        with pytest.raises(LauncherError) as refused:
            jobs.hyperparameters(mode, base, sets)
        assert str(refused.value) == message


def test_instance_checks_refuse_and_warn_as_documented() -> None:
    """docs/launcher.md: "`train` refuses an instance without an NVIDIA GPU"
    (viz and bench run on one, with a warning that they run on CPU), and warns on a GPU without native bf16 (a T4,
    `ml.g4dn.*`), where training runs in fp32; `precision=bf16` on such an instance is refused in every mode."""
    train, viz = TrainConfig(), VizConfig()
    assert isinstance(jobs.config_of("viz", {"mode": "viz"}), VizConfig)  # each mode's own schema
    assert jobs.check_instance("train", "ml.g5.xlarge", train) == []
    assert jobs.check_instance("viz", "ml.m5.xlarge", viz) == [
        "ml.m5.xlarge has no usable GPU: viz will run on CPU, slowly"
    ]
    assert jobs.check_instance("train", "ml.g4dn.xlarge", train) == [
        "ml.g4dn.xlarge has no native bf16: training runs in fp32 (twice the memory, slower); ml.g5.xlarge (A10G) "
        "or ml.g6.xlarge (L4) train in bf16"
    ]
    with pytest.raises(LauncherError) as refused:
        jobs.check_instance("train", "ml.m5.xlarge", train)
    assert str(refused.value) == (
        "--instance-type ml.m5.xlarge: has no NVIDIA GPU; training needs one (for example ml.g5.xlarge)"
    )
    # a GPU older than CUDA 13 supports: refused for train (even with device=cpu), and for viz unless on the CPU
    old_gpu = (
        "--instance-type ml.p3.2xlarge: its V100 GPU predates Turing, which CUDA 13 (the image's torch build) no "
        "longer supports, so no driver or compatibility library can make it work; use a g4dn, g5, g6, p4 or p5 type "
        "(for example ml.g5.xlarge)"
    )
    for mode, cfg in (("train", train), ("train", TrainConfig(device="cpu")), ("viz", viz)):
        with pytest.raises(LauncherError) as refused:
            jobs.check_instance(mode, "ml.p3.2xlarge", cfg)
        assert str(refused.value) == old_gpu + (
            "" if mode == "train" else ", or --set device=cpu to run viz on its CPU"
        )
    on_cpu = VizConfig(device="cpu")
    assert jobs.check_instance("viz", "ml.p3.2xlarge", on_cpu) == [
        "ml.p3.2xlarge has no usable GPU: viz will run on CPU, slowly"
    ]
    for bad in ("g5.xlarge", "ml.g5", "ml.G5.xlarge", "xml.g5.xlarge"):
        with pytest.raises(LauncherError, match=r"expected a SageMaker type such as ml\.g5\.xlarge"):
            jobs.check_instance("viz", bad, viz)
    with pytest.raises(LauncherError, match=r"precision=bf16: ml\.g4dn\.xlarge has no native bf16"):
        jobs.check_instance("viz", "ml.g4dn.xlarge", VizConfig(precision="bf16"))
    assert jobs.check_instance("viz", "ml.m5.xlarge", VizConfig(precision="bf16")) == [
        "ml.m5.xlarge has no usable GPU: viz will run on CPU, slowly"
    ]


def test_run_time_and_spot_wait_limits() -> None:
    """docs/launcher.md: "`--max-run` (default 86400 s) caps its run time"
    And `--spot`: managed spot with `--max-wait` (default 2 × `--max-run`)."""
    assert jobs.JobSpec("n", "train", "i", {}, {}, "s3://b/o").max_run == 86400
    assert jobs.check_timing(False, 60, None) is None
    assert jobs.check_timing(True, 3600, None) == 7200
    assert jobs.check_timing(True, 3600, 3600) == 3600
    with pytest.raises(LauncherError, match="--max-run 59: must be at least 60 seconds"):
        jobs.check_timing(False, 59, None)
    with pytest.raises(LauncherError) as refused:
        jobs.check_timing(False, 3600, 7200)
    assert str(refused.value) == "--max-wait applies only to --spot jobs"
    with pytest.raises(LauncherError, match=r"--max-wait 3599: must be at least --max-run \(3600\)"):
        jobs.check_timing(True, 3600, 3599)


def test_job_names_carry_mode_time_and_the_sweep_slug() -> None:
    """docs/launcher.md: "Job names are `sae-<mode>-<UTC time>-<6 random hex>`"
    (a sweep adds `-<n>-<key><value>…`, cut to 63 characters)."""
    [name] = jobs.job_names("viz", [{}], now=1_800_000_000.0)
    assert name[: len("sae-viz-270115-080000-")] == "sae-viz-270115-080000-"
    assert len(name) == len("sae-viz-270115-080000-") + 6 and int(name[-6:], 16) >= 0
    names = jobs.job_names("train", [{"lr": "1e-4", "hook_name": "b.0_x"}], now=1_800_000_000.0)
    assert names[0].split("-", 5)[5] == "1-lr1e-4-hook-nameb-0-x"
    long = jobs.job_names("train", [{"run_name": "a" * 80 + "--"}], now=1_800_000_000.0)[0]
    assert len(long) == 63 and long.endswith("a")
    # any run of characters a name may not hold becomes one dash, none at the ends; letters keep their case
    slugs = {"_k": "X.", "k": "a..b", "K": "AB"}
    for key, value in slugs.items():
        [name] = jobs.job_names("train", [{key: value}], now=1_800_000_000.0)
        assert name.split("-", 5)[5] == {"_k": "1-kX", "k": "1-ka-b", "K": "1-KAB"}[key]
    # cut to 63 characters where the slug has a dash: the dash goes, the X before it stays
    [cut] = jobs.job_names("train", [{"k": "a" * 27 + "X.b"}], now=1_800_000_000.0)
    assert len(cut) == 62 and cut.endswith("-1-k" + "a" * 27 + "X")


def test_memory_check_refuses_a_small_gpu_and_leaves_unknown_ones_to_the_job(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """docs/launcher.md: "refuses an instance type whose GPU (one GPU: a job uses one) has less memory"
    It names the instance types that hold it; and "a family not in it ... is left to the job's own check, with a
    warning"."""
    caplog.set_level("INFO")
    big = jobs.config_of("train", {"preset": "qwen3-8b-distill", "mode": "train"})
    with pytest.raises(LauncherError) as refused:
        jobs.check_memory("ml.g6e.xlarge", big)
    assert str(refused.value).startswith("--instance-type ml.g6e.xlarge (L40S) has 44.4 GiB of GPU memory and the run")
    assert "instance types that hold it: ml.p4de.24xlarge, ml.p5.48xlarge, ml.p5e.48xlarge" in str(refused.value)
    [estimate] = [m for m in caplog.messages if "GPU memory estimate" in m]
    assert estimate.startswith("GPU memory estimate for Qwen/Qwen3-8B: model weights: 30.5 GiB (all 36 layers")
    assert "; SAE: 18.0 GiB (12288×49152" in estimate
    jobs.check_memory("ml.p4de.24xlarge", big)  # an A100 80 GB holds it
    caplog.clear()
    jobs.check_memory("ml.g99.xlarge", big)  # a GPU family missing from the table
    assert caplog.messages == ["ml.g99.xlarge: its GPU memory is not in the table; the job checks the estimate itself"]
    caplog.clear()
    jobs.check_memory("ml.m5.xlarge", big)  # no GPU: nothing to size, nothing said
    assert caplog.messages == []
    # "or a local plain `--model` folder's config.json": a two-layer model of the same name fits the L40S
    folder = tmp_path / "plain"
    folder.mkdir()
    sizes = {"model_type": "qwen3", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2}
    sizes |= {"num_hidden_layers": 2, "intermediate_size": 192, "vocab_size": 1000, "head_dim": 16}
    (folder / "config.json").write_text(json.dumps(sizes))
    small = jobs.config_of("train", {"preset": "qwen3-8b-distill", "hook_name": "blocks.1.mlp.hook_post"})
    jobs.check_memory("ml.g6e.xlarge", small, folder)
    assert "model weights: 0.0 GiB (all 2 layers in fp32" in caplog.text


def test_the_request_carries_every_setting_of_the_job(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/launcher.md: "`--instance-type` defaults to `ml.g5.xlarge`"
    And: `--volume-gb` (default 50) sizes the job's storage volume; `--max-run` (default 86400 s) caps its run time;
    `--spot`: managed spot with `--max-wait`; every train job checkpoints to
    `s3://<bucket>/<prefix>/checkpoints/<job>/`. Built offline: the endpoint is a closed port, so any AWS call would
    fail the test."""
    from launcher.settings import Settings

    for key, value in {
        "SAGEMAKER_VALIDATE_ROLE": "false",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }.items():
        monkeypatch.setenv(key, value)
    settings = Settings(region="eu-west-1", role_arn="arn:aws:iam::123456789012:role/r", bucket="b")
    image = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/sae:v1"
    spec = jobs.JobSpec(
        "sae-x", "train", image, {"k": "8", "mode": "train"}, {"prompts": "s3://b/p/", "control": "s3://b/c/"},
        "s3://b/out/", instance_type="ml.g6.xlarge", volume_gb=77, max_run=3600, spot=True, max_wait=7200,
        checkpoint_uri="s3://b/ck/sae-x/", network_isolation=True, environment={"WANDB_SECRET_ID": "s"},
        tags={"mode": "train"},
    )  # fmt: skip
    import logging

    caplog.set_level(logging.INFO)
    request = jobs.build_request(spec, settings)
    # the SDK's own config-loading lines are quieted, the launcher's log is left as it was
    assert logging.getLogger("sagemaker.config").level == logging.WARNING
    assert logging.getLogger().level == logging.INFO
    assert request.pop("AlgorithmSpecification") == {
        "TrainingInputMode": "File",
        "TrainingImage": image,
        "MetricDefinitions": jobs.metric_definitions(),
    }
    channel = {"S3DataType": "S3Prefix", "S3DataDistributionType": "FullyReplicated"}
    assert request == {
        "TrainingJobName": "sae-x",
        "HyperParameters": {"k": "8", "mode": "train"},
        "InputDataConfig": [
            {"ChannelName": name, "DataSource": {"S3DataSource": {**channel, "S3Uri": uri}}, "InputMode": "File"}
            for name, uri in (("prompts", "s3://b/p/"), ("control", "s3://b/c/"))
        ],
        "ResourceConfig": {"InstanceType": "ml.g6.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 77},
        "RoleArn": "arn:aws:iam::123456789012:role/r",
        "Tags": [{"Key": "mode", "Value": "train"}],
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200},
        "OutputDataConfig": {"S3OutputPath": "s3://b/out/", "CompressionType": "GZIP"},
        "CheckpointConfig": {"S3Uri": "s3://b/ck/sae-x/", "LocalPath": "/opt/ml/checkpoints"},
        "Environment": {"WANDB_SECRET_ID": "s"},
        "EnableManagedSpotTraining": True,
        "EnableNetworkIsolation": True,
    }
    # the defaults: no spot (a max_wait without it is not sent), no checkpoints, no isolation
    plain = jobs.build_request(jobs.JobSpec("sae-y", "viz", image, {}, {}, "s3://b/out/", max_wait=99), settings)
    assert plain["ResourceConfig"] == {"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 50}
    assert plain["StoppingCondition"] == {"MaxRuntimeInSeconds": 86400}
    assert plain["EnableManagedSpotTraining"] is False
    assert "CheckpointConfig" not in plain and "EnableNetworkIsolation" not in plain and "Tags" not in plain


def test_the_sdks_refusal_says_what_it_checks_and_how_to_skip_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/launcher.md: "set `SAGEMAKER_VALIDATE_ROLE=false` to skip it"
    The SDK checks the role with IAM; its refusal names the cause and the way out. The endpoint is a closed port:
    the check cannot reach IAM."""
    from launcher.settings import Settings

    for key, value in {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_MAX_ATTEMPTS": "1",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SAGEMAKER_VALIDATE_ROLE", raising=False)
    settings = Settings(region="us-east-1", role_arn="arn:aws:iam::123456789012:role/r", bucket="b")
    with pytest.raises(LauncherError) as refused:
        jobs.build_request(jobs.JobSpec("sae-y", "viz", "img", {}, {}, "s3://b/out/"), settings)
    message = str(refused.value)
    assert message.startswith("the SageMaker SDK refused the job: EndpointConnectionError: Could not connect")
    assert message.endswith(
        ". It checks role_arn with IAM (iam:GetRole, iam:SimulatePrincipalPolicy); against an endpoint without IAM "
        "(a local test server) set SAGEMAKER_VALIDATE_ROLE=false"
    )
