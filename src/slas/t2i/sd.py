"""Stable Diffusion 1.x as a policy: DDIM(eta) sampling, classifier-free guidance in rollout and training."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from slas.rl.trajectory import Trajectory
from slas.t2i.policy import PipelinePolicy
from slas.t2i.sde import ddim_step_mean_std


class SDPolicy(PipelinePolicy):
    """``StableDiffusionPipeline`` + DDIM(eta) transitions; the UNet is trained (fully or with LoRA).

    As in DanceGRPO, the training forward applies the same classifier-free guidance as the rollout,
    so the recomputed log-prob is that of the transition actually sampled.
    """

    pipeline_class = StableDiffusionPipeline
    component = "unet"

    @classmethod
    def _load_kwargs(cls) -> dict:
        return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}

    def _make_scheduler(self, scheduler) -> DDIMScheduler:
        ddim = DDIMScheduler.from_config(scheduler.config)
        ddim.set_timesteps(self.sample_cfg.num_steps)
        return ddim

    @property
    def _cfg(self) -> bool:
        return self.sample_cfg.guidance_scale > 1.0

    def _encode(self, prompts: list[str]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        pos, neg = self.pipe.encode_prompt(
            prompts, self.device, 1, self._cfg, negative_prompt=[self.sample_cfg.negative_prompt] * len(prompts)
        )
        cond = {"prompt_embeds": pos}
        if self._cfg:
            cond["negative_prompt_embeds"] = neg
        return cond, {}

    def _initial_noise(self, n: int, generator: list[torch.Generator]) -> Tensor:
        size = self.sample_cfg.resolution // self.pipe.vae_scale_factor
        shape = (n, self.denoiser.config.in_channels, size, size)
        return randn_tensor(shape, generator=generator, device=self.device, dtype=self.dtype)

    def _pipeline_kwargs(self, cond: dict[str, Tensor], shared: dict[str, Tensor]) -> dict:
        return {**cond, "guidance_scale": self.sample_cfg.guidance_scale}

    def _schedule(self, scheduler) -> dict[str, Tensor]:
        return {"timesteps": scheduler.timesteps.to(self.device)}

    def _transition(self, step, model_output: Tensor, sample: Tensor, schedule: dict) -> tuple[Tensor, Tensor]:
        t = schedule["timesteps"][torch.as_tensor(step, device=schedule["timesteps"].device)]
        return ddim_step_mean_std(self.pipe.scheduler, model_output, t, sample, self.sample_cfg.eta)

    def _model_output(self, net, latents: Tensor, timesteps: Tensor, trajectory: Trajectory, indices: Tensor) -> Tensor:
        t = timesteps
        embeds = trajectory.cond["prompt_embeds"][indices].to(self.device)
        if not self._cfg:
            return net(latents, t, encoder_hidden_states=embeds, return_dict=False)[0]
        neg = trajectory.cond["negative_prompt_embeds"][indices].to(self.device)
        out = net(
            torch.cat([latents, latents]), torch.cat([t, t]), encoder_hidden_states=torch.cat([neg, embeds]),
            return_dict=False,
        )[0]
        uncond, text = out.chunk(2)
        return uncond + self.sample_cfg.guidance_scale * (text - uncond)
