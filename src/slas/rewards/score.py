"""Score a folder of images with a reward spec (``slas reward score``): check a reward before training.

Images are scored as their files decode (:func:`slas.images.load_image`: the 8-bit PNG that was saved,
not the float tensor that was rendered), so the numbers are those of the images anyone can look at. A
folder is searched with its subfolders (``slas sample`` writes one per checkpoint) in the sorted order of
the paths relative to it, the same on every machine. When the folder or a parent holds a sample set's
manifest (``samples.jsonl``: one ``{"image", "prompt", "seed", "checkpoint"}`` object per image, ``image``
relative to the manifest's folder), the prompts come from it. An editing set's manifest also names each
edit's ``person`` and ``product`` photos (copies in the set's ``inputs/``): those are not scored themselves,
they are passed as the ``person_images`` and ``product_images`` conditions of their edits.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from slas.config import RewardConfig, load_yaml, reward_config
from slas.errors import SlasError, one_line
from slas.images import load_image
from slas.t2i.prompts import load_prompts

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
MANIFEST = "samples.jsonl"
MANIFEST_CONDITIONS = {"person": "person_images", "product": "product_images"}  # an editing set's inputs
# what a score record says about its image; every other key is a score
META_KEYS = ("image", "prompt", "seed", "checkpoint")


class ScoreError(SlasError, ValueError):
    """A reward spec, image folder, prompt file or manifest that cannot be scored; one line naming it."""


def parse_reward_spec(spec: str) -> RewardConfig:
    """A YAML or JSON file (a run config with ``reward:`` or a bare reward section) or inline ``name[:weight],...``."""
    path = Path(spec)
    if path.suffix in (".yaml", ".yml", ".json"):
        if not path.is_file():
            raise ScoreError(f"reward spec file not found: {path}")
        data = load_yaml(path.read_text()) or {}
        return reward_config(data.get("reward", data) if isinstance(data, dict) else data, f"reward spec {path}")
    comps = [_inline_component(item) for item in filter(None, (s.strip() for s in spec.split(",")))]
    return reward_config({"components": comps}, f"reward spec {spec!r}")


def _inline_component(item: str) -> dict[str, Any]:
    name, _, weight = item.partition(":")
    try:
        return {"name": name, "weight": float(weight) if weight else 1.0}
    except ValueError:
        raise ScoreError(f"reward spec {item!r}: weight must be a number") from None


def list_images(directory: str | Path) -> list[Path]:
    """Every image under ``directory``, subfolders included (hidden ones skipped), sorted by the path
    relative to it: a stable order that pairs folders of images and their conditions by position."""
    d = Path(directory)
    if not d.is_dir():
        raise ScoreError(f"image folder not found: {d}")
    found = (p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    files = sorted((p for p in found if not any(part.startswith(".") for part in p.relative_to(d).parts)),
                   key=lambda p: p.relative_to(d).parts)
    if not files:
        raise ScoreError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {d} or its subfolders")
    return files


def align_prompts(prompts_file: str | Path, n: int) -> list[str]:
    """The prompts of a prompt file for ``n`` images: one for all, or one per image in name order."""
    try:
        prompts = load_prompts(prompts_file)
    except (FileNotFoundError, ValueError) as exc:  # slas.t2i.prompts says what is wrong with the file
        raise ScoreError(f"--prompts: {one_line(exc)}") from None
    if len(prompts) == 1:
        return prompts * n
    if len(prompts) != n:
        raise ScoreError(f"{prompts_file}: {len(prompts)} prompts for {n} images (give one, or one per image in name order)")
    return prompts


def find_manifest(directory: str | Path) -> Path | None:
    """The ``samples.jsonl`` of ``directory`` or of its nearest parent that has one."""
    d = Path(directory).resolve()
    return next((f / MANIFEST for f in (d, *d.parents) if (f / MANIFEST).is_file()), None)


def read_manifest(manifest: Path) -> dict[Path, dict[str, Any]]:
    """The manifest's entries keyed by the image's resolved path."""
    entries: dict[Path, dict[str, Any]] = {}
    for number, line in enumerate(manifest.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            entries[(manifest.parent / entry["image"]).resolve()] = entry
        except (ValueError, KeyError, TypeError):
            raise ScoreError(f"{manifest}:{number}: not a JSON object with an \"image\" path") from None
    return entries


@dataclass
class ImageSet:
    """The images to score, their prompts and (from a manifest) their seed and checkpoint."""

    root: Path
    files: list[Path]
    prompts: list[str]
    meta: list[dict[str, Any]] = field(default_factory=list)
    prompt_source: str = ""
    conditions: dict[str, list[Path]] = field(default_factory=dict)  # from the manifest, one path per file

    def name(self, i: int) -> str:
        """How the output names image ``i``: its path relative to the scored folder."""
        return self.files[i].relative_to(self.root).as_posix()


def image_set(images_dir: str | Path, prompts_file: str | Path | None = None) -> ImageSet:
    """The images under ``images_dir`` with prompts from ``prompts_file``, else from the sample set's manifest."""
    root = Path(images_dir)
    files = list_images(root)
    if prompts_file is not None:
        return ImageSet(root, files, align_prompts(prompts_file, len(files)), [{} for _ in files], str(prompts_file))
    manifest = find_manifest(root)
    if manifest is None:
        raise ScoreError(f"--prompts is needed: no {MANIFEST} in {root} or a parent folder")
    entries = read_manifest(manifest)
    inputs = {(manifest.parent / str(e[k])).resolve() for e in entries.values() for k in MANIFEST_CONDITIONS if k in e}
    files = [f for f in files if f.resolve() not in inputs or f.resolve() in entries]  # an edit's inputs are not scored
    if not files:
        raise ScoreError(f"{root} holds only input photos of {manifest}; give the set's folder or a checkpoint's")
    missing = next((f for f in files if f.resolve() not in entries), None)
    if missing is not None:
        raise ScoreError(f"{missing} is not in {manifest}: give --prompts")
    rows = [entries[f.resolve()] for f in files]
    meta = [{k: row[k] for k in ("seed", "checkpoint") if k in row} for row in rows]
    conditions = {name: [manifest.parent / str(row[key]) for row in rows]
                  for key, name in MANIFEST_CONDITIONS.items() if all(key in row for row in rows)}
    return ImageSet(root, files, [str(row.get("prompt", "")) for row in rows], meta, str(manifest), conditions)


