"""Object detectors for GenEval scoring: images + their metadata rows -> objects with class, colour and box.

A detector is any callable ``detector(images, records) -> list[list[object]]`` (one list per image, each
object with ``shape`` (the class name), ``color`` and ``box`` (x0, y0, x1, y1 pixels), as
:class:`slas.eval.geneval.DetectedObject` reads them). It gets the records because GenEval's thresholds
and colour checks depend on the prompt (a stricter confidence for ``counting``; colour only where asked).
``ranked = True`` says the objects come in confidence order, so GenEval's rules judge colour and position
on the most confident ``count`` objects of each class (see :func:`slas.eval.geneval.evaluate`).

* ``shapes``: the shapes world's own judge (:func:`slas.shapes.detect.detect`), exact on that world.
* ``mask2former``: a COCO instance-segmentation ``Mask2FormerForUniversalSegmentation`` from local weights,
  with the settings of GenEval's ``evaluation/evaluate_images.py``: confidence 0.3 (0.9 for ``counting``
  prompts), at most 16 objects per class, optional overlap suppression (off by default, as there), and each
  object's colour by CLIP zero-shot over GenEval's 10 colours on the object's crop (the mask pasted on a
  #999 grey background, cropped to the box), with its three prompt templates averaged.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from slas.errors import SlasError

DETECTORS = ("shapes", "mask2former")
MASK2FORMER_HUB_ID = "facebook/mask2former-swin-small-coco-instance"
CLIP_HUB_ID = "openai/clip-vit-large-patch14"  # GenEval's colour model is ViT-L-14 (OpenAI weights)
THRESHOLD = 0.3
COUNTING_THRESHOLD = 0.9
MAX_OBJECTS = 16
MAX_OVERLAP = 1.0  # GenEval's NMS threshold: 1 keeps every box
MAX_DETECTIONS = 100  # mmdetection's Mask2Former test setting: the 100 best (query, class) pairs per image
BACKGROUND = "#999"
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
COLOR_TEMPLATES = ("a photo of a {color} {name}", "a photo of a {color}-colored {name}", "a photo of a {color} object")
# transformers' COCO labels that GenEval's object_names.txt spells out (same class index, longer name)
GENEVAL_NAMES = {"mouse": "computer mouse", "remote": "tv remote", "keyboard": "computer keyboard"}
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)
"""The 80 COCO instance classes in transformers' ``id2label`` order (what the tiny test model is given)."""


class DetectorError(SlasError, ValueError):
    """A detector that cannot be used as asked (unknown name, missing weights); one line with the fix."""


class Detector(Protocol):
    """What the GenEval runner needs of a detector."""

    ranked: bool
    batch_size: int

    def __call__(self, images: Sequence[Any], records: Sequence[dict]) -> list[list[Any]]: ...


# ---------------------------------------------------------------------------------------------- checks


def _fetch_hint(option: str, hub_id: str) -> str:
    return f"fetch it on a connected machine with: hf download {hub_id} --local-dir DIR, then pass {option} DIR"


def _model_dir(options: dict[str, Any], key: str, option: str, hub_id: str, marker: str = "config.json") -> Path:
    """A local weights dir named by ``option``, or one line saying how to fetch it."""
    value = options.get(key)
    if not value:
        raise DetectorError(f"{option} is required by --detector mask2former; {_fetch_hint(option, hub_id)}")
    path = Path(value).expanduser()
    if not (path / marker).is_file():
        raise DetectorError(f"{option}: {path} holds no {marker}; {_fetch_hint(option, hub_id)}")
    return path


def class_names(model_dir: Path) -> list[str]:
    """The detector's class names by index, from its config's ``id2label``, spelled as GenEval spells them."""
    try:
        id2label = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))["id2label"]
        names = [str(id2label[k]) for k in sorted(id2label, key=int)]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DetectorError(f"--detector-model: {model_dir}/config.json has no readable id2label ({exc})") from None
    return [GENEVAL_NAMES.get(n, n) for n in names]


def check_detector(name: str, options: dict[str, Any]) -> None:
    """Refuse an unknown detector or missing weights before any model loads."""
    if name not in DETECTORS:
        raise DetectorError(f"--detector: {name!r} is not a detector; choose one of {', '.join(DETECTORS)}")
    if name == "mask2former":
        class_names(_model_dir(options, "detector_model", "--detector-model", MASK2FORMER_HUB_ID))
        _model_dir(options, "clip_model", "--clip-model", CLIP_HUB_ID)


