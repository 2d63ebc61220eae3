"""cluster.yaml passes Ray's own cluster-config validation and keeps the invariants the README relies on;
the 7B cluster presets validate through the one config schema. Offline: no cloud calls, no network."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from pipelines.cluster_presets import GPUS_PER_NODE, PRESETS, preset_overrides
from unlearn_core.config import ConfigError, RunConfig, with_overrides

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
REPO_ON_NODE = "/home/ubuntu/lvlm-unlearn"
ALLOWED_PLACEHOLDERS = {"<your-efs-id>", "<your-ami-id>", "<your-bucket>"}


@pytest.fixture(scope="module")
def text() -> str:
    return CLUSTER_YAML.read_text()


@pytest.fixture(scope="module")
def raw(text: str) -> dict[str, Any]:
    cfg = yaml.safe_load(text)
    assert isinstance(cfg, dict)
    return cfg


@pytest.fixture()
def cfg(raw: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(raw)


def _node_types(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return cfg["available_node_types"]


def _worker_types(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in _node_types(cfg).items() if k != cfg["head_node_type"]}


def _gpu_types(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in _worker_types(cfg).items() if v["resources"].get("GPU", 0) > 0}


def _cpu_types(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in _worker_types(cfg).items() if v["resources"].get("GPU", 0) == 0}


def _setup_commands_for(cfg: dict[str, Any], node_type: str) -> list[str]:
    """The setup commands the launcher runs on ``node_type``, resolved the way Ray resolves them."""
    common = cfg.get("setup_commands", [])
    if node_type == cfg["head_node_type"]:
        return common + cfg.get("head_setup_commands", [])
    own = _node_types(cfg)[node_type].get("worker_setup_commands")
    return own if own is not None else common + cfg.get("worker_setup_commands", [])


def _all_commands(cfg: dict[str, Any]) -> list[str]:
    keys = (
        "initialization_commands",
        "setup_commands",
        "head_setup_commands",
        "worker_setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    )
    cmds = [c for k in keys for c in cfg.get(k, [])]
    for nt in _node_types(cfg).values():
        cmds += nt.get("worker_setup_commands", []) + nt.get("initialization_commands", [])
    return cmds


def _index(cmds: list[str], needle: str) -> int:
    hits = [i for i, c in enumerate(cmds) if needle in c]
    assert hits, f"no command contains {needle!r}"
    return hits[0]


# --------------------------------------------------------------------------- Ray's own validator


def test_validates_with_ray_cluster_schema(cfg: dict[str, Any]) -> None:
    validate_config(cfg)  # the raw file against ray-schema.json and Ray's cross-field checks
    prepared = prepare_config(cfg)  # what `ray up` does before bootstrapping (merges AWS defaults)
    validate_config(prepared)
    assert prepared["cluster_name"] == "lvlm-unlearn"
    assert prepared["head_node_type"] in prepared["available_node_types"]


def _unknown_top_level_key(c: dict[str, Any]) -> None:
    c["max_wrokers"] = 4


def _max_workers_not_int(c: dict[str, Any]) -> None:
    c["max_workers"] = "eight"


def _node_max_workers_not_int(c: dict[str, Any]) -> None:
    next(iter(_gpu_types(c).values()))["max_workers"] = 4.5


def _fractional_gpu_resource(c: dict[str, Any]) -> None:
    next(iter(_gpu_types(c).values()))["resources"]["GPU"] = 0.5


def _node_type_without_resources(c: dict[str, Any]) -> None:
    del next(iter(_cpu_types(c).values()))["resources"]


def _unknown_node_type_key(c: dict[str, Any]) -> None:
    next(iter(_cpu_types(c).values()))["min_worker"] = 1


def _unknown_auth_key(c: dict[str, Any]) -> None:
    c["auth"]["ssh_password"] = "x"


def _head_type_missing(c: dict[str, Any]) -> None:
    c["head_node_type"] = "no-such-type"


def _min_workers_exceed_max(c: dict[str, Any]) -> None:
    for nt in _worker_types(c).values():
        nt["min_workers"] = c["max_workers"]


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (_unknown_top_level_key, jsonschema.ValidationError),
        (_max_workers_not_int, jsonschema.ValidationError),
        (_node_max_workers_not_int, jsonschema.ValidationError),
        (_fractional_gpu_resource, jsonschema.ValidationError),
        (_node_type_without_resources, jsonschema.ValidationError),
        (_unknown_node_type_key, jsonschema.ValidationError),
        (_unknown_auth_key, jsonschema.ValidationError),
        (_head_type_missing, ValueError),
        (_min_workers_exceed_max, ValueError),
    ],
)
def test_ray_validator_rejects_broken_variants(cfg: dict[str, Any], mutate, error) -> None:
    validate_config(copy.deepcopy(cfg))  # the unmutated file passes, so the failure is the mutation's
    mutate(cfg)
    with pytest.raises(error):
        validate_config(cfg)


# --------------------------------------------------------------------------- node types


def test_provider_is_aws_and_terminates_nodes(raw: dict[str, Any]) -> None:
    p = raw["provider"]
    assert p["type"] == "aws"
    assert p["region"] and p["availability_zone"]
    assert all(z.strip().startswith(p["region"]) for z in p["availability_zone"].split(","))
    assert p["cache_stopped_nodes"] is False
    assert raw["auth"]["ssh_user"] == "ubuntu"
    assert raw["idle_timeout_minutes"] > 0


def test_gpu_worker_type_scales_from_zero(raw: dict[str, Any]) -> None:
    gpus = _gpu_types(raw)
    assert len(gpus) == 1
    (gpu,) = gpus.values()
    assert gpu["min_workers"] == 0
    assert gpu["max_workers"] >= 1
    assert gpu["resources"]["GPU"] == GPUS_PER_NODE
    assert "tune_driver" not in gpu["resources"]
    assert re.match(r"p[45]", gpu["node_config"]["InstanceType"])


def test_cpu_worker_type_hosts_tune_drivers_on_demand(raw: dict[str, Any]) -> None:
    cpus = _cpu_types(raw)
    assert len(cpus) == 1
    (cpu,) = cpus.values()
    assert cpu["min_workers"] == 0
    assert cpu["resources"]["tune_driver"] >= 1
    assert cpu["resources"]["CPU"] >= cpu["resources"]["tune_driver"]
    assert "InstanceMarketOptions" not in cpu["node_config"]  # drivers must not be preempted


def test_head_is_cpu_only_and_marked(raw: dict[str, Any]) -> None:
    head = _node_types(raw)[raw["head_node_type"]]
    assert head["resources"].get("head") == 1
    assert head["resources"].get("GPU", 0) == 0
    assert "InstanceMarketOptions" not in head["node_config"]


def test_all_node_types_boot_one_pinned_ami(raw: dict[str, Any]) -> None:
    images = {nt["node_config"]["ImageId"] for nt in _node_types(raw).values()}
    assert len(images) == 1
    (image,) = images
    # Not `resolve:ssm:...`: the head launches workers with Ray's IAM role, which has no SSM access.
    assert image == "<your-ami-id>" or re.fullmatch(r"ami-[0-9a-f]{8,17}", image)


def test_node_configs_are_valid_run_instances_requests(raw: dict[str, Any]) -> None:
    """Each node_config, as Ray's AWS provider completes it, against botocore's offline EC2 model."""
    session = pytest.importorskip("botocore.session")
    from botocore.validate import ParamValidator

    shape = session.get_session().get_service_model("ec2").operation_model("RunInstances").input_shape
    for name, nt in _node_types(raw).items():
        request = {**nt["node_config"], "MinCount": 1, "MaxCount": 1, "SubnetId": "subnet-0123456789abcdef0"}
        report = ParamValidator().validate(request, shape)
        assert not report.has_errors(), f"{name}: {report.generate_report()}"


def test_worker_counts_fit_global_max(raw: dict[str, Any]) -> None:
    assert sum(nt["max_workers"] for nt in _worker_types(raw).values()) <= raw["max_workers"]


# --------------------------------------------------------------------------- commands


def test_every_node_type_installs_this_package(raw: dict[str, Any]) -> None:
    assert raw["file_mounts"][REPO_ON_NODE] == "."
    for node_type in _node_types(raw):
        cmds = _setup_commands_for(raw, node_type)
        install = [c for c in cmds if re.search(r"pip install[^;]* -e \.", c)]
        assert install, f"{node_type}: no `pip install -e .` in its setup commands"
        assert any("cd ~/lvlm-unlearn" in c or f"cd {REPO_ON_NODE}" in c for c in install)
        ray_pin = [c for c in cmds if re.search(r"pip install .*ray\[[^\]]*default[^\]]*\]==", c)]
        assert ray_pin, f"{node_type}: Ray is not pinned in its setup commands"


def test_gpu_install_path_uses_no_cpu_constraints(raw: dict[str, Any]) -> None:
    (install,) = [c for c in raw["setup_commands"] if "-e ." in c]
    gpu_branch, cpu_branch = install.split(" else ", 1)
    assert "nvidia-smi" in gpu_branch and "constraints-cpu.txt" not in gpu_branch
    assert "torch.cuda.is_available()" in gpu_branch
    assert "constraints-cpu.txt" in cpu_branch


def test_head_starts_ray_then_mlflow_server(raw: dict[str, Any]) -> None:
    cmds = raw["head_start_ray_commands"]
    ray_i = _index(cmds, "ray start --head")
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in cmds[ray_i]
    mlflow_i = _index(cmds, "mlflow server")
    assert mlflow_i > ray_i
    server = cmds[mlflow_i]
    for flag in (
        "--host 0.0.0.0",
        "--port 5000",
        "--backend-store-uri sqlite:////home/ubuntu/mlflow/mlflow.db",
        "--artifacts-destination ",
    ):
        assert flag in server, flag
    assert "nohup" in server and server.rstrip().endswith(("&", "& fi"))
    assert any("/health" in c for c in cmds[mlflow_i + 1 :]), "no wait for the MLflow server"


def _exports(cmd: str) -> str:
    return cmd.split("ray start", 1)[0]


def test_cluster_environment_exported_before_ray_start(raw: dict[str, Any]) -> None:
    head = raw["head_start_ray_commands"][_index(raw["head_start_ray_commands"], "ray start --head")]
    worker = raw["worker_start_ray_commands"][_index(raw["worker_start_ray_commands"], "ray start --address")]
    assert "--address=$RAY_HEAD_IP:6379" in worker
    assert "MLFLOW_TRACKING_URI=http://$RAY_HEAD_IP:5000" in _exports(worker)
    assert re.search(r"MLFLOW_TRACKING_URI=http://.+:5000;", _exports(head))
    storage = set()
    for cmd in (head, worker):
        pre = _exports(cmd)
        assert "export RAY_AUTH_MODE=token" in pre
        match = re.search(r"UNLEARN_STORAGE_PATH=(\S+)", pre)
        assert match, "UNLEARN_STORAGE_PATH not exported before ray start"
        storage.add(match.group(1).rstrip(";"))
    assert len(storage) == 1
    (path,) = storage
    # pipelines.train.storage_dir() resolves a local path, so it must be a shared mount (EFS).
    assert path.startswith("/mnt/efs/")
    assert any("mount -t nfs4" in c and "/mnt/efs" in c for c in raw["setup_commands"])


def test_efs_region_matches_provider(raw: dict[str, Any]) -> None:
    (mount,) = [c for c in raw["setup_commands"] if "mount -t nfs4" in c]
    match = re.search(r"\.efs\.([a-z0-9-]+)\.amazonaws\.com", mount)
    assert match and match.group(1) == raw["provider"]["region"]


def test_auth_token_is_shipped_as_a_file_not_inlined(raw: dict[str, Any]) -> None:
    assert raw["file_mounts"]["/home/ubuntu/.ray/auth_token"] == "~/.ray/auth_token"
    assert not any("RAY_AUTH_TOKEN=" in c for c in _all_commands(raw))


def test_commands_are_valid_bash(raw: dict[str, Any]) -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash not available")
    for cmd in _all_commands(raw):
        # The launcher runs each command as: bash --login -c -i 'source ~/.bashrc; export ... && (CMD)'
        wrapped = f"export OMP_NUM_THREADS=1 && ({cmd})"
        res = subprocess.run([bash, "-n", "-c", wrapped], capture_output=True, text=True, timeout=10)
        assert res.returncode == 0, f"{cmd!r}: {res.stderr}"


# --------------------------------------------------------------------------- hygiene


SECRET_PATTERNS = {
    "AWS access key id": r"\b(AKIA|ASIA)[0-9A-Z]{16}\b",
    "AWS secret key setting": r"(?i)aws_secret_access_key|aws_session_token|AWS_ACCESS_KEY_ID",
    "Ray auth token (64 hex)": r"\b[0-9a-f]{64}\b",
    "Hugging Face token": r"\bhf_[A-Za-z0-9]{30,}\b",
    "GitHub token": r"\bgh[pousr]_[A-Za-z0-9]{30,}\b",
    "private key": r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    "inline password": r"(?i)password\s*[:=]",
    "bearer token": r"(?i)bearer\s+[A-Za-z0-9._-]{20,}",
}


@pytest.mark.parametrize("kind", sorted(SECRET_PATTERNS))
def test_no_secrets_in_file(text: str, kind: str) -> None:
    assert not re.search(SECRET_PATTERNS[kind], text), f"cluster.yaml seems to contain a {kind}"


def test_no_ssh_key_or_credentials_configured(raw: dict[str, Any]) -> None:
    assert set(raw["auth"]) <= {"ssh_user"}
    for nt in _node_types(raw).values():
        assert "KeyName" not in nt["node_config"]
        assert "UserData" not in nt["node_config"]


def test_placeholders_are_the_documented_ones(text: str) -> None:
    found = set(re.findall(r"<your-[a-z0-9-]+>", text))
    assert found, "expected the account-specific placeholders"
    assert found <= ALLOWED_PLACEHOLDERS
    header = text.split("cluster_name:", 1)[0]
    for required in ("<your-efs-id>", "<your-ami-id>"):  # the ones a user must fill in
        assert required in header and required in text.split("cluster_name:", 1)[1]


# --------------------------------------------------------------------------- presets


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_validates_through_the_config_schema(name: str) -> None:
    cfg = with_overrides(RunConfig(), PRESETS[name])
    assert cfg.train.use_gpu and cfg.train.bf16 and cfg.model.dtype == "bfloat16"
    assert cfg.model.gradient_checkpointing
    assert cfg.train.num_workers == GPUS_PER_NODE  # one 8-GPU node per run
    assert cfg.train.cpus_per_worker * cfg.train.num_workers <= 96  # p4d.24xlarge has 96 vCPUs
    assert not cfg.model.trust_remote_code
    if cfg.model.lora:
        assert cfg.train.deepspeed_stage == 2
        assert 16 <= cfg.model.lora_r <= 64
        llm = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
        assert llm <= set(cfg.model.lora_targets)
    else:
        assert cfg.train.deepspeed_stage == 3
    assert cfg.train.batch_size * cfg.train.grad_accum * cfg.train.num_workers == 64


def test_presets_cover_the_three_7b_families() -> None:
    specs = {p["model.spec"] for p in PRESETS.values()}
    assert specs == {
        "llava-hf/llava-1.5-7b-hf",
        "llava-hf/llava-v1.6-mistral-7b-hf",
        "Qwen/Qwen2-VL-7B-Instruct",
    }
    for spec in specs:
        kinds = {PRESETS[n]["model.lora"] for n in PRESETS if PRESETS[n]["model.spec"] == spec}
        assert kinds == {True, False}, f"{spec}: needs a LoRA and a full fine-tuning preset"


def test_preset_overrides_are_a_copy_and_unknown_presets_are_refused() -> None:
    # (Applying a preset under the user's --set is the CLI's: tests/test_cli_config.py.)
    copy_ = preset_overrides("qwen2-vl-7b-lora")
    copy_["model.lora_targets"].append("x")
    assert "x" not in PRESETS["qwen2-vl-7b-lora"]["model.lora_targets"]
    with pytest.raises(ConfigError, match="unknown cluster preset"):
        preset_overrides("gpt-7b")
