"""CLIP-family rewards (hpsv21, clip, image_similarity) on tiny offline models, plus their preflight."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import transformers
from PIL import Image

import slas.rewards.clip
import slas.rewards.hps
import slas.rewards.similarity  # noqa: F401  (registers "image_similarity")
from slas.preflight import PreflightError
from slas.rewards import build
from slas.rewards.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, preprocess_images
from slas.rewards.registry import preflight
from slas.testing.tiny_clip import (
    TINY_OPEN_CLIP_MODEL,
    save_tiny_hf_clip,
    save_tiny_open_clip_checkpoint,
)

PROMPTS = ["a red cube on a table", "two blue spheres", "a red cube on a table", "a green cat wearing a hat"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tiny_clip")
    return {
        "hps": save_tiny_open_clip_checkpoint(d / "hps", seed=0),  # {"state_dict": ...}
        "open_clip": save_tiny_open_clip_checkpoint(d / "oc" / "weights.bin", seed=1, wrap=False),
        "hf": save_tiny_hf_clip(d / "hf", seed=0),
    }


def _spec(name: str, files: dict[str, Path], **options) -> dict:
    base = {
        "hpsv21": {"checkpoint": str(files["hps"]), "model_name": TINY_OPEN_CLIP_MODEL},
        "clip": {"backend": "transformers", "model": str(files["hf"])},
        "clip_open_clip": {"backend": "open_clip", "model_name": TINY_OPEN_CLIP_MODEL,
                           "pretrained": str(files["open_clip"])},
        "image_similarity": {"model": str(files["hf"])},
    }[name]
    reward = "clip" if name == "clip_open_clip" else name
    return {"components": [{"name": reward, "options": {**base, "device": "cpu", **options}}]}


def _reward(name: str, files: dict[str, Path], **options):
    """The single component reward object of a built composite."""
    return build(_spec(name, files, **options)).components[0][2]


def _images(n: int = 4, h: int = 96, w: int = 128, seed: int = 0) -> torch.Tensor:
    """Smooth, distinct images (gradients + a per-image pattern) with mild noise, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    out = []
    for i in range(n):
        f = 3.0 + 4.0 * i
        x = torch.stack([xx, yy, (torch.sin(f * xx) * torch.cos(f * yy) + 1) / 2])
        x = x.roll(shifts=7 * i, dims=2) + 0.15 * torch.rand(3, h, w, generator=g)
        out.append(x.clamp(0, 1))
    return torch.stack(out)


# ------------------------------------------------------------------------------------- every reward


@pytest.mark.parametrize("name", ["hpsv21", "clip", "clip_open_clip", "image_similarity"])
def test_reward_builds_from_spec_and_scores_each_image(name, files):
    images = _images()
    conditions = {"reference_images": _images(seed=3).flip(0)} if name == "image_similarity" else {}
    out = build(_spec(name, files))(images, PROMPTS, **conditions)
    key = "clip" if name == "clip_open_clip" else name
    assert set(out) == {key, "total"}
    values = out[key]
    assert values.shape == (4,) and values.dtype == torch.float32
    assert torch.isfinite(values).all()
    assert (values.abs() <= 1 + 1e-5).all()
    assert len(set(values.tolist())) > 1  # not a constant


# --------------------------------------------------------------------------------------------- HPS


def test_hps_equals_hand_computation_with_open_clip(files):
    images = _images(h=80, w=150)
    score = build(_spec("hpsv21", files))(images, PROMPTS)["hpsv21"]

    # Independently: open_clip's own loader (it unwraps {"state_dict": ...}) and encoders.
    model = open_clip.create_model(TINY_OPEN_CLIP_MODEL, pretrained=str(files["hps"])).eval()
    tokens = open_clip.get_tokenizer(TINY_OPEN_CLIP_MODEL)(PROMPTS)
    with torch.no_grad():
        pixels = preprocess_images(images, 224, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)
        fi = model.encode_image(pixels, normalize=True)
        ft = model.encode_text(tokens, normalize=True)
    torch.testing.assert_close(score, (fi * ft).sum(-1), atol=1e-5, rtol=0)


