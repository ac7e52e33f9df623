"""Qwen-Image-Edit-2509 (``QwenImageEditPlusPipeline``) as an edit policy: person and product as two images.

As the pipeline does it: the Qwen2.5-VL encoder reads the instruction after "Picture 1: <image> Picture 2:
<image>" (person first, product second) and its last hidden states, past the system template, are the
prompt embeddings; each photo's VAE latents (the mode, normalised by the VAE's latent mean and std) are
packed into 2x2 patches and appended after the target's tokens, and ``img_shapes`` tells the transformer's
RoPE the three grids. True CFG (``sample.true_cfg_scale > 1`` with ``sample.negative_prompt``) combines
the two velocities and rescales to the conditional one's norm, as the pipeline does.

Sizes: the VL encoder sees each photo fitted into a ``sample.vl_condition_size`` square (the pipeline
resizes to an area of 384^2); the VAE encodes each fitted into a ``sample.condition_size`` square (the
pipeline: an area of 1024^2). The prompt embeddings of a group are padded (with their attention mask) to
``sample.max_sequence_length`` tokens, so groups with different instructions batch together; the
transformer masks the padding, so this changes nothing else.
"""

from __future__ import annotations

import torch
from diffusers import QwenImageEditPlusPipeline
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from torch import Tensor

from slas.editing.policy import EditInputError, EditPolicy, group_photos, letterbox
from slas.rl.protocols import Group
from slas.rl.trajectory import Trajectory


def pad_tokens(embeds: Tensor, mask: Tensor | None, length: int) -> tuple[Tensor, Tensor]:
    """[1, L, D] embeddings and their mask padded with zeros (mask 0) to ``length`` tokens."""
    if mask is None:
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    extra = length - embeds.shape[1]
    if extra < 0:
        raise EditInputError(f"the instruction and its images take {embeds.shape[1]} tokens, over "
                             f"sample.max_sequence_length={length}; raise it (or lower sample.vl_condition_size)")
    return (torch.nn.functional.pad(embeds, (0, 0, 0, extra)), torch.nn.functional.pad(mask, (0, extra)))


class QwenImageEditPolicy(EditPolicy):
    """``QwenImageEditPlusPipeline``: the MMDiT transformer (fully or with LoRA) is trained."""

    pipeline_class = QwenImageEditPlusPipeline

    def _multiple(self) -> int:
        return self.pipe.vae_scale_factor * 2

    def _vae_side(self) -> int:
        return max(self._multiple(), self.condition_size // self._multiple() * self._multiple())

    def _image_seq_len(self) -> int:
        return (self._latent_size() // 2) ** 2

    def _encode_prompt(self, prompt: str, images: list[Image.Image]) -> tuple[Tensor, Tensor]:
        embeds, mask = self.pipe.encode_prompt(prompt, image=images, device=self.device)
        return pad_tokens(embeds, mask, self.sample_cfg.max_sequence_length)

    def _encode_photo(self, photo: Image.Image) -> Tensor:
        side = self._vae_side()
        pixels = self.pipe.image_processor.preprocess(letterbox(photo, side, side), side, side).unsqueeze(2)
        latents = self.pipe._encode_vae_image(pixels.to(self.device, self.dtype), generator=None)
        c, h, w = latents.shape[1], latents.shape[3], latents.shape[4]
        return self.pipe._pack_latents(latents, 1, c, h, w)

    def _encode_group(self, group: Group, person: Image.Image, product: Image.Image) -> dict[str, Tensor]:
        vl = self.sample_cfg.vl_condition_size
        shown = [letterbox(person, vl, vl), letterbox(product, vl, vl)]
        embeds, mask = self._encode_prompt(group.prompt, shown)
        cond = {"prompt_embeds": embeds, "prompt_embeds_mask": mask,
                "image_latents": torch.cat([self._encode_photo(person), self._encode_photo(product)], dim=1)}
        if self._true_cfg():
            neg, neg_mask = self._encode_prompt(self.sample_cfg.negative_prompt, shown)
            cond |= {"negative_prompt_embeds": neg, "negative_prompt_embeds_mask": neg_mask}
        return cond

    def _encode_groups(self, groups: list[Group]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        persons, products = group_photos(groups)
        with self._autocast():
            parts = [self._encode_group(g, p, q) for g, p, q in zip(groups, persons, products, strict=True)]
        cond = {k: torch.cat([part[k] for part in parts]) for k in parts[0]}
        target = self._latent_size() // 2
        photo = self._vae_side() // self._multiple()
        shapes = torch.tensor([[1, target, target], [1, photo, photo], [1, photo, photo]])
        return cond, {"img_shapes": shapes}

    def _initial_noise(self, n: int, generator: list[torch.Generator]) -> Tensor:
        channels = self.denoiser.config.in_channels // 4
        size = self._latent_size()
        noise = randn_tensor((n, 1, channels, size, size), generator=generator, device=self.device, dtype=self.dtype)
        return self.pipe._pack_latents(noise, n, channels, size, size)

    def _model_output(self, net, latents: Tensor, timesteps: Tensor, trajectory: Trajectory, indices: Tensor) -> Tensor:
        cond = {k: v[indices].to(self.device) for k, v in trajectory.cond.items()}
        n, tokens = latents.shape[0], latents.shape[1]
        img_shapes = [[tuple(int(v) for v in row) for row in trajectory.shared["img_shapes"].tolist()]] * n

        def velocity(prefix: str) -> Tensor:
            return net(
                hidden_states=torch.cat([latents, cond["image_latents"].to(latents.dtype)], dim=1),
                timestep=timesteps.to(latents.dtype) / 1000,
                encoder_hidden_states=cond[f"{prefix}prompt_embeds"],
                encoder_hidden_states_mask=cond[f"{prefix}prompt_embeds_mask"],
                img_shapes=img_shapes,
                return_dict=False,
            )[0][:, :tokens]

        out = velocity("")
        if "negative_prompt_embeds" in cond:
            neg = velocity("negative_")
            comb = neg + self.sample_cfg.true_cfg_scale * (out - neg)
            out = comb * (out.norm(dim=-1, keepdim=True) / comb.norm(dim=-1, keepdim=True))
        return out

    def _decode(self, latents: Tensor) -> Tensor:
        res = self.sample_cfg.resolution
        vae = self.pipe.vae
        x = self.pipe._unpack_latents(latents, res, res, self.pipe.vae_scale_factor)
        shape = (1, vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean, device=x.device, dtype=x.dtype).view(shape)
        std = torch.tensor(vae.config.latents_std, device=x.device, dtype=x.dtype).view(shape)
        with self._autocast():
            images = vae.decode((x * std + mean).to(vae.dtype), return_dict=False)[0][:, :, 0]
        return self.pipe.image_processor.postprocess(images, output_type="pt").float()
