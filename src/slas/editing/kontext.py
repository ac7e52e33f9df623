"""FLUX.1 Kontext as an edit policy: ONE input image, so person and product are composed side by side.

The composition (stated here and in the README): the person photo fitted into the left square and the
product photo into the right square of a white canvas ``2 * sample.condition_size`` wide and
``sample.condition_size`` high; the instruction ("The person in Figure 1 is holding the commodity in
Figure 2") then reads Figure 1 as the left half and Figure 2 as the right half. The canvas's VAE latents
(the pipeline's ``_encode_vae_image``, its mode: deterministic) are packed and placed after the target's
tokens with position ids whose first axis is 1, exactly as ``FluxKontextPipeline`` does; the output is
``sample.resolution`` square. ``sample.guidance_scale`` feeds the distilled guidance embedding; true CFG
with ``sample.negative_prompt`` when ``sample.true_cfg_scale > 1``, as the pipeline does it.
"""

from __future__ import annotations

import torch
from diffusers import FluxKontextPipeline
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from torch import Tensor

from slas.editing.policy import EditPolicy, group_photos, letterbox
from slas.rl.protocols import Group
from slas.rl.trajectory import Trajectory


def side_by_side(person: Image.Image, product: Image.Image, size: int) -> Image.Image:
    """Kontext's single input: person left, product right, each fitted into a ``size`` square on white."""
    canvas = Image.new("RGB", (2 * size, size), (255, 255, 255))
    canvas.paste(letterbox(person, size, size), (0, 0))
    canvas.paste(letterbox(product, size, size), (size, 0))
    return canvas


class KontextPolicy(EditPolicy):
    """``FluxKontextPipeline``: the transformer (fully or with LoRA) is trained."""

    pipeline_class = FluxKontextPipeline

    def _image_seq_len(self) -> int:
        return (self._latent_size() // 2) ** 2

    def _encode_text(self, prompts: list[str]) -> tuple[Tensor, Tensor, Tensor]:
        return self.pipe.encode_prompt(prompts, prompts, device=self.device,
                                       max_sequence_length=self.sample_cfg.max_sequence_length)

    def _encode_groups(self, groups: list[Group]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        persons, products = group_photos(groups)
        size = self.condition_size
        canvases = [side_by_side(p, q, size) for p, q in zip(persons, products, strict=True)]
        pixels = self.pipe.image_processor.preprocess(canvases, size, 2 * size).to(self.device, self.dtype)
        with self._autocast():
            image_latents = self.pipe._encode_vae_image(pixels, generator=None)
            embeds, pooled, text_ids = self._encode_text([g.prompt for g in groups])
        b, c, h, w = image_latents.shape
        cond = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled,
                "image_latents": self.pipe._pack_latents(image_latents, b, c, h, w)}
        if self._true_cfg():
            neg, neg_pooled, _ = self._encode_text([self.sample_cfg.negative_prompt] * len(groups))
            cond |= {"negative_prompt_embeds": neg, "negative_pooled_prompt_embeds": neg_pooled}
        side = self._latent_size() // 2
        latent_ids = self.pipe._prepare_latent_image_ids(1, side, side, self.device, self.dtype)
        image_ids = self.pipe._prepare_latent_image_ids(1, h // 2, w // 2, self.device, self.dtype)
        image_ids[..., 0] = 1
        return cond, {"text_ids": text_ids, "img_ids": torch.cat([latent_ids, image_ids])}

    def _initial_noise(self, n: int, generator: list[torch.Generator]) -> Tensor:
        channels = self.denoiser.config.in_channels // 4
        size = self._latent_size()
        noise = randn_tensor((n, channels, size, size), generator=generator, device=self.device, dtype=self.dtype)
        return self.pipe._pack_latents(noise, n, channels, size, size)

    def _model_output(self, net, latents: Tensor, timesteps: Tensor, trajectory: Trajectory, indices: Tensor) -> Tensor:
        cond = {k: v[indices].to(self.device) for k, v in trajectory.cond.items()}
        n, tokens = latents.shape[0], latents.shape[1]
        guidance = None
        if net.config.guidance_embeds:
            guidance = torch.full([n], self.sample_cfg.guidance_scale, device=self.device, dtype=torch.float32)

        def velocity(prefix: str) -> Tensor:
            return net(
                hidden_states=torch.cat([latents, cond["image_latents"].to(latents.dtype)], dim=1),
                timestep=timesteps.to(latents.dtype) / 1000,
                guidance=guidance,
                pooled_projections=cond[f"{prefix}pooled_prompt_embeds"],
                encoder_hidden_states=cond[f"{prefix}prompt_embeds"],
                txt_ids=trajectory.shared["text_ids"],
                img_ids=trajectory.shared["img_ids"],
                return_dict=False,
            )[0][:, :tokens]

        out = velocity("")
        if "negative_prompt_embeds" in cond:
            neg = velocity("negative_")
            out = neg + self.sample_cfg.true_cfg_scale * (out - neg)
        return out

    def _decode(self, latents: Tensor) -> Tensor:
        res = self.sample_cfg.resolution
        vae = self.pipe.vae
        x = self.pipe._unpack_latents(latents, res, res, self.pipe.vae_scale_factor)
        x = x / vae.config.scaling_factor + vae.config.shift_factor
        with self._autocast():
            images = vae.decode(x.to(vae.dtype), return_dict=False)[0]
        return self.pipe.image_processor.postprocess(images, output_type="pt").float()
