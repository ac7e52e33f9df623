"""The product-in-hand world's edit model: the shipped tiny FLUX.1 Kontext pipeline, its pretraining script
and the held-out product split (issue 13, items 3 and 7)."""

from __future__ import annotations

import json
import random

import numpy as np
import torch

from slas.config import ModelConfig, SampleConfig
from slas.editing.kontext import KontextPolicy
from slas.handworld import assets
from slas.handworld.data import designs, product_split, render_triples, sample_split_scene
from slas.handworld.models import INSTRUCTION, LATENT_CHANNELS, SAMPLE_SETTINGS, build_pipeline, build_vae
from slas.handworld.pretrain import _groups, encode_triples, main
from slas.handworld.scene import KINDS, PATTERNS, PRODUCT_COLORS
from slas.policies import load_policy


def _load(path) -> KontextPolicy:
    return load_policy(ModelConfig(family="flux_kontext", path=str(path), device="cpu"),
                       SampleConfig(**SAMPLE_SETTINGS | {"num_steps": 2}))


def test_shipped_model_loads_through_the_kontext_policy_and_edits_at_64px():
    policy = _load(assets.edit_model_dir())
    assert isinstance(policy, KontextPolicy)
    triples = render_triples(2, seed=5, split="test")
    images = policy.generate(_groups(triples), [0, 1])
    assert images.shape == (2, 3, 64, 64)
    assert torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    assert images.std() > 0.05  # a picture, not a flat field
    report = json.loads((assets.assets_dir() / assets.PRETRAIN_REPORT).read_text())
    assert set(report["edit"]["heldout"]) >= {"overall", "presence", "similarity", "interaction", "person_preserved"}


def test_shipped_tokenizers_give_the_instruction_its_pretraining_ids():
    """Loaded by the classes model_index.json names (as diffusers does): CLIP folds capitals; T5 gives the
    instruction, capitals spelled out, exactly the ids the model was pretrained on (build_tokenizers), so
    the shipped weights see what they learned (folding T5 would change the edits: see slas.handworld.models)."""
    import transformers

    from slas.handworld.models import build_tokenizers

    root = assets.edit_model_dir()
    index = json.loads((root / "model_index.json").read_text())
    clip, t5 = (getattr(transformers, index[n][1]).from_pretrained(root / n) for n in ("tokenizer", "tokenizer_2"))
    assert clip(INSTRUCTION).input_ids == clip(INSTRUCTION.lower()).input_ids
    built_clip, built_t5 = build_tokenizers()
    for text in (INSTRUCTION, INSTRUCTION.lower(), "Put the bottle in the hand"):
        assert t5(text).input_ids == built_t5(text).input_ids and clip(text).input_ids == built_clip(text).input_ids
    assert len(t5(INSTRUCTION).input_ids) == 28


def _megabytes(root) -> float:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 2**20


def test_shipped_assets_stay_small():
    """The edit model within ~10 MB; everything the world ships (the VL judge too) within 20 MB."""
    assert _megabytes(assets.edit_model_dir()) <= 10
    assert _megabytes(assets.assets_dir()) <= 20


def test_held_out_products_are_disjoint_from_training_products():
    train, test = set(designs("train")), set(designs("test"))
    assert not train & test
    assert len(train | test) == len(KINDS) * len(PRODUCT_COLORS) * len(PATTERNS)
    assert 0.15 <= len(test) / len(train | test) <= 0.25
    # every kind, colour and pattern alone is still seen in training: held-out products are new combinations
    for i, values in enumerate((KINDS, PRODUCT_COLORS, PATTERNS)):
        assert {d[i] for d in train} == set(values)
    rng = random.Random(3)
    for split in ("train", "test"):
        for _ in range(50):
            p = sample_split_scene(rng, split).product
            assert product_split(p.kind, p.color, p.pattern) == split
    rendered = render_triples(30, seed=1, split="train").scenes
    assert all((s.product.kind, s.product.color, s.product.pattern) in train for s in rendered)


def test_training_latents_are_what_the_policy_conditions_on():
    torch.manual_seed(0)
    pipe = build_pipeline(build_vae())
    triples = render_triples(2, seed=2, split="train")
    targets, canvases = encode_triples(pipe, triples, torch.device("cpu"))
    policy = KontextPolicy(pipe, ModelConfig(family="flux_kontext", path="in-memory", device="cpu"),
                           SampleConfig(**SAMPLE_SETTINGS))
    cond, shared = policy._encode_groups(_groups(triples))
    assert cond["image_latents"].shape == canvases.shape == (2, 128, 4 * LATENT_CHANNELS)
    assert targets.shape == (2, 64, 4 * LATENT_CHANNELS)
    torch.testing.assert_close(cond["image_latents"], canvases.float(), atol=2e-2, rtol=0)
    assert shared["img_ids"].shape == (64 + 128, 3)
    assert policy.pipe.tokenizer_2(INSTRUCTION).input_ids.__len__() <= SAMPLE_SETTINGS["max_sequence_length"]


def test_pretrain_runs_end_to_end_on_tiny_settings(tmp_path):
    main(["--out", str(tmp_path), "--device", "cpu", "--workers", "1", "--vae-images", "8", "--vae-steps", "2",
          "--vae-batch", "4", "--dataset-size", "8", "--edit-steps", "2", "--edit-batch", "2", "--eval-every", "1",
          "--eval-size", "2", "--final-size", "2", "--target", "1,1"])
    report = json.loads((tmp_path / assets.PRETRAIN_REPORT).read_text())
    assert report["vae"]["steps"] == 2
    assert report["edit"]["steps"] == 2 and report["edit"]["stopped_by"] == "steps"
    assert [h["step"] for h in report["edit"]["history"]] == [1, 2]
    assert 0 <= report["edit"]["heldout"]["overall"] <= 1
    policy = _load(tmp_path / assets.EDIT_MODEL)
    assert policy.generate(_groups(render_triples(1, seed=9, split="test")), [0]).shape == (1, 3, 64, 64)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
    assert np.isfinite(report["seconds"])


def test_missing_edit_model_names_the_command_that_makes_it(tmp_path):
    try:
        assets.edit_model_dir(tmp_path)
    except assets.MissingAssets as exc:
        message = str(exc)
    else:
        raise AssertionError("no error for an empty assets folder")
    assert "\n" not in message and assets.PRETRAIN_COMMAND in message and str(tmp_path) in message
