"""accelerate_configs/*.yaml: accepted by Accelerate's own loader and launcher, and multi_cpu.yaml
really starts two processes."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.utils import DistributedType

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "accelerate_configs"
CONFIG_FILES = sorted(CONFIG_DIR.glob("*.yaml"))

# Key facts per file; None = the user edits it (GPU count), so it is only checked to be >= 2.
EXPECTED = {
    "cpu.yaml": {"distributed_type": DistributedType.NO, "num_processes": 1, "use_cpu": True},
    "multi_cpu.yaml": {"distributed_type": DistributedType.MULTI_GPU, "num_processes": 2, "use_cpu": False},
    "single_gpu.yaml": {"distributed_type": DistributedType.NO, "num_processes": 1, "use_cpu": False},
    "multi_gpu.yaml": {"distributed_type": DistributedType.MULTI_GPU, "num_processes": None, "use_cpu": False},
    "multi_node.yaml": {"distributed_type": DistributedType.MULTI_GPU, "num_processes": None, "use_cpu": False},
    "fsdp.yaml": {"distributed_type": DistributedType.FSDP, "num_processes": None, "use_cpu": False},
    "deepspeed_zero2.yaml": {"distributed_type": DistributedType.DEEPSPEED, "num_processes": None, "use_cpu": False},
    "deepspeed_zero3.yaml": {"distributed_type": DistributedType.DEEPSPEED, "num_processes": None, "use_cpu": False},
}


def test_every_config_has_expectations():
    assert {p.name for p in CONFIG_FILES} == set(EXPECTED)


@pytest.fixture(params=CONFIG_FILES, ids=lambda p: p.name)
def config_file(request) -> Path:
    return request.param


def test_loader_accepts_config(config_file):
    config = load_config_from_file(str(config_file))
    assert isinstance(config, ClusterConfig)
    expected = EXPECTED[config_file.name]
    assert config.distributed_type == expected["distributed_type"]
    assert config.use_cpu is expected["use_cpu"]
    if expected["num_processes"] is None:
        assert config.num_processes >= 2
    else:
        assert config.num_processes == expected["num_processes"]
    # Precision is the recipe's business (training.bf16/fp16); the config must not force it.
    assert config.mixed_precision == "no"


def test_config_header_documents_its_launch_command(config_file):
    text = config_file.read_text()
    assert text.startswith("#")
    command = f"accelerate launch --config_file accelerate_configs/{config_file.name} hftl/run.py recipes/vit_lora.yaml"
    assert command in text


def test_launcher_accepts_config(config_file):
    # The launcher's own validation merges the file into the CLI arguments, as `accelerate launch`
    # does before starting anything; a wrong key or value fails here rather than on a cluster.
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(config_file), "train.py"])
    args, defaults, _ = _validate_launch_command(args)
    distributed_type = EXPECTED[config_file.name]["distributed_type"]
    assert args.multi_gpu is (distributed_type == DistributedType.MULTI_GPU)
    assert args.use_fsdp is (distributed_type == DistributedType.FSDP)
    assert args.use_deepspeed is (distributed_type == DistributedType.DEEPSPEED)


def test_multi_node_template_keys():
    config = load_config_from_file(str(CONFIG_DIR / "multi_node.yaml"))
    assert config.num_machines >= 2
    assert config.machine_rank == 0
    assert config.main_process_ip and config.main_process_port
    # num_processes counts all machines; accelerate starts num_processes / num_machines on each.
    assert config.num_processes % config.num_machines == 0


def test_fsdp_is_fsdp2_and_shards_state():
    """FSDP2 (accelerate to-fsdp2): per-parameter sharding, so frozen and trainable parameters may share a unit
    without FSDP1's use_orig_params."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    config = load_config_from_file(str(CONFIG_DIR / "fsdp.yaml"))
    fsdp = config.fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_reshard_after_forward"] is True
    assert "fsdp_use_orig_params" not in fsdp and "fsdp_sync_module_states" not in fsdp  # FSDP1 only
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    # What the launched processes see: FullyShardedDataParallelPlugin reads these variables.
    args = launch_command_parser().parse_args(["--config_file", str(CONFIG_DIR / "fsdp.yaml"), "train.py"])
    args, _, _ = _validate_launch_command(args)
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_USE_FSDP"] == "true"
    assert env["FSDP_VERSION"] == "2"
    assert env["FSDP_RESHARD_AFTER_FORWARD"] == "true"
    assert env["FSDP_STATE_DICT_TYPE"] == "SHARDED_STATE_DICT"
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
    with mock.patch.dict(os.environ, env):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True


