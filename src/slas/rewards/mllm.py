"""Multimodal-LLM judge (``"mllm_judge"``): Qwen2.5-VL scores each image on a list of criteria.

Each criterion is a versioned prompt template (``templates/<set>/<version>/<criterion>.txt``). For
every generated image the judge builds ONE chat message holding the template's images (for the
product-in-hand criteria: the person image, the product image and the edited result, each after a
short label) followed by the criterion's text (``{prompt}`` is replaced by the sample's prompt), and
reads the score from the logits of the first answer token of ONE forward pass (no sampling, no
``generate``):

* ``kind: scale``: ``p = softmax(logits[["0", "1", "2", "3", "4", "5"]])``, score
  ``sum_k k * p_k / 5`` in [0, 1] (the expected digit, as Edit-R1 scores its MLLM reward);
* ``kind: yesno``: ``P("Yes") / (P("Yes") + P("No"))`` = ``softmax(logits[["Yes", "No"]])[0]``.

Every criterion is its own output key (``{"presence": [N], "similarity": [N], "interaction": [N]}``),
so a composite can weight them (``weight: {presence: 1.0, interaction: 0.5}``).

Template files start with ``#`` header lines, ``# key: value`` for the known keys (``kind``:
``scale`` | ``yesno``, required; ``images``: comma-separated roles from ``person``, ``product``,
``result`` in message order, default ``result``; ``description``), then the instruction text.

Options: ``model`` (local dir or cached hub id, default ``Qwen/Qwen2.5-VL-7B-Instruct``; never
downloaded), ``revision``, ``criteria`` (default: ``presence``, ``similarity``, ``interaction`` for
the built-in set; every template of a ``templates_dir``), ``template_set`` (``"product_in_hand"``),
``template_version`` (``"v1"``), ``templates_dir`` (a directory of user ``<criterion>.txt``
templates, replacing the built-in set), ``device``, ``dtype``, ``batch_size`` (queries per forward
pass), ``min_pixels`` / ``max_pixels`` (per image, for ``qwen_vl_utils`` and the image processor;
default the processor's), ``attn_implementation``. Conditions: ``person_images`` /
``product_images`` (``[N, 3, H, W]`` tensors in [0, 1] or lists of ``N`` PIL images, ``[3, H, W]``
tensors or paths), needed when a chosen template shows them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from slas.errors import SlasError
from slas.preflight import PreflightError, resolve_model_path
from slas.rewards.options import check_common_options, checked_factory, load_image_batch
from slas.rewards.registry import register
from slas.torch_utils import resolve_device, resolve_dtype

__all__ = [
    "ANSWER_TOKENS",
    "DEFAULT_CRITERIA",
    "DEFAULT_MODEL",
    "IMAGE_CONDITIONS",
    "TEMPLATES_ROOT",
    "JudgeTemplate",
    "QwenVLJudge",
    "TemplateError",
    "load_template",
    "load_templates",
    "score_from_logits",
]

DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
TEMPLATES_ROOT = Path(__file__).parent / "templates"
DEFAULT_TEMPLATE_SET = "product_in_hand"
DEFAULT_TEMPLATE_VERSION = "v1"
DEFAULT_CRITERIA: dict[str, tuple[str, ...]] = {"product_in_hand": ("presence", "similarity", "interaction")}
"""Default criteria (and output order) of the built-in template sets."""

ANSWER_TOKENS: dict[str, tuple[str, ...]] = {
    "scale": ("0", "1", "2", "3", "4", "5"),
    "yesno": ("Yes", "No"),
}
"""The answer tokens each template kind reads from the first-token logits."""

IMAGE_CONDITIONS: dict[str, str | None] = {"person": "person_images", "product": "product_images", "result": None}
"""Image roles a template may show, and the condition each comes from (``result``: the judged images)."""

_ROLE_LABELS = {"person": "Person image:", "product": "Product image:", "result": "Edited image:"}
_HEADER_KEYS = ("kind", "images", "description")
_HEADER_LINE = re.compile(r"^#\s*([A-Za-z_][\w-]*)\s*:\s*(.*?)\s*$")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_]\w*)\}")


# ----------------------------------------------------------------------------------------- templates


class TemplateError(SlasError, ValueError):
    """A judge template is missing or malformed (one line naming the file and the problem)."""


@dataclass(frozen=True)
class JudgeTemplate:
    """One criterion: its answer ``kind``, the image ``roles`` in message order and the instruction ``text``."""

    name: str
    kind: str
    roles: tuple[str, ...]
    text: str
    description: str = ""
    path: str = ""

    def render(self, prompt: str) -> str:
        return self.text.replace("{prompt}", prompt)


def load_template(path: str | Path, name: str | None = None) -> JudgeTemplate:
    """Parse and validate one template file (raises :class:`TemplateError`)."""
    p = Path(path)
    if not p.is_file():
        raise TemplateError(f"judge template not found: {p}")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise TemplateError(f"judge template {p}: cannot read it ({e})") from None
    header: dict[str, str] = {}
    body_start = len(lines)
    for i, line in enumerate(lines):
        if not line.startswith("#"):
            body_start = i
            break
        m = _HEADER_LINE.match(line)
        if m is None:
            continue  # a plain comment
        key, value = m.group(1).lower(), m.group(2)
        if key not in _HEADER_KEYS:
            raise TemplateError(f"judge template {p}: unknown header field {key!r} (known: {', '.join(_HEADER_KEYS)})")
        header[key] = value
    text = "\n".join(lines[body_start:]).strip()
    kind = header.get("kind", "").strip().lower()
    if not kind:
        raise TemplateError(f"judge template {p}: missing '# kind: ...' header line (one of {sorted(ANSWER_TOKENS)})")
    if kind not in ANSWER_TOKENS:
        raise TemplateError(f"judge template {p}: unknown kind {kind!r}; expected one of {sorted(ANSWER_TOKENS)}")
    roles = tuple(r.strip().lower() for r in header.get("images", "result").split(",") if r.strip())
    bad = [r for r in roles if r not in IMAGE_CONDITIONS]
    if bad:
        raise TemplateError(f"judge template {p}: unknown image role(s) {bad}; expected some of {list(IMAGE_CONDITIONS)}")
    if len(set(roles)) != len(roles) or "result" not in roles:
        raise TemplateError(f"judge template {p}: images must list distinct roles including 'result', got {list(roles)}")
    if not text:
        raise TemplateError(f"judge template {p}: no instruction text after the header")
    unknown = sorted({m.group(1) for m in _PLACEHOLDER.finditer(text)} - {"prompt"})
    if unknown:
        raise TemplateError(f"judge template {p}: unknown placeholder(s) {unknown}; only {{prompt}} is substituted")
    return JudgeTemplate(
        name=name or p.stem, kind=kind, roles=roles, text=text, description=header.get("description", ""), path=str(p)
    )


def template_dir(
    template_set: str = DEFAULT_TEMPLATE_SET,
    template_version: str = DEFAULT_TEMPLATE_VERSION,
    templates_dir: str | Path | None = None,
) -> Path:
    """The directory holding the chosen templates (``templates_dir``, else the built-in set/version)."""
    if templates_dir is not None:
        d = Path(templates_dir).expanduser()
        if not d.is_dir():
            raise TemplateError(f"templates_dir {d} is not a directory")
        return d
    root = TEMPLATES_ROOT / str(template_set)
    if not root.is_dir():
        known = sorted(p.name for p in TEMPLATES_ROOT.iterdir() if p.is_dir())
        raise TemplateError(f"unknown template_set {template_set!r}; built-in sets: {known}")
    d = root / str(template_version)
    if not d.is_dir():
        known = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise TemplateError(f"unknown template_version {template_version!r} of {template_set}; available: {known}")
    return d


def load_templates(
    criteria: Sequence[str] | None = None,
    template_set: str = DEFAULT_TEMPLATE_SET,
    template_version: str = DEFAULT_TEMPLATE_VERSION,
    templates_dir: str | Path | None = None,
) -> dict[str, JudgeTemplate]:
    """``{criterion: template}`` in ``criteria`` order.

    Default criteria: :data:`DEFAULT_CRITERIA` of a built-in set, every ``*.txt`` (sorted) of a
    ``templates_dir``.
    """
    d = template_dir(template_set, template_version, templates_dir)
    available = sorted(p.stem for p in d.glob("*.txt"))
    if criteria is None:
        if not available:
            raise TemplateError(f"no judge templates (*.txt) in {d}")
        default = DEFAULT_CRITERIA.get(str(template_set)) if templates_dir is None else None
        criteria = list(default) if default else available
    if not isinstance(criteria, (list, tuple)) or not criteria or not all(isinstance(c, str) and c for c in criteria):
        raise TemplateError(f"criteria must be a non-empty list of template names, got {criteria!r}")
    if len(set(criteria)) != len(criteria):
        raise TemplateError(f"criteria has duplicates: {list(criteria)}")
    missing = [c for c in criteria if c not in available]
    if missing:
        raise TemplateError(f"no template for criteria {missing} in {d}; available: {available}")
    return {c: load_template(d / f"{c}.txt", c) for c in criteria}


# ------------------------------------------------------------------------------------------- scoring


def score_from_logits(logits: Tensor, kind: str, token_ids: Sequence[int]) -> Tensor:
    """First-answer-token ``logits [B, V]`` -> scores ``[B]`` in [0, 1] (float32).

    ``scale``: ``token_ids`` are the ids of ``"0"`` .. ``"5"``; the expected digit over the softmax
    restricted to them, divided by 5. ``yesno``: ids of ``("Yes", "No")``; ``P(Yes)`` renormalised.
    """
    sel = logits.float()[:, list(token_ids)]
    p = torch.softmax(sel, dim=-1)
    if kind == "scale":
        levels = torch.arange(len(token_ids), dtype=p.dtype, device=p.device)
        return (p * levels).sum(-1) / (len(token_ids) - 1)
    if kind == "yesno":
        return p[:, 0]
    raise ValueError(f"unknown template kind {kind!r}")


# --------------------------------------------------------------------------------------------- judge


class QwenVLJudge:
    """Qwen2.5-VL judge; one output per criterion (see the module docstring)."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        revision: str | None = None,
        criteria: Sequence[str] | None = None,
        template_set: str = DEFAULT_TEMPLATE_SET,
        template_version: str = DEFAULT_TEMPLATE_VERSION,
        templates_dir: str | None = None,
        device: str = "auto",
        dtype: str = "bfloat16",
        batch_size: int = 8,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        attn_implementation: str | None = None,
    ) -> None:
        path, templates = _check_mllm(
            model=model, revision=revision, criteria=criteria, template_set=template_set,
            template_version=template_version, templates_dir=templates_dir, device=device, dtype=dtype,
            batch_size=batch_size, min_pixels=min_pixels, max_pixels=max_pixels,
        )
        from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

        self.templates = templates
        self.device, self.dtype, self.batch_size = resolve_device(device), resolve_dtype(dtype), batch_size
        kwargs: dict[str, Any] = {"dtype": self.dtype}
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        net = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, **kwargs)
        self.model = net.to(self.device).eval().requires_grad_(False)
        self.processor = AutoProcessor.from_pretrained(path)
        tok = self.processor.tokenizer
        tok.padding_side = "left"  # the last position must be the first generated token for every row
        if tok.pad_token is None:
            raise ValueError(f"mllm_judge: the tokenizer of {path} has no pad token; batching needs one")
        ip = self.processor.image_processor
        self.patch_size = int(ip.patch_size)
        self.min_pixels = int(min_pixels if min_pixels is not None else _size_field(ip.size, "shortest_edge"))
        self.max_pixels = int(max_pixels if max_pixels is not None else _size_field(ip.size, "longest_edge"))
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"mllm_judge: min_pixels {self.min_pixels} > max_pixels {self.max_pixels}")
        self.token_ids = {kind: self._single_token_ids(words) for kind, words in ANSWER_TOKENS.items()
                          if any(t.kind == kind for t in templates.values())}

    @property
    def criteria(self) -> list[str]:
        return list(self.templates)

    def _single_token_ids(self, words: Sequence[str]) -> list[int]:
        ids = []
        for w in words:
            enc = self.processor.tokenizer.encode(w, add_special_tokens=False)
            if len(enc) != 1:
                raise ValueError(f"mllm_judge: answer {w!r} is not a single token of this tokenizer ({enc})")
            ids.append(int(enc[0]))
        return ids

    # ------------------------------------------------------------------------------------ inputs

    def _role_images(self, images: Tensor, conditions: Mapping[str, Any]) -> dict[str, list[Any]]:
        """``{role: [N PIL images]}`` for every role a chosen template shows (8-bit, as a saved image)."""
        from slas.images import to_pil

        n = images.shape[0]
        roles = {r for t in self.templates.values() for r in t.roles}
        out: dict[str, list[Any]] = {}
        for role in roles:
            cond = IMAGE_CONDITIONS[role]
            if cond is None:
                batch: Any = images
            else:
                batch = conditions.get(cond)
                if batch is None:
                    needs = sorted(c for c, t in self.templates.items() if role in t.roles)
                    raise ValueError(
                        f"mllm_judge: criteria {needs} need the {cond!r} condition ({role} images: a [N, 3, H, W] "
                        f"tensor in [0, 1] or a list of N PIL images/paths); got conditions {sorted(conditions)}"
                    )
                if isinstance(batch, (list, tuple)) and all(_is_pil(b) for b in batch):
                    if len(batch) != n:
                        raise ValueError(f"{cond}: {len(batch)} images for {n} generated images")
                    out[role] = [b.convert("RGB") for b in batch]
                    continue
                batch = load_image_batch(batch, n, name=cond)
            # HWC, so that slas.images never mistakes a 3- or 4-pixel-wide image for channels-last
            out[role] = [to_pil(x.permute(1, 2, 0)) for x in batch]
        return out

    def _messages(self, criterion: str, prompt: str, role_images: Mapping[str, list[Any]], i: int) -> list[dict]:
        t = self.templates[criterion]
        content: list[dict[str, Any]] = []
        for role in t.roles:
            content.append({"type": "text", "text": _ROLE_LABELS[role]})
            content.append(self.image_part(role_images[role][i]))
        content.append({"type": "text", "text": t.render(prompt)})
        return [{"role": "user", "content": content}]

    def build_inputs(
        self, queries: Sequence[tuple[str, int]], prompts: Sequence[str], role_images: Mapping[str, list[Any]]
    ) -> Any:
        """Processor outputs (left-padded, on the judge's device) for ``(criterion, sample index)`` queries."""
        return self.encode([self._messages(c, prompts[i], role_images, i) for c, i in queries])

    def image_part(self, image: Any) -> dict[str, Any]:
        """One image entry of a chat message, carrying the judge's pixel limits (read by ``qwen_vl_utils``)."""
        return {"type": "image", "image": image, "min_pixels": self.min_pixels, "max_pixels": self.max_pixels}

    def encode(self, messages: Sequence[list[dict]]) -> Any:
        """Processor outputs (left-padded, on the judge's device) for a batch of chat ``messages``; other
        evaluators (``slas.eval.unigenbench``) build their own messages and share this encoding."""
        from qwen_vl_utils import process_vision_info

        texts = [
            self.processor.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages
        ]
        image_inputs, _ = process_vision_info(messages, image_patch_size=self.patch_size)
        inputs = self.processor(
            text=texts,
            images=image_inputs,
            padding=True,
            padding_side="left",
            size={"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels},
            return_tensors="pt",
        )
        if not bool(inputs["attention_mask"][:, -1].all()):
            raise RuntimeError("mllm_judge: the processor did not left-pad the batch")
        return inputs.to(self.device)

    def prepare(self, images: Tensor, prompts: Sequence[str], criterion: str, **conditions: Any) -> Any:
        """Model inputs for one criterion over the whole batch (what :meth:`__call__` feeds, unchunked)."""
        role_images = self._role_images(images, conditions)
        return self.build_inputs([(criterion, i) for i in range(images.shape[0])], prompts, role_images)

    # ------------------------------------------------------------------------------------ scoring

    @torch.inference_mode()
    def first_token_logits(self, inputs: Mapping[str, Any]) -> Tensor:
        """Logits ``[B, V]`` (float32) of the first answer token: one forward pass, last position."""
        out = self.model(**inputs, use_cache=False, logits_to_keep=1)
        return out.logits[:, -1, :].float()

    def answer_token_ids(self, kind: str) -> list[int]:
        """The ids of ``kind``'s answer tokens (:data:`ANSWER_TOKENS`), each checked to be one token."""
        if kind not in self.token_ids:
            self.token_ids[kind] = self._single_token_ids(ANSWER_TOKENS[kind])
        return self.token_ids[kind]

    @torch.inference_mode()
    def generate_text(self, inputs: Mapping[str, Any], max_new_tokens: int) -> list[str]:
        """Greedy answers to encoded queries, decoded without special tokens (for evaluators that parse a
        written verdict instead of reading first-token logits)."""
        out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        return self.processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    @torch.inference_mode()
    def __call__(self, images: Tensor, prompts: list[str], **conditions: Any) -> dict[str, Tensor]:
        n = images.shape[0]
        if len(prompts) != n:
            raise ValueError(f"mllm_judge: {len(prompts)} prompts for {n} images")
        role_images = self._role_images(images, conditions)
        queries = [(c, i) for c in self.templates for i in range(n)]
        scores = {c: torch.empty(n, dtype=torch.float32) for c in self.templates}
        for start in range(0, len(queries), self.batch_size):
            chunk = queries[start : start + self.batch_size]
            logits = self.first_token_logits(self.build_inputs(chunk, prompts, role_images))
            for crit in dict.fromkeys(c for c, _ in chunk):
                rows = [j for j, (c, _) in enumerate(chunk) if c == crit]
                kind = self.templates[crit].kind
                s = score_from_logits(logits[rows], kind, self.token_ids[kind]).cpu()
                scores[crit][torch.tensor([chunk[j][1] for j in rows])] = s
        return scores


def _is_pil(x: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        return False
    return isinstance(x, Image.Image)


def _size_field(size: Any, name: str) -> int:
    """``size[name]`` of an image processor (a dict in transformers 4, a ``SizeDict`` in 5: both have ``get``)."""
    value = size.get(name) if size is not None else None
    if value is None:
        raise ValueError(f"mllm_judge: the image processor's size has no {name!r} ({size})")
    return int(value)


def _check_mllm(
    *, model: str, revision: str | None, criteria: Sequence[str] | None, template_set: str, template_version: str,
    templates_dir: str | None, device: str, dtype: str, batch_size: int, min_pixels: int | None,
    max_pixels: int | None, **_: Any,
) -> tuple[str, dict[str, JudgeTemplate]]:
    """Preflight of the ``mllm_judge`` options: ``(model dir, templates)``; nothing is loaded."""
    check_common_options("mllm_judge", device=device, dtype=dtype, batch_size=batch_size)
    for key, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise PreflightError(f"reward mllm_judge options.{key}: must be a positive integer, got {value!r}")
    if min_pixels is not None and max_pixels is not None and min_pixels > max_pixels:
        raise PreflightError(f"reward mllm_judge options: min_pixels {min_pixels} > max_pixels {max_pixels}")
    try:
        templates = load_templates(criteria, template_set, template_version, templates_dir)
    except TemplateError as e:
        raise PreflightError(f"reward mllm_judge options: {e}") from None
    path = resolve_model_path(model, revision, key="reward mllm_judge options.model", marker="config.json")
    return path, templates


_factory, _preflight = checked_factory("mllm_judge", QwenVLJudge, _check_mllm)
register("mllm_judge", preflight=_preflight)(_factory)
