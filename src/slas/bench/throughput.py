"""``slas bench throughput``: rollout images/s, training samples/s and peak memory of the real trainer, with
today's rollout (one batched pipeline call per group, rewards on the images in memory) beside DanceGRPO's
loop structure (one image per pipeline call, each image written to a PNG file and the reward read from it).

DanceGRPO's FLUX/SD trainers sample with batch size 1 in a Python loop over the images, decode each, save it
as ``./images/flux_{rank}_{index}.png`` and score that image (fastvideo/train_grpo_flux.py,
``sample_reference_model``). Here both structures run the same policy, sampler and reward, so the difference
is the loop structure alone. Training is measured on today's micro-batches (``train.batch_size``) and on
DanceGRPO's micro-batch of 1.

``--size tiny`` uses the offline tiny pipelines (seconds on a CPU). ``--size full`` builds the full-size
denoiser with random weights (weights do not change speed): the SD1.4 UNet (0.86 B) or the FLUX.1-dev
transformer (11.9 B, guidance-distilled), and the full-size VAE; text encoders keep the real widths (CLIP-L;
T5 with XXL widths but 2 of its 24 layers: prompt encoding runs once per group and is a rounding error next to
the denoising steps). ``benchmarks/gpu_throughput.sh`` is the prepared GPU run.
"""

from __future__ import annotations

import contextlib
import datetime
import resource
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from slas.bench import machine
from slas.config import ModelConfig, SampleConfig, TrainerConfig
from slas.images import load_image, to_pil
from slas.rl.protocols import Group
from slas.rl.trainer import Trainer
from slas.t2i.prompts import PromptSource
from slas.torch_utils import DTYPES, resolve_device

PROMPTS = [f"a photo of {n} {c} {s}" for n in ("one", "two", "three") for c in ("red", "blue", "green")
           for s in ("cubes", "spheres", "cones")]


@dataclass
class BenchSettings:
    """What one throughput run measures (the CLI's options)."""

    model: str = "sd"  # sd | flux
    size: str = "tiny"  # tiny | full
    device: str = "cpu"
    dtype: str = "float32"
    finetune: str = "full"  # full | lora
    lora_rank: int = 128
    resolution: int | None = None  # None: 32 tiny, 512 full
    num_steps: int = 10
    guidance_scale: float | None = None  # None: 5 (sd), 3.5 (flux)
    groups: int = 2
    group_size: int = 4
    batch_size: int = 4
    timestep_fraction: float = 0.5
    iterations: int = 1

    @property
    def side(self) -> int:
        return self.resolution or (32 if self.size == "tiny" else 512)


@dataclass
class Row:
    structure: str
    phase: str
    items: int
    seconds: float
    peak_gb: float

    @property
    def rate(self) -> float:
        return self.items / self.seconds


@dataclass
class ThroughputReport:
    settings: BenchSettings
    rows: list[Row] = field(default_factory=list)
    machine: str = ""
    versions: str = ""
    date: str = ""
    trained: str = ""

    def format(self) -> str:
        """A markdown section: the setting line, then one row per (structure, phase)."""
        s = self.settings
        memory = "peak GPU memory (GB, torch allocator)" if s.device.startswith("cuda") else "peak RSS of the process (GB)"
        lines = [
            f"### {s.model.upper()} ({s.size}), {s.side} px, {s.num_steps} steps, {s.dtype}, {self.trained}",
            "",
            f"{self.machine}; {self.versions}; {self.date}. {s.groups} group(s) x {s.group_size} images per "
            f"iteration, {s.iterations} measured iteration(s) after a warm-up iteration; trained steps per sample: "
            f"{max(1, int((s.num_steps - 1) * s.timestep_fraction))}.",
            "",
            f"| loop structure | phase | items | seconds | items/s | {memory} |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
        ]
        for r in self.rows:
            lines.append(f"| {r.structure} | {r.phase} | {r.items} | {r.seconds:.2f} | {r.rate:.3f} | {r.peak_gb:.1f} |")
        batched, looped = self._rate("batched"), self._rate("DanceGRPO")
        if batched and looped:
            lines += ["", f"Rollout speed-up of the batched structure: {batched / looped:.2f}x."]
        return "\n".join(lines)

    def _rate(self, prefix: str) -> float | None:
        rows = [r for r in self.rows if r.structure.startswith(prefix) and r.phase.startswith("rollout")]
        return rows[0].rate if rows else None


# ------------------------------------------------------------------------------------------ memory


