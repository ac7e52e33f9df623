"""Comparison sets (``slas sample``): the same prompts and seeds rendered by several checkpoints, into the store.

Every checkpoint renders every (prompt, seed) pair with the pipeline's own deterministic sampler (DDIM with
eta = 0 for SD, the Euler ODE for flow models), and a pair's initial noise comes from its seed alone, so
images of different checkpoints are paired: they differ only by the weights. That pairing is what the
review UI's side-by-side ratings and any paired statistics rely on. All input is checked before any model
loads; images go to ``$SLAS_HOME/samples/<set id>/`` (or ``out``), their rows to the job store.

Editing sets (``--pairs``, ``kind: edit``): the items are the (person, product) pairs of
:mod:`slas.editing.data` instead of prompts, each rendered as the training group
(:meth:`~slas.editing.data.EditingSource.group`: the instruction, ``person_images`` and
``product_images``). Each input photo is saved once, as the policy saw it (decoded RGB, PNG), under the set's
``inputs/`` folder, and every row stores those copies as ``person_image``/``product_image`` (absolute paths,
like ``image_path``): the set folder then holds everything a reviewer sees, and the review UI, which serves
images only from the set's own folders, can show person | product | edit A | edit B.
"""

from __future__ import annotations

import gc
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from slas.config import RewardConfig, SLASConfig, config_from_dict, load_config
from slas.editing.checks import SPLITS
from slas.editing.data import CONDITIONS, EditingSource, EditPair, load_pairs
from slas.errors import SlasError, one_line
from slas.images import load_image, quantize, to_pil
from slas.paths import slas_home
from slas.platform.db import Store
from slas.preflight import preflight_reward, resolve_model_path
from slas.rl.checkpoint import MARKER, latest_checkpoint
from slas.t2i.prompts import load_prompts

