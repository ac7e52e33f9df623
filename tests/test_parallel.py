"""Training under ``accelerate launch`` with the shipped configs (configs/accelerate/): DDP and FSDP2 on two
CPU processes (gloo) train like one process on the same global batch; the DeepSpeed configs resolve and
validate against DeepSpeed's own schema (their run needs a GPU: marked ``gpu``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slas.config import TrainerConfig, config_from_dict
from slas.rl import parallel
from slas.testing.parallel import REWARD, full_weights, register_reward

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "accelerate"
# `accelerate` through this interpreter: CI runs the venv's python without the venv's bin/ on PATH
ACCELERATE = [sys.executable, "-m", "accelerate.commands.accelerate_cli"]
STRATEGIES = {"ddp": "ddp", "fsdp": "fsdp", "deepspeed_zero2": "deepspeed", "deepspeed_zero3": "deepspeed"}


def launch_env(name: str, *extra: str) -> dict[str, str]:
    """The ACCELERATE_*/FSDP_* environment ``accelerate launch --config_file <name>.yaml`` gives its processes,
    computed by accelerate's own parser and launcher helpers."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    argv = ["--config_file", str(CONFIGS / f"{name}.yaml"), "--main_process_port", "0", *extra, "x.py"]
    args, defaults, mp_from_config = _validate_launch_command(launch_command_parser().parse_args(argv))
    if args.use_deepspeed:
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        env = prepare_deepspeed_cmd_env(args)[1]
    else:
        env = prepare_multi_gpu_env(args)
    return {k: v for k, v in env.items() if k.startswith(("ACCELERATE_", "FSDP_"))}


def _run_config(model_dir: Path, tmp: Path, name: str, prompts_per_iter: int, family: str = "sd") -> dict:
    return {
        "run": {"name": name, "output_dir": str(tmp / "runs"), "seed": 5, "iterations": 1, "checkpoint_every": 1,
                "progress": False},
        "model": {"family": family, "path": str(model_dir)},
        "data": {"prompts": str(tmp / "prompts.txt")},
        "sample": {"resolution": 32, "num_steps": 4, "group_size": 3, "prompts_per_iter": prompts_per_iter},
        "rl": {"preset": "slas", "power": 2.0},
        # one optimizer step on either layout ("first" steps: no per-rank draw). adam_eps 1: Adam's first step
        # is lr * g / (|g| + 1), linear in g, so a gradient summed in another order moves a weight by ~1e-8
        # (with eps 1e-8 the step is lr * sign(g), and a near-zero g can flip sign); lr 0.1 makes the tiny
        # FLUX's small gradients move its weights by > 1e-4
        "train": {"lr": 0.1, "adam_eps": 1.0, "batch_size": 3, "gradient_accumulation_steps": 8,
                  "timestep_selection": "first"},
        "reward": {"components": [{"name": REWARD}]},
    }


@pytest.fixture(scope="module")
def one_process(tiny_sd_dir, tiny_flux_dir, tmp_path_factory):
    """The references, SD UNet and FLUX transformer: one process with both ranks' groups (prompts_per_iter
    2 = 2 ranks x 1)."""
    tmp = tmp_path_factory.mktemp("parallel")
    (tmp / "prompts.txt").write_text("a red circle\ntwo blue squares\na green star\na yellow cube\n")
    register_reward()
    refs = {"tmp": tmp, "dirs": {"sd": tiny_sd_dir, "flux": tiny_flux_dir}}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the launched processes (OMP_NUM_THREADS=1): a CPU kernel's sums follow its threads
    try:
        for family, model_dir in refs["dirs"].items():
            trainer = parallel_free_trainer(config_from_dict(_run_config(model_dir, tmp, f"one_{family}", 2, family)))
            before = full_weights(trainer)
            metrics = trainer.train()[-1]
            trainer.tracker.close()
            refs[family] = {"before": before, "weights": full_weights(trainer), "batch": trainer.last_batch,
                            "metrics": metrics}
    finally:
        torch.set_num_threads(threads)
    return refs


