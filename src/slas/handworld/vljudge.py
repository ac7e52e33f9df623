"""The product-in-hand world's MLLM judge: a tiny Qwen2.5-VL trained to answer ``mllm_judge``'s templates.

    python -m slas.handworld.vljudge train [--device auto] [--out DIR] [--minutes N] [--steps N] [--batch N] [--eval N]
    python -m slas.handworld.vljudge evaluate [--device auto] [--model DIR] [--eval N]

The model is the real ``Qwen2_5_VLForConditionalGeneration`` with a ``Qwen2_5_VLProcessor`` (the tiny
builder's byte-level tokenizer and Qwen2.5-VL chat template, :mod:`slas.testing.tiny_qwen`), sized up
(:class:`JudgeArch`) and with the image processor's min = max pixels = 168 x 168, so every 64 px image is
seen as 12 x 12 patches (6 x 6 merged tokens). It is trained on rendered edits of TRAIN products
(:func:`slas.handworld.data.product_split`): correct ones, every single failure of
:mod:`slas.handworld.corrupt`, and correct holds rescaled 0.35-2.4x; half of the edits are blurred and
noised a little, as a generated image would be. The target is the simulated annotator's digit
(:mod:`slas.handworld.annotator`, with its stated bias) as a soft target over ``"0"`` .. ``"5"``.

Inputs cannot drift from scoring: training loads the model through :class:`slas.rewards.mllm.QwenVLJudge`
(from a saved directory, as ``mllm_judge`` does) and encodes every batch with its :meth:`prepare` (the
templates, labels, message order, pixel limits and left padding of scoring); the loss reads the same
position and the same digit tokens that :func:`slas.rewards.mllm.score_from_logits` reads. The result
loads with ``{"name": "mllm_judge", "options": {"model": DIR}}`` unchanged; ``DIR/report.json`` holds the
training record and the held-out agreement.

Training (curriculum, loss, the measured CPU run) is in :mod:`slas.handworld.vljudge_train`; the held-out
evaluation in :mod:`slas.handworld.vljudge_eval`. This module holds what both use (the architecture, the
examples, loading a saved judge, the device) and the command line.

On a GPU: ``--device auto`` (the default) takes CUDA when the machine has it, else the CPU; ``--device
cuda:1`` (any torch device name) picks one. The model, every batch (``prepare`` encodes onto the judge's
device), the training-only probe and the held-out scoring run there; the dtypes stay as on the CPU (training
in float32, ``evaluate`` and the end-of-training evaluation in ``--dtype``, default bfloat16). For example::

    python -m slas.handworld.vljudge train --device cuda --minutes 20 --out runs/vl_judge
    python -m slas.handworld.vljudge evaluate --device cuda --model runs/vl_judge

A device name torch cannot parse, or one this machine does not have (``cuda`` without a GPU, ``cuda:3`` on a
one-GPU machine), is refused in one line naming ``--device`` before any model is built.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from slas.errors import SlasError
from slas.handworld.annotator import annotate
from slas.handworld.assets import assets_dir
from slas.handworld.corrupt import FAILURES
from slas.handworld.data import Split, sample_split_scene
from slas.handworld.render import render_layout, render_person, render_product
from slas.handworld.scene import EditLayout, Placement, Scene, correct_layout, product_box
from slas.torch_utils import DeviceError, device_unavailable, parse_device, resolve_device

JUDGE_DIR = "vl_judge"
"""The judge's folder under :func:`slas.handworld.assets.assets_dir`."""
REPORT = "report.json"
TRAIN_COMMAND = "python -m slas.handworld.vljudge train"
VARIANTS = ("correct", "rescaled", *FAILURES)
"""What an example shows: the correct edit, a correct hold at another scale, or one failure."""
RESCALE = (0.35, 2.4)


class JudgeTrainingError(SlasError, ValueError):
    """Bad settings for training or evaluating the world's judge (one line naming the setting)."""


@dataclass(frozen=True)
class JudgeArch:
    """The judge's size: the tiny builder's architecture, wider and deeper, with larger images."""

    text_hidden: int = 96
    text_layers: int = 3
    heads: int = 4
    kv_heads: int = 2
    vision_hidden: int = 64
    vision_depth: int = 3
    image_px: int = 168  # min = max pixels side: a 64 px image becomes 12 x 12 patches
    window_px: int = 168  # vision window attention span (a whole image: few, larger attention calls)


