"""Shared machinery of the diffusion policies: a diffusers pipeline turned into an RL policy.

Rollouts call the pipeline itself (one batched call per chunk of groups); the only thing swapped in is
the scheduler's ``step``, replaced for the duration of the call by the policy's stochastic transition,
which records every latent and its log-prob. Training recomputes the same transition with gradients
on the recorded latents (``step_distribution``). Subclasses say how to encode prompts, make initial
noise, call the denoiser and which sampler math applies.
"""

from __future__ import annotations

import abc
import contextlib
import copy
import inspect
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers.schedulers.scheduling_utils import SchedulerOutput
from diffusers.training_utils import cast_training_params
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file
from torch import Tensor

from slas.config import ModelConfig, SampleConfig
from slas.preflight import resolve_model_path
from slas.rl.protocols import Group, GroupLike, as_groups
from slas.rl.trajectory import Rollout, Trajectory
from slas.t2i.sde import gaussian_log_prob, sample_or_score
from slas.torch_utils import DTYPES, resolve_device

LORA_FILE = "pytorch_lora_weights.safetensors"
LORA_INIT_SEED = 0


def _seed_for(group: int, sample: int) -> int:
    """A 63-bit seed for one sample (``-1``: the group's shared initial noise) of one group."""
    return ((group * 1_000_003 + sample + 2) * 0x9E3779B1) % (2**63 - 1)


class _StepRecorder:
    """Stands in for ``scheduler.step`` during a rollout: samples the policy's transition and records it."""

    def __init__(self, policy: DiffusionPolicy, generator: list[torch.Generator]) -> None:
        self.policy = policy
        self.generator = generator
        self.latents: list[Tensor] = []
        self.log_probs: list[Tensor] = []

    def __call__(self, scheduler, model_output: Tensor, sample: Tensor) -> Tensor:
        mean, std = self.policy.scheduled_transition(scheduler, len(self.log_probs), model_output, sample)
        prev, log_prob = sample_or_score(mean, std, None, self.generator, sample.dtype)
        if not self.latents:
            self.latents.append(sample)
        self.latents.append(prev)
        self.log_probs.append(log_prob)
        return prev


def _recording_step(self, model_output, timestep, sample, *args, return_dict: bool = True, **kwargs):
    prev = self.recorder(self, model_output, sample)
    return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)


def _recording_scheduler(base, recorder: _StepRecorder):
    """A copy of ``base`` (same class and config) whose ``step`` is the recorder."""
    cls = type(base)
    rec_cls = type(f"Recording{cls.__name__}", (cls,), {"step": _recording_step})
    sched = rec_cls.from_config(base.config)
    sched.recorder = recorder
    return sched