def parallel_free_trainer(config):
    from slas.run import build_trainer

    trainer = build_trainer(config)
    assert trainer.strategy.name == "single"
    return trainer


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ddp", "fsdp"])
def test_two_processes_train_like_one(name, one_process, tmp_path):
    """``accelerate launch --config_file configs/accelerate/<name>.yaml --num_processes 2`` on the CPU (gloo),
    training the tiny SD UNet, then the tiny FLUX transformer, in the same two processes.

    Same global batch, so: identical rewards, group ids and advantages (SLAS's batch std over both ranks);
    the same loss and gradient norm; weights after one optimizer step within 1e-6 of the one process's
    (tolerance: float32 gradient sums in another order; the step itself moves them by > 1e-4); the
    checkpoint holds the full weights (FSDP gathers them) and a resume under the same strategy restores them
    exactly.
    """
    configs = []
    for family, model_dir in one_process["dirs"].items():
        configs.append(tmp_path / f"{family}.json")
        configs[-1].write_text(json.dumps(_run_config(model_dir, one_process["tmp"], f"two_{name}_{family}", 1, family)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SLAS_MLFLOW": "0", "PYTHONPATH": str(ROOT / "src")}
    cmd = [*ACCELERATE, "launch", "--config_file", str(CONFIGS / f"{name}.yaml"),
           "--num_processes", "2", "--num_machines", "1", "--main_process_port", "0",
           "--mixed_precision", "no",  # the CPU computes in float32; the GPU config's bf16 is not what is tested
           "-m", "slas.testing.parallel", str(tmp_path), *map(str, configs)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for i, family in enumerate(one_process["dirs"]):
        _matches_one_process(name, family, tmp_path, i, one_process[family])


def _matches_one_process(name: str, family: str, out: Path, i: int, ref: dict) -> None:
    two = torch.load(out / f"trained_{i}.pt", weights_only=False)
    assert (two["strategy"], two["world"]) == (STRATEGIES[name], 2)
    batch = ref["batch"]
    assert torch.equal(two["group_ids"], batch.group_ids)
    assert torch.allclose(two["rewards"], batch.rewards, atol=1e-6, rtol=0)
    assert torch.allclose(two["advantages"], batch.advantages, atol=1e-5, rtol=0)
    for key in ("loss", "adv/mean_abs", "reward/total/std"):
        assert two["metrics"][key] == pytest.approx(ref["metrics"][key], rel=1e-5), key
    assert two["metrics"]["grad_norm"] == pytest.approx(ref["metrics"]["grad_norm"], rel=1e-4)
    weights, before = ref["weights"], ref["before"]
    assert set(two["weights"]) == set(weights)
    assert max(float((weights[k] - before[k]).abs().max()) for k in weights) > 1e-4  # the step moved them
    diff = max(float((two["weights"][k] - weights[k]).abs().max()) for k in weights)
    assert diff <= 1e-6, f"{name}, {family}: weights differ from one process's by {diff:.2e}"
    resumed = torch.load(out / f"resumed_{i}.pt", weights_only=False)["weights"]
    assert all(torch.equal(resumed[k], two["weights"][k]) for k in weights)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_shipped_configs_pick_their_strategy(name, monkeypatch):
    """Each shipped config, read by accelerate's launcher, makes a 2-process run pick its strategy."""
    for key in list(os.environ):
        if key.startswith(("ACCELERATE_", "FSDP_")):
            monkeypatch.delenv(key)
    for key, value in launch_env(name, "--num_processes", "2").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(parallel.distributed, "rank_and_world", lambda: (0, 2))
    strategy = parallel.strategy_from_env()
    assert strategy.name == STRATEGIES[name]
    if name == "fsdp":
        assert strategy.activation_checkpointing and strategy.reshard_after_forward and strategy.wrap_blocks
        assert strategy.param_dtype == torch.bfloat16 and not strategy.offload
    monkeypatch.setattr(parallel.distributed, "rank_and_world", lambda: (0, 1))
    assert parallel.strategy_from_env().name == "single"  # one process trains alone under any config


def _trainer_config(tmp_path, **train) -> TrainerConfig:
    return TrainerConfig(run={"name": "t"}, lr=1e-5, run_dir=tmp_path,
                         train={"batch_size": 4, "max_grad_norm": 0.5, **train})


@pytest.mark.parametrize("name,stage", [("deepspeed_zero2", 2), ("deepspeed_zero3", 3)])
def test_deepspeed_configs_validate(name, stage, monkeypatch, tmp_path):
    """The shipped DeepSpeed configs, as accelerate exports them, resolve ("auto" from the run config) into
    configs DeepSpeed's own parser accepts, with the ZeRO stage, bf16 and clipping they promise."""
    from deepspeed.runtime.config import DeepSpeedConfig  # deepspeed is in the dev extra

    monkeypatch.chdir(ROOT)  # the yaml names its json relative to the repository root, as in the image
    for key, value in launch_env(name, "--num_processes", "8").items():
        monkeypatch.setenv(key, value)
    raw = parallel.deepspeed_config_from_env()
    ds = parallel.resolve_deepspeed_config(raw, _trainer_config(tmp_path), world=8)
    assert "auto" not in json.dumps(ds) and ds["train_batch_size"] == 32  # 8 GPUs x micro batch 4, no accumulation
    # DeepSpeed checks the batch sizes against the world it runs in: this process alone
    parsed = DeepSpeedConfig(parallel.resolve_deepspeed_config(raw, _trainer_config(tmp_path), world=1))
    assert parsed.zero_optimization_stage == stage
    assert parsed.train_micro_batch_size_per_gpu == 4 and parsed.gradient_accumulation_steps == 1
    assert parsed.train_batch_size == 4 and parsed.gradient_clipping == 0.5
    assert parsed.bfloat16_config.enabled if hasattr(parsed, "bfloat16_config") else parsed.bfloat16_enabled
    if stage == 3:
        assert parsed.zero_config.gather_16bit_weights_on_model_save  # checkpoints hold whole weights


def test_deepspeed_config_contradicting_the_run_is_refused(tmp_path):
    ds = json.loads((CONFIGS / "deepspeed_zero2.json").read_text())
    ds["train_micro_batch_size_per_gpu"] = 16
    with pytest.raises(parallel.StrategyError, match="train_micro_batch_size_per_gpu is 16"):
        parallel.resolve_deepspeed_config(ds, _trainer_config(tmp_path), world=2)


@pytest.mark.parametrize("train,rl,match", [
    ({"ema": {"enabled": True}}, {}, "train.ema"),
    ({}, {"power": "auto"}, "rl.power=auto"),
])
def test_sharded_strategies_refuse_what_they_cannot_run(train, rl, match, monkeypatch, tmp_path):
    monkeypatch.setenv("FSDP_VERSION", "2")
    cfg = TrainerConfig(run={"name": "t"}, lr=1e-5, run_dir=tmp_path, train=train, rl={"preset": "slas", **rl})
    with pytest.raises(parallel.StrategyError, match=match):
        parallel.FSDPStrategy().check(cfg)


def test_fsdp1_is_refused(monkeypatch):
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(parallel.StrategyError, match="fsdp_version 1"):
        parallel.FSDPStrategy()


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["deepspeed_zero2", "deepspeed_zero3"])
def test_deepspeed_two_gpus_train_like_one(name, tiny_sd_dir, tmp_path):
    """On 2 GPUs: ZeRO-2/3 runs the same global batch as one process on one GPU (same advantages, to GPU
    numerics; weights within bf16 rounding, as DeepSpeed computes with bf16 weights over float32 masters)
    and a resume restores the weights it checkpointed."""
    if torch.cuda.device_count() < 2:
        pytest.fail("needs 2 CUDA GPUs")
    (tmp_path / "prompts.txt").write_text("a red circle\ntwo blue squares\na green star\na yellow cube\n")
    register_reward()

    def run_config(name: str, prompts_per_iter: int) -> dict:
        cfg = _run_config(tiny_sd_dir, tmp_path, name, prompts_per_iter)
        cfg["model"]["device"] = "cuda"
        return cfg

    single = parallel_free_trainer(config_from_dict(run_config("one", 2)))
    single.train()
    single.tracker.close()
    config = tmp_path / "run.json"
    config.write_text(json.dumps(run_config(f"two_{name}", 1)))
    env = {**os.environ, "SLAS_MLFLOW": "0", "PYTHONPATH": str(ROOT / "src")}
    cmd = [*ACCELERATE, "launch", "--config_file", str(CONFIGS / f"{name}.yaml"),
           "--num_processes", "2", "--main_process_port", "0", "-m", "slas.testing.parallel", str(tmp_path), str(config)]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = torch.load(tmp_path / "trained_0.pt", weights_only=False)
    assert (two["strategy"], two["world"]) == ("deepspeed", 2)
    assert torch.equal(two["group_ids"].cpu(), single.last_batch.group_ids.cpu())
    assert torch.allclose(two["advantages"].cpu(), single.last_batch.advantages.cpu(), atol=1e-3)
    weights = full_weights(single)
    diff = max(float((two["weights"][k] - weights[k]).abs().max()) for k in weights)
    assert diff <= 1e-2, f"{name}: weights differ from one process's by {diff:.2e}"
    resumed = torch.load(tmp_path / "resumed_0.pt", weights_only=False)["weights"]
    assert all(torch.equal(resumed[k], two["weights"][k]) for k in two["weights"])


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_read_trainable_is_keyed_by_the_modules_names(finetune, tiny_sd_dir, tmp_path):
    """What a strategy copies or scatters into the module: the checkpoint's weights under the module's own
    parameter names (LoRA: peft's file drops the adapter name), equal to the weights that were saved."""
    from slas.config import ModelConfig, SampleConfig
    from slas.policies import load_policy

    policy = load_policy(ModelConfig(family="sd", path=str(tiny_sd_dir), finetune=finetune),
                         SampleConfig(resolution=32, num_steps=2))
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.add_(torch.randn_like(p))
    policy.save_trainable(tmp_path)
    state = policy.read_trainable(tmp_path)
    trained = {n: p.detach() for n, p in policy.trainable_module().named_parameters() if p.requires_grad}
    assert set(trained) <= set(state) and (finetune == "full" or set(state) == set(trained))
    assert all(torch.equal(state[n], p) for n, p in trained.items())


def test_optimizer_state_of_another_strategy_family_is_refused(monkeypatch):
    """A checkpoint's optimizer state resumes only under the family that wrote it: one line otherwise."""
    by_position = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))]).state_dict()
    monkeypatch.setenv("FSDP_VERSION", "2")
    with pytest.raises(parallel.StrategyError, match=r"written under one process, torchrun or ddp\.yaml"):
        parallel.FSDPStrategy().load_optimizer_state(None, None, by_position)
    by_name = {"state": {"blocks.0.weight": {"step": torch.tensor(1.0)}}, "param_groups": []}
    with pytest.raises(parallel.StrategyError, match=r"written under fsdp\.yaml"):
        parallel.Strategy().load_optimizer_state(None, None, by_name)
    with pytest.raises(parallel.StrategyError, match="written under a DeepSpeed config"):
        parallel.DDPStrategy().load_optimizer_state(None, None, {"partitions": [], "world_size": 2})