def test_hps_tracks_the_prompt_when_the_text_tower_is_nudged(files):
    reward = _reward("hpsv21", files)
    model = reward.model
    image = _images(n=1)
    a, b = "a red cube on a table", "two blue spheres"
    before = reward(image.repeat(2, 1, 1, 1), [a, b])["hpsv21"]

    # Rank-1 edit of the text projection: prompt a's pooled text feature (made orthogonal to b's) now
    # maps onto the image's embedding; b's text embedding is unchanged.
    tok = open_clip.get_tokenizer(TINY_OPEN_CLIP_MODEL)
    proj = model.text_projection
    with torch.no_grad():
        model.text_projection = None
        h_a, h_b = model.encode_text(tok([a, b]))
        model.text_projection = proj
        v = h_a - (h_a @ h_b) / (h_b @ h_b) * h_b
        u = torch.nn.functional.normalize(model.encode_image(reward.encoder.preprocess(image))[0], dim=-1)
        proj.add_(100.0 * torch.outer(v / (v @ v), u))

    after = reward(image.repeat(2, 1, 1, 1), [a, b])["hpsv21"]
    assert after[0] > 0.95 and after[0] > after[1] + 0.1
    torch.testing.assert_close(after[1], before[1], atol=1e-5, rtol=0)  # b untouched
    swapped = reward(image.repeat(2, 1, 1, 1), [b, a])["hpsv21"]  # prompts follow their images
    torch.testing.assert_close(swapped, after.flip(0), atol=1e-6, rtol=0)


def test_batch_size_chunking_gives_the_same_scores(files):
    images = _images(n=5)
    prompts = [*PROMPTS, "another prompt"]
    one = build(_spec("hpsv21", files, batch_size=64))(images, prompts)["hpsv21"]
    chunked = build(_spec("hpsv21", files, batch_size=2))(images, prompts)["hpsv21"]
    torch.testing.assert_close(chunked, one, atol=1e-6, rtol=0)


def test_bfloat16_runs_and_stays_close(files):
    images = _images()
    fp32 = build(_spec("hpsv21", files))(images, PROMPTS)["hpsv21"]
    reward = _reward("hpsv21", files, dtype="bfloat16")
    assert next(reward.model.parameters()).dtype == torch.bfloat16
    bf16 = reward(images, PROMPTS)["hpsv21"]
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16).all()
    torch.testing.assert_close(bf16, fp32, atol=0.05, rtol=0)


# ---------------------------------------------------------------------------------- preprocessing