def check_classes(name: str, options: dict[str, Any], records: Sequence[dict]) -> None:
    """Every class the prompts name must be one the detector knows (else it could never be found)."""
    if name != "mask2former":
        return
    known = set(class_names(Path(options["detector_model"]).expanduser()))
    for rec in records:
        for req in [*rec["include"], *rec.get("exclude", [])]:
            if req["class"] not in known:
                raise DetectorError(f"--metadata: class {req['class']!r} (prompt {rec['prompt']!r}) is not one of "
                                    "the detector's id2label classes")


def build_detector(name: str, options: dict[str, Any]) -> Detector:
    """The detector ``name`` with its models loaded (``options``: ``detector_model``, ``clip_model``, ...)."""
    check_detector(name, options)
    if name == "shapes":
        return ShapesDetector()
    return Mask2FormerDetector.load(options["detector_model"], options["clip_model"], device=options.get("device"))


# ---------------------------------------------------------------------------------------------- shapes


class ShapesDetector:
    """The shapes world's judge: colour segmentation + shape templates; exact, so nothing is ranked."""

    ranked = False
    batch_size = 64

    def __call__(self, images: Sequence[Any], records: Sequence[dict]) -> list[list[Any]]:
        from slas.shapes.detect import detect

        return [detect(image) for image in images]


# ---------------------------------------------------------------------------------------------- mask2former


@dataclass(frozen=True)
class ScoredObject:
    """One COCO detection: class, colour (``""`` where the prompt asks none), box in pixels and confidence."""

    shape: str
    color: str
    box: tuple[float, float, float, float]
    score: float


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """GenEval's IoU of two (x0, y0, x1, y1) boxes, counting pixels inclusively (``+ 1``)."""
    def area(box: Sequence[float]) -> float:
        return max(box[2] - box[0] + 1, 0) * max(box[3] - box[1] + 1, 0)

    inter = area([max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])])
    union = area(a) + area(b) - inter
    return inter / union if union else 0.0


def keep_objects(scores: Sequence[float], boxes: Sequence[Sequence[float]], threshold: float,
                 max_objects: int = MAX_OBJECTS, max_overlap: float = MAX_OVERLAP) -> list[int]:
    """Indices kept for one class, most confident first: above ``threshold``, at most ``max_objects``, and
    (when ``max_overlap`` < 1) none overlapping a kept one by ``max_overlap`` IoU or more."""
    order = sorted((i for i, s in enumerate(scores) if s > threshold), key=lambda i: -scores[i])[:max_objects]
    kept: list[int] = []
    while order:
        best = order.pop(0)
        kept.append(best)
        if max_overlap < 1:
            order = [i for i in order if box_iou(boxes[best], boxes[i]) < max_overlap]
    return kept


