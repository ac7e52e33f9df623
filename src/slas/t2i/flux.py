"""FLUX.1 as a policy: flow-matching SDE sampling (DanceGRPO or Flow-GRPO form), guidance embedding."""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from slas.config import SampleConfig
from slas.rl.trajectory import Trajectory
from slas.t2i.policy import PipelinePolicy
from slas.t2i.sde import flow_sde_mean_std


class FlowSchedule:
    """The flow-matching half of a policy: the Euler scheduler (a static ``sample.shift`` when set, as
    DanceGRPO's 3, else the model's own, possibly resolution-dependent, shift) and the stochastic flow step
    over its sigmas (``sample.sde_kind``: DanceGRPO's or Flow-GRPO's SDE). FLUX, Kontext and Qwen-Image-Edit
    share it."""

    sample_cfg: SampleConfig

    def _make_scheduler(self, scheduler) -> FlowMatchEulerDiscreteScheduler:
        overrides = {} if self.sample_cfg.shift is None else {"shift": self.sample_cfg.shift, "use_dynamic_shifting": False}
        return FlowMatchEulerDiscreteScheduler.from_config(scheduler.config, **overrides)

    def _schedule(self, scheduler) -> dict[str, Tensor]:
        return {"timesteps": scheduler.timesteps.to(self.device), "sigmas": scheduler.sigmas.to(self.device)}

    def _transition(self, step, model_output: Tensor, sample: Tensor, schedule: dict) -> tuple[Tensor, Tensor]:
        sigmas = schedule["sigmas"]
        i = torch.as_tensor(step, device=sigmas.device)
        return flow_sde_mean_std(
            model_output, sigmas[i], sigmas[i + 1], sample, self.sample_cfg.eta, self.sample_cfg.sde_kind
        )


class FluxPolicy(FlowSchedule, PipelinePolicy):
    """``FluxPipeline`` + stochastic flow steps; the transformer is trained (fully or with LoRA).

    ``sample.shift`` fixes a static sigma shift (DanceGRPO uses 3) in place of FLUX.1-dev's
    resolution-dependent one; ``sample.guidance_scale`` feeds the distilled guidance embedding.
    """

    pipeline_class = FluxPipeline
    component = "transformer"

    def _latent_size(self) -> int:
        return 2 * (self.sample_cfg.resolution // (self.pipe.vae_scale_factor * 2))

    def _encode(self, prompts: list[str]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        embeds, pooled, text_ids = self.pipe.encode_prompt(
            prompts, prompts, device=self.device, max_sequence_length=self.sample_cfg.max_sequence_length
        )
        size = self._latent_size() // 2
        img_ids = self.pipe._prepare_latent_image_ids(1, size, size, self.device, self.dtype)
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}, {"text_ids": text_ids, "img_ids": img_ids}

    def _initial_noise(self, n: int, generator: list[torch.Generator]) -> Tensor:
        channels = self.denoiser.config.in_channels // 4
        size = self._latent_size()
        noise = randn_tensor((n, channels, size, size), generator=generator, device=self.device, dtype=self.dtype)
        return self.pipe._pack_latents(noise, n, channels, size, size)

    def _pipeline_kwargs(self, cond: dict[str, Tensor], shared: dict[str, Tensor]) -> dict:
        return {
            **cond,
            "guidance_scale": self.sample_cfg.guidance_scale,
            "max_sequence_length": self.sample_cfg.max_sequence_length,
        }

    def _model_output(self, net, latents: Tensor, timesteps: Tensor, trajectory: Trajectory, indices: Tensor) -> Tensor:
        n = latents.shape[0]
        t = timesteps.to(latents.dtype)
        guidance = None
        if net.config.guidance_embeds:
            guidance = torch.full([n], self.sample_cfg.guidance_scale, device=self.device, dtype=torch.float32)
        return net(
            hidden_states=latents,
            timestep=t / 1000,
            guidance=guidance,
            pooled_projections=trajectory.cond["pooled_prompt_embeds"][indices].to(self.device),
            encoder_hidden_states=trajectory.cond["prompt_embeds"][indices].to(self.device),
            txt_ids=trajectory.shared["text_ids"],
            img_ids=trajectory.shared["img_ids"],
            return_dict=False,
        )[0]