@contextlib.contextmanager
def _peak(device: torch.device) -> Iterator[list[float]]:
    """Yields a one-element list that holds, after the block, its peak memory in GB: the CUDA allocator's
    peak on a GPU; on a CPU the process's peak RSS so far (it cannot be reset: an upper bound)."""
    out = [0.0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    try:
        yield out
    finally:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            out[0] = torch.cuda.max_memory_allocated(device) / 1e9
        else:
            out[0] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------ models


@contextlib.contextmanager
def _building(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Modules are created on ``device`` in ``dtype`` directly (12 B float32 parameters initialised on a CPU
    would take minutes and 48 GB)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype if dtype.is_floating_point else previous)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def _clip_text(tokenizer) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    from slas.testing.tiny import CLIP_MAX_LENGTH

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072, projection_dim=768, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=CLIP_MAX_LENGTH, hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )).eval()


def _vae(**overrides: Any) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                         layers_per_block=2, sample_size=512, **overrides).eval()


def full_size_pipeline(model: str, device: torch.device, dtype: torch.dtype) -> Any:
    """A full-size pipeline with random weights (see the module docstring for what is full size)."""
    from diffusers import (
        DDIMScheduler,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import T5Config, T5EncoderModel

    from slas.testing.tiny import (
        FLUX_DEV_SCHEDULER_CONFIG,
        SD14_DDIM_SCHEDULER_CONFIG,
        build_tiny_clip_tokenizer,
        build_tiny_t5_tokenizer,
    )

    tokenizer = build_tiny_clip_tokenizer()
    with _building(device, dtype):
        text_encoder = _clip_text(tokenizer)
        if model == "sd":  # the SD1.4 UNet: diffusers' defaults with CLIP-L's 768-wide cross-attention
            unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768).eval()
            return StableDiffusionPipeline(vae=_vae(latent_channels=4, scaling_factor=0.18215), text_encoder=text_encoder,
                                           tokenizer=tokenizer, unet=unet, scheduler=DDIMScheduler(**SD14_DDIM_SCHEDULER_CONFIG),
                                           safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        tokenizer_2 = build_tiny_t5_tokenizer()
        t5 = T5EncoderModel(T5Config(
            vocab_size=len(tokenizer_2), d_model=4096, d_kv=64, d_ff=10240, num_layers=2, num_heads=64,
            relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
            dropout_rate=0.0, is_encoder_decoder=False, pad_token_id=tokenizer_2.pad_token_id,
            eos_token_id=tokenizer_2.eos_token_id, decoder_start_token_id=tokenizer_2.pad_token_id)).eval()
        # FLUX.1-dev: diffusers' defaults (19 double + 38 single blocks, 24 heads x 128) with guidance embedding
        transformer = FluxTransformer2DModel(guidance_embeds=True).eval()
        vae = _vae(latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                   use_post_quant_conv=False)
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_DEV_SCHEDULER_CONFIG), vae=vae,
                        text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=t5, tokenizer_2=tokenizer_2,
                        transformer=transformer)


def build_policy(s: BenchSettings) -> Any:
    """The benchmarked policy (the same class ``slas train`` uses) around a tiny or full-size pipeline."""
    from slas.t2i.flux import FluxPolicy
    from slas.t2i.sd import SDPolicy
    from slas.testing.tiny import build_tiny_flux_pipeline, build_tiny_sd_pipeline

    device = resolve_device(s.device)
    dtype = DTYPES[s.dtype]
    if s.size == "tiny":
        pipe = (build_tiny_sd_pipeline if s.model == "sd" else build_tiny_flux_pipeline)()
    else:
        pipe = full_size_pipeline(s.model, device, dtype)
    lora = {"rank": s.lora_rank, "alpha": 2 * s.lora_rank}
    if s.model == "flux":
        lora["target_modules"] = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj",
                                  "to_add_out"]
    model = ModelConfig(family=s.model, path=f"<random {s.size} {s.model}>", dtype=s.dtype, device=s.device,
                        finetune=s.finetune, lora=lora, gradient_checkpointing=s.size == "full")
    guidance = s.guidance_scale if s.guidance_scale is not None else (5.0 if s.model == "sd" else 3.5)
    sample = SampleConfig(resolution=s.side, num_steps=s.num_steps, guidance_scale=guidance, group_size=s.group_size,
                          prompts_per_iter=s.groups, groups_per_call=1,
                          max_sequence_length=512 if s.size == "full" else 64)  # FLUX's T5 pads to this
    cls = SDPolicy if s.model == "sd" else FluxPolicy
    return cls(pipe, model, sample)


def _saturation(images: torch.Tensor) -> torch.Tensor:
    """The bench reward: mean colour saturation per image (cheap: the loop structure is what is compared)."""
    return (images.amax(dim=1) - images.amin(dim=1)).mean(dim=(1, 2))


def _reward(images, prompts, **_):
    return {"total": _saturation(images.float())}