def test_deepspeed_optimizer_state_is_kept_to_what_weights_only_loads(tmp_path):
    """ZeRO's optimizer state holds enums and DeepSpeed objects; what slas writes of it loads with
    weights_only (as every checkpoint file is read), enums as their values and objects left out."""
    import enum

    class Stage(enum.IntEnum):
        gradients = 2

    class LossScaler:
        cur_scale = 1.0

    state = {"zero_stage": Stage.gradients, "loss_scaler": LossScaler(), "ds_version": "0.19.8",
             "partition_count": [2], "shape": torch.Size([3, 4]), "param_slice_mappings": [{"w": LossScaler()}],
             "base_optimizer_state": {"state": {0: {"exp_avg": torch.ones(2)}}, "param_groups": [{"betas": (0.9, 0.99)}]}}
    torch.save(parallel._plain(state), tmp_path / "optimizer.pt")
    loaded = torch.load(tmp_path / "optimizer.pt", weights_only=True)
    assert loaded["zero_stage"] == 2 and "loss_scaler" not in loaded and loaded["param_slice_mappings"] == [{}]
    assert loaded["shape"] == [3, 4] and loaded["base_optimizer_state"]["param_groups"][0]["betas"] == (0.9, 0.99)
    assert torch.equal(loaded["base_optimizer_state"]["state"][0]["exp_avg"], torch.ones(2))
