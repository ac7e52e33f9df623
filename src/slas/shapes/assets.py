"""Where the shapes world's trained weights live (shipped inside the package) and how to load them.

``assets_dir()/t2i`` is a diffusers ``FluxPipeline`` directory, ``clip`` a transformers ``CLIPModel``
directory (the "CLIP score" proxy), ``preference`` an open_clip ``local-dir:`` model (the "HPS" proxy),
``pretrain.json`` what the pretraining script measured, ``train_prompts.txt`` / ``test_metadata.jsonl`` the
world's prompt splits. ``SLAS_SHAPES_ASSETS`` points elsewhere; configs name these files ``shapes:<name>``.
"""

from __future__ import annotations

from pathlib import Path

from slas.errors import SlasError
from slas.paths import shapes_assets_dir

T2I = "t2i"
CLIP = "clip"
PREFERENCE = "preference"
PREFERENCE_WEIGHTS = "open_clip_model.safetensors"
TRAIN_PROMPTS = "train_prompts.txt"  # the train split balanced over tags, one prompt a line (``slas train`` data)
TEST_METADATA = "test_metadata.jsonl"  # the test split in GenEval's format (``slas eval geneval --metadata``)
PRETRAIN_COMMAND = "python -m slas.shapes.pretrain"


class MissingAssets(SlasError, FileNotFoundError):
    """The shipped shapes-world models are not there; the message names the command that makes them."""


def assets_dir() -> Path:
    """The assets directory: ``$SLAS_SHAPES_ASSETS`` or the one inside the installed package."""
    return shapes_assets_dir()


def check_assets(root: str | Path | None = None) -> Path:
    """``root`` (default :func:`assets_dir`) if it holds all three models and the prompt splits; else one line
    saying how to make them."""
    root = Path(root) if root is not None else assets_dir()
    need = [root / T2I / "model_index.json", root / CLIP / "config.json", root / PREFERENCE / PREFERENCE_WEIGHTS,
            root / TRAIN_PROMPTS, root / TEST_METADATA]
    missing = [str(p.relative_to(root)) for p in need if not p.is_file()]
    if missing:
        raise MissingAssets(
            f"shapes-world assets missing in {root}: {', '.join(missing)}; make them with: {PRETRAIN_COMMAND} --out {root}"
        )
    return root


def reward_components(root: str | Path | None = None) -> list[dict]:
    """The demo's reward: the two proxies through the real ``hpsv21`` and ``clip`` reward classes, plus the
    planted bias (``vividness``) at weight 0: logged with every reward, never rewarded on its own."""
    root = Path(root) if root is not None else assets_dir()
    return [
        {"name": "hpsv21", "weight": 1.0, "options": {
            "checkpoint": str(root / PREFERENCE / PREFERENCE_WEIGHTS), "model_name": f"local-dir:{root / PREFERENCE}",
        }},
        {"name": "clip", "weight": 1.0, "options": {"backend": "transformers", "model": str(root / CLIP)}},
        {"name": "vividness", "weight": 0.0},
    ]