@pytest.mark.parametrize("name,stage", [("deepspeed_zero2.yaml", 2), ("deepspeed_zero3.yaml", 3)])
def test_deepspeed_stage_and_plugin(name, stage, monkeypatch):
    config = load_config_from_file(str(CONFIG_DIR / name))
    ds = config.deepspeed_config
    assert ds["zero_stage"] == stage
    assert ds["offload_optimizer_device"] == "none"
    assert ds["offload_param_device"] == "none"
    assert ds["gradient_accumulation_steps"] == "auto"
    if stage == 3:
        assert ds["zero3_init_flag"] is True
        assert ds["zero3_save_16bit_model"] is True

    # Build the DeepSpeedPlugin from the environment the launcher would export (no deepspeed
    # package needed): "auto" must survive so the Trainer fills it from the recipe.
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    args = launch_command_parser().parse_args(["--config_file", str(CONFIG_DIR / name), "train.py"])
    args, defaults, _ = _validate_launch_command(args)
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
    _, env = prepare_deepspeed_cmd_env(args)
    for key, value in env.items():
        if key.startswith("ACCELERATE_"):
            monkeypatch.setenv(key, value)
    plugin = DeepSpeedPlugin()
    assert plugin.zero_stage == stage
    assert plugin.gradient_accumulation_steps == "auto"
    assert plugin.deepspeed_config["zero_optimization"]["stage"] == stage
    if stage == 3:
        assert plugin.zero3_init_flag is True
        assert plugin.deepspeed_config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


WORLD_SIZE_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch
    import torch.distributed as dist
    from accelerate import Accelerator

    accelerator = Accelerator()
    total = torch.tensor([accelerator.process_index + 1])
    dist.all_reduce(total)
    report = {
        "rank": dist.get_rank(),
        "world_size": dist.get_world_size(),
        "backend": dist.get_backend(),
        "distributed_type": str(accelerator.distributed_type),
        "num_processes": accelerator.num_processes,
        "all_reduce_sum": int(total.item()),
    }
    with open(os.path.join(sys.argv[1], f"rank{report['rank']}.json"), "w") as f:
        json.dump(report, f)
    # Destroys the process group: a gloo group still alive at interpreter exit sometimes aborts a
    # rank ("terminate called without an active exception", SIGABRT) after all work is done.
    accelerator.end_training()
    """
)


@pytest.mark.slow
def test_multi_cpu_config_starts_two_gloo_processes(tmp_path):
    script = tmp_path / "world_size.py"
    script.write_text(WORLD_SIZE_SCRIPT)
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        # As multi_cpu.yaml says: the multi-process launcher ignores use_cpu, the processes pick
        # the CPU from this variable (hftl sets TrainingArguments.use_cpu on CPU-only machines).
        # It also keeps both ranks on the CPU where a GPU is present.
        ACCELERATE_USE_CPU="true",
        OMP_NUM_THREADS="1",
    )
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(CONFIG_DIR / "multi_cpu.yaml"),
        str(script), str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr

    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["rank"] for r in reports] == [0, 1]
    for report in reports:
        assert report["world_size"] == 2
        assert report["num_processes"] == 2
        assert report["backend"] == "gloo"
        assert report["distributed_type"] == str(DistributedType.MULTI_CPU)
        assert report["all_reduce_sum"] == 1 + 2
