"""CLIP score (``"clip"``) and the CLIP encoders shared by every CLIP-family reward.

Two backends load real weights without ever downloading:

* ``backend="transformers"``: ``CLIPModel`` from a local directory or a cached hub id (``model``,
  default ``openai/clip-vit-large-patch14``); preprocessing (resize/crop size, interpolation,
  mean/std) comes from the directory's ``preprocessor_config.json`` through ``CLIPImageProcessor``.
* ``backend="open_clip"``: an open_clip architecture (``model_name``, e.g.
  ``ViT-H-14-378-quickgelu``) with weights from ``pretrained``: a checkpoint file, an open_clip
  pretrained tag of that architecture (``"dfn5b"`` -> ``apple/DFN5B-CLIP-ViT-H-14-378`` in the
  hub cache), or a hub repo id (file ``filename``, default the open_clip weights file). DanceGRPO's
  mixed reward uses DFN5B-CLIP-ViT-H-14-378 this way. Preprocessing follows the tag (DFN: bicubic
  *squash* resize, OpenAI mean/std), an ``open_clip_config.json`` beside the checkpoint, then the
  ``preprocess`` option.

Both encoders return L2-normalised float32 embeddings; the CLIP score is their cosine similarity
times ``scale`` (one value per image, key ``"clip"``). Heavy libraries are imported only when a
reward is built, so ``import slas.rewards`` stays light.
"""

from __future__ import annotations

import abc
import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from slas.preflight import PreflightError, looks_like_hub_id, resolve_file, resolve_model_path
from slas.rewards.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, preprocess_images
from slas.rewards.registry import register
from slas.torch_utils import resolve_device, resolve_dtype

__all__ = [
    "CLIPScoreReward",
    "HFClipEncoder",
    "OpenClipEncoder",
    "build_encoder",
    "load_image_batch",
    "resolve_device",
    "resolve_dtype",
]

log = logging.getLogger(__name__)

DEFAULT_HF_MODEL = "openai/clip-vit-large-patch14"
DEFAULT_OPEN_CLIP_MODEL = "ViT-H-14-378-quickgelu"
DEFAULT_OPEN_CLIP_PRETRAINED = "dfn5b"
# open_clip's hub weight files, in the order its own loader prefers them; the last one is what the
# fetch command in an error names (every open_clip hub repo has it).
OPEN_CLIP_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")

_PREPROCESS_KEYS = {"size", "crop_size", "mean", "std", "interpolation", "resize_mode"}


# ------------------------------------------------------------------------------------------ options


def check_common_options(reward: str, *, device: Any, dtype: Any, batch_size: Any) -> None:
    """Preflight of the options every CLIP-family reward shares (raises :class:`PreflightError`)."""
    try:
        resolve_dtype(dtype)
    except ValueError as e:
        raise PreflightError(f"reward {reward} options.dtype: {e}") from None
    try:
        if str(device) != "auto":
            torch.device(device)
    except (RuntimeError, TypeError):
        raise PreflightError(f"reward {reward} options.device: not a torch device: {device!r}") from None
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise PreflightError(f"reward {reward} options.batch_size: must be a positive integer, got {batch_size!r}")


def checked_factory(
    reward: str, cls: Callable[..., Any], check: Callable[..., Any]
) -> tuple[Callable[..., Any], Callable[..., None]]:
    """``(factory, preflight)`` for the registry: both reject unknown option names with a PreflightError.

    ``preflight(**options)`` then runs ``check`` on the options bound to ``cls``'s signature with its
    defaults applied (the defaults live in ``cls.__init__`` alone; file resolution only, nothing loaded);
    ``factory(**options)`` builds ``cls(**options)`` (whose ``__init__`` runs the same check first).
    """
    import inspect

    signature = inspect.signature(cls)
    allowed = [p for p in signature.parameters if p != "self"]

    def known(options: Mapping[str, Any]) -> None:
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise PreflightError(f"reward {reward} options: unknown option(s) {unknown}; known: {allowed}")

    def factory(**options: Any) -> Any:
        known(options)
        return cls(**options)

    def preflight(**options: Any) -> None:
        known(options)
        bound = signature.bind(**options)
        bound.apply_defaults()
        check(**bound.arguments)

    factory.__name__ = factory.__qualname__ = f"build_{reward}"
    factory.__doc__ = cls.__doc__
    return factory, preflight