def test_tensor_preprocessing_matches_open_clip_pil_transform():
    transform = open_clip.image_transform(
        224, is_train=False, mean=open_clip.OPENAI_DATASET_MEAN, std=open_clip.OPENAI_DATASET_STD
    )
    for h, w in [(300, 400), (333, 250), (120, 160)]:  # downscale (landscape / portrait) and upscale
        x = (_images(n=1, h=h, w=w)[0] * 255).round().to(torch.uint8)
        pil = Image.fromarray(x.permute(1, 2, 0).numpy())
        ref = transform(pil)
        ours = preprocess_images((x.float() / 255)[None], 224)[0]
        assert ours.shape == ref.shape == (3, 224, 224)
        # PIL resamples in two separable passes and rounds to uint8 after each; one uint8 step is
        # 1/255/std ~ 0.015 after normalisation. Mean error is half a step; the max (a few steps)
        # sits on the noisiest pixels, where PIL's intermediate rounding/clipping differs most.
        diff = (ours - ref).abs()
        assert diff.mean() < 0.008, (h, w, diff.mean())
        assert diff.max() < 0.06, (h, w, diff.max())
    # Already at the input size: no resampling, so the two paths agree exactly (up to float error).
    x = (_images(n=1, h=224, w=224)[0] * 255).round().to(torch.uint8)
    ref = transform(Image.fromarray(x.permute(1, 2, 0).numpy()))
    torch.testing.assert_close(preprocess_images((x.float() / 255)[None], 224)[0], ref, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------- CLIP


def test_transformers_backend_matches_clip_processor_and_model(files):
    images = _images(h=90, w=120)
    reward = _reward("clip", files, scale=2.5)
    score = reward(images, PROMPTS)["clip"]

    path = str(files["hf"])
    model = transformers.CLIPModel.from_pretrained(path).eval()
    processor = transformers.CLIPProcessor(
        image_processor=transformers.CLIPImageProcessor.from_pretrained(path),
        tokenizer=transformers.AutoTokenizer.from_pretrained(path),
    )
    pils = [Image.fromarray((im.permute(1, 2, 0) * 255).round().byte().numpy()) for im in images]
    inputs = processor(text=PROMPTS, images=pils, return_tensors="pt", padding=True)
    # Size (64, from preprocessor_config.json), crop, bicubic and mean/std follow the processor: the
    # pixels differ only by its uint8 path, as in the open_clip comparison (bilinear would be ~0.2 off).
    quantised = torch.stack([torch.from_numpy(np.array(p)).permute(2, 0, 1) for p in pils]).float() / 255
    pixels = reward.encoder.preprocess(quantised)
    assert pixels.shape == inputs["pixel_values"].shape == (4, 3, 64, 64)
    diff = (pixels - inputs["pixel_values"]).abs()
    assert diff.mean() < 0.008 and diff.max() < 0.06, (diff.mean(), diff.max())
    with torch.no_grad():
        out = model(**inputs)
    expected = (out.image_embeds * out.text_embeds).sum(-1)  # both L2-normalised by CLIPModel
    # Differences come only from the processor's uint8 / resampling path (see the preprocessing test).
    torch.testing.assert_close(score / 2.5, expected, atol=2e-3, rtol=0)


def test_open_clip_backend_reads_bare_state_dicts_and_scales(files):
    images = _images()
    oc = build(_spec("clip_open_clip", files))(images, PROMPTS)["clip"]
    scaled = build(_spec("clip_open_clip", files, scale=-3.0))(images, PROMPTS)["clip"]
    torch.testing.assert_close(scaled, -3.0 * oc)
    # Same architecture, different seed: a different model, so different scores (the weights load).
    assert not torch.allclose(oc, build(_spec("hpsv21", files))(images, PROMPTS)["hpsv21"], atol=1e-3)


def test_open_clip_backend_finds_cached_hub_weights_and_their_preprocessing(files, tmp_path, monkeypatch):
    """``pretrained="org/repo"`` resolves in the HF cache; open_clip_config.json there sets preprocessing."""
    import json
    import shutil

    import huggingface_hub.constants

    commit = "0" * 40
    repo = tmp_path / "hub" / "models--slas-test--tiny-open-clip"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    shutil.copy(files["open_clip"], snap / "open_clip_pytorch_model.bin")
    pp = {"resize_mode": "squash", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    (snap / "open_clip_config.json").write_text(json.dumps({"model_cfg": {}, "preprocess_cfg": pp}))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    images = _images(h=70, w=140)
    hub = _reward("clip_open_clip", files, pretrained="slas-test/tiny-open-clip")
    assert hub.encoder.preprocess_cfg["resize_mode"] == "squash"
    assert hub.encoder.preprocess_cfg["mean"] == (0.5, 0.5, 0.5)
    by_file = _reward("clip_open_clip", files, preprocess=pp)
    torch.testing.assert_close(hub(images, PROMPTS)["clip"], by_file(images, PROMPTS)["clip"])
    default = _reward("clip_open_clip", files)  # shortest side + centre crop, OpenAI mean/std
    assert not torch.allclose(default.encoder.preprocess(images), hub.encoder.preprocess(images))


# ---------------------------------------------------------------------------------- image similarity


@pytest.mark.parametrize("name", ["image_similarity", "image_similarity_open_clip"])
def test_image_similarity(name, files, tmp_path):
    if name == "image_similarity":
        reward = build(_spec("image_similarity", files))
    else:
        spec = _spec("clip_open_clip", files)
        spec["components"][0]["name"] = "image_similarity"
        reward = build(spec)
    key = "image_similarity"
    images = _images()
    self_sim = reward(images, PROMPTS, reference_images=images)[key]
    torch.testing.assert_close(self_sim, torch.ones(4), atol=1e-5, rtol=0)
    other = reward(images, PROMPTS, reference_images=images.flip(0))[key]
    assert (other < self_sim - 1e-4).all()

    # PIL images and paths (of another size) work as references too.
    pils = [Image.fromarray((im.permute(1, 2, 0) * 255).round().byte().numpy()) for im in images]
    paths = []
    for i, p in enumerate(pils):
        paths.append(tmp_path / f"ref{i}.png")
        p.save(paths[-1])
    quantised = torch.stack([torch.from_numpy(np.array(p)).permute(2, 0, 1) for p in pils]).float() / 255
    from_tensor = reward(images, PROMPTS, reference_images=quantised)[key]
    torch.testing.assert_close(reward(images, PROMPTS, reference_images=pils)[key], from_tensor)
    torch.testing.assert_close(reward(images, PROMPTS, reference_images=[str(p) for p in paths])[key], from_tensor)
    mixed = [images[0], pils[1].resize((50, 70)), str(paths[2]), images[3]]
    assert torch.isfinite(reward(images, PROMPTS, reference_images=mixed)[key]).all()

    with pytest.raises(ValueError, match="reference_images"):
        reward(images, PROMPTS)
    with pytest.raises(ValueError, match="3 images for 4"):
        reward(images, PROMPTS, reference_images=images[:3])


# -------------------------------------------------------------------------------------------- preflight


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, and model loaders that fail the test if anything gets that far.

    huggingface_hub reads ``HF_HUB_CACHE`` once, at import, into ``constants.HF_HUB_CACHE`` (which the
    cache lookups read at call time); the environment variable is what the error message shows.
    """
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))

    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded before the preflight check")

    monkeypatch.setattr(open_clip, "create_model", no_load)
    monkeypatch.setattr(transformers.CLIPModel, "from_pretrained", no_load)
    return cache


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        ("hpsv21", {}, ["reward hpsv21 options.checkpoint", "hf download xswu/HPSv2 HPS_v2.1_compressed.pt"]),
        ("clip", {}, ["reward clip options.model", "hf download openai/clip-vit-large-patch14"]),
        ("clip", {"backend": "open_clip"},
         ["reward clip options.pretrained",
          "hf download apple/DFN5B-CLIP-ViT-H-14-378 open_clip_pytorch_model.bin"]),
        ("clip", {"backend": "open_clip", "pretrained": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
                  "model_name": "ViT-H-14"},
         ["reward clip options.pretrained", "hf download laion/CLIP-ViT-H-14-laion2B-s32B-b79K"]),
        ("image_similarity", {}, ["reward image_similarity options.model",
                                  "hf download openai/clip-vit-large-patch14"]),
        ("hpsv21", {"checkpoint": "/nonexistent/HPS_v2.1_compressed.pt"},
         ["reward hpsv21 options.checkpoint", "file not found"]),
        ("hpsv21", {"chekpoint": "x"}, ["reward hpsv21 options", "unknown option", "chekpoint"]),
        ("clip", {"backend": "onnx"}, ["reward clip options.backend"]),
        ("clip", {"dtype": "int8"}, ["reward clip options.dtype"]),
        ("image_similarity", {"batch_size": 0}, ["reward image_similarity options.batch_size"]),
    ],
)
def test_preflight_fails_before_loading_anything(name, options, expected, empty_hub_cache):
    for attempt in (lambda: preflight(name, options),
                    lambda: build({"components": [{"name": name, "options": options}]})):
        with pytest.raises(PreflightError) as info:
            attempt()
        message = str(info.value)
        assert "\n" not in message
        for part in expected:
            assert part in message, message


def test_preflight_passes_for_present_files(files):
    preflight("hpsv21", _spec("hpsv21", files)["components"][0]["options"])
    preflight("clip", _spec("clip", files)["components"][0]["options"])
    preflight("clip", _spec("clip_open_clip", files)["components"][0]["options"])
    preflight("image_similarity", _spec("image_similarity", files)["components"][0]["options"])
