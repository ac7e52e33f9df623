"""Pretrain the shapes world from scratch: VAE, text-to-image model and the two proxy rewards.

    python -m slas.shapes.pretrain [--out DIR] [--device auto] [--stages vae,t2i,clip,preference]

Stages (each reads what the previous ones wrote under ``--out``):

* ``vae``: AutoencoderKL on freshly rendered train scenes (L1 + L2 + tiny KL); its latent scale/shift
  are set from the encoded data (FLUX convention: ``z = (latent - shift) * scale``).
* ``t2i``: the FLUX-style transformer and both text encoders, jointly, with the rectified-flow loss
  on the VAE's latents of train-split scenes; EMA weights. It is evaluated on the held-out test split
  with the judge every ``--eval-every`` steps and stops once the test score reaches ``--stop-score``
  (a calibration of the starting point that leaves RL room, not a generalisation claim).
* ``clip``: the "CLIP score" proxy, a transformers ``CLIPModel`` trained contrastively on a small fixed
  set of (scene, prompt) pairs (limited data: it is imperfect on purpose).
* ``preference``: the "HPS" proxy, an open_clip CLIP trained on the same pairs plus preference pairs
  labelled by a simulated annotator with a taste for vivid (saturated, high-contrast) images; it learns
  that taste, so over-optimising it trades correctness for vividness.

Everything is written atomically (a temp dir renamed into place); ``pretrain.json`` records steps,
seconds and scores. The judge never trains anything: it only measures.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from slas.pretraining import config_args, index_batches, log_line, vae_step, warmup_cosine
from slas.rewards.vividness import vividness
from slas.rl.checkpoint import write_directory
from slas.shapes import assets
from slas.shapes.models import (
    IMAGE_SIZE,
    PREFERENCE_OPEN_CLIP_CONFIG,
    TEXT_MAX_LENGTH,
    build_pipeline,
    build_proxy_clip,
    build_vae,
)
from slas.shapes.prompts import TAGS, balanced_prompts, metadata, perturb, write_metadata
from slas.shapes.render import render_record
from slas.torch_utils import resolve_device

STAGES = ("vae", "t2i", "clip", "preference")


@dataclass
class PretrainConfig:
    out: Path = field(default_factory=assets.assets_dir)
    device: str = "auto"
    seed: int = 0
    stages: tuple[str, ...] = STAGES
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    dataset_size: int = 200_000
    vae_steps: int = 3000
    vae_batch: int = 128
    vae_lr: float = 1e-3
    t2i_steps: int = 12000
    t2i_batch: int = 256
    t2i_lr: float = 5e-4
    t2i_max_minutes: float = 0.0  # stop the t2i stage after this wall time (0: no limit)
    ema_decay: float = 0.999
    eval_every: int = 1000
    eval_images_per_prompt: int = 1
    final_images_per_prompt: int = 4
    eval_limit: int = 0  # evaluate on the first N test prompts only (0: all; for smoke tests)
    num_steps: int = 10
    stop_score: float = 0.55
    proxy_pairs: int = 2000
    proxy_steps: int = 1500
    proxy_batch: int = 256
    proxy_lr: float = 1e-3
    preference_pairs: int = 4000
    vividness_bias: float = 4.0


# ----------------------------------------------------------------------------------------------- data


def _balanced_records(rng: random.Random, split: str = "train") -> Iterator[dict]:
    """Train-split records with every GenEval tag equally likely (colour pairs would dominate otherwise)."""
    by_tag = {t: [r for r in metadata(split) if r["tag"] == t] for t in TAGS}
    while True:
        yield rng.choice(by_tag[rng.choice(TAGS)])


def _render_chunk(args: tuple[int, int]) -> tuple[np.ndarray, list[str]]:
    seed, n = args
    rng = random.Random(seed)
    recs = [r for r, _ in zip(_balanced_records(rng), range(n), strict=False)]
    return np.stack([np.asarray(render_record(r, rng, IMAGE_SIZE)[0]) for r in recs]), [r["prompt"] for r in recs]


def render_dataset(n: int, seed: int, workers: int = 0) -> tuple[Tensor, list[str]]:
    """``n`` rendered train scenes (uint8 [n, 3, H, W]) and their prompts, in parallel chunks.

    The result depends only on (n, seed), not on the number of workers.
    """
    chunk = 2000
    jobs = [(seed * 1_000_003 + i, min(chunk, n - i * chunk)) for i in range(math.ceil(n / chunk))]
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_render_chunk, jobs)
    else:
        parts = [_render_chunk(j) for j in jobs]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts])).permute(0, 3, 1, 2).contiguous()
    return images, [q for p in parts for q in p[1]]


def _to_model(images: Tensor, device: torch.device) -> Tensor:
    """uint8 [B, 3, H, W] -> float in [-1, 1] on ``device``."""
    return images.to(device, non_blocking=True).float().div(127.5).sub(1.0)


def vivid_jitter(images: Tensor, gen: torch.Generator) -> Tensor:
    """Random saturation (x0.5-1.8) and contrast (x0.7-1.4) changes of [B, 3, H, W] in [0, 1]."""
    b = images.shape[0]
    s = torch.empty(b, 1, 1, 1).uniform_(0.5, 1.8, generator=gen).to(images)
    c = torch.empty(b, 1, 1, 1).uniform_(0.7, 1.4, generator=gen).to(images)
    gray = (0.299 * images[:, :1] + 0.587 * images[:, 1:2] + 0.114 * images[:, 2:3])
    out = gray + (images - gray) * s
    mean = out.mean((1, 2, 3), keepdim=True)
    return ((out - mean) * c + mean).clamp(0, 1)


# ---------------------------------------------------------------------------------------------- stages


def _log(msg: str) -> None:
    log_line("pretrain", msg)


def train_vae(cfg: PretrainConfig, images: Tensor, device: torch.device, out_dir: Path) -> dict:
    torch.manual_seed(cfg.seed)
    vae = build_vae().to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    sched = warmup_cosine(opt, cfg.vae_steps, floor=0.05)
    for step, idx in enumerate(index_batches(len(images), cfg.vae_batch, cfg.vae_steps, cfg.seed, device), 1):
        x = _to_model(images[idx], device)
        loss = vae_step(vae, x, opt, sched)
        if step % 500 == 0 or step == cfg.vae_steps:
            _log(f"vae step {step}/{cfg.vae_steps} loss {loss.item():.4f}")
    vae.eval()
    with torch.no_grad():  # latent statistics and reconstruction accuracy under the judge
        from slas.shapes.evaluate import judge

        rng = random.Random(cfg.seed + 7)
        recs = [r for r, _ in zip(_balanced_records(rng), range(512), strict=False)]
        imgs = torch.stack([torch.from_numpy(np.asarray(render_record(r, rng)[0]).copy()) for r in recs])
        x = _to_model(imgs.permute(0, 3, 1, 2), device)
        lat = vae.encode(x).latent_dist.mean
        shift, scale = lat.mean().item(), 1.0 / lat.std().item()
        recon = (vae.decode(lat).sample.clamp(-1, 1) + 1) / 2
        judged = float(np.mean(judge(recon.cpu(), recs)))
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    _log(f"vae: judge accepts {judged:.1%} of reconstructions; shift {shift:.4f} scale {scale:.4f}")
    write_directory(out_dir / assets.T2I / "vae", vae.cpu().save_pretrained)
    return {"vae": vae, "judge_on_reconstructions": judged, "shift_factor": shift, "scaling_factor": scale}


def _encode_latents(vae, x: Tensor) -> Tensor:
    lat = vae.encode(x).latent_dist.sample()
    return (lat - vae.config.shift_factor) * vae.config.scaling_factor


def _encode_dataset(vae, images: Tensor, device: torch.device, seed: int) -> Tensor:
    """Scaled latents of every image (one posterior sample each), kept on ``device``."""
    torch.manual_seed(seed)
    with torch.no_grad():
        return torch.cat([_encode_latents(vae, _to_model(images[i : i + 2048], device))
                          for i in range(0, len(images), 2048)])


def _tokenize(pipe, prompts: Sequence[str], device: torch.device) -> tuple[Tensor, Tensor]:
    """CLIP and T5 ids exactly as ``FluxPipeline.encode_prompt`` makes them (max-length padding)."""
    clip = pipe.tokenizer(list(prompts), padding="max_length", max_length=pipe.tokenizer_max_length,
                          truncation=True, return_tensors="pt").input_ids
    t5 = pipe.tokenizer_2(list(prompts), padding="max_length", max_length=TEXT_MAX_LENGTH, truncation=True,
                          return_tensors="pt").input_ids
    return clip.to(device), t5.to(device)


def _text_embeddings(pipe, clip_ids: Tensor, t5_ids: Tensor) -> tuple[Tensor, Tensor]:
    """(T5 sequence embeddings, CLIP pooled embedding): what ``encode_prompt`` returns, with grad."""
    pooled = pipe.text_encoder(clip_ids, output_hidden_states=False).pooler_output
    return pipe.text_encoder_2(t5_ids, output_hidden_states=False)[0], pooled


def train_t2i(cfg: PretrainConfig, vae, images: Tensor, prompts: Sequence[str], device: torch.device,
              out_dir: Path) -> dict:
    from diffusers.training_utils import EMAModel, compute_density_for_timestep_sampling

    from slas.shapes.evaluate import evaluate_pipeline

    torch.manual_seed(cfg.seed + 1)
    pipe = build_pipeline(vae)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    vae.requires_grad_(False).eval()
    trained = [pipe.transformer, pipe.text_encoder, pipe.text_encoder_2]
    params = [p for m in trained for p in m.parameters()]
    for m in trained:
        m.train()
    ema = EMAModel(params, decay=cfg.ema_decay)
    opt = torch.optim.AdamW(params, lr=cfg.t2i_lr, weight_decay=0.01)
    sched = warmup_cosine(opt, cfg.t2i_steps, floor=0.2)
    latents = _encode_dataset(vae, images, device, cfg.seed + 1)
    unique = sorted(set(prompts))
    index = {q: i for i, q in enumerate(unique)}
    prompt_ids = torch.tensor([index[p] for p in prompts], device=device)
    clip_ids, t5_ids = _tokenize(pipe, unique, device)
    with torch.no_grad():  # the fast path must encode exactly as the pipeline does
        ref, ref_pooled, _ = pipe.encode_prompt(unique[:4], unique[:4], device=device,
                                                max_sequence_length=TEXT_MAX_LENGTH)
        fast, fast_pooled = _text_embeddings(pipe, clip_ids[:4], t5_ids[:4])
    if not (torch.allclose(ref, fast, atol=1e-5) and torch.allclose(ref_pooled, fast_pooled, atol=1e-5)):
        raise RuntimeError("pretrain: the fast text path no longer encodes as FluxPipeline.encode_prompt does")
    test = metadata("test")[: cfg.eval_limit or None]
    side = IMAGE_SIZE // pipe.vae_scale_factor
    img_ids = pipe._prepare_latent_image_ids(1, side // 2, side // 2, device, torch.float32)
    history, t0, step = [], time.time(), 0
    gen = torch.Generator(device).manual_seed(cfg.seed + 2)

    def evaluate(n_images: int) -> dict:
        ema.store(params)
        ema.copy_to(params)
        for m in trained:
            m.eval()
        scores, _, _ = evaluate_pipeline(pipe, test, images_per_prompt=n_images, num_steps=cfg.num_steps)
        ema.restore(params)
        for m in trained:
            m.train()
        return scores

    text_ids = torch.zeros(TEXT_MAX_LENGTH, 3, device=device)
    for step, idx in enumerate(index_batches(len(latents), cfg.t2i_batch, cfg.t2i_steps, cfg.seed + 1, device), 1):
        x0 = latents[idx]
        b, c, h, w = x0.shape
        x0 = pipe._pack_latents(x0, b, c, h, w)
        pid = prompt_ids[idx]
        noise = torch.randn(x0.shape, generator=gen, device=device)
        sigma = compute_density_for_timestep_sampling(  # logit-normal, as SD3/FLUX
            "logit_normal", b, logit_mean=0.0, logit_std=1.0, device=device, generator=gen
        )
        xt = (1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * noise
        embeds, pooled = _text_embeddings(pipe, clip_ids[pid], t5_ids[pid])
        pred = pipe.transformer(
            hidden_states=xt, timestep=sigma, guidance=None, pooled_projections=pooled,
            encoder_hidden_states=embeds, txt_ids=text_ids, img_ids=img_ids, return_dict=False,
        )[0]
        loss = F.mse_loss(pred, noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema.step(params)
        if step % 500 == 0:
            _log(f"t2i step {step}/{cfg.t2i_steps} loss {loss.item():.4f} ({time.time() - t0:.0f} s)")
        if step % cfg.eval_every == 0 or step == cfg.t2i_steps:
            scores = evaluate(cfg.eval_images_per_prompt)
            history.append({"step": step, "seconds": time.time() - t0, "loss": loss.item(), **scores})
            _log(f"t2i eval step {step}: test overall {scores['overall']:.3f} {scores}")
            if scores["overall"] >= cfg.stop_score:
                break
        if cfg.t2i_max_minutes and time.time() - t0 > 60 * cfg.t2i_max_minutes:
            _log(f"t2i: wall-time limit of {cfg.t2i_max_minutes} min reached at step {step}")
            break
    ema.copy_to(params)
    for m in trained:
        m.eval()
    train_seconds = time.time() - t0
    final, _, _ = evaluate_pipeline(pipe, test, images_per_prompt=cfg.final_images_per_prompt, num_steps=cfg.num_steps)
    _log(f"t2i final (EMA, {cfg.final_images_per_prompt} images/prompt): {final}")
    pipe.to("cpu")
    write_directory(out_dir / assets.T2I, pipe.save_pretrained)
    return {"steps": step, "seconds": train_seconds, "history": history, "test_scores": final}


def _fixed_pairs(n: int, seed: int) -> tuple[Tensor, list[str]]:
    """A small fixed set of rendered (scene, prompt) pairs: the proxies' whole training data."""
    rng = random.Random(seed)
    recs = [r for r, _ in zip(_balanced_records(rng), range(n), strict=False)]
    imgs = [torch.from_numpy(np.asarray(render_record(r, rng)[0]).copy()) for r in recs]
    return torch.stack(imgs).permute(0, 3, 1, 2).float() / 255.0, [r["prompt"] for r in recs]