# -------------------------------------------------------------------------------------- file lookup


def _hub_file(repo: str, names: Sequence[str], *, key: str, revision: str | None) -> str:
    err: PreflightError | None = None
    for name in names:
        try:
            return resolve_file(repo, name, key=key, revision=revision)
        except PreflightError as e:
            err = e
    assert err is not None
    raise err


def resolve_open_clip_weights(
    model_name: str, pretrained: str, *, filename: str | None = None, revision: str | None = None, key: str
) -> tuple[str, dict[str, Any]]:
    """``(checkpoint path, open_clip pretrained cfg or {})`` for an open_clip ``pretrained`` option.

    ``pretrained`` is a local file, an open_clip tag of ``model_name`` (found in the hub cache through
    the tag's ``hf_hub`` entry) or a hub repo id (``filename`` in it; default: open_clip's weight
    files). Never downloads; a miss raises :class:`PreflightError` with the fetch command.
    """
    import open_clip

    p = Path(pretrained).expanduser()
    if p.is_file():
        return str(p), {}
    tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained) or {}
    if tag_cfg:
        hub = tag_cfg.get("hf_hub", "")
        if not hub:
            raise PreflightError(
                f"{key}: open_clip tag {pretrained!r} of {model_name} is not on the Hugging Face hub; download "
                f"{tag_cfg.get('url', '(no url)')} on a connected machine and set {key} to the file's path"
            )
        parts = hub.split("/")  # "org/repo/" (open_clip's default file) or "org/repo/file"
        repo, name = "/".join(parts[:2]), "/".join(parts[2:])
        return _hub_file(repo, [name] if name else OPEN_CLIP_WEIGHT_FILES, key=key, revision=revision), tag_cfg
    if looks_like_hub_id(pretrained):
        names = [filename] if filename else list(OPEN_CLIP_WEIGHT_FILES)
        path = _hub_file(pretrained, names, key=key, revision=revision)
        return path, _tag_for_repo(model_name, pretrained)
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    raise PreflightError(
        f"{key}: {pretrained!r} is neither a checkpoint file, an open_clip tag of {model_name} ({tags}) "
        f"nor a hub repo id"
    )


def _tag_for_repo(model_name: str, repo: str) -> dict[str, Any]:
    """The open_clip pretrained cfg whose hub repo is ``repo`` (for its preprocessing), or {}."""
    import open_clip

    for tag in open_clip.list_pretrained_tags_by_model(model_name):
        cfg = open_clip.get_pretrained_cfg(model_name, tag) or {}
        hub = cfg.get("hf_hub", "")
        if hub and hub.rstrip("/").split("/")[:2] == repo.split("/"):
            return cfg
    return {}


def check_open_clip_model_name(model_name: str, *, key: str) -> None:
    """A registered open_clip architecture, or open_clip's ``local-dir:DIR`` with its ``open_clip_config.json``."""
    import open_clip

    if model_name.startswith("local-dir:"):
        config = Path(model_name.removeprefix("local-dir:")).expanduser() / "open_clip_config.json"
        if not config.is_file():
            raise PreflightError(f"{key}: {model_name!r} has no open_clip_config.json ({config})")
        return
    if model_name not in open_clip.list_models():
        import difflib

        close = difflib.get_close_matches(model_name, open_clip.list_models(), n=6, cutoff=0.5)
        raise PreflightError(f"{key}: unknown open_clip architecture {model_name!r} (e.g. {close})")


# ----------------------------------------------------------------------------------------- encoders


