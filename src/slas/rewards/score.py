"""Score a folder of images with a reward spec (``slas reward score``): check a reward before training."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from slas.config import RewardConfig, load_yaml
from slas.t2i.prompts import load_prompts

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def parse_reward_spec(spec: str) -> RewardConfig:
    """A YAML file (a run config with ``reward:`` or a bare reward section) or inline ``name[:weight],...``."""
    path = Path(spec)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(f"reward spec file not found: {path}")
        data = load_yaml(path.read_text()) or {}
        data = data.get("reward", data) if isinstance(data, dict) else data
    else:
        comps = []
        for item in filter(None, (s.strip() for s in spec.split(","))):
            name, _, weight = item.partition(":")
            try:
                comps.append({"name": name, "weight": float(weight) if weight else 1.0})
            except ValueError:
                raise ValueError(f"reward spec {item!r}: weight must be a number") from None
        data = {"components": comps}
    return RewardConfig.model_validate(data)


def list_images(directory: str | Path) -> list[Path]:
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"image folder not found: {d}")
    files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {d}")
    return files


def load_image(path: Path) -> torch.Tensor:
    """[3, H, W] float in [0, 1]."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def align_prompts(prompts_file: str | Path, n: int) -> list[str]:
    prompts = load_prompts(prompts_file)
    if len(prompts) == 1:
        return prompts * n
    if len(prompts) != n:
        raise ValueError(f"{prompts_file}: {len(prompts)} prompts for {n} images (give one, or one per image in name order)")
    return prompts


def score_folder(
    reward, images_dir: str | Path, prompts: list[str], conditions: dict[str, str | Path] | None = None,
    batch_size: int = 16,
) -> list[dict[str, Any]]:
    """Score every image (name order) with ``reward``; condition folders align with the images by order.

    Images of one size go through the reward together, in batches of ``batch_size``; conditions are
    passed as lists of image paths.
    """
    files = list_images(images_dir)
    if len(prompts) != len(files):
        raise ValueError(f"{len(prompts)} prompts for {len(files)} images")
    cond_files = {}
    for name, folder in (conditions or {}).items():
        cf = list_images(folder)
        if len(cf) != len(files):
            raise ValueError(f"condition {name}: {len(cf)} images in {folder} for {len(files)} images")
        cond_files[name] = cf
    by_size: dict[tuple[int, ...], list[int]] = defaultdict(list)
    images = [load_image(f) for f in files]
    for i, im in enumerate(images):
        by_size[tuple(im.shape)].append(i)
    records: list[dict[str, Any]] = [{"image": f.name, "prompt": p} for f, p in zip(files, prompts, strict=True)]
    for indices in by_size.values():
        for s in range(0, len(indices), batch_size):
            chunk = indices[s : s + batch_size]
            cond = {name: [str(cf[i]) for i in chunk] for name, cf in cond_files.items()}
            out = reward(torch.stack([images[i] for i in chunk]), [prompts[i] for i in chunk], **cond)
            for key, values in out.items():
                for i, v in zip(chunk, values.tolist(), strict=True):
                    records[i][key] = v
    return records


def summarize(records: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    keys = [k for k in records[0] if k not in ("image", "prompt")]
    out = {}
    for k in keys:
        vals = [r[k] for r in records if isinstance(r[k], float) and math.isfinite(r[k])]
        mean = sum(vals) / len(vals) if vals else math.nan
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
        out[k] = (mean, std)
    return out