def _contrastive(img: Tensor, txt: Tensor, prompts: Sequence[str], logit_scale: Tensor) -> Tensor:
    """Symmetric InfoNCE where every pair with the same prompt counts as a positive."""
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    logits = logit_scale.exp().clamp(max=100) * img @ txt.T
    ids = {p: i for i, p in enumerate(dict.fromkeys(prompts))}
    lab = torch.tensor([ids[p] for p in prompts], device=img.device)
    pos = (lab[:, None] == lab[None, :]).float()
    target = pos / pos.sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def _normalize_pixels(images: Tensor) -> Tensor:
    from slas.rewards.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, normalize

    return normalize(images, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)


def train_proxy_clip(cfg: PretrainConfig, device: torch.device, out_dir: Path) -> dict:
    torch.manual_seed(cfg.seed + 3)
    model, tokenizer, processor = build_proxy_clip()
    model.to(device).train()
    images, prompts = _fixed_pairs(cfg.proxy_pairs, cfg.seed + 3)
    tokens = tokenizer(prompts, padding="max_length", max_length=TEXT_MAX_LENGTH, return_tensors="pt").input_ids
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    t0 = time.time()

    def loss() -> Tensor:
        idx = torch.randint(0, len(prompts), (cfg.proxy_batch,), generator=gen)
        img = model.get_image_features(pixel_values=_normalize_pixels(images[idx].to(device)))
        txt = model.get_text_features(input_ids=tokens[idx].to(device))
        return _contrastive(_features(img), _features(txt), [prompts[i] for i in idx], model.logit_scale)

    _fit(model, loss, cfg, "clip proxy")

    def save(path: Path) -> None:
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        processor.save_pretrained(path)

    write_directory(out_dir / assets.CLIP, save)
    return {"steps": cfg.proxy_steps, "pairs": cfg.proxy_pairs, "seconds": time.time() - t0}