def _trainer(policy: Any, s: BenchSettings, run_dir: Path, batch_size: int) -> Trainer:
    n = s.groups * s.group_size
    cfg = TrainerConfig(
        run={"name": "bench_throughput", "seed": 0, "iterations": 10**6, "checkpoint_every": 10**6, "progress": False},
        sample=policy.sample_cfg.model_dump(), rl={"preset": "slas", "power": 2.0}, lr=1e-6, run_dir=run_dir,
        train={"batch_size": batch_size, "gradient_accumulation_steps": max(1, n // batch_size),
               "timestep_fraction": s.timestep_fraction, "timestep_selection": "first"})
    return Trainer(cfg, policy, _reward, PromptSource(PROMPTS, seed=0))


# ------------------------------------------------------------------------------------------ the phases


def _batched_rollout(policy: Any, s: BenchSettings, device: torch.device, seed: int) -> tuple[float, float]:
    """Today's rollout: one pipeline call per group of ``group_size`` images, the reward on the tensors."""
    groups = [Group(key=str(i), prompt=PROMPTS[i % len(PROMPTS)]) for i in range(s.groups)]
    with _peak(device) as peak:
        _sync(device)
        start = time.perf_counter()
        rollout = policy.rollout(groups, group_size=s.group_size, seed=seed)
        _reward(rollout.images, rollout.prompts)
        _sync(device)
        seconds = time.perf_counter() - start
    return seconds, peak[0]


def _looped_rollout(policy: Any, s: BenchSettings, device: torch.device, seed: int, folder: Path) -> tuple[float, float]:
    """DanceGRPO's structure: one pipeline call per image; each image written to a PNG, the reward read
    back from the file."""
    with _peak(device) as peak:
        _sync(device)
        start = time.perf_counter()
        for g in range(s.groups):
            group = Group(key=str(g), prompt=PROMPTS[g % len(PROMPTS)])
            for i in range(s.group_size):
                image = policy.rollout([group], group_size=1, seed=seed + g * s.group_size + i).images[0]
                path = folder / f"flux_0_{g * s.group_size + i}.png"
                to_pil(image).save(path)
                _reward(load_image(path)[None], [group.prompt])
        _sync(device)
        seconds = time.perf_counter() - start
    return seconds, peak[0]


def _training(trainer: Trainer, device: torch.device) -> tuple[float, float]:
    """One trainer iteration; returns its update time (forward + backward over the trained steps) and peak."""
    with _peak(device) as peak:
        metrics = trainer.step()
    return metrics["time/train"], peak[0]


def run_throughput_bench(s: BenchSettings) -> ThroughputReport:
    """Build the policy once; a warm-up of each phase, then ``iterations`` measured ones of each."""
    import diffusers

    device = resolve_device(s.device)
    policy = build_policy(s)
    n = s.groups * s.group_size
    count = sum(p.numel() for p in policy.trainable_parameters())
    count_text = f"{count / 1e9:.2f} B" if count >= 1e9 else f"{count / 1e6:.2f} M"
    trained = f"LoRA r {s.lora_rank} ({count_text} trained)" if s.finetune == "lora" else f"full fine-tune ({count_text})"
    report = ThroughputReport(settings=s, machine=machine(), trained=trained,
                              versions=f"diffusers {diffusers.__version__}",
                              date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    if device.type == "cuda":
        report.versions += f", CUDA {torch.version.cuda}"
    totals: dict[tuple[str, str], list[float]] = {}

    def add(structure: str, phase: str, seconds: float, peak: float) -> None:
        t = totals.setdefault((structure, phase), [0.0, 0.0])
        t[0] += seconds
        t[1] = max(t[1], peak)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        batched = _trainer(policy, s, folder / "batched", s.batch_size)
        looped = _trainer(policy, s, folder / "looped", 1)
        for it in range(s.iterations + 1):  # iteration 0 warms up every phase
            measured = [
                ("batched group per call, rewards in memory", "rollout + reward (images)",
                 _batched_rollout(policy, s, device, seed=1000 * it)),
                ("DanceGRPO: one image per call, rewards via PNG files", "rollout + reward (images)",
                 _looped_rollout(policy, s, device, 1000 * it, folder)),
                (f"batched: micro-batch {s.batch_size}", "training (samples)", _training(batched, device)),
                ("DanceGRPO: micro-batch 1", "training (samples)", _training(looped, device)),
            ]
            if it > 0:
                for structure, phase, (seconds, peak) in measured:
                    add(structure, phase, seconds, peak)
    report.rows = [Row(structure, phase, n * s.iterations, seconds, peak)
                   for (structure, phase), (seconds, peak) in totals.items()]
    return report


def write_report(report: ThroughputReport, path: Path, *, append: bool) -> None:
    """Write (or append) the report's section to a markdown file, atomically."""
    from slas.files import write_atomic

    path = Path(path)
    text = report.format() + "\n"
    if append and path.is_file():
        text = path.read_text().rstrip("\n") + "\n\n" + text
    write_atomic(path, text)
