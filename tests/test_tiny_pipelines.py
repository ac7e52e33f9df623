"""Tiny offline pipelines: reload from disk, run end to end, deterministic weights, tokenizer round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import FluxPipeline, StableDiffusionPipeline
from transformers import CLIPTokenizer, T5Tokenizer

from slas.testing.tiny import (
    CLIP_MAX_LENGTH,
    build_tiny_clip_tokenizer,
    build_tiny_flux_pipeline,
    build_tiny_sd_pipeline,
    build_tiny_t5_tokenizer,
    save_tiny_pipeline,
)

PROMPTS = [
    "a photo of a cat sitting on a red sofa",
    "An astronaut riding a horse on Mars, 4K, highly detailed! It's 'great' (really) - café & crème",
]
LONG_PROMPT = " ".join(["a very long prompt about many different things"] * 30)


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name, tensor in sa.items():
        assert torch.equal(tensor, sb[name]), name


def _assert_valid_images(images: torch.Tensor) -> None:
    assert isinstance(images, torch.Tensor)
    assert images.shape == (2, 3, 32, 32)
    assert torch.isfinite(images).all()
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert images.std() > 0  # not a constant image


# ------------------------------------------------------------------------------------------- tokenizers


def test_clip_tokenizer_pads_truncates_and_round_trips(tmp_path: Path) -> None:
    tok = build_tiny_clip_tokenizer()
    assert len(tok) == 514
    assert tok.model_max_length == CLIP_MAX_LENGTH
    enc = tok(
        [*PROMPTS, LONG_PROMPT], padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    )
    ids = enc.input_ids
    assert ids.shape == (3, 77)
    assert (ids[:, 0] == tok.bos_token_id).all()
    assert ids[2, -1] == tok.eos_token_id  # truncated, still eos-terminated
    assert ids.max() < len(tok)
    # Byte-level, no merges: every character becomes a token; nothing in English maps to unk/eos mid-text.
    first = ids[0, : int(enc.attention_mask[0].sum())].tolist()
    assert first[-1] == tok.eos_token_id and tok.eos_token_id not in first[1:-1]
    assert tok.decode(first, skip_special_tokens=True) == "a photo of a cat sitting on a red sofa"

    tok.save_pretrained(tmp_path)
    reloaded = CLIPTokenizer.from_pretrained(tmp_path)
    assert len(reloaded) == len(tok) and reloaded.model_max_length == CLIP_MAX_LENGTH
    enc2 = reloaded(
        [*PROMPTS, LONG_PROMPT], padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    )
    assert torch.equal(enc2.input_ids, ids)
    assert torch.equal(enc2.attention_mask, enc.attention_mask)


def test_t5_tokenizer_pads_truncates_and_round_trips(tmp_path: Path) -> None:
    tok = build_tiny_t5_tokenizer()
    assert len(tok) == 260
    enc = tok(
        [*PROMPTS, LONG_PROMPT], padding="max_length", max_length=32, truncation=True, return_tensors="pt"
    )
    ids = enc.input_ids
    assert ids.shape == (3, 32)
    assert ids[2, -1] == tok.eos_token_id
    assert tok.unk_token_id not in ids.tolist()[1]
    n = int(enc.attention_mask[0].sum())
    assert ids[0, n - 1] == tok.eos_token_id and (ids[0, n:] == tok.pad_token_id).all()

    tok.save_pretrained(tmp_path)
    reloaded = T5Tokenizer.from_pretrained(tmp_path)
    assert len(reloaded) == len(tok)
    enc2 = reloaded(
        [*PROMPTS, LONG_PROMPT], padding="max_length", max_length=32, truncation=True, return_tensors="pt"
    )
    assert torch.equal(enc2.input_ids, ids)


def test_t5_tokenizer_lowercases_its_input_after_a_reload_too(tmp_path: Path) -> None:
    """The vocabulary holds lowercased words, so capitals in a prompt must fold to them, in the SAVED
    tokenizer (diffusers loads it with T5Tokenizer.from_pretrained, which keeps only a precompiled charsmap)."""
    tok = build_tiny_t5_tokenizer(32, words=["put", "the", "bottle"])
    tok.save_pretrained(tmp_path)
    for t in (tok, T5Tokenizer.from_pretrained(tmp_path)):
        assert t.tokenize("Put THE Bottle") == ["▁put", "▁the", "▁bottle"]
        assert t("Put THE Bottle, é Ä 1").input_ids == t("put the bottle, é Ä 1").input_ids
    case_sensitive = build_tiny_t5_tokenizer(32, words=["put"], lowercase=False)
    assert case_sensitive.tokenize("Put") == ["▁", "P", "u", "t"]


def test_ascii_lowercase_charsmap_folds_exactly_a_to_z() -> None:
    import random
    import unicodedata

    from tokenizers import normalizers

    from slas.tokenization import ascii_lowercase_charsmap

    fold = normalizers.Precompiled(ascii_lowercase_charsmap())
    # Marks and joiners are left out: a capital + a mark is one grapheme, which the reader maps whole to the
    # bare lowercase letter (documented in ascii_lowercase_charsmap).
    chars = [chr(c) for c in range(1, 0x3000) if unicodedata.category(chr(c))[0] != "M" and c != 0x200D]
    rng = random.Random(0)
    for _ in range(500):  # any byte a lookup can reach stays inside the array (a bad one would panic)
        text = "".join(rng.choice(chars[:127] if rng.random() < 0.5 else chars) for _ in range(8))
        assert fold.normalize_str(text) == "".join(c.lower() if "A" <= c <= "Z" else c for c in text), repr(text)
    assert fold.normalize_str("ÀÉ ß Ω ABC xyz") == "ÀÉ ß Ω abc xyz"


# ---------------------------------------------------------------------------------------- determinism


def test_same_seed_same_weights_different_seed_different_weights() -> None:
    a, b, c = build_tiny_sd_pipeline(0), build_tiny_sd_pipeline(0), build_tiny_sd_pipeline(1)
    for name in ("unet", "vae", "text_encoder"):
        _assert_same_weights(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.unet.conv_in.weight, c.unet.conv_in.weight)
    # Building must not consume the caller's global RNG.
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_flux_pipeline(0)
    assert torch.equal(torch.rand(3), expected)


def test_save_tiny_pipeline_rejects_unknown_kind(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown tiny pipeline kind"):
        save_tiny_pipeline("sdxl", tmp_path)


# -------------------------------------------------------------------------------------- Stable Diffusion


@pytest.fixture(scope="module")
def sd_pipe(tiny_sd_dir: Path) -> StableDiffusionPipeline:
    return StableDiffusionPipeline.from_pretrained(tiny_sd_dir, local_files_only=True)


def test_sd_reload_matches_build(sd_pipe: StableDiffusionPipeline, tiny_sd_dir: Path) -> None:
    built = build_tiny_sd_pipeline(0)
    for name in ("unet", "vae", "text_encoder"):
        _assert_same_weights(getattr(built, name), getattr(sd_pipe, name))
    assert type(sd_pipe.tokenizer).__name__ == "CLIPTokenizer"
    assert sd_pipe.safety_checker is None
    assert sd_pipe.vae_scale_factor == 4
    sched = dict(sd_pipe.scheduler.config)
    assert type(sd_pipe.scheduler).__name__ == "DDIMScheduler"
    assert sched["beta_schedule"] == "scaled_linear" and sched["steps_offset"] == 1
    assert sched["beta_start"] == 0.00085 and sched["beta_end"] == 0.012
    assert not sched["clip_sample"] and not sched["set_alpha_to_one"]
    assert sched["prediction_type"] == "epsilon"
    model_index = json.loads((tiny_sd_dir / "model_index.json").read_text())
    assert model_index["tokenizer"] == ["transformers", "CLIPTokenizer"]

    enc_built = built.tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True).input_ids
    enc_loaded = sd_pipe.tokenizer(
        PROMPTS, padding="max_length", max_length=sd_pipe.tokenizer.model_max_length, truncation=True
    ).input_ids
    assert enc_loaded == enc_built
    assert all(len(row) == 77 for row in enc_loaded)


def test_sd_pipeline_generates(sd_pipe: StableDiffusionPipeline) -> None:
    out = sd_pipe(
        PROMPTS,
        num_inference_steps=3,
        height=32,
        width=32,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    )
    _assert_valid_images(out.images)
    latents = sd_pipe.prepare_latents(2, 4, 32, 32, torch.float32, torch.device("cpu"), torch.Generator())
    assert latents.shape == (2, 4, 8, 8)


# ------------------------------------------------------------------------------------------------- FLUX


@pytest.fixture(scope="module")
def flux_pipe(tiny_flux_dir: Path) -> FluxPipeline:
    return FluxPipeline.from_pretrained(tiny_flux_dir, local_files_only=True)


def test_flux_reload_matches_build(flux_pipe: FluxPipeline) -> None:
    built = build_tiny_flux_pipeline(0)
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        _assert_same_weights(getattr(built, name), getattr(flux_pipe, name))
    assert type(flux_pipe.tokenizer).__name__ == "CLIPTokenizer"
    assert type(flux_pipe.tokenizer_2).__name__ == "T5Tokenizer"
    assert flux_pipe.vae_scale_factor == 4
    assert flux_pipe.vae.config.shift_factor == pytest.approx(0.1159)
    assert flux_pipe.vae.config.scaling_factor == pytest.approx(0.3611)
    tcfg = flux_pipe.transformer.config
    assert tcfg.in_channels == 16 and tcfg.guidance_embeds
    assert sum(tcfg.axes_dims_rope) == tcfg.attention_head_dim
    sched = flux_pipe.scheduler.config
    assert sched.use_dynamic_shifting and sched.shift == 3.0
    assert (sched.base_shift, sched.max_shift) == (0.5, 1.15)
    assert (sched.base_image_seq_len, sched.max_image_seq_len) == (256, 4096)

    for attr, length in (("tokenizer", 77), ("tokenizer_2", 32)):
        kw = {"padding": "max_length", "max_length": length, "truncation": True}
        assert (
            getattr(flux_pipe, attr)(PROMPTS, **kw).input_ids == getattr(built, attr)(PROMPTS, **kw).input_ids
        )


def test_flux_pipeline_generates(flux_pipe: FluxPipeline) -> None:
    out = flux_pipe(
        PROMPTS,
        num_inference_steps=3,
        height=32,
        width=32,
        guidance_scale=3.5,
        max_sequence_length=32,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    )
    _assert_valid_images(out.images)
    latents, image_ids = flux_pipe.prepare_latents(
        2, 4, 32, 32, torch.float32, torch.device("cpu"), torch.Generator().manual_seed(0)
    )
    assert latents.shape == (2, 16, 16)  # 8x8x4 latent packed 2x2 -> 16 tokens x 16 channels
    assert image_ids.shape == (16, 3)