def _chunks(n: int, size: int) -> Iterable[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded")


@contextlib.contextmanager
def _quiet_random_init_warning() -> Iterator[None]:
    root, drop = logging.getLogger(), _DropRandomInitWarning()
    root.addFilter(drop)  # open_clip logs through the root logger
    try:
        yield
    finally:
        root.removeFilter(drop)


class _Encoder(abc.ABC):
    """Shared batching: ``encode_images`` / ``encode_texts`` return L2-normalised float32 ``[N, D]``."""

    device: torch.device
    dtype: torch.dtype
    batch_size: int
    preprocess_cfg: dict[str, Any]

    def preprocess(self, images: Tensor | Sequence[Tensor]) -> Tensor:
        return preprocess_images(images, device=self.device, dtype=self.dtype, **self.preprocess_cfg)

    @abc.abstractmethod
    def _image_features(self, pixels: Tensor) -> Tensor:
        """Image embeddings (unnormalised) of preprocessed pixels."""

    @abc.abstractmethod
    def _text_features(self, texts: list[str]) -> Tensor:
        """Text embeddings (unnormalised)."""

    @torch.no_grad()
    def encode_images(self, images: Tensor | Sequence[Tensor]) -> Tensor:
        """``[N, 3, H, W]`` in [0, 1] (or a list of ``[3, H, W]`` of any sizes) -> unit vectors ``[N, D]``."""
        n = images.shape[0] if isinstance(images, Tensor) else len(images)
        out = [
            F.normalize(self._image_features(self.preprocess(images[s])).float(), dim=-1)
            for s in _chunks(n, self.batch_size)
        ]
        return torch.cat(out)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        """Unit text embeddings ``[N, D]``; each distinct text is encoded once."""
        unique = list(dict.fromkeys(texts))
        feats = torch.cat([
            F.normalize(self._text_features(unique[s]).float(), dim=-1) for s in _chunks(len(unique), self.batch_size)
        ])
        index = {t: i for i, t in enumerate(unique)}
        return feats[torch.tensor([index[t] for t in texts], device=feats.device)]


class OpenClipEncoder(_Encoder):
    """An open_clip ``CLIP`` built from its architecture name, with weights from a checkpoint file.

    The checkpoint may be a bare state dict or ``{"state_dict": ...}`` (as HPSv2 and open_clip training
    save it), ``.safetensors`` or a torch pickle (loaded with ``weights_only`` unless told otherwise).
    """

    def __init__(
        self,
        model_name: str,
        checkpoint: str,
        *,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "float32",
        batch_size: int = 32,
        preprocess: Mapping[str, Any] | None = None,
        force_quick_gelu: bool = False,
        weights_only: bool = True,
    ) -> None:
        import open_clip

        self.device, self.dtype, self.batch_size = resolve_device(device), resolve_dtype(dtype), batch_size
        # Build the towers on the target device (fast init on a GPU); the weights are loaded right after,
        # so open_clip's "initialized randomly" warning would only mislead.
        with torch.device(self.device), _quiet_random_init_warning():
            model = open_clip.create_model(
                model_name, pretrained=None, device=self.device, force_quick_gelu=force_quick_gelu
            )
        open_clip.load_checkpoint(model, checkpoint, strict=True, weights_only=weights_only, device="cpu")
        self.model = model.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        size = model.visual.image_size
        cfg = open_clip.get_model_preprocess_cfg(model)
        self.preprocess_cfg = {
            "size": size,
            "crop_size": size,
            "mean": tuple(cfg.get("mean", OPENAI_CLIP_MEAN)),
            "std": tuple(cfg.get("std", OPENAI_CLIP_STD)),
            "interpolation": cfg.get("interpolation", "bicubic"),
            "resize_mode": cfg.get("resize_mode", "shortest"),
        }
        self.preprocess_cfg.update(check_preprocess(preprocess))

    def _image_features(self, pixels: Tensor) -> Tensor:
        return self.model.encode_image(pixels)

    def _text_features(self, texts: list[str]) -> Tensor:
        return self.model.encode_text(self.tokenizer(texts).to(self.device))


class HFClipEncoder(_Encoder):
    """transformers ``CLIPModel`` + tokenizer + the ``CLIPImageProcessor`` settings of its directory."""

    def __init__(
        self,
        path: str,
        *,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "float32",
        batch_size: int = 32,
        preprocess: Mapping[str, Any] | None = None,
    ) -> None:
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        self.device, self.dtype, self.batch_size = resolve_device(device), resolve_dtype(dtype), batch_size
        model = CLIPModel.from_pretrained(path)
        self.model = model.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.max_length = int(model.config.text_config.max_position_embeddings)
        if (Path(path) / "preprocessor_config.json").is_file():
            proc = CLIPImageProcessor.from_pretrained(path)
        else:  # no processor config: CLIP's defaults at the vision tower's resolution
            side = int(model.config.vision_config.image_size)
            proc = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
        self.preprocess_cfg = _hf_preprocess_cfg(proc, int(model.config.vision_config.image_size))
        self.preprocess_cfg.update(check_preprocess(preprocess))

    def _image_features(self, pixels: Tensor) -> Tensor:
        out = self.model.vision_model(pixel_values=pixels)
        return self.model.visual_projection(out.pooler_output)

    def _text_features(self, texts: list[str]) -> Tensor:
        tok = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        out = self.model.text_model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
        return self.model.text_projection(out.pooler_output)


def _field(size: Any, name: str) -> Any:
    value = getattr(size, name, None)  # transformers 5: SizeDict
    if value is None and isinstance(size, Mapping):  # transformers 4: dict
        value = size.get(name)
    return value


def _hf_preprocess_cfg(proc: Any, default_side: int) -> dict[str, Any]:
    """Our :func:`preprocess_images` arguments from a ``CLIPImageProcessor`` (transformers 4 or 5)."""
    size, crop = getattr(proc, "size", None), getattr(proc, "crop_size", None)
    shortest = _field(size, "shortest_edge")
    if not getattr(proc, "do_resize", True):
        raise ValueError("CLIPImageProcessor with do_resize=False is not supported")
    if shortest is not None:
        cfg: dict[str, Any] = {"size": int(shortest), "resize_mode": "shortest"}
    elif _field(size, "height") is not None:
        cfg = {"size": (int(_field(size, "height")), int(_field(size, "width"))), "resize_mode": "squash"}
    else:
        cfg = {"size": default_side, "resize_mode": "shortest"}
    if getattr(proc, "do_center_crop", True) and crop is not None:
        cfg["crop_size"] = (int(_field(crop, "height")), int(_field(crop, "width")))
    elif cfg["resize_mode"] == "shortest":
        raise ValueError("CLIPImageProcessor: a shortest-edge resize needs a centre crop")
    resample = getattr(proc, "resample", 3)
    cfg["interpolation"] = "bilinear" if int(resample if resample is not None else 3) == 2 else "bicubic"
    if getattr(proc, "do_normalize", True):
        cfg["mean"], cfg["std"] = tuple(proc.image_mean), tuple(proc.image_std)
    else:
        cfg["mean"], cfg["std"] = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return cfg


def check_preprocess(preprocess: Mapping[str, Any] | None) -> dict[str, Any]:
    unknown = set(preprocess or {}) - _PREPROCESS_KEYS
    if unknown:
        raise ValueError(f"preprocess: unknown key(s) {sorted(unknown)}; known: {sorted(_PREPROCESS_KEYS)}")
    return dict(preprocess or {})


# ------------------------------------------------------------------------- backend option handling


def _open_clip_preprocess_from(tag_cfg: Mapping[str, Any], checkpoint: str) -> tuple[dict[str, Any], bool]:
    """Preprocessing and quick_gelu implied by the weights (tag cfg, then open_clip_config.json beside them)."""
    cfg = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}
    quick_gelu = bool(tag_cfg.get("quick_gelu", False))
    side_cfg = Path(checkpoint).parent / "open_clip_config.json"
    if side_cfg.is_file():
        try:
            data = json.loads(side_cfg.read_text())
        except (OSError, ValueError):
            data = {}
        pp = data.get("preprocess_cfg", {}) if isinstance(data, dict) else {}
        cfg.update({k: pp[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in pp})
        quick_gelu = quick_gelu or bool((data.get("model_cfg") or {}).get("quick_gelu", False))
    for k in ("mean", "std"):
        if k in cfg:
            cfg[k] = tuple(cfg[k])
    return cfg, quick_gelu


def resolve_encoder_files(
    reward: str,
    *,
    backend: str,
    model: str,
    revision: str | None,
    model_name: str,
    pretrained: str,
    filename: str | None,
) -> dict[str, Any]:
    """Resolve (never download) what an encoder needs; the ``build_encoder`` arguments, or PreflightError."""
    if backend == "transformers":
        path = resolve_model_path(model, revision, key=f"reward {reward} options.model", marker="config.json")
        return {"backend": backend, "path": path}
    if backend == "open_clip":
        checkpoint, tag_cfg = resolve_open_clip_weights(
            model_name, pretrained, filename=filename, revision=revision, key=f"reward {reward} options.pretrained"
        )
        check_open_clip_model_name(model_name, key=f"reward {reward} options.model_name")
        return {"backend": backend, "model_name": model_name, "checkpoint": checkpoint, "tag_cfg": tag_cfg}
    raise PreflightError(f"reward {reward} options.backend: must be 'transformers' or 'open_clip', got {backend!r}")


def build_encoder(
    resolved: Mapping[str, Any],
    *,
    device: str | torch.device,
    dtype: str | torch.dtype,
    batch_size: int,
    preprocess: Mapping[str, Any] | None = None,
    weights_only: bool = True,
) -> _Encoder:
    """The encoder for :func:`resolve_encoder_files`'s result."""
    common = {"device": device, "dtype": dtype, "batch_size": batch_size}
    if resolved["backend"] == "transformers":
        return HFClipEncoder(resolved["path"], preprocess=preprocess, **common)
    implied, quick_gelu = _open_clip_preprocess_from(resolved["tag_cfg"], resolved["checkpoint"])
    import open_clip

    model_cfg = open_clip.get_model_config(resolved["model_name"]) or {}
    if quick_gelu and not model_cfg.get("quick_gelu", False):
        log.warning(
            "open_clip weights %s were trained with QuickGELU but %s uses nn.GELU; forcing QuickGELU "
            "(name the '-quickgelu' architecture to silence this)", resolved["checkpoint"], resolved["model_name"],
        )
    return OpenClipEncoder(
        resolved["model_name"],
        resolved["checkpoint"],
        preprocess={**implied, **check_preprocess(preprocess)},
        force_quick_gelu=quick_gelu,
        weights_only=weights_only,
        **common,
    )


# ------------------------------------------------------------------------------------------ images


def load_image_batch(images: Any, n: int, *, name: str = "images") -> Tensor | list[Tensor]:
    """A tensor ``[n, 3, H, W]`` in [0, 1], or a list of ``n`` images (``[3, H, W]`` tensors, PIL images or paths).

    uint8 tensors are scaled to [0, 1]. Lists of different sizes come back as a list of ``[3, H, W]``.
    """
    if isinstance(images, Tensor):
        x = images.unsqueeze(0) if images.ndim == 3 else images
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{name}: expected [N, 3, H, W], got {tuple(images.shape)}")
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x
        items: list[Tensor] = list(x)
    elif isinstance(images, (list, tuple)):
        items = [_one_image(im, name) for im in images]
    else:
        raise ValueError(f"{name}: expected a tensor or a list of images/paths, got {type(images).__name__}")
    if len(items) != n:
        raise ValueError(f"{name}: {len(items)} images for {n} generated images")
    if isinstance(images, Tensor):
        return x
    if len({tuple(t.shape) for t in items}) == 1:
        return torch.stack(items)
    return items


def _one_image(im: Any, name: str) -> Tensor:
    if isinstance(im, Tensor):
        t = im.squeeze(0) if im.ndim == 4 and im.shape[0] == 1 else im
        if t.ndim != 3 or t.shape[0] != 3:
            raise ValueError(f"{name}: expected [3, H, W] tensors, got {tuple(im.shape)}")
        return t.float() / 255.0 if t.dtype == torch.uint8 else t
    import numpy as np
    from PIL import Image

    if isinstance(im, (str, os.PathLike)):
        if not Path(im).is_file():
            raise ValueError(f"{name}: image file not found: {im}")
        with Image.open(im) as f:
            im = f.convert("RGB")
    if isinstance(im, Image.Image):
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous()
    raise ValueError(f"{name}: unsupported image type {type(im).__name__}")


# -------------------------------------------------------------------------------------- the reward


class CLIPScoreReward:
    """``scale * cos(image, prompt)`` in CLIP space; key ``"clip"``, one value per image."""

    key = "clip"

    def __init__(
        self,
        backend: str = "transformers",
        model: str = DEFAULT_HF_MODEL,
        revision: str | None = None,
        model_name: str = DEFAULT_OPEN_CLIP_MODEL,
        pretrained: str = DEFAULT_OPEN_CLIP_PRETRAINED,
        filename: str | None = None,
        preprocess: Mapping[str, Any] | None = None,
        scale: float = 1.0,
        device: str = "auto",
        dtype: str = "float32",
        batch_size: int = 32,
        weights_only: bool = True,
    ) -> None:
        resolved = _check_clip(
            backend=backend, model=model, revision=revision, model_name=model_name, pretrained=pretrained,
            filename=filename, preprocess=preprocess, scale=scale, device=device, dtype=dtype, batch_size=batch_size,
        )
        self.encoder = build_encoder(
            resolved, device=device, dtype=dtype, batch_size=batch_size, preprocess=preprocess,
            weights_only=weights_only,
        )
        self.scale = float(scale)

    def __call__(self, images: Tensor, prompts: list[str], **conditions: Any) -> dict[str, Tensor]:
        if len(prompts) != images.shape[0]:
            raise ValueError(f"clip: {len(prompts)} prompts for {images.shape[0]} images")
        img = self.encoder.encode_images(images)
        txt = self.encoder.encode_texts(prompts)
        return {self.key: (self.scale * (img * txt).sum(-1)).cpu()}


def _check_clip(
    *, backend: str, model: str, revision: str | None, model_name: str, pretrained: str, filename: str | None,
    preprocess: Mapping[str, Any] | None, scale: float, device: str, dtype: str, batch_size: int, **_: Any,
) -> dict[str, Any]:
    """Preflight of the ``clip`` options; returns the resolved encoder files."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise PreflightError(f"reward clip options.scale: must be a number, got {scale!r}")
    return check_encoder_options(
        "clip", backend=backend, model=model, revision=revision, model_name=model_name, pretrained=pretrained,
        filename=filename, preprocess=preprocess, device=device, dtype=dtype, batch_size=batch_size,
    )


def check_encoder_options(
    reward: str, *, backend: str, model: str, revision: str | None, model_name: str, pretrained: str,
    filename: str | None, preprocess: Mapping[str, Any] | None, device: str, dtype: str, batch_size: int,
) -> dict[str, Any]:
    """Preflight shared by the rewards built on a CLIP encoder; returns the resolved encoder files."""
    check_common_options(reward, device=device, dtype=dtype, batch_size=batch_size)
    try:
        check_preprocess(preprocess)
    except ValueError as e:
        raise PreflightError(f"reward {reward} options.{e}") from None
    return resolve_encoder_files(
        reward, backend=backend, model=model, revision=revision, model_name=model_name,
        pretrained=pretrained, filename=filename,
    )


_factory, _preflight = checked_factory("clip", CLIPScoreReward, _check_clip)
register("clip", preflight=_preflight)(_factory)
