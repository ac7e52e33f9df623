"""Editing rewards on the editing conditions: ``person_preservation`` catches a repainted person, and
``image_similarity`` scores an edit against ``product_images``."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from slas.preflight import PreflightError
from slas.rewards import build
from slas.rewards.preservation import preservation_score, product_region
from slas.rewards.registry import preflight
from slas.testing.tiny_clip import save_tiny_hf_clip


def _person(h: int = 64, w: int = 64, seed: int = 0) -> torch.Tensor:
    """A textured 'person photo': colour gradients, a pattern and fine noise, [3, H, W] in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = torch.stack([0.2 + 0.6 * xx, 0.3 + 0.4 * yy, (torch.sin(9 * xx) * torch.cos(7 * yy) + 1) / 2])
    return (0.85 * base + 0.15 * torch.rand(3, h, w, generator=g)).clamp(0, 1)


def _paste_product(img: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """``img`` with a 'product' (a flat box with a label stripe) pasted over ~14% of it, lower middle."""
    out = img.clone()
    h, w = img.shape[-2:]
    y0, y1, x0, x1 = int(0.55 * h), int(0.85 * h), int(0.3 * w), int(0.75 * w)
    colour = torch.rand(3, generator=torch.Generator().manual_seed(seed))
    out[:, y0:y1, x0:x1] = colour[:, None, None]
    out[:, (y0 + y1) // 2 : (y0 + y1) // 2 + 3, x0:x1] = 1 - colour[:, None, None]
    return out


def _batch(*images: torch.Tensor) -> torch.Tensor:
    return torch.stack(images)


@pytest.mark.parametrize("metric", ["ssim", "l1"])
def test_pasted_product_keeps_the_person_and_repaints_are_caught(metric):
    person = _person()
    kept = _paste_product(person)
    recoloured = _paste_product(person[[2, 0, 1]])  # same person, clothes and skin in other colours
    shifted = _paste_product(person.roll(shifts=(5, 6), dims=(1, 2)))  # the framing moved
    repainted = _paste_product(_person(seed=7).flip(2))  # another picture altogether
    persons = _batch(person, person, person, person, person)
    scores = preservation_score(_batch(person, kept, recoloured, shifted, repainted), persons, metric=metric)
    assert scores[0] == pytest.approx(1.0, abs=1e-5)  # an untouched person: exactly 1
    assert scores[1] > 0.97, scores  # the product region is excused; the rest is the same
    assert bool(((scores >= 0) & (scores <= 1)).all())
    limit = 0.75
    assert bool((scores[2:] < limit).all()), scores  # every repaint loses
    assert bool((scores[2:] < scores[1] - 0.1).all()), scores


def test_diff_region_finds_the_product_and_is_capped():
    person = _person()
    kept = _paste_product(person)
    region = product_region(_batch(kept), _batch(person))[0]
    pasted = (kept - person).abs().sum(0) > 0
    assert bool(region[pasted].all())  # the whole pasted product is excused...
    assert region.float().mean() < 0.3  # ...and little else
    everything = product_region(_batch(_person(seed=9).flip(2)), _batch(person), max_region=0.4)[0]
    assert everything.float().mean() == pytest.approx(0.4, abs=0.02)  # a repaint excuses at most max_region


def test_whole_image_and_box_modes():
    person = _person()
    kept = _paste_product(person)
    whole = preservation_score(_batch(kept), _batch(person), mode="whole_image")
    diff = preservation_score(_batch(kept), _batch(person), mode="diff")
    boxed = preservation_score(_batch(kept), _batch(person), mode="box", box=(0.2, 0.45, 0.85, 0.95))
    assert whole[0] < diff[0] - 0.05  # the product counts against the edit when nothing is excused
    assert boxed[0] > 0.97  # the box covers the product
    wrong_box = preservation_score(_batch(kept), _batch(person), mode="box", box=(0.0, 0.0, 0.3, 0.3))
    assert wrong_box[0] < boxed[0] - 0.05


def test_registered_reward_takes_pil_lists_tensors_and_other_sizes():
    person = _person(48, 64)
    kept, repainted = _paste_product(person), _paste_product(person[[1, 2, 0]])
    reward = build({"components": [{"name": "person_preservation", "options": {"resolution": 64}}]})
    pil = [Image.fromarray((person.permute(1, 2, 0) * 255).round().byte().numpy()) for _ in range(2)]
    out = reward(_batch(kept, repainted), ["hold it"] * 2, person_images=pil)
    assert set(out) == {"person_preservation", "total"}
    assert out["person_preservation"][0] > 0.95 and out["person_preservation"][1] < 0.75
    as_tensor = reward(_batch(kept, repainted), ["hold it"] * 2, person_images=_batch(person, person))
    assert torch.allclose(as_tensor["total"], out["total"], atol=0.02)  # PIL is the 8-bit copy
    # a person photo larger than the edit is resized to the edit's size
    big = _person(96, 128)
    small = torch.nn.functional.interpolate(big[None], size=(48, 64), mode="bilinear", antialias=True)[0]
    resized = reward(_batch(_paste_product(small), _paste_product(small[[1, 2, 0]])), ["x"] * 2, person_images=[big] * 2)
    assert resized["person_preservation"][0] > 0.95 and resized["person_preservation"][1] < 0.75
    with pytest.raises(ValueError, match="person_images"):
        reward(_batch(kept), ["x"])


@pytest.mark.parametrize("options, bad", [
    ({"mode": "face"}, "options.mode"), ({"metric": "lpips"}, "options.metric"),
    ({"box": [0.5, 0.1, 0.2, 0.9]}, "options.box"), ({"box": [0, 0, 1, 1]}, "options.box"),
    ({"max_region": 1.5}, "options.max_region"), ({"diff_threshold": 0}, "options.diff_threshold"),
    ({"resolution": 4}, "options.resolution"), ({"l1_scale": 0}, "options.l1_scale"), ({"size": 3}, "unknown option"),
])
def test_bad_options_are_one_line_errors(options, bad):
    with pytest.raises(PreflightError, match=bad) as err:
        preflight("person_preservation", options)
    assert "\n" not in str(err.value) and "person_preservation" in str(err.value)


def test_image_similarity_scores_the_edit_against_product_images(tmp_path):
    """``image_similarity`` with ``options.condition: product_images`` compares each edit with its product."""
    clip = save_tiny_hf_clip(tmp_path / "clip", seed=0)
    spec = {"components": [{"name": "image_similarity", "options": {"model": str(clip), "device": "cpu",
                                                                    "condition": "product_images"}}]}
    reward = build(spec)
    products = _batch(_person(seed=3), _person(seed=4).flip(1))
    edits = _batch(products[0], products[0])  # the first edit shows product 0, the second does not show product 1
    out = reward(edits, ["hold it"] * 2, product_images=list(products), person_images=[_person()] * 2)
    assert out["image_similarity"][0] == pytest.approx(1.0, abs=1e-4)
    assert out["image_similarity"][1] < out["image_similarity"][0] - 1e-3
    with pytest.raises(ValueError, match="product_images"):
        reward(edits, ["hold it"] * 2, person_images=[_person()] * 2)
