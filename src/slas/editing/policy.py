"""Edit pipelines as RL policies: a person photo and a product photo in, the edited photo out.

The edit policies (:class:`slas.editing.qwen_edit.QwenImageEditPolicy`,
:class:`slas.editing.kontext.KontextPolicy`) load a diffusers editing pipeline with ``from_pretrained`` and
use its components (text/VL encoder, VAE, packing, transformer) as they are; only the solver loop is ours.
Why not call the pipeline, as the text-to-image policies do: ``QwenImageEditPlusPipeline`` takes one prompt
per call and re-encodes both photos with the VL encoder at sizes fixed in the module; a group of G
rollouts would encode the same (person, product) pair G times, and the conditioning training needs would
have to be fished out of the call. Here the conditioning of a group — prompt embeddings (for Qwen, the
VL encoder's image tokens included), the VAE latents of the photos — is computed ONCE per group, kept in
the trajectory, and the same tensors feed rollout and training, so re-scoring a recorded transition
reproduces its log-prob exactly. The loop is the pipelines' own: the same sigmas
(``linspace(1, 1/N, N)`` with the scheduler's shift), the same guided velocity, Euler steps for
:meth:`generate` (equal to the pipeline's output; tested) and the flow SDE step with its log-prob
(:class:`slas.t2i.flux.FlowSchedule`) for rollouts.

Photos come as the groups' ``person_images`` / ``product_images`` conditions (PIL images, ``[3, H, W]``
tensors or paths; :mod:`slas.editing.data` supplies PIL). Each photo is fitted into a square of
``sample.condition_size`` px (aspect kept, white margins), so every group of a batch has conditioning of
the same shape.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from PIL import Image
from torch import Tensor

from slas.errors import SlasError
from slas.images import load_image, to_pil
from slas.rl.protocols import Group
from slas.rl.trajectory import Trajectory
from slas.t2i.flux import FlowSchedule
from slas.t2i.policy import DiffusionPolicy
from slas.t2i.sde import sample_or_score

PHOTO_CONDITIONS = ("person_images", "product_images")
"""The group conditions an edit policy reads (what ``slas.editing.data`` puts in each group)."""


class EditInputError(SlasError, ValueError):
    """A group lacks the photos an edit policy needs."""


def as_photo(value: Any) -> Image.Image:
    """A condition photo as an RGB PIL image (from PIL, a ``[3, H, W]`` tensor in [0, 1] or a path)."""
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, Tensor):
        return to_pil(value)
    return to_pil(load_image(value))


def letterbox(image: Image.Image, width: int, height: int) -> Image.Image:
    """``image`` scaled to fit ``width`` x ``height`` (aspect kept) and centred on white."""
    scale = min(width / image.width, height / image.height)
    w, h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    canvas.paste(image.resize((w, h), Image.Resampling.BICUBIC), ((width - w) // 2, (height - h) // 2))
    return canvas


def group_photos(groups: Sequence[Group]) -> tuple[list[Image.Image], list[Image.Image]]:
    """(person photos, product photos) of ``groups``, one of each per group."""
    for g in groups:
        missing = [c for c in PHOTO_CONDITIONS if c not in g.conditions]
        if missing:
            raise EditInputError(f"group {g.key!r} has no {', '.join(missing)}: an edit policy trains on editing "
                                 "pairs (data.pairs), not on a prompt file")
    return ([as_photo(g.conditions["person_images"]) for g in groups],
            [as_photo(g.conditions["product_images"]) for g in groups])


class EditPolicy(FlowSchedule, DiffusionPolicy):
    """A flow-matching edit pipeline as a policy; subclasses encode the photos, call the transformer, decode.

    ``_encode_groups`` returns per-group tensors; ``_model_output`` reads them back by sample index, so
    rollout and training call the transformer with identical inputs.
    """

    component = "transformer"

    @abc.abstractmethod
    def _decode(self, latents: Tensor) -> Tensor:
        """Images [n, 3, H, W] in [0, 1] (float32, the policy's device) from packed final latents."""

    @abc.abstractmethod
    def _image_seq_len(self) -> int:
        """Tokens of the packed target latent (what the pipelines' resolution-dependent shift reads)."""

    @property
    def condition_size(self) -> int:
        return self.sample_cfg.condition_size or self.sample_cfg.resolution

    def _true_cfg(self) -> bool:
        """True classifier-free guidance: a negative prompt and ``true_cfg_scale > 1`` (the pipelines' rule)."""
        return self.sample_cfg.true_cfg_scale > 1 and bool(self.sample_cfg.negative_prompt)

    def _latent_size(self) -> int:
        """Side of the (unpacked) target latent: the pipelines' rounding to a multiple of 2."""
        return 2 * (self.sample_cfg.resolution // (self.pipe.vae_scale_factor * 2))

    def _scheduler(self):
        """The pipeline's schedule at this resolution: sigmas ``linspace(1, 1/N, N)``, its shift (``mu`` when
        the scheduler shifts dynamically), timesteps set on the policy's device."""
        sched = type(self.pipe.scheduler).from_config(self.pipe.scheduler.config)
        cfg = sched.config
        mu = calculate_shift(self._image_seq_len(), cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                             cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
        n = self.num_steps
        sched.set_timesteps(sigmas=np.linspace(1.0, 1 / n, n), mu=mu, device=self.device)
        return sched

    def _velocity(self, latents: Tensor, t: Tensor, trajectory: Trajectory, indices: Tensor) -> Tensor:
        with self._autocast():
            return self._model_output(self.denoiser, latents, t.expand(latents.shape[0]), trajectory, indices)

    def _sample_chain(
        self, cond: dict[str, Tensor], shared: dict[str, Tensor], noise: Tensor, generator: list[torch.Generator]
    ) -> tuple[Tensor, list[Tensor], list[Tensor], dict[str, Tensor]]:
        """The flow SDE from ``noise``: every latent and the log-prob of every transition."""
        schedule = self._schedule(self._scheduler())
        view = Trajectory(latents=noise[:, None], log_probs=noise.new_zeros(len(noise), 0),
                          timesteps=schedule["timesteps"], cond=cond, shared=shared)
        idx = torch.arange(len(noise))
        x, latents, log_probs = noise, [noise], []
        for i, t in enumerate(schedule["timesteps"]):
            mean, std = self._transition(i, self._velocity(x, t, view, idx), x, schedule)
            x, log_prob = sample_or_score(mean, std, None, generator, x.dtype)
            latents.append(x)
            log_probs.append(log_prob)
        return self._decode(x), latents, log_probs, schedule

    def _generate_batch(self, groups: list[Group], seeds: Sequence[int]) -> Tensor:
        """The pipelines' deterministic Euler loop (``scheduler.step``) from each seed's own noise."""
        cond, shared = self._encode_groups(groups)
        x = self._initial_noise(len(groups), [torch.Generator("cpu").manual_seed(int(s)) for s in seeds])
        sched = self._scheduler()
        sched.set_begin_index(0)
        view = Trajectory(latents=x[:, None], log_probs=x.new_zeros(len(x), 0), timesteps=sched.timesteps,
                          cond=cond, shared=shared)
        idx = torch.arange(len(x))
        for t in sched.timesteps:
            x = sched.step(self._velocity(x, t, view, idx), t, x, return_dict=False)[0]
        return self._decode(x).float().clamp(0, 1).cpu()