class DiffusionPolicy(abc.ABC):
    """A diffusers pipeline's denoiser as a trainable policy (``slas.rl.protocols.Policy``): loading, LoRA or
    full fine-tune, the reference copy, re-scoring recorded transitions and checkpoints.

    How rollouts and samples are drawn is the subclass's: :class:`PipelinePolicy` calls the text-to-image
    pipeline itself; the edit policies (``slas.editing.policy``) run their own solver loop.
    """

    pipeline_class: type
    component: str  # the trained module of the pipeline: "unet" or "transformer"

    def __init__(
        self, pipeline, model: ModelConfig, sample: SampleConfig, *, keep_reference: bool = False
    ) -> None:
        self.model_cfg = model
        self.sample_cfg = sample
        self.device = resolve_device(model.device)
        self.dtype = DTYPES[model.dtype]
        self.pipe = pipeline
        self.pipe.set_progress_bar_config(disable=True)
        self.pipe.scheduler = self._make_scheduler(self.pipe.scheduler)
        self.pipe.to(self.device)
        for module in self.pipe.components.values():
            if isinstance(module, torch.nn.Module):
                module.requires_grad_(False).eval()

        net = self.denoiser
        if model.finetune == "lora":
            lora = model.lora
            config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                target_modules=list(lora.target_modules), init_lora_weights="gaussian")
            # peft draws A from the global RNG: a fixed seed makes two runs of one config start from the same
            # adapters, so a resumed run (which re-draws, then loads) trains exactly as an uninterrupted one
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(LORA_INIT_SEED)
                net.add_adapter(config)
            params = [p for n, p in net.named_parameters() if "lora_" in n]
        else:
            params = list(net.parameters())
        for p in params:
            p.requires_grad_(True)
        cast_training_params(net, torch.float32)  # float32 master weights; the forward autocasts to model.dtype
        self._params = params
        if model.gradient_checkpointing:
            net.enable_gradient_checkpointing()
        self._reference = None
        if keep_reference and model.finetune == "full":
            self._reference = copy.deepcopy(net).to(self.dtype).requires_grad_(False).eval()
        self._keep_reference = keep_reference
        self._train_module: torch.nn.Module | None = None  # a DDP/DeepSpeed wrapper of the denoiser while training
        self.num_steps = sample.num_steps

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls, model: ModelConfig, sample: SampleConfig, *, keep_reference: bool = False
    ) -> DiffusionPolicy:
        """Load ``model.path`` (a local diffusers dir or a cached hub id; never downloads)."""
        path = resolve_model_path(model.path, model.revision)
        pipe = cls.pipeline_class.from_pretrained(path, dtype=DTYPES[model.dtype], **cls._load_kwargs())
        return cls(pipe, model, sample, keep_reference=keep_reference)

    @classmethod
    def _load_kwargs(cls) -> dict:
        return {}

    # ------------------------------------------------------------------ hooks for subclasses
    @abc.abstractmethod
    def _make_scheduler(self, scheduler):
        """The scheduler this policy samples with (built from the pipeline's config)."""

    @abc.abstractmethod
    def _initial_noise(self, n: int, generator: list[torch.Generator]) -> Tensor:
        """Initial latents of ``n`` samples, in the layout the pipeline takes as ``latents=``."""

    @abc.abstractmethod
    def _schedule(self, scheduler) -> dict[str, Tensor]:
        """The rollout's noise schedule as training needs it (with "timesteps"); kept in ``trajectory.shared``."""

    @abc.abstractmethod
    def _transition(self, step, model_output: Tensor, sample: Tensor, schedule: dict) -> tuple[Tensor, Tensor]:
        """Float32 (mean, std) of the stochastic step ``step`` (int or per-sample tensor)."""

    @abc.abstractmethod
    def _model_output(self, net, latents: Tensor, timesteps: Tensor, trajectory: Trajectory, indices: Tensor) -> Tensor:
        """The guided model output the pipeline would compute for these latents at these timestep values
        (the scheduler's units, one per sample), conditioned as samples ``indices`` of ``trajectory``."""

    @abc.abstractmethod
    def _encode_groups(self, groups: list[Group]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Per-group conditioning (leading dim = len(groups)), computed once per group and kept in the
        trajectory so training re-scores with exactly what sampled, and conditioning shared by all samples."""

    @abc.abstractmethod
    def _sample_chain(
        self, cond: dict[str, Tensor], shared: dict[str, Tensor], noise: Tensor, generator: list[torch.Generator]
    ) -> tuple[Tensor, list[Tensor], list[Tensor], dict[str, Tensor]]:
        """Run the stochastic sampler from ``noise`` (one generator per sample): (images [n, 3, H, W], the
        latents of every step including the first, the log-prob of every transition, the schedule)."""

    @abc.abstractmethod
    def _generate_batch(self, groups: list[Group], seeds: Sequence[int]) -> Tensor:
        """Deterministic samples of one batch (see :meth:`generate`)."""

    @torch.no_grad()
    def rollout(self, groups: Sequence[GroupLike], *, group_size: int, seed: int) -> Rollout:
        """``group_size`` samples per group; ``groups_per_call`` groups go through one sampler call.

        Group j draws all its noise from generators seeded by ``(seed + j, sample)``, so a group's images do
        not depend on how groups are chunked into calls or split across ranks.
        """
        groups = as_groups(groups)
        per_call = self.sample_cfg.groups_per_call
        parts = [
            self._rollout_call(groups[s : s + per_call], group_size, seed, group_offset=s)
            for s in range(0, len(groups), per_call)
        ]
        return Rollout.cat(parts)

    def _rollout_call(self, groups: list[Group], group_size: int, seed: int, group_offset: int) -> Rollout:
        n = len(groups) * group_size
        seeds = range(seed + group_offset, seed + group_offset + len(groups))  # one per group
        generator = [torch.Generator("cpu").manual_seed(_seed_for(g, i)) for g in seeds for i in range(group_size)]
        cond, shared = self._encode_groups(groups)
        cond = {k: v.repeat_interleave(group_size, dim=0) for k, v in cond.items()}
        if self.sample_cfg.shared_noise:
            per_group = [torch.Generator("cpu").manual_seed(_seed_for(g, -1)) for g in seeds]
            noise = self._initial_noise(len(groups), per_group).repeat_interleave(group_size, dim=0)
        else:
            noise = self._initial_noise(n, generator)
        net = self.denoiser
        was_training = net.training
        net.eval()
        try:
            images, latents, log_probs, schedule = self._sample_chain(cond, shared, noise, generator)
        finally:
            net.train(was_training)
        traj = Trajectory(
            latents=torch.stack(latents, dim=1),
            log_probs=torch.stack(log_probs, dim=1),
            timesteps=schedule["timesteps"],
            cond=cond,
            shared={**shared, **schedule},
        )
        group_ids = torch.arange(group_offset, group_offset + len(groups)).repeat_interleave(group_size)
        expanded = [g.prompt for g in groups for _ in range(group_size)]
        keys = [g.key for g in groups for _ in range(group_size)]
        conditions = {k: [g.conditions[k] for g in groups for _ in range(group_size)] for k in groups[0].conditions}
        return Rollout(images=images.float().clamp(0, 1), prompts=expanded, group_ids=group_ids, trajectory=traj,
                       keys=keys, conditions=conditions)

    @torch.no_grad()
    def generate(self, groups: Sequence[GroupLike], seeds: Sequence[int], *, batch_size: int = 8) -> Tensor:
        """[N, 3, H, W] float CPU images in [0, 1], one per (group, seed), with the model's deterministic
        sampler (DDIM with eta 0, the flow Euler ODE) at the policy's resolution, steps and guidance.

        Each image's initial noise comes from a CPU generator seeded with its seed, so it does not depend on
        the batch it is rendered in, the device, or the weights.
        """
        groups = as_groups(groups)
        if len(groups) != len(seeds):
            raise ValueError(f"generate: {len(groups)} prompts but {len(seeds)} seeds")
        net = self.denoiser
        was_training = net.training
        net.eval()
        try:
            parts = [self._generate_batch(groups[i : i + batch_size], seeds[i : i + batch_size])
                     for i in range(0, len(groups), batch_size)]
        finally:
            net.train(was_training)
        return torch.cat(parts) if parts else torch.zeros(0, 3, self.sample_cfg.resolution, self.sample_cfg.resolution)

    # ------------------------------------------------------------------ the policy protocol
    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self.pipe, self.component)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return self._params

    def trainable_module(self) -> torch.nn.Module:
        """The denoiser: what a data-parallel strategy wraps or shards (``slas.rl.protocols.ShardablePolicy``)."""
        return self.denoiser

    def use_trainable_module(self, module: torch.nn.Module | None) -> None:
        """Training forwards go through ``module`` (a wrapper of the denoiser); ``None``: the denoiser itself,
        and the trainable parameters are collected again (FSDP replaced them with sharded ones)."""
        self._train_module = module
        if module is None:
            self._params = [p for p in self.denoiser.parameters() if p.requires_grad]

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def scheduled_transition(self, scheduler, step: int, model_output: Tensor, sample: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, std) of rollout step ``step`` under ``scheduler`` (the recording copy, timesteps set)."""
        return self._transition(step, model_output, sample, self._schedule(scheduler))

    @contextlib.contextmanager
    def _net(self, reference: bool) -> Iterator[torch.nn.Module]:
        net = self.denoiser
        if not reference:
            yield net if self._train_module is None else self._train_module
            return
        if not self._keep_reference:
            raise RuntimeError("this policy was built without keep_reference=True; no reference model")
        if self._reference is not None:
            yield self._reference
            return
        net.disable_adapters()
        try:
            yield net
        finally:
            net.enable_adapters()

    def step_distribution(
        self, trajectory: Trajectory, indices: Tensor, step: int | Tensor, *, reference: bool = False
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(mean, std, log_prob) of recorded transition(s) ``step`` for samples ``indices``, with grad."""
        idx = torch.as_tensor(indices, dtype=torch.long, device=trajectory.latents.device).reshape(-1)
        steps = torch.as_tensor(step, dtype=torch.long, device=idx.device).reshape(-1).expand(len(idx))
        x = trajectory.latents[idx, steps].to(self.device)
        x_next = trajectory.latents[idx, steps + 1].to(self.device)
        out = self.model_output(trajectory, idx, x, trajectory.timesteps.to(self.device)[steps.to(self.device)],
                                reference=reference)
        mean, std = self._transition(steps, out, x, trajectory.shared)
        return mean, std, gaussian_log_prob(x_next, mean, std)

    def model_output(
        self, trajectory: Trajectory, indices: Tensor, latents: Tensor, timesteps: Tensor, *, reference: bool = False
    ) -> Tensor:
        """The guided denoiser output (noise, v or flow velocity, as the pipeline's scheduler reads it) at ANY
        latents and timestep values (scheduler units, [B]), conditioned as samples ``indices`` of
        ``trajectory``, with grad. Objectives that train off the recorded chain (DiffusionNFT's forward
        process) call this; ``step_distribution`` is it at the recorded latents and steps."""
        idx = torch.as_tensor(indices, dtype=torch.long, device=trajectory.latents.device).reshape(-1)
        t = torch.as_tensor(timesteps, device=self.device).reshape(-1).expand(len(idx))
        with self._net(reference) as net, self._autocast():
            return self._model_output(net, latents.to(self.device), t, trajectory, idx)

    def step_log_prob(self, trajectory: Trajectory, indices: Tensor, step: int | Tensor) -> Tensor:
        return self.step_distribution(trajectory, indices, step)[2]

    # ------------------------------------------------------------------ checkpoints
    def save_trainable(self, directory: Path, state_dict: dict[str, Tensor] | None = None) -> None:
        """Full fine-tune: ``<component>/`` in diffusers format; LoRA: diffusers LoRA weights file.

        ``state_dict``: the denoiser's full state dict when its weights are sharded over ranks (FSDP, ZeRO-3
        gather it for rank 0); by default the module's own.
        """
        directory = Path(directory)
        net = self.denoiser
        if self.model_cfg.finetune == "lora":
            layers = get_peft_model_state_dict(net, state_dict=state_dict)
            self.pipeline_class.save_lora_weights(directory, **{f"{self.component}_lora_layers": layers})
        elif state_dict is None:
            net.save_pretrained(directory / self.component, safe_serialization=True)
        else:  # the same files save_pretrained writes, from the gathered weights
            from huggingface_hub import save_torch_state_dict

            net.save_config(directory / self.component)
            save_torch_state_dict({k: v.contiguous() for k, v in state_dict.items()}, directory / self.component,
                                  filename_pattern="diffusion_pytorch_model{suffix}.safetensors", max_shard_size="10GB")

    def read_trainable(self, directory: Path) -> dict[str, Tensor]:
        """What a checkpoint holds, keyed by the denoiser's own parameter names: its full state dict (full
        fine-tune) or its adapter weights (LoRA; peft's file omits the adapter name the module's names carry).
        A strategy that must copy weights in place (DeepSpeed) or scatter them (FSDP) loads these."""
        if self.model_cfg.finetune == "lora":
            saved = load_file(Path(directory) / LORA_FILE)
            prefix = f"{self.component}."
            state = {}
            for name, param in self.denoiser.named_parameters():
                if param.requires_grad:
                    key = prefix + name.replace(".default", "")
                    if key not in saved:
                        raise ValueError(f"{Path(directory) / LORA_FILE}: no {key}")
                    state[name] = saved[key]
            return state
        files = sorted((Path(directory) / self.component).glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no {self.component} weights under {directory}")
        state = {}
        for f in files:
            state.update(load_file(f))
        return state

    def load_trainable(self, directory: Path) -> None:
        directory = Path(directory)
        net = self.denoiser
        if self.model_cfg.finetune == "lora":
            state = load_file(directory / LORA_FILE)
            prefix = f"{self.component}."
            state = {k.removeprefix(prefix): v for k, v in state.items()}
            result = set_peft_model_state_dict(net, state)
            if getattr(result, "unexpected_keys", None):
                raise ValueError(f"{directory / LORA_FILE}: unexpected LoRA keys {result.unexpected_keys[:3]}")
        else:
            net.load_state_dict(self.read_trainable(directory), strict=True)
        cast_training_params(net, torch.float32)


class PipelinePolicy(DiffusionPolicy):
    """A text-to-image policy whose rollouts and samples are calls of the diffusers pipeline itself.

    Only the scheduler's ``step`` is swapped during a rollout (see :class:`_StepRecorder`); subclasses say how
    to encode prompts and what else the call takes.
    """

    @abc.abstractmethod
    def _encode(self, prompts: list[str]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Per-prompt conditioning (leading dim = len(prompts)) and conditioning shared by all samples."""

    @abc.abstractmethod
    def _pipeline_kwargs(self, cond: dict[str, Tensor], shared: dict[str, Tensor]) -> dict:
        """Keyword arguments of the pipeline call besides latents, steps, size and output type."""

    def _encode_groups(self, groups: list[Group]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        return self._encode([g.prompt for g in groups])

    def _sample_chain(
        self, cond: dict[str, Tensor], shared: dict[str, Tensor], noise: Tensor, generator: list[torch.Generator]
    ) -> tuple[Tensor, list[Tensor], list[Tensor], dict[str, Tensor]]:
        """One pipeline call with the recording scheduler standing in for the scheduler."""
        recorder = _StepRecorder(self, generator)
        original = self.pipe.scheduler
        self.pipe.scheduler = _recording_scheduler(original, recorder)
        try:
            with self._autocast():
                images = self.pipe(
                    latents=noise,
                    num_inference_steps=self.num_steps,
                    height=self.sample_cfg.resolution,
                    width=self.sample_cfg.resolution,
                    output_type="pt",
                    return_dict=False,
                    **self._pipeline_kwargs(cond, shared),
                )[0]
            schedule = self._schedule(self.pipe.scheduler)
        finally:
            self.pipe.scheduler = original
        return images, recorder.latents, recorder.log_probs, schedule

    def _generate_batch(self, groups: list[Group], seeds: Sequence[int]) -> Tensor:
        cfg = self.sample_cfg
        prompts = [g.prompt for g in groups]
        kwargs: dict[str, Any] = {
            "prompt": prompts,
            "height": cfg.resolution,
            "width": cfg.resolution,
            "num_inference_steps": cfg.num_steps,
            "guidance_scale": cfg.guidance_scale,
            "generator": [torch.Generator("cpu").manual_seed(int(s)) for s in seeds],
            "output_type": "pt",
            "max_sequence_length": cfg.max_sequence_length,
            "eta": 0.0,  # DDIM: deterministic
        }
        if cfg.negative_prompt:
            kwargs["negative_prompt"] = [cfg.negative_prompt] * len(prompts)
        accepted = inspect.signature(self.pipe.__call__).parameters
        with self._autocast():
            images = self.pipe(**{k: v for k, v in kwargs.items() if k in accepted}).images
        return images.float().clamp(0, 1).cpu()