def build_judge(arch: JudgeArch = JudgeArch(), seed: int = 0) -> tuple[Any, Any]:
    """``(Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor)``, randomly initialised (seeded)."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    from slas.testing.tiny import seeded
    from slas.testing.tiny_qwen import QWEN2_5_VL_CHAT_TEMPLATE, build_tiny_qwen_tokenizer

    tok = build_tiny_qwen_tokenizer()
    ids = tok.convert_tokens_to_ids
    half = arch.text_hidden // arch.heads // 2  # mrope sections (temporal, height, width) sum to head_dim / 2
    section = [half - 2 * (half // 3), half // 3, half // 3]
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tok), "hidden_size": arch.text_hidden, "intermediate_size": 2 * arch.text_hidden,
            "num_hidden_layers": arch.text_layers, "num_attention_heads": arch.heads,
            "num_key_value_heads": arch.kv_heads, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": section},
            "bos_token_id": ids("<|endoftext|>"), "eos_token_id": ids("<|im_end|>"),
            "pad_token_id": ids("<|endoftext|>"),
        },
        vision_config={
            "depth": arch.vision_depth, "hidden_size": arch.vision_hidden, "intermediate_size": 2 * arch.vision_hidden,
            "num_heads": 2, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": arch.window_px,
            "fullatt_block_indexes": [arch.vision_depth - 1], "out_hidden_size": arch.text_hidden,
            "tokens_per_second": 2,
        },
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    with seeded(seed):
        model = Qwen2_5_VLForConditionalGeneration(config)
        _fan_in_init(model.model.visual)
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    pixels = arch.image_px * arch.image_px
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=pixels, max_pixels=pixels, patch_size=14,
                                              temporal_patch_size=2, merge_size=2),
        tokenizer=tok,
        video_processor=Qwen2VLVideoProcessor(min_pixels=pixels, max_pixels=pixels, patch_size=14,
                                              temporal_patch_size=2, merge_size=2),
        chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
    )
    return model.eval(), processor


def _fan_in_init(module: torch.nn.Module) -> None:
    """Weights ~ N(0, 1 / fan_in) in the vision tower. With the config's std of 0.02 a tower this narrow
    emits image tokens that differ by a few hundredths between images (a missing product moves them by
    ~0.1 in norm), and learning to read them stalls for hundreds of steps; at unit gain they differ by O(1)."""
    for m in module.modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv3d)):
            torch.nn.init.normal_(m.weight, std=m.weight[0].numel() ** -0.5)
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)


# ------------------------------------------------------------------------------------------- examples


@dataclass
class Example:
    """One rendered edit with its labels: uint8 HxWx3 images, the annotator's digits, what it shows."""

    person: np.ndarray
    product: np.ndarray
    edit: np.ndarray
    digits: dict[str, int]
    variant: str
    layout: EditLayout = field(repr=False)


def _rescaled(scene: Scene, scale: float) -> EditLayout:
    """The correct hold with the product ``scale`` x its hold size (the grey zone between the failures)."""
    box = product_box(scene.person, scene.product, scene.hold, scale)
    return EditLayout(scene.person, (Placement(scene.product, box, True),), detail=f"scale x{scale:.2f}")


def layout_of(scene: Scene, variant: str, rng: random.Random) -> EditLayout:
    """The edit layout of ``variant`` (:data:`VARIANTS`) for ``scene``."""
    if variant == "correct":
        return correct_layout(scene.person, scene.product, scene.hold)
    if variant == "rescaled":
        return _rescaled(scene, math.exp(rng.uniform(*(math.log(v) for v in RESCALE))))
    from slas.handworld.corrupt import failure_layout

    return failure_layout(scene.person, scene.product, scene.hold, variant, rng)


def degrade(image: np.ndarray, rng: random.Random) -> np.ndarray:
    """A little blur and noise, as a generated edit has (so the judge does not rely on crisp edges)."""
    x = image.astype(np.float32)
    x = ndimage.gaussian_filter(x, (rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), 0))
    x += np.random.default_rng(rng.randrange(2**31)).normal(0, rng.uniform(0, 6), x.shape)
    return np.clip(x.round(), 0, 255).astype(np.uint8)


