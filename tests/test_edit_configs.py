"""The shipped editing configs: Edit-R1 and SLAS differ only in the advantage rule, and each config trains as
shipped (its own LoRA targets, objective, sampler and reward) once pointed at tiny models and sizes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from slas.config import load_config
from slas.run import build_trainer

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
EDIT_CONFIGS = ["edit_qwen_editr1", "edit_qwen_product_in_hand", "edit_kontext_product_in_hand"]


def test_editr1_and_slas_differ_only_in_the_advantage_rule():
    editr1 = yaml.safe_load((CONFIGS / "edit_qwen_editr1.yaml").read_text())
    slas = yaml.safe_load((CONFIGS / "edit_qwen_product_in_hand.yaml").read_text())
    assert {k for k in editr1 if editr1[k] != slas[k]} == {"run", "rl"}
    assert {k for k in editr1["run"] if editr1["run"][k] != slas["run"][k]} == {"name"}
    a = load_config(CONFIGS / "edit_qwen_editr1.yaml", [])
    b = load_config(CONFIGS / "edit_qwen_product_in_hand.yaml", [])
    assert (a.rl.std_scope, a.rl.power, a.rl.eps) == ("batch", 1.0, 1e-4)  # Edit-R1's "global_std"
    assert (b.rl.std_scope, b.rl.power) == ("batch", 2.0)
    assert a.train.objective == b.train.objective == "nft" and a.sample.eta == 0


@pytest.mark.parametrize("name", EDIT_CONFIGS)
def test_each_editing_config_trains_on_tiny_models(name, tiny_qwen_edit_dir, tiny_kontext_dir, tiny_qwen_vl, tmp_path):
    family = load_config(CONFIGS / f"{name}.yaml", []).model.family
    model = {"qwen_image_edit": tiny_qwen_edit_dir, "flux_kontext": tiny_kontext_dir}[family]
    tiny = [f"model.path={model}", "model.dtype=float32", "model.gradient_checkpointing=false",
            "model.lora.rank=4", "model.lora.alpha=8", "data.min_image_size=32",
            f"reward.components.0.options.model={tiny_qwen_vl}", "reward.components.0.options.dtype=float32",
            "sample.resolution=32", "sample.condition_size=32", "sample.vl_condition_size=32", "sample.group_size=2",
            "sample.prompts_per_iter=1", "sample.num_steps=3", "train.batch_size=2", "train.gradient_accumulation_steps=1",
            "run.iterations=1", "run.progress=false", f"run.output_dir={tmp_path}", "run.checkpoint_every=1"]
    if family == "flux_kontext":
        tiny.append("sample.max_sequence_length=32")
    else:
        tiny += ["sample.max_sequence_length=512", "train.nft.timesteps_per_sample=2"]
    cfg = load_config(CONFIGS / f"{name}.yaml", tiny)
    assert Path(cfg.data.pairs).name == "editing_example"
    history = build_trainer(cfg).train()
    assert len(history) == 1 and history[0]["skipped_updates"] == 0
    assert 0 <= history[0]["reward/mllm_judge/presence/mean"] <= 1