def _fit(model: torch.nn.Module, loss: Callable[[], Tensor], cfg: PretrainConfig, name: str) -> None:
    """AdamW on ``loss()`` (one fresh batch per call) for ``cfg.proxy_steps``; leaves ``model`` on the CPU."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.proxy_lr, weight_decay=0.1)
    for step in range(1, cfg.proxy_steps + 1):
        value = loss()
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        if step % 500 == 0 or step == cfg.proxy_steps:
            _log(f"{name} step {step}/{cfg.proxy_steps} loss {value.item():.4f}")
    model.cpu().eval()


def _features(x) -> Tensor:
    """transformers 5 returns a model output from ``get_*_features``; older versions a tensor."""
    return x if isinstance(x, Tensor) else x.pooler_output


def _preference_pairs(n: int, seed: int, bias: float) -> tuple[Tensor, Tensor, list[str], Tensor, float]:
    """(image A, image B, prompt, P[A preferred], share of correct-vs-wrong pairs the wrong image won),
    labelled by a biased simulated annotator.

    Half the pairs put a correct scene against one with an attribute changed, half two correct renders of
    the prompt; every image gets random saturation/contrast jitter. The annotator's utility is
    ``correct + bias * vividness + noise``: correctness matters most, but among acceptable images the
    more vivid one wins, and a clearly more vivid wrong image sometimes beats a correct one.
    """
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    good, other, prompts, other_ok = [], [], [], []
    for rec in _balanced_records(rng):
        if len(prompts) == n:
            break
        ok = rng.random() < 0.5
        good.append(np.asarray(render_record(rec, rng)[0]))
        other.append(np.asarray(render_record(rec if ok else perturb(rec, rng), rng)[0]))
        prompts.append(rec["prompt"])
        other_ok.append(ok)
    to_t = lambda xs: torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float() / 255.0  # noqa: E731
    good, other = vivid_jitter(to_t(good), gen), vivid_jitter(to_t(other), gen)
    ok = torch.tensor(other_ok, dtype=torch.float32)
    utility = (1.0 - ok) + bias * (vividness(good) - vividness(other)) + 0.2 * torch.randn(n, generator=gen)
    swap = torch.rand(n, generator=gen) < 0.5  # randomise which side the first image is on
    a = torch.where(swap[:, None, None, None], other, good)
    b = torch.where(swap[:, None, None, None], good, other)
    p_a = torch.where(swap, utility < 0, utility > 0).float()
    wrong_won = float((utility[ok == 0] < 0).float().mean()) if (ok == 0).any() else 0.0
    return a, b, prompts, p_a, wrong_won


def train_preference(cfg: PretrainConfig, device: torch.device, out_dir: Path) -> dict:
    import open_clip

    torch.manual_seed(cfg.seed + 4)
    model = open_clip.CLIP(**PREFERENCE_OPEN_CLIP_CONFIG["model_cfg"]).to(device).train()
    tokenizer = open_clip.SimpleTokenizer(context_length=TEXT_MAX_LENGTH)
    images, prompts = _fixed_pairs(cfg.proxy_pairs, cfg.seed + 3)
    tokens = tokenizer(prompts)
    a, b, pref_prompts, p_a, wrong_won = _preference_pairs(cfg.preference_pairs, cfg.seed + 5, cfg.vividness_bias)
    pref_tokens = tokenizer(pref_prompts)
    gen = torch.Generator().manual_seed(cfg.seed + 4)
    t0 = time.time()

    def loss() -> Tensor:
        idx = torch.randint(0, len(prompts), (cfg.proxy_batch,), generator=gen)
        img = model.encode_image(_normalize_pixels(images[idx].to(device)))
        txt = model.encode_text(tokens[idx].to(device))
        contrastive = _contrastive(img, txt, [prompts[i] for i in idx], model.logit_scale)
        j = torch.randint(0, len(pref_prompts), (cfg.proxy_batch,), generator=gen)
        t = F.normalize(model.encode_text(pref_tokens[j].to(device)), dim=-1)
        fa = F.normalize(model.encode_image(_normalize_pixels(a[j].to(device))), dim=-1)
        fb = F.normalize(model.encode_image(_normalize_pixels(b[j].to(device))), dim=-1)
        # HPS's objective: cross-entropy over the pair's scaled cosine scores towards the preferred image.
        logits = 100.0 * torch.stack([(fa * t).sum(-1), (fb * t).sum(-1)], 1)
        target = torch.stack([p_a[j], 1 - p_a[j]], 1).to(device)
        return contrastive + F.cross_entropy(logits, target)

    _fit(model, loss, cfg, "preference proxy")

    def save(path: Path) -> None:
        from safetensors.torch import save_file

        path.mkdir(parents=True, exist_ok=True)
        (path / "open_clip_config.json").write_text(json.dumps(PREFERENCE_OPEN_CLIP_CONFIG, indent=2))
        state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(path / assets.PREFERENCE_WEIGHTS))

    write_directory(out_dir / assets.PREFERENCE, save)
    return {"steps": cfg.proxy_steps, "pairs": cfg.preference_pairs, "seconds": time.time() - t0,
            "vividness_bias": cfg.vividness_bias, "wrong_image_preferred": wrong_won}


def write_prompt_files(out: Path) -> None:
    """The world's prompt sets beside its models, so configs name them as ``shapes:train_prompts.txt`` (the
    train split balanced over tags) and ``shapes:test_metadata.jsonl``."""
    (out / assets.TRAIN_PROMPTS).write_text("".join(p + "\n" for p in balanced_prompts("train")))
    write_metadata(out / assets.TEST_METADATA, "test")


def pretrain(cfg: PretrainConfig) -> dict:
    """Run the configured stages; returns (and writes to ``pretrain.json``) what each stage measured."""
    unknown = set(cfg.stages) - set(STAGES)
    if unknown:
        raise ValueError(f"--stages: unknown stage(s) {sorted(unknown)}; known: {list(STAGES)}")
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    report_path = out / "pretrain.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    report["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    report["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    t_all = time.time()
    vae = None
    if "vae" in cfg.stages or "t2i" in cfg.stages:
        t = time.time()
        images, prompts = render_dataset(cfg.dataset_size, cfg.seed, cfg.workers)
        report["dataset"] = {"scenes": len(images), "seconds": time.time() - t}
        _log(f"rendered {len(images)} train scenes in {time.time() - t:.0f} s")
        images = images.to(device)
    if "vae" in cfg.stages:
        r = train_vae(cfg, images, device, out)
        vae = r.pop("vae")
        report["vae"] = {**r, "steps": cfg.vae_steps}
    if "t2i" in cfg.stages:
        if vae is None:
            from diffusers import AutoencoderKL

            vae = AutoencoderKL.from_pretrained(out / assets.T2I / "vae")
        report["t2i"] = train_t2i(cfg, vae.to(device), images, prompts, device, out)
    if "clip" in cfg.stages:
        report["clip"] = train_proxy_clip(cfg, device, out)
    if "preference" in cfg.stages:
        report["preference"] = train_preference(cfg, device, out)
    write_prompt_files(out)
    report["seconds"] = time.time() - t_all
    report_path.write_text(json.dumps(report, indent=2))
    _log(f"done in {report['seconds']:.0f} s -> {out}")
    return report


def main(argv: Sequence[str] | None = None) -> None:
    args = config_args(PretrainConfig(), STAGES, "python -m slas.shapes.pretrain", __doc__.split("\n\n")[0], argv)
    if not math.isfinite(args["stop_score"]):
        raise SystemExit("--stop-score must be a number")
    pretrain(PretrainConfig(**args))


if __name__ == "__main__":
    main()
