"""Tiny random editing pipelines, built offline: FLUX.1 Kontext and Qwen-Image-Edit-2509 (``Plus``).

Same spirit as :mod:`slas.testing.tiny`: the real diffusers classes with tiny configs, seeded, so the
edit policies, their tests and the CPU benchmark load them through ``from_pretrained`` exactly as they
load the real weights. Kontext reuses the tiny FLUX components; Qwen-Image-Edit gets a tiny
``QwenImageTransformer2DModel``, a tiny ``AutoencoderKLQwenImage`` (4x spatial, 4 latent channels) and
the tiny Qwen2.5-VL of :mod:`slas.testing.tiny_qwen` as its text (and image-token) encoder.
"""

from __future__ import annotations

import json
from pathlib import Path

from diffusers import (
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    FluxKontextPipeline,
    QwenImageEditPlusPipeline,
    QwenImageTransformer2DModel,
)
from PIL import Image
from transformers import Qwen2VLProcessor

from slas.testing.tiny import _seeded, build_tiny_flux_pipeline
from slas.testing.tiny_qwen import TEXT_HIDDEN, build_tiny_qwen_vl

QWEN_EDIT_LATENT_CHANNELS = 4

QWEN_IMAGE_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 0.9,
    "base_image_seq_len": 256,
    "max_image_seq_len": 8192,
    "shift_terminal": 0.02,
    "time_shift_type": "exponential",
}
"""Qwen-Image's own scheduler settings (its ``scheduler/scheduler_config.json``)."""


def build_tiny_kontext_pipeline(seed: int = 0) -> FluxKontextPipeline:
    """Tiny FLUX.1 Kontext: the tiny FLUX components (the Kontext transformer is a FLUX transformer that
    also reads the packed latents of the input image, placed after the target's tokens)."""
    flux = build_tiny_flux_pipeline(seed)
    return FluxKontextPipeline(**{k: v for k, v in flux.components.items() if k in _KONTEXT_COMPONENTS})


_KONTEXT_COMPONENTS = ("scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "transformer")


def build_tiny_qwen_edit_pipeline(seed: int = 0) -> QwenImageEditPlusPipeline:
    """Tiny Qwen-Image-Edit-2509: 2x2-patch MMDiT (1 block, 2 heads of 16), 4-channel VAE with a 4x
    downsampling, and the tiny Qwen2.5-VL (hidden 64) reading the prompt and the input images."""
    text_encoder, processor = build_tiny_qwen_vl(seed)
    with _seeded(seed, "transformer"):
        transformer = QwenImageTransformer2DModel(
            patch_size=2,
            in_channels=4 * QWEN_EDIT_LATENT_CHANNELS,
            out_channels=QWEN_EDIT_LATENT_CHANNELS,
            num_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=TEXT_HIDDEN,
            axes_dims_rope=(4, 6, 6),
        ).eval()
    with _seeded(seed, "vae"):
        vae = AutoencoderKLQwenImage(
            base_dim=8,
            z_dim=QWEN_EDIT_LATENT_CHANNELS,
            dim_mult=[1, 2, 2],
            num_res_blocks=1,
            temperal_downsample=[False, False],
            latents_mean=[0.1, -0.2, 0.05, 0.0],
            latents_std=[1.5, 0.8, 1.2, 1.0],
        ).eval()
    # the pipeline's processor class (Qwen-Image-Edit ships a Qwen2VLProcessor), over the tiny parts
    processor = Qwen2VLProcessor(image_processor=processor.image_processor, tokenizer=processor.tokenizer,
                                 video_processor=processor.video_processor, chat_template=processor.chat_template)
    return QwenImageEditPlusPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_SCHEDULER_CONFIG),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=processor.tokenizer,
        processor=processor,
        transformer=transformer,
    )


EDIT_BUILDERS = {"flux_kontext": build_tiny_kontext_pipeline, "qwen_image_edit": build_tiny_qwen_edit_pipeline}
"""Tiny edit pipelines by ``model.family`` (``slas.testing.tiny.save_tiny_pipeline`` saves them)."""


def write_tiny_pairs(root: str | Path, *, persons: int = 2, products: int = 2, size: int = 64) -> Path:
    """A small editing dataset on disk, as a user's would be: ``persons/``, ``products/`` (flat-colour photos
    with a darker mark, distinct per file) and ``pairs.jsonl`` pairing every person with every product
    (the last product's pairs in the ``test`` split). Returns the pairs file."""
    root = Path(root)
    rows = []
    for kind, count, base in (("persons", persons, (190, 140, 110)), ("products", products, (40, 90, 210))):
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            colour = tuple((c + 53 * i) % 256 for c in base)
            image = Image.new("RGB", (size, size + 8 * i), colour)
            image.paste(tuple(c // 2 for c in colour), (size // 4, size // 3, size // 2 + 4 * i, size // 2 + 8))
            image.save(root / kind / f"{kind[:-1]}{i}.png")
    for p in range(persons):
        for q in range(products):
            rows.append({"id": f"p{p}_q{q}", "person": f"persons/person{p}.png", "product": f"products/product{q}.png",
                         "split": "test" if q == products - 1 else "train"})
    path = root / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