def _conditions(conditions: dict[str, str | Path] | None, n: int) -> dict[str, list[Path]]:
    """Each condition folder's images, aligned with the scored images by position."""
    out = {}
    for name, folder in (conditions or {}).items():
        files = list_images(folder)
        if len(files) != n:
            raise ScoreError(f"condition {name}: {len(files)} images in {folder} for {n} images")
        out[name] = files
    return out


def score_images(
    reward, images: ImageSet, conditions: dict[str, str | Path] | None = None, batch_size: int = 16
) -> list[dict[str, Any]]:
    """Score every image of ``images`` with ``reward``, as decoded from its file; one record per image.

    Images of one size go through the reward together, in batches of ``batch_size``; conditions are
    passed as lists of image paths (a folder given in ``conditions`` overrides the manifest's of that name).
    """
    cond_files = {**images.conditions, **_conditions(conditions, len(images.files))}
    tensors = [load_image(f) for f in images.files]
    by_size: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, t in enumerate(tensors):
        by_size[tuple(t.shape)].append(i)
    records: list[dict[str, Any]] = [{"image": images.name(i), "prompt": p, **images.meta[i]}
                                     for i, p in enumerate(images.prompts)]
    for indices in by_size.values():
        for s in range(0, len(indices), batch_size):
            chunk = indices[s : s + batch_size]
            cond = {name: [str(cf[i]) for i in chunk] for name, cf in cond_files.items()}
            out = reward(torch.stack([tensors[i] for i in chunk]), [images.prompts[i] for i in chunk], **cond)
            for key, values in out.items():
                for i, v in zip(chunk, values.tolist(), strict=True):
                    records[i][key] = v
    return records


def score_keys(records: Sequence[dict[str, Any]]) -> list[str]:
    """The score columns of ``records`` (every key that does not describe the image)."""
    return [k for k in records[0] if k not in META_KEYS]


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """Mean and sample std of every score over the finite values."""
    out = {}
    for k in score_keys(records):
        vals = [r[k] for r in records if isinstance(r[k], float) and math.isfinite(r[k])]
        mean = sum(vals) / len(vals) if vals else math.nan
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
        out[k] = (mean, std)
    return out


def by_checkpoint(records: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The records of a sample set grouped by checkpoint label, in order of appearance ({} without labels)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if "checkpoint" in r:
            groups.setdefault(str(r["checkpoint"]), []).append(r)
    return groups