def sample_example(rng: random.Random, split: Split, variant: str | None = None, degrade_p: float = 0.0) -> Example:
    """A ``split`` scene rendered as ``variant`` (default: correct 1/4, rescaled 1/8, a failure otherwise)."""
    if variant is None:
        u = rng.random()
        variant = "correct" if u < 0.25 else "rescaled" if u < 0.375 else rng.choice(FAILURES)
    scene = sample_split_scene(rng, split)
    for _ in range(20):  # a failure may find no room in this scene (e.g. floating in a crowded frame)
        try:
            layout = layout_of(scene, variant, rng)
            break
        except RuntimeError:
            scene = sample_split_scene(rng, split)
    else:  # pragma: no cover - the world always has room within 20 scenes
        raise RuntimeError(f"no scene admits the {variant} edit")
    edit = render_layout(layout)
    if rng.random() < degrade_p:
        edit = degrade(edit, rng)
    return Example(render_person(scene.person), render_product(scene.product), edit,
                   annotate(layout, scene.product), variant, layout)


def as_tensor(images: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 HxWx3 arrays -> float [N, 3, H, W] in [0, 1] (what rewards take)."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


def _instruction() -> str:
    from slas.handworld.models import INSTRUCTION

    return INSTRUCTION


def judge_device(name: str | torch.device) -> torch.device:
    """The device ``--device`` names (``auto``: CUDA when there is one, else the CPU), asked before any model
    is built, so a typo or a GPU this machine lacks is one line naming the option, not a CUDA traceback
    minutes into a run (the checks of :mod:`slas.torch_utils`, as ``model.device``'s preflight uses them)."""
    try:
        parsed = parse_device(name)
    except DeviceError as e:
        raise JudgeTrainingError(f"vljudge --device: {e}") from None
    why = device_unavailable(parsed) if parsed is not None else None
    if why:
        raise JudgeTrainingError(f"vljudge --device {name}: {why}")
    return resolve_device(name)


def _load_judge(model_dir: Path, dtype: str, device: str | torch.device) -> Any:
    """The model as ``mllm_judge`` loads it (through the reward registry), for training or scoring, on
    ``device`` (its inputs follow: :meth:`QwenVLJudge.prepare` encodes onto the judge's device)."""
    from slas.rewards import build

    reward = build({"components": [{"name": "mllm_judge",
                                    "options": {"model": str(model_dir), "device": str(device), "dtype": dtype}}]})
    return reward.components[0][2]


def judge_dir(root: str | Path | None = None) -> Path:
    """The shipped judge's directory (``options.model`` of ``mllm_judge``); one line naming the command that
    makes it when it is absent."""
    from slas.handworld.assets import MissingAssets

    path = (Path(root) if root is not None else assets_dir()) / JUDGE_DIR
    if not (path / "config.json").is_file():
        raise MissingAssets(f"product-in-hand MLLM judge missing: {path / 'config.json'}; make it with: "
                            f"{TRAIN_COMMAND} --out {path}")
    return path


# ------------------------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> None:
    from slas.handworld.vljudge_eval import evaluate
    from slas.handworld.vljudge_train import TrainConfig, train

    defaults = TrainConfig()
    ap = argparse.ArgumentParser(prog="python -m slas.handworld.vljudge", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    device_help = "auto (CUDA when there is one, else the CPU) or a torch device: cpu, cuda, cuda:N, mps"
    tr = sub.add_parser("train", help="train the judge and write it (model + processor + report.json)")
    tr.add_argument("--out", type=Path, default=defaults.out)
    tr.add_argument("--device", default=defaults.device, help=device_help)
    for name in ("minutes", "steps", "batch", "lr", "warmup", "degrade_p", "probe_weight", "vision_frac", "short_frac", "eval", "seed", "log_every"):
        v = getattr(defaults, name)
        tr.add_argument("--" + name.replace("_", "-"), type=type(v), default=v)
    for name, v in asdict(defaults.arch).items():
        tr.add_argument("--" + name.replace("_", "-"), type=int, default=v)
    ev = sub.add_parser("evaluate", help="held-out agreement of a trained judge with the ground truth")
    ev.add_argument("--model", type=Path, default=None)
    ev.add_argument("--eval", type=int, default=defaults.eval)
    ev.add_argument("--seed", type=int, default=1)
    ev.add_argument("--dtype", default="bfloat16")
    ev.add_argument("--device", default="auto", help=device_help)
    args = vars(ap.parse_args(argv))
    try:
        if args.pop("command") == "train":
            arch = JudgeArch(**{k: args.pop(k) for k in asdict(defaults.arch)})
            train(TrainConfig(arch=arch, **args))
        else:
            judge_device(args["device"])  # before looking for the shipped judge
            model = args["model"] or judge_dir()
            print(json.dumps(evaluate(model, args["eval"], args["seed"], args["dtype"], device=args["device"]),
                             indent=2))
    except SlasError as e:
        raise SystemExit(f"error: {e}") from None

if __name__ == "__main__":
    main()