BASE = "base"
MANIFEST = "samples.jsonl"  # one line per image of a set, in its folder; `slas reward score --images` reads it
INPUTS = "inputs"  # an editing set's person and product photos, copied into its folder
ALL_SPLITS = "all"  # --split all (the default): every pair of the source
SCORED = "the saved 8-bit PNG images"
MAX_SEED = 2**63 - 1
_SEED_ITEM = re.compile(r"^(\d+)(?:\s*-\s*(\d+))?$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class SamplingError(SlasError, ValueError):
    """Bad ``slas sample`` input; the message is one line naming it."""


@dataclass
class CheckpointSource:
    """One column of a comparison: a label, its checkpoint dir (``None`` for the base model) and run config."""

    label: str
    path: Path | None
    config: SLASConfig
    run_dir: Path | None = None


@dataclass
class SamplePlan:
    """A validated ``slas sample`` request: nothing in it can fail for a reason the user could fix up front."""

    checkpoints: list[CheckpointSource]
    prompts: list[str]
    seeds: list[int]
    batch_size: int = 8
    reward: RewardConfig | None = None
    name: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    pairs: list[EditPair] = field(default_factory=list)  # an editing set's items; ``prompts`` are their instructions

    @property
    def num_images(self) -> int:
        return len(self.checkpoints) * len(self.prompts) * len(self.seeds)

    @property
    def kind(self) -> str:
        """``edit`` (person + product -> edit, from ``--pairs``) or ``t2i`` (prompt -> image)."""
        return "edit" if self.pairs else "t2i"


# ---------------------------------------------------------------------------------------------- parsing


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or ranges ``"0-7"`` (inclusive), mixed; seeds are distinct integers in [0, 2**63)."""
    seeds: list[int] = []
    for item in (s.strip() for s in str(text).split(",")):
        m = _SEED_ITEM.match(item)
        if not m:
            raise SamplingError(f"--seeds: {item!r} is not a seed or a range (use e.g. 0,1,2 or 0-7)")
        lo, hi = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
        if hi < lo or hi > MAX_SEED:
            raise SamplingError(f"--seeds: {item!r} is not a valid range (from low to high, below 2**63)")
        if hi - lo >= 100_000:
            raise SamplingError(f"--seeds: {item!r} has more than 100000 seeds")
        seeds.extend(range(lo, hi + 1))
    seen: set[int] = set()
    for s in seeds:
        if s in seen:
            raise SamplingError(f"--seeds: seed {s} is given twice")
        seen.add(s)
    return seeds


def _run_config_of(ckpt: Path, overrides: Sequence[str]) -> SLASConfig | None:
    """The run config a checkpoint was trained with: its run dir's ``config.yaml``, else the checkpoint's own copy."""
    cfg_file = ckpt.parent.parent / "config.yaml" if ckpt.parent.name == "checkpoints" else None
    if cfg_file is not None and cfg_file.is_file():
        return load_config(cfg_file, list(overrides))
    state = ckpt / "trainer_state.json"
    if state.is_file():
        data = json.loads(state.read_text()).get("config")
        if isinstance(data, dict):
            return config_from_dict(data, list(overrides))
    return None


def _checkpoint_dir(spec: str) -> Path:
    """A complete checkpoint dir from a checkpoint path, or a run dir (its newest complete checkpoint)."""
    path = Path(spec).expanduser()
    if not path.exists():
        raise SamplingError(f"--checkpoints: {spec} does not exist (give a checkpoint dir or `base`)")
    if not path.is_dir():
        raise SamplingError(f"--checkpoints: {spec} is not a directory")
    if not (path / MARKER).is_file() and (path / "checkpoints").is_dir():  # a run dir
        latest = latest_checkpoint(path / "checkpoints")
        if latest is None:
            raise SamplingError(f"--checkpoints: run dir {spec} has no complete checkpoint")
        path = latest
    if not (path / MARKER).is_file():
        raise SamplingError(f"--checkpoints: {spec} is not a complete checkpoint (no {MARKER} marker)")
    if not (path / "trainable").is_dir():
        raise SamplingError(f"--checkpoints: {spec} holds no trainable/ weights")
    return path.resolve()


def _check_items(prompts_file: str | Path | None, pairs: str | Path | None, prompt_field: str | None,
                 split: str | None) -> None:
    """Exactly one kind of item, and only the options that kind reads (a stray option is a mistake)."""
    if (prompts_file is None) == (pairs is None):
        given = "both" if prompts_file is not None else "neither"
        raise SamplingError(f"give exactly one of --prompts (text-to-image) or --pairs (editing), not {given}")
    if pairs is not None and prompt_field is not None:
        raise SamplingError("--field reads a prompt file's column; it does not apply to --pairs")
    if prompts_file is not None and split is not None:
        raise SamplingError("--split chooses editing pairs; it applies to --pairs only")
    if split is not None and split not in (*SPLITS, ALL_SPLITS):
        raise SamplingError(f"--split: unknown split {split!r}; use one of {', '.join((*SPLITS, ALL_SPLITS))}")


def _sample_pairs(path: str | Path, split: str | None, min_size: int) -> list[EditPair]:
    """The pairs of ``split`` (``None``/``all``: every pair), the WHOLE source checked first as training
    checks it (every problem one ``--pairs: <file>:<line>: ...`` line, all at once)."""
    try:
        found = load_pairs(path, split=None, min_size=min_size)
    except SlasError as exc:
        lines = [f"--pairs: {line.strip()}" for line in str(exc).splitlines() if line.strip()]
        raise SamplingError("\n".join(lines) or f"--pairs: {path}: unusable") from None
    chosen = [p for p in found if split in (None, ALL_SPLITS) or p.split == split]
    if not chosen:
        have = ", ".join(f"{s} {sum(p.split == s for p in found)}" for s in SPLITS if any(p.split == s for p in found))
        raise SamplingError(f"--pairs: {path} has no pairs in split {split!r} (it has: {have}); pick another --split")
    return chosen


def _check_families(sources: Sequence[CheckpointSource], editing: bool) -> None:
    """Editing pairs need an editing model and prompts a text-to-image one (else the render fails late)."""
    from slas.policies import EDIT_FAMILIES

    for src in sources:
        family = src.config.model.family
        if editing and family not in EDIT_FAMILIES:
            raise SamplingError(f"--pairs: {src.label} is a {family} model (text-to-image); editing pairs need "
                                f"model.family {' or '.join(sorted(EDIT_FAMILIES))} (or give --prompts)")
        if not editing and family in EDIT_FAMILIES:
            raise SamplingError(f"--prompts: {src.label} is a {family} model (editing); give its person/product "
                                "pairs with --pairs")


def plan_sample_set(
    checkpoints: str | Sequence[str],
    prompts_file: str | Path | None = None,
    seeds: str | Sequence[int] = "0",
    *,
    pairs: str | Path | None = None,
    split: str | None = None,
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    prompt_field: str | None = None,
    batch_size: int = 8,
    reward: str | RewardConfig | None = None,
    name: str | None = None,
) -> SamplePlan:
    """Check everything a comparison set needs (checkpoints, configs, models, prompts or editing pairs,
    seeds, reward) and load nothing heavy, so a typo fails in a second with one line instead of after a
    model load.

    Each checkpoint renders with ``config`` (plus ``overrides``) when given, else with its own run's config;
    ``base`` is the config's base model (the first checkpoint's run config when no ``config`` is given).
    Give exactly one of ``prompts_file`` and ``pairs`` (a pairs file or folder of :mod:`slas.editing.data`,
    of ``split``: ``train``, ``val``, ``test`` or ``all``/``None`` for every pair; photos below the first
    checkpoint config's ``data.min_image_size`` are refused as in training).
    """
    _check_items(prompts_file, pairs, prompt_field, split)
    specs = [s.strip() for s in (checkpoints.split(",") if isinstance(checkpoints, str) else checkpoints)]
    specs = [s for s in specs if s]
    if not specs:
        raise SamplingError("--checkpoints: give at least one checkpoint dir or `base`")
    if batch_size < 1:
        raise SamplingError(f"--batch-size must be >= 1, got {batch_size}")
    seed_list = parse_seeds(seeds) if isinstance(seeds, str) else [int(s) for s in seeds]
    if not seed_list:
        raise SamplingError("--seeds: give at least one seed")
    prompt_list: list[str] = []
    if prompts_file is not None:
        try:
            prompt_list = load_prompts(prompts_file, prompt_field)
        except (FileNotFoundError, ValueError, KeyError, json.JSONDecodeError) as exc:
            raise SamplingError(f"--prompts: {str(exc).splitlines()[0]}") from None

    shared = load_config(config, list(overrides)) if config is not None else None
    sources: list[CheckpointSource] = []
    for spec in specs:
        if spec == BASE:
            sources.append(CheckpointSource(BASE, None, shared))  # config filled in below when None
            continue
        path = _checkpoint_dir(spec)
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else None
        cfg = shared if shared is not None else _run_config_of(path, overrides)
        if cfg is None:
            raise SamplingError(f"--checkpoints: no run config for {spec} (no config.yaml in its run dir); pass --config")
        label = f"{run_dir.name}/{path.name}" if run_dir is not None else path.name
        sources.append(CheckpointSource(label[:200], path, cfg, run_dir))
    fallback = next((s.config for s in sources if s.config is not None), None)
    for src in sources:
        if src.config is None:
            if fallback is None:
                raise SamplingError("--checkpoints: `base` alone needs --config (the run config naming the model)")
            src.config = fallback
    labels = [s.label for s in sources]
    twice = next((x for x in labels if labels.count(x) > 1), None)
    if twice is not None:
        raise SamplingError(f"--checkpoints: {twice} is given twice")
    pair_list: list[EditPair] = []
    if pairs is not None:
        pair_list = _sample_pairs(pairs, split, sources[0].config.data.min_image_size)
        prompt_list = [p.instruction for p in pair_list]
    _check_families(sources, editing=pairs is not None)
    checked: set[tuple[str, str | None]] = set()
    for src in sources:
        key = (src.config.model.path, src.config.model.revision)
        if key not in checked:
            resolve_model_path(*key)  # PreflightError with the fetch command when absent
            checked.add(key)

    reward_cfg = None
    if reward is not None:
        if isinstance(reward, RewardConfig):
            reward_cfg = reward
        else:
            from slas.rewards.score import parse_reward_spec

            reward_cfg = parse_reward_spec(reward)  # a SlasError naming the spec when it is wrong
        preflight_reward(reward_cfg)

    meta = {
        "status": "planned",
        "checkpoints": [{"label": s.label, "path": str(s.path) if s.path else None, "model": s.config.model.path,
                         "finetune": s.config.model.finetune} for s in sources],
        "kind": "edit" if pairs is not None else "t2i",
        **({"pairs_file": str(Path(pairs).resolve()), "split": split or ALL_SPLITS, "num_pairs": len(pair_list)}
           if pairs is not None else
           {"prompts_file": str(Path(prompts_file).resolve()), "num_prompts": len(prompt_list)}),
        "seeds": seed_list,
        "sample": sources[0].config.sample.model_dump(mode="json"),
        "sampler": "deterministic (DDIM eta=0 / flow Euler ODE); a pair's initial noise comes from its seed",
        "reward": reward_cfg.model_dump(mode="json") if reward_cfg is not None else None,
        "scored": SCORED if reward_cfg is not None else None,
    }
    default_name = " vs ".join(labels)
    return SamplePlan(sources, prompt_list, seed_list, batch_size, reward_cfg, (name or default_name)[:200], meta,
                      pair_list)


# ---------------------------------------------------------------------------------------------- rendering


def load_policy(source: CheckpointSource) -> Any:
    """The run's policy with the checkpoint's trained weights (full or LoRA) loaded; the base model for ``base``."""
    from slas.policies import load_policy as load_family

    cfg = source.config
    policy = load_family(cfg.model, cfg.sample)
    if source.path is not None:
        policy.load_trainable(source.path / "trainable")
    return policy


def _write_manifest(root: Path, rows: Sequence[dict[str, Any]], pair_ids: Sequence[str] = ()) -> None:
    """Append ``rows`` to the set's :data:`MANIFEST`, image paths relative to the set folder, so the folder
    can be moved or scored again (``slas reward score --images``) without the store. An editing row adds
    its ``person`` and ``product`` photos (the copies in the set folder) and the pair's ``pair`` id."""
    with (root / MANIFEST).open("a", encoding="utf-8") as fh:
        for n, row in enumerate(rows):
            image = Path(row["image_path"]).relative_to(root).as_posix()
            line = {"image": image, "prompt": row["prompt"], "seed": row["seed"], "checkpoint": row["checkpoint_label"]}
            if row.get("person_image"):
                line |= {"person": Path(row["person_image"]).relative_to(root).as_posix(),
                         "product": Path(row["product_image"]).relative_to(root).as_posix(), "pair": pair_ids[n]}
            fh.write(json.dumps(line) + "\n")


def copy_inputs(pairs: Sequence[EditPair], root: Path) -> list[tuple[str, str]]:
    """``(person, product)`` absolute paths of each pair's photos copied under ``root/inputs/``.

    Each distinct photo is decoded once (``slas.images.load_image``, as the policy reads it) and saved as
    PNG, so the copy shows exactly the pixels the model was conditioned on; a person photo shared by many
    pairs is one file. The review UI reads inputs from here: it serves nothing outside the set's folders.
    """
    folder = root / INPUTS
    folder.mkdir(parents=True, exist_ok=True)
    copies: dict[tuple[str, Path], str] = {}

    def copy(kind: str, source: Path) -> str:
        key = (kind, source.resolve())
        if key not in copies:
            stem = _UNSAFE.sub("_", source.stem).strip("_")[:60] or "photo"
            target = folder / f"{kind}_{sum(k[0] == kind for k in copies):04d}_{stem}.png"
            to_pil(load_image(source)).save(target)
            copies[key] = str(target)
        return copies[key]

    return [(copy("person", p.person_path), copy("product", p.product_path)) for p in pairs]


def _batch_inputs(plan: SamplePlan, indices: Sequence[int]) -> tuple[list[Any], dict[str, list[Any]]]:
    """What ``policy.generate`` renders for items ``indices`` and the conditions the reward sees with them.

    Prompts for a text-to-image set (no conditions). For an editing set, each item's pair as its training
    group (:meth:`EditingSource.group`; a pair's photos read once per batch) and, as the trainer passes
    them, ``person_images``/``product_images``: lists of one PIL image per item.
    """
    if not plan.pairs:
        return [plan.prompts[i] for i in indices], {}
    source = EditingSource(plan.pairs, shuffle=False)
    made: dict[int, Any] = {}
    for i in indices:
        if i not in made:
            made[i] = source.group(plan.pairs[i])
    groups = [made[i] for i in indices]
    return groups, {name: [g.conditions[name] for g in groups] for name in CONDITIONS}


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _job_of(store: Store, sources: Sequence[CheckpointSource]) -> int | None:
    """The job that trained every checkpoint of the set, when they all come from one."""
    jobs = set()
    for src in sources:
        if src.run_dir is None:
            continue
        found = store.find_jobs_by_run_dir(src.run_dir.resolve())
        jobs.add(found[0].id if found else None)
    return jobs.pop() if len(jobs) == 1 else None


def render_sample_set(
    plan: SamplePlan,
    store: Store,
    *,
    out: str | Path | None = None,
    progress: bool = True,
    load: Callable[[CheckpointSource], Any] = load_policy,
) -> int:
    """Render ``plan`` into a new sample set of ``store`` and return its id.

    One checkpoint at a time (loaded, rendered in batches of ``plan.batch_size``, released), so only one
    model is in memory; its rows are committed, and its lines appended to the folder's :data:`MANIFEST`,
    when its images are written. Rewards score the 8-bit images the PNGs hold (``meta.scored``), so scoring
    a saved file later gives the stored number. The set's ``meta.status`` turns ``complete`` at the end
    (``failed`` with ``meta.error`` on an error; left ``rendering``: killed).
    """
    sset = store.create_sample_set(plan.name, job_id=_job_of(store, plan.checkpoints), meta=plan.meta)
    root = Path(out) if out is not None else slas_home() / "samples" / str(sset.id)
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    (root / MANIFEST).write_text("", encoding="utf-8")  # this set's manifest only, even in a reused --out folder
    store.update_sample_set_meta(sset.id, status="rendering", out_dir=str(root))
    reward_fn = None
    if plan.reward is not None:
        from slas.rewards import build

        reward_fn = build(plan.reward)
    items = [(p, i, s) for i, p in enumerate(plan.prompts) for s in plan.seeds]
    bar = tqdm(total=plan.num_images, unit="img", desc=f"sample set {sset.id}", disable=not progress)
    try:
        inputs = copy_inputs(plan.pairs, root) if plan.pairs else []
        for c, src in enumerate(plan.checkpoints):
            folder = root / f"{c:02d}_{_UNSAFE.sub('_', src.label).strip('_')}"
            folder.mkdir(parents=True, exist_ok=True)
            bar.set_postfix_str(src.label)
            policy = load(src)
            rows, pair_ids = [], []
            for b in range(0, len(items), plan.batch_size):
                batch = items[b : b + plan.batch_size]
                prompts = [p for p, _, _ in batch]
                groups, conditions = _batch_inputs(plan, [i for _, i, _ in batch])
                images = policy.generate(groups, [s for _, _, s in batch], batch_size=plan.batch_size)
                scores: dict[str, Tensor] = {}
                if reward_fn is not None:  # the scores of what the PNGs hold, so a saved file scores the same
                    group_ids = torch.tensor([i for _, i, _ in batch])
                    scores = reward_fn(quantize(images), prompts, group_ids=group_ids, **conditions)
                for k, ((prompt, i, seed), image) in enumerate(zip(batch, images, strict=True)):
                    path = folder / f"p{i:04d}_seed{seed}.png"
                    to_pil(image).save(path)
                    row = {
                        "checkpoint_label": src.label,
                        "checkpoint_path": str(src.path) if src.path is not None else None,
                        "prompt": prompt, "seed": int(seed), "image_path": str(path),
                        "rewards": {name: _finite(float(v[k])) for name, v in scores.items()},
                    }
                    if inputs:
                        row |= {"person_image": inputs[i][0], "product_image": inputs[i][1]}
                        pair_ids.append(plan.pairs[i].id)
                    rows.append(row)
                bar.update(len(batch))
            store.add_samples(sset.id, rows)
            _write_manifest(root, rows, pair_ids)
            del policy
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    except BaseException as exc:
        store.update_sample_set_meta(sset.id, status="failed", error=one_line(exc, with_type=True))
        raise
    finally:
        bar.close()
    store.update_sample_set_meta(sset.id, status="complete")
    return sset.id


__all__ = [
    "ALL_SPLITS", "BASE", "INPUTS", "MANIFEST", "CheckpointSource", "SamplePlan", "SamplingError", "copy_inputs",
    "load_policy", "parse_seeds", "plan_sample_set", "render_sample_set",
]
