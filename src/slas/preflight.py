"""Checks that run before any heavy work: every model, prompt file and reward named by a config exists
and fits the config.

Nothing here downloads or loads weights. A missing model gives the exact command to fetch it on a connected
machine; a model of the other family, a device this machine lacks, LoRA targets the denoiser does not have,
a prompt file with no prompts and a rollout bigger than the machine's memory are each one line naming the
key and the fix. :func:`preflight` runs every check and reports every problem at once, so a newcomer
missing the SD weights, HPS and CLIP learns all three in one round trip instead of three.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

from huggingface_hub import constants, snapshot_download, try_to_load_from_cache
from huggingface_hub.errors import LocalEntryNotFoundError

from slas.config import ModelConfig, RewardConfig, SampleConfig, SLASConfig
from slas.errors import SlasError, one_line
from slas.torch_utils import DEVICE_CHOICES, DeviceError, device_unavailable, parse_device

# Hub owners whose models are gated: a download needs the licence accepted on the model page and a login.
GATED_OWNERS = ("black-forest-labs/",)


class PreflightError(SlasError, RuntimeError):
    """Something a run needs is not on this machine; the message names it and how to get it.

    One line per problem (:attr:`problems`); the first line is the first problem, so a caller that shows
    only ``str(err).splitlines()[0]`` still shows a complete one.
    """

    @classmethod
    def listing(cls, problems: Iterable[str]) -> PreflightError:
        """One error for several problems, one line each."""
        return cls("\n".join(problems))

    @property
    def problems(self) -> list[str]:
        return [line for line in str(self).splitlines() if line.strip()]


def fetch_command(repo_id: str, revision: str | None = None, filename: str | None = None) -> str:
    rev = f" --revision {revision}" if revision else ""
    file = f" {filename}" if filename else ""
    return f"hf download {repo_id}{file}{rev}"


def fetch_steps(repo_id: str, revision: str | None = None, filename: str | None = None) -> str:
    """What to run on a connected machine; a gated model needs its licence accepted and a login first,
    without which ``hf download`` fails with an opaque 401/403."""
    command = fetch_command(repo_id, revision, filename)
    if repo_id.startswith(GATED_OWNERS):
        return (f"accept the licence on https://huggingface.co/{repo_id} (gated model), run `hf auth login`, "
                f"then run: {command}")
    return f"run: {command}"


def _cache_dir() -> str:
    return os.environ.get("HF_HUB_CACHE", constants.HF_HUB_CACHE)


def looks_like_hub_id(s: str) -> bool:
    """``owner/name``, not a path."""
    return s.count("/") == 1 and not s.startswith((".", "/", "~"))


def resolve_model_path(
    path_or_id: str, revision: str | None = None, *, key: str = "model.path", marker: str = "model_index.json"
) -> str:
    """A local model directory holding ``marker``, or the cached snapshot of a hub id; never downloads."""
    p = Path(path_or_id).expanduser()
    if p.exists():
        if not p.is_dir() or not (p / marker).is_file():
            raise PreflightError(f"{key}: {p} is not a model directory (no {marker})")
        return str(p)
    if not looks_like_hub_id(path_or_id):
        raise PreflightError(f"{key}: directory {p} does not exist")
    try:
        snap = snapshot_download(path_or_id, revision=revision, local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        snap = None
    if snap is None or not (Path(snap) / marker).is_file():
        raise PreflightError(
            f"{key}: {path_or_id!r} is neither a local directory nor in the Hugging Face cache "
            f"({_cache_dir()}); on a connected machine {fetch_steps(path_or_id, revision)}  "
            f"(then copy the cache here, or set {key} to the downloaded dir)"
        )
    return snap


def resolve_file(path_or_repo: str, filename: str | None = None, *, key: str, revision: str | None = None) -> str:
    """A local file, or ``filename`` of a hub repo already in the cache; never downloads.

    ``path_or_repo`` is either a file path or a repo id (then ``filename`` names the file in it).
    """
    p = Path(path_or_repo).expanduser()
    if p.is_file():
        return str(p)
    if filename is None or not looks_like_hub_id(path_or_repo):
        raise PreflightError(f"{key}: file not found: {p}")
    cached = try_to_load_from_cache(path_or_repo, filename, revision=revision)
    if isinstance(cached, str) and Path(cached).is_file():
        return cached
    raise PreflightError(
        f"{key}: {filename} of {path_or_repo!r} is not in the Hugging Face cache ({_cache_dir()}); on a connected "
        f"machine {fetch_steps(path_or_repo, revision, filename)}  (or set {key} to the file's path)"
    )


def _problems(checks: Iterable[Callable[[], object]]) -> list[str]:
    """Run every check; the lines of the :class:`PreflightError` each raised, in order."""
    found: list[str] = []
    for check in checks:
        try:
            check()
        except PreflightError as err:
            found.extend(err.problems)
    return found


def _check_prompts(path: str, field: str | None) -> None:
    """The prompt file reads as prompts: not missing, binary, malformed, empty or blank."""
    from slas.t2i.prompts import load_prompts

    try:
        load_prompts(path, field)
    except SlasError as exc:
        raise PreflightError(f"data.prompts: {one_line(exc)}") from None


def _check_pairs(path: str, min_size: int, split: str | None) -> None:
    """The editing pairs are usable whole (every row's fields and photos; ``slas.editing.data``), and the
    split trained on has pairs: one line per problem, each naming the file and row."""
    from slas.editing.data import load_pairs

    try:
        load_pairs(path, split=split, min_size=min_size)
    except SlasError as exc:
        raise PreflightError.listing(f"data.pairs: {line}" for line in str(exc).splitlines() if line.strip()) from None


def _check_data(config: SLASConfig) -> None:
    """The data of the run: the prompt file (text-to-image) or the editing pairs."""
    data = config.data
    if data.pairs is not None:
        _check_pairs(data.pairs, data.min_image_size, data.split)
    else:
        _check_prompts(data.prompts, data.field)


def _check_device(device: str) -> None:
    """``model.device`` is a device this machine has (a CUDA index within its GPUs, MPS where there is one)."""
    try:
        parsed = parse_device(device)
    except DeviceError as exc:
        raise PreflightError(f"model.device: {exc}") from None
    why = device_unavailable(parsed) if parsed is not None else None
    if why:
        raise PreflightError(f"model.device: {device!r}: {why}; use model.device=auto (or one of {DEVICE_CHOICES})")


# ------------------------------------------------------------------------------- the model dir itself

# latent channels of each family's VAE when the model dir's vae/config.json does not say
_LATENT_CHANNELS = {"sd": 4, "flux": 16, "flux_kontext": 16, "qwen_image_edit": 16}
_LORA_LAYERS = ("Linear", "Conv1d", "Conv2d", "Conv3d", "Embedding", "MultiheadAttention", "Conv1D")


def _read_json(path: Path, key: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PreflightError(f"{key}: {path} is not readable JSON ({one_line(exc)}); fetch the model again") from None
    if not isinstance(data, dict):
        raise PreflightError(f"{key}: {path} does not hold a JSON object; fetch the model again")
    return data


def _policy_class(family: str) -> Any:
    from slas.policies import POLICIES

    return POLICIES[family]


def _check_family(family: str, model_dir: Path, index: dict[str, Any]) -> None:
    """The model dir holds the pipeline ``model.family`` loads (``sd`` on a FLUX model fails deep in
    diffusers otherwise, after minutes of loading)."""
    from slas.policies import POLICIES

    expected = _policy_class(family).pipeline_class.__name__
    found = index.get("_class_name")
    if found == expected:
        return
    other = next((name for name, cls in POLICIES.items() if cls.pipeline_class.__name__ == found), None)
    fix = f"set model.family={other}" if other else f"set model.path to a {expected} model"
    raise PreflightError(f"model.family: {family} loads a {expected} but {model_dir} holds a {found or 'unnamed'} "
                         f"pipeline (model_index.json _class_name); {fix}")


def _component_config(model_dir: Path, component: str) -> dict[str, Any]:
    """``<model dir>/<component>/config.json``; a snapshot without it cannot load either."""
    path = model_dir / component / "config.json"
    if not path.is_file():
        raise PreflightError(f"model.path: {model_dir} has no {component}/config.json; fetch the whole model again")
    return _read_json(path, "model.path")


def _denoiser_modules(model_dir: Path, family: str, index: dict[str, Any]) -> dict[str, str]:
    """Module name -> class name of the denoiser (UNet, transformer), built from its config on the meta
    device: no weights are read and no memory is used, yet the names are the ones LoRA will see."""
    import diffusers
    from accelerate import init_empty_weights

    component = _policy_class(family).component
    entry = index.get(component)
    class_name = entry[1] if isinstance(entry, list) and len(entry) == 2 else None
    cls = getattr(diffusers, class_name, None) if isinstance(class_name, str) else None
    if cls is None:
        raise PreflightError(f"model.path: {model_dir}/model_index.json names no diffusers class for {component}; "
                             "fetch the model again")
    config = _component_config(model_dir, component)
    try:
        with init_empty_weights():
            net = cls.from_config(config)
    except Exception as exc:  # a config the class cannot build: the load would fail the same way
        raise PreflightError(f"model.path: {model_dir}/{component}/config.json does not build a {cls.__name__} "
                             f"({one_line(exc, with_type=True)}); fetch the model again") from None
    return {name: type(module).__name__ for name, module in net.named_modules() if name}


def _targets(name: str, target: str) -> bool:
    """peft's rule for a list of target modules: the full module name, or its last dotted parts."""
    return name == target or name.endswith("." + target)


def _lora_examples(modules: dict[str, str], limit: int = 8) -> str:
    """A few target names LoRA can wrap (the last one or two name parts of Linear layers)."""
    names = []
    for name, kind in modules.items():
        if kind != "Linear":
            continue
        parts = name.split(".")
        short = ".".join(parts[-2:]) if parts[-1].isdigit() else parts[-1]
        if short not in names:
            names.append(short)
    return ", ".join(names[:limit])


def _check_lora_targets(model: ModelConfig, model_dir: Path, index: dict[str, Any]) -> None:
    """Every ``model.lora.target_modules`` entry names layers of the denoiser that LoRA can wrap; peft would
    fail on a typo only after the whole pipeline loaded, or silently skip it when another target matched."""
    modules = _denoiser_modules(model_dir, model.family, index)
    component = _policy_class(model.family).component
    problems = []
    for i, target in enumerate(model.lora.target_modules):
        kinds = {kind for name, kind in modules.items() if _targets(name, target)}
        if not kinds:
            problems.append(f"model.lora.target_modules.{i}: {target!r} names no module of the {component}; "
                            f"name its layers, e.g. {_lora_examples(modules)}")
        elif not kinds <= set(_LORA_LAYERS):
            wrong = ", ".join(sorted(kinds - set(_LORA_LAYERS)))
            problems.append(f"model.lora.target_modules.{i}: {target!r} matches {wrong} modules of the {component}, "
                            f"which LoRA cannot wrap; name their layers, e.g. {_lora_examples(modules)}")
    _raise_if_any(problems)


# ---------------------------------------------------------------------------------------------- memory


def _latent_geometry(model_dir: Path, family: str) -> tuple[int, int]:
    """(VAE scale factor, latent channels): from ``vae/config.json`` when the model dir has one, else 8 and
    the family's usual channels."""
    path = model_dir / "vae" / "config.json"
    config = _read_json(path, "model.path") if path.is_file() else {}
    blocks = config.get("block_out_channels")
    scale = 2 ** (len(blocks) - 1) if isinstance(blocks, list) and blocks else 8
    if isinstance(config.get("temperal_downsample"), list):  # Qwen-Image's VAE: one 2x step per entry
        scale = 2 ** len(config["temperal_downsample"])
    channels = config.get("latent_channels", config.get("z_dim"))
    return scale, channels if isinstance(channels, int) and channels > 0 else _LATENT_CHANNELS[family]


def _ram_bytes() -> int | None:
    """This machine's memory: physical RAM, or a smaller cgroup (container) limit."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        total = None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        limit = "max"
    if limit.isdigit():
        total = min(total, int(limit)) if total else int(limit)
    return total


def _memory_of(device: str) -> tuple[int, str] | None:
    """(bytes, what) of the memory a rollout's trajectory lives in on ``device``: the GPU's for CUDA, RAM
    otherwise; ``None`` when unknown (or the device is not here: the device check says so)."""
    import torch

    try:
        parsed = parse_device(device)
    except DeviceError:  # the device check names it
        return None
    if parsed is None:
        parsed = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device_unavailable(parsed):
        return None
    if parsed.type == "cuda":
        index = parsed.index if parsed.index is not None else torch.cuda.current_device()
        return torch.cuda.get_device_properties(index).total_memory, f"cuda:{index} has"
    ram = _ram_bytes()
    return (ram, "this machine has") if ram else None


def _size(n: float) -> str:
    """``n`` bytes in binary units (``4.0 TiB``)."""
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
    while n >= 1024 and len(units) > 1:
        n /= 1024
        units.pop(0)
    return f"{n:.1f} {units[0]}"


def rollout_bytes(sample: SampleConfig, scale: int, channels: int) -> tuple[int, str]:
    """Bytes of one rank's rollout trajectory, the latents of every sample at every step in float32, and
    the product it comes from (stated in the error, so the user sees which factor is out of scale)."""
    side = max(sample.resolution // scale, 1)
    samples = sample.prompts_per_iter * sample.group_size
    need = samples * (sample.num_steps + 1) * side * side * channels * 4
    how = (f"{sample.prompts_per_iter} prompts x {sample.group_size} samples x {sample.num_steps + 1} steps "
           f"x {channels}x{side}x{side} latents x 4 bytes")
    return need, how


def _check_memory(model: ModelConfig, sample: SampleConfig, model_dir: Path) -> None:
    """Refuse a rollout whose trajectory alone exceeds all the memory it would live in: conservative (the
    model, activations and the images come on top), so only clearly impossible sizes are refused."""
    scale, channels = _latent_geometry(model_dir, model.family)
    need, how = rollout_bytes(sample, scale, channels)
    memory = _memory_of(model.device)
    if memory is None or need <= memory[0]:
        return
    have, where = memory
    raise PreflightError(f"sample.group_size: a rollout keeps {_size(need)} of latents ({how}) but {where} "
                         f"{_size(have)} in all; lower sample.group_size, sample.prompts_per_iter, "
                         "sample.num_steps or sample.resolution")


def _check_model(config: SLASConfig) -> None:
    """The model is here, is of ``model.family``, and fits the LoRA targets and the rollout size; the
    later checks read the model dir, so a missing or foreign model stops them."""
    model = config.model
    model_dir = Path(resolve_model_path(model.path, model.revision))
    index = _read_json(model_dir / "model_index.json", "model.path")
    _check_family(model.family, model_dir, index)
    checks = [partial(_check_memory, model, config.sample, model_dir)]
    if model.finetune == "lora":
        checks.insert(0, partial(_check_lora_targets, model, model_dir, index))
    _raise_if_any(_problems(checks))


def _check_reward(i: int, name: str, options: dict) -> None:
    """Component ``i`` is a registered reward whose own preflight passes."""
    from slas.rewards import registry

    known = registry.available()
    if name not in known:
        raise PreflightError(f"reward.components.{i}.name: unknown reward {name!r}; available: {known}")
    registry.preflight(name, options)


def _check_remote_reward(i: int, component: Any) -> None:
    """A ``backend: remote`` component: its URL and token (errors) and its server (warns when not up yet)."""
    from slas.rewards.remote import preflight_remote

    preflight_remote(i, component)


def _reward_checks(reward: RewardConfig) -> list[Callable[[], None]]:
    return [partial(_check_remote_reward, i, c) if c.backend == "remote" else partial(_check_reward, i, c.name, c.options)
            for i, c in enumerate(reward.components)]


def _raise_if_any(problems: list[str]) -> None:
    if problems:
        raise PreflightError.listing(problems)


def preflight(config: SLASConfig) -> None:
    """Raise one :class:`PreflightError` listing everything the run needs that is missing or does not fit
    (model, device, data: the prompt file or every bad row of the editing pairs, every reward, the
    evaluation), one problem per line in that order."""
    checks = [partial(_check_model, config), partial(_check_device, config.model.device),
              partial(_check_data, config), *_reward_checks(config.reward),
              partial(_check_eval, config)]
    _raise_if_any(_problems(checks))


def _check_eval(config: SLASConfig) -> None:
    """The ``eval:`` section's detector, its weights and its prompt file (``slas.eval.during.check_eval``)."""
    if config.eval is None:
        return
    from slas.eval.during import check_eval

    check_eval(config)


def preflight_reward(reward: RewardConfig) -> None:
    """Every component is a registered reward whose files are here (each reward's own check); one
    :class:`PreflightError` lists every component that is not."""
    _raise_if_any(_problems(_reward_checks(reward)))