def mask_box(mask: Any) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of a boolean [H, W] mask (x1, y1 exclusive), zeros when empty (mmdetection's rule)."""
    import torch

    ys, xs = torch.nonzero(mask, as_tuple=True)
    if len(xs) == 0:
        return (0.0, 0.0, 0.0, 0.0)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


class Mask2FormerDetector:
    """GenEval's detector (Mask2Former, COCO instances) and colour classifier (CLIP zero-shot), from transformers."""

    ranked = True
    batch_size = 8

    def __init__(self, model: Any, processor: Any, clip: Any, clip_processor: Any, tokenizer: Any,
                 names: list[str], device: Any) -> None:
        self.model, self.processor, self.names, self.device = model, processor, names, device
        self.clip, self.clip_processor, self.tokenizer = clip, clip_processor, tokenizer
        self._color_heads: dict[str, Any] = {}

    @classmethod
    def load(cls, detector_dir: str | Path, clip_dir: str | Path, *, device: str | None = None) -> Mask2FormerDetector:
        """Both models from local dirs (never downloads), in eval mode on ``device`` (default: CUDA if present)."""
        import torch
        from transformers import (
            AutoImageProcessor,
            AutoTokenizer,
            CLIPImageProcessor,
            CLIPModel,
            Mask2FormerForUniversalSegmentation,
        )

        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = Mask2FormerForUniversalSegmentation.from_pretrained(str(detector_dir), local_files_only=True)
        processor = AutoImageProcessor.from_pretrained(str(detector_dir), local_files_only=True)
        clip = CLIPModel.from_pretrained(str(clip_dir), local_files_only=True)
        clip_processor = CLIPImageProcessor.from_pretrained(str(clip_dir), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(clip_dir), local_files_only=True)
        return cls(model.to(dev).eval(), processor, clip.to(dev).eval(), clip_processor, tokenizer,
                   class_names(Path(detector_dir)), dev)

    def __call__(self, images: Sequence[Any], records: Sequence[dict]) -> list[list[ScoredObject]]:
        import torch

        from slas.images import to_pil

        pils = [to_pil(image).convert("RGB") for image in images]
        with torch.no_grad():
            inputs = self.processor(images=pils, return_tensors="pt")
            out = self.model(pixel_values=inputs["pixel_values"].to(self.device))
        return [self._objects(pil, out.class_queries_logits[i], out.masks_queries_logits[i],
                              tuple(inputs["pixel_values"].shape[-2:]), rec)
                for i, (pil, rec) in enumerate(zip(pils, records, strict=True))]

    def _instances(self, logits: Any, mask_logits: Any, input_size: tuple[int, int], size: tuple[int, int]) -> tuple:
        """mmdetection's Mask2Former instance read-out: the best (query, class) pairs, each scored by its class
        probability times its mask's mean foreground probability; masks at the image's own size."""
        import torch.nn.functional as F

        probs = logits.float().softmax(-1)[:, :-1]  # the last class is "no object"
        n_classes = probs.shape[1]
        top, index = probs.flatten().topk(min(MAX_DETECTIONS, probs.numel()))
        labels, queries = index % n_classes, index // n_classes
        masks = F.interpolate(mask_logits[queries][None].float(), size=input_size, mode="bilinear", align_corners=False)
        masks = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)[0]
        binary = masks > 0
        mask_score = (masks.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
        return (top * mask_score).cpu(), labels.cpu(), binary.cpu()

    def _objects(self, image: Any, logits: Any, mask_logits: Any, input_size: tuple[int, int],
                 record: dict) -> list[ScoredObject]:
        """The kept objects of one image, most confident first, coloured where ``record`` asks for a colour."""
        scores, labels, masks = self._instances(logits, mask_logits, input_size, (image.height, image.width))
        threshold = COUNTING_THRESHOLD if record["tag"] == "counting" else THRESHOLD
        boxes = [mask_box(m) for m in masks]
        kept: list[int] = []
        for label in sorted(set(labels.tolist())):
            idx = [i for i in range(len(labels)) if labels[i] == label]
            kept += [idx[j] for j in keep_objects([float(scores[i]) for i in idx], [boxes[i] for i in idx], threshold)]
        kept.sort(key=lambda i: -float(scores[i]))
        wants_color = {req["class"] for req in record["include"] if "color" in req}
        objects = []
        for i in kept:
            name = self.names[int(labels[i])]
            color = self.color_of(image, masks[i], boxes[i], name) if name in wants_color else ""
            objects.append(ScoredObject(name, color, boxes[i], float(scores[i])))
        return objects

    def crop(self, image: Any, mask: Any, box: Sequence[float]) -> Any:
        """GenEval's colour crop: the object's pixels over a grey (#999) background, cut to its box."""
        import numpy as np
        from PIL import Image

        blank = Image.new("RGB", image.size, color=BACKGROUND)
        alpha = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255)
        return Image.composite(image, blank, alpha).crop(tuple(box))

    def color_head(self, name: str) -> Any:
        """The zero-shot colour classifier of class ``name``: per colour, the normalised mean of the
        normalised text embeddings of GenEval's three templates (cached per class)."""
        import torch

        if name not in self._color_heads:
            rows = []
            for color in COLORS:
                texts = [t.format(color=color, name=name) for t in COLOR_TEMPLATES]
                tokens = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(self.device)
                with torch.no_grad():
                    emb = _features(self.clip.get_text_features(**tokens))
                emb = torch.nn.functional.normalize(emb.float(), dim=-1).mean(0)
                rows.append(torch.nn.functional.normalize(emb, dim=-1))
            self._color_heads[name] = torch.stack(rows)
        return self._color_heads[name]

    def color_of(self, image: Any, mask: Any, box: Sequence[float], name: str) -> str:
        """The colour CLIP finds most likely for the object's crop."""
        import torch

        pixels = self.clip_processor(images=self.crop(image, mask, box), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            emb = _features(self.clip.get_image_features(pixel_values=pixels.to(self.device)))
        emb = torch.nn.functional.normalize(emb.float(), dim=-1)
        return COLORS[int((emb @ self.color_head(name).T).argmax(-1)[0])]


def _features(out: Any) -> Any:
    """Projected CLIP embeddings from ``get_*_features``: a tensor (transformers 4) or its ``pooler_output`` (5)."""
    return out if hasattr(out, "shape") else out.pooler_output


__all__ = [
    "COCO_CLASSES",
    "COLORS",
    "COLOR_TEMPLATES",
    "DETECTORS",
    "Detector",
    "DetectorError",
    "Mask2FormerDetector",
    "ScoredObject",
    "ShapesDetector",
    "box_iou",
    "build_detector",
    "check_classes",
    "check_detector",
    "keep_objects",
]
