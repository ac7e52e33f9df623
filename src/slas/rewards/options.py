"""Option checks and condition inputs shared by the built-in rewards.

Every reward checks its options twice with the same code: in ``preflight`` (before a run starts, files
resolved but nothing loaded) and in its ``__init__``. :func:`checked_factory` wires both from one
check function; the checks here are the ones several rewards share. Errors name the option as
``reward <name> options.<key>`` in one line (:class:`~slas.preflight.PreflightError`).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from slas.preflight import PreflightError
from slas.rewards.encoders import resolve_encoder_files
from slas.rewards.preprocess import check_preprocess
from slas.torch_utils import DeviceError, device_unavailable, parse_device, resolve_dtype

__all__ = ["check_common_options", "check_encoder_options", "checked_factory", "load_image_batch"]


def check_common_options(reward: str, *, device: Any, dtype: Any, batch_size: Any) -> None:
    """Preflight of the options every model-backed reward shares (raises :class:`PreflightError`)."""
    try:
        resolve_dtype(dtype)
    except ValueError as e:
        raise PreflightError(f"reward {reward} options.dtype: {e}") from None
    try:
        parsed = parse_device(device)
    except DeviceError as e:
        raise PreflightError(f"reward {reward} options.device: {e}") from None
    why = parsed is not None and device_unavailable(parsed)
    if why:
        raise PreflightError(f"reward {reward} options.device={device}: {why}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise PreflightError(f"reward {reward} options.batch_size: must be a positive integer, got {batch_size!r}")


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


def checked_factory(
    reward: str, cls: Callable[..., Any], check: Callable[..., Any]
) -> tuple[Callable[..., Any], Callable[..., None]]:
    """``(factory, preflight)`` for the registry: both reject unknown option names with a PreflightError.

    ``preflight(**options)`` then runs ``check`` on the options bound to ``cls``'s signature with its
    defaults applied (the defaults live in ``cls.__init__`` alone; file resolution only, nothing loaded);
    ``factory(**options)`` builds ``cls(**options)`` (whose ``__init__`` runs the same check first).
    """
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


def load_image_batch(images: Any, n: int, *, name: str = "images") -> Tensor | list[Tensor]:
    """A tensor ``[n, 3, H, W]`` in [0, 1], or a list of ``n`` images (``[3, H, W]`` tensors, PIL images or paths).

    Image conditions (reference, person, product images) come from users in any of these forms. uint8
    tensors are scaled to [0, 1]. Lists of different sizes come back as a list of ``[3, H, W]``.
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


def condition_images(conditions: dict[str, Any], name: str, n: int, *, reward: str, what: str) -> Tensor | list[Tensor]:
    """The image condition ``name`` of a reward call, loaded for ``n`` images (:func:`load_image_batch`); a
    missing one is an error naming the reward, what the condition holds and the conditions that were given."""
    images = conditions.get(name)
    if images is None:
        raise ValueError(f"{reward} needs the {name!r} condition ({what}: a [N, 3, H, W] tensor in [0, 1] or a list "
                         f"of N images/paths); got conditions {sorted(conditions)}")
    return load_image_batch(images, n, name=name)


def _one_image(im: Any, name: str) -> Tensor:
    """One list item of :func:`load_image_batch` as a float ``[3, H, W]`` in [0, 1]."""
    if isinstance(im, Tensor):
        t = im.squeeze(0) if im.ndim == 4 and im.shape[0] == 1 else im
        if t.ndim != 3 or t.shape[0] != 3:
            raise ValueError(f"{name}: expected [3, H, W] tensors, got {tuple(im.shape)}")
        return t.float() / 255.0 if t.dtype == torch.uint8 else t
    from PIL import Image  # PIL and slas.images load with the first image condition, not with slas.rewards

    from slas.images import load_image, to_tensor

    if isinstance(im, (str, os.PathLike)):
        return load_image(im)  # an ImageError (a ValueError) naming the file when it cannot be used
    if isinstance(im, Image.Image):
        return to_tensor(im)
    raise ValueError(f"{name}: unsupported image type {type(im).__name__}")
