"""The CLIP image/text encoders shared by every CLIP-family reward, and where their weights come from.

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

Both encoders return L2-normalised float32 embeddings and preprocess batched tensors on their own
device (:mod:`slas.rewards.preprocess`). open_clip and transformers are imported only when an encoder
is resolved or built, so ``import slas.rewards`` stays light.
"""

from __future__ import annotations

import abc
import contextlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from slas.preflight import PreflightError, looks_like_hub_id, resolve_file, resolve_model_path
from slas.rewards import preprocess as pp
from slas.torch_utils import resolve_device, resolve_dtype

__all__ = [
    "DEFAULT_HF_MODEL",
    "DEFAULT_OPEN_CLIP_MODEL",
    "DEFAULT_OPEN_CLIP_PRETRAINED",
    "HFClipEncoder",
    "OpenClipEncoder",
    "build_encoder",
    "check_open_clip_model_name",
    "resolve_encoder_files",
    "resolve_open_clip_weights",
]

log = logging.getLogger(__name__)

DEFAULT_HF_MODEL = "openai/clip-vit-large-patch14"
DEFAULT_OPEN_CLIP_MODEL = "ViT-H-14-378-quickgelu"
DEFAULT_OPEN_CLIP_PRETRAINED = "dfn5b"
# open_clip's hub weight files, in the order its own loader prefers them; the last one is what the
# fetch command in an error names (every open_clip hub repo has it).
OPEN_CLIP_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


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
        """Model input pixels of ``images``, on the encoder's device and in its dtype."""
        return pp.preprocess_images(images, device=self.device, dtype=self.dtype, **self.preprocess_cfg)

    @abc.abstractmethod
    def _image_features(self, pixels: Tensor) -> Tensor:
        """Image embeddings (unnormalised) of preprocessed pixels."""

    @abc.abstractmethod
    def _text_features(self, texts: list[str]) -> Tensor:
        """Text embeddings (unnormalised)."""

    @torch.no_grad()
    def encode_images(self, images: Tensor | Sequence[Tensor]) -> Tensor:
        """``[N, 3, H, W]`` in [0, 1] (or a list of ``[3, H, W]`` of any sizes) -> unit vectors ``[N, D]``."""
        n, bs = (images.shape[0] if isinstance(images, Tensor) else len(images)), self.batch_size
        out = [
            F.normalize(self._image_features(self.preprocess(images[i : i + bs])).float(), dim=-1)
            for i in range(0, n, bs)
        ]
        return torch.cat(out)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        """Unit text embeddings ``[N, D]``; each distinct text is encoded once."""
        unique, bs = list(dict.fromkeys(texts)), self.batch_size
        feats = torch.cat([
            F.normalize(self._text_features(unique[i : i + bs]).float(), dim=-1) for i in range(0, len(unique), bs)
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
            "mean": tuple(cfg.get("mean", pp.OPENAI_CLIP_MEAN)),
            "std": tuple(cfg.get("std", pp.OPENAI_CLIP_STD)),
            "interpolation": cfg.get("interpolation", "bicubic"),
            "resize_mode": cfg.get("resize_mode", "shortest"),
        }
        self.preprocess_cfg.update(pp.check_preprocess(preprocess))

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
        self.preprocess_cfg.update(pp.check_preprocess(preprocess))

    def _image_features(self, pixels: Tensor) -> Tensor:
        out = self.model.vision_model(pixel_values=pixels)
        return self.model.visual_projection(out.pooler_output)

    def _text_features(self, texts: list[str]) -> Tensor:
        tok = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        out = self.model.text_model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
        return self.model.text_projection(out.pooler_output)


def _hf_preprocess_cfg(proc: Any, default_side: int) -> dict[str, Any]:
    """Our :func:`~slas.rewards.preprocess.preprocess_images` settings from a ``CLIPImageProcessor``.

    ``size`` / ``crop_size`` are dicts in transformers 4 and ``SizeDict`` in 5; both have ``get``.
    A resample other than bilinear (2) runs as bicubic, CLIP's own.
    """
    size, crop = getattr(proc, "size", None) or {}, getattr(proc, "crop_size", None)
    if not getattr(proc, "do_resize", True):
        raise ValueError("CLIPImageProcessor with do_resize=False is not supported")
    if size.get("shortest_edge") is not None:
        cfg: dict[str, Any] = {"size": int(size.get("shortest_edge")), "resize_mode": "shortest"}
    elif size.get("height") is not None:
        cfg = {"size": (int(size.get("height")), int(size.get("width"))), "resize_mode": "squash"}
    else:
        cfg = {"size": default_side, "resize_mode": "shortest"}
    if getattr(proc, "do_center_crop", True) and crop is not None:
        cfg["crop_size"] = (int(crop.get("height")), int(crop.get("width")))
    elif cfg["resize_mode"] == "shortest":
        raise ValueError("CLIPImageProcessor: a shortest-edge resize needs a centre crop")
    resample = getattr(proc, "resample", 3)
    cfg["interpolation"] = "bilinear" if int(resample if resample is not None else 3) == 2 else "bicubic"
    if getattr(proc, "do_normalize", True):
        cfg["mean"], cfg["std"] = tuple(proc.image_mean), tuple(proc.image_std)
    else:
        cfg["mean"], cfg["std"] = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return cfg


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
        preprocess={**implied, **pp.check_preprocess(preprocess)},
        force_quick_gelu=quick_gelu,
        weights_only=weights_only,
        **common,
    )
