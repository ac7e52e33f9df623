"""``vividness``: mean saturation + luminance contrast of an image, the bias the shapes world plants.

The shapes world's simulated annotator prefers vivid images (see ``slas.shapes.pretrain``), so its
learned "HPS" proxy rewards vividness for its own sake. Added to a composite with weight 0, this reward
trains nothing and is logged every iteration (``reward/vividness/mean``) and in every held-out proxy
evaluation, which shows the biased term drifting as a method games the proxy.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from slas.rewards.registry import register


def vividness(images: Tensor) -> Tensor:
    """The simulated annotator's taste: mean saturation + luminance contrast of [B, 3, H, W] in [0, 1]."""
    mx, mn = images.amax(1), images.amin(1)
    sat = ((mx - mn) / mx.clamp_min(1e-6)).mean((1, 2))
    lum = (0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]).flatten(1)
    return sat + 2.0 * lum.std(1)


@register("vividness")
def build_vividness(**options: Any):
    """No options: the statistic is fixed (it is the world's planted bias, not a model)."""
    if options:
        raise ValueError(f"reward 'vividness' takes no options, got {sorted(options)}")

    def score(images: Tensor, prompts: list[str], **conditions: Any) -> dict[str, Tensor]:
        return {"vividness": vividness(images.float())}

    return score
