"""MLLM judge reward (``mllm_judge``) on a tiny random Qwen2.5-VL built offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import slas.rewards.mllm as mllm  # registers "mllm_judge"
from slas.preflight import PreflightError
from slas.rewards import build, registry
from slas.testing.tiny_qwen import build_tiny_qwen_tokenizer, save_tiny_qwen_vl

CRITERIA = ["presence", "similarity", "interaction"]
DIGITS = ["0", "1", "2", "3", "4", "5"]

YESNO_TEMPLATE = """\
# kind: yesno
# images: product, result
# description: is the product held in the edited image?
Is the product of the product image held by the person in the edited image? Instruction: {prompt}
Answer Yes or No.
"""
QUALITY_TEMPLATE = """\
# kind: scale
# images: result
Rate the visual quality of the edited image for "{prompt}" from 0 (broken) to 5 (flawless).
Answer with a single digit from 0 to 5.
"""


@pytest.fixture(scope="module")
def tiny_qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_qwen_vl(tmp_path_factory.mktemp("tiny_qwen_vl"), seed=0)


@pytest.fixture(scope="module")
def user_templates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("judge_templates")
    (d / "held.txt").write_text(YESNO_TEMPLATE)
    (d / "quality.txt").write_text(QUALITY_TEMPLATE)
    return d


def _options(model_dir: Path, **extra) -> dict:
    return {"model": str(model_dir), "device": "cpu", "dtype": "float32", "batch_size": 4, **extra}


def _build_judge(model_dir: Path, **extra) -> mllm.QwenVLJudge:
    reward = build({"components": [{"name": "mllm_judge", "options": _options(model_dir, **extra)}]})
    judge = reward.components[0][2]
    assert isinstance(judge, mllm.QwenVLJudge)
    return judge


@pytest.fixture(scope="module")
def judge(tiny_qwen_dir: Path) -> mllm.QwenVLJudge:
    return _build_judge(tiny_qwen_dir)


@pytest.fixture(scope="module")
def yesno_judge(tiny_qwen_dir: Path, user_templates: Path) -> mllm.QwenVLJudge:
    return _build_judge(tiny_qwen_dir, templates_dir=str(user_templates), criteria=["held", "quality"])


@pytest.fixture(scope="module")
def batch() -> dict:
    """4 samples whose person/product images differ in size, so the queries need padding."""
    g = torch.Generator().manual_seed(0)
    person_sizes = [(30, 30), (120, 60), (80, 110), (56, 84)]
    product_sizes = [(60, 60), (40, 90), (100, 100), (70, 30)]
    return {
        "images": torch.rand(4, 3, 48, 48, generator=g),
        "prompts": ["hold the bottle", "the woman holds the red sneaker in her left hand", "cup", "hold it"],
        "person_images": [torch.rand(3, *s, generator=g) for s in person_sizes],
        "product_images": [torch.rand(3, *s, generator=g) for s in product_sizes],
    }


def _conditions(b: dict, sl: slice = slice(None)) -> dict:
    return {"person_images": b["person_images"][sl], "product_images": b["product_images"][sl]}


def _generate_first_logits(judge: mllm.QwenVLJudge, inputs) -> torch.Tensor:
    with torch.inference_mode():
        out = judge.model.generate(
            **inputs, max_new_tokens=1, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
    return out.logits[0].float()


def _reference_score(logits: torch.Tensor, kind: str, tokenizer) -> torch.Tensor:
    """The score formulas, written out independently of the judge."""
    if kind == "scale":
        p = torch.softmax(logits[:, tokenizer.convert_tokens_to_ids(DIGITS)], dim=-1)
        return (p * torch.arange(6.0)).sum(-1) / 5.0
    p_yes = torch.softmax(logits[:, tokenizer.convert_tokens_to_ids(["Yes", "No"])], dim=-1)
    return p_yes[:, 0]


# ------------------------------------------------------------------------------------- tiny model


def test_tiny_tokenizer_round_trips_and_answers_are_single_tokens(tiny_qwen_dir: Path) -> None:
    from transformers import AutoProcessor

    built = build_tiny_qwen_tokenizer()
    proc = AutoProcessor.from_pretrained(tiny_qwen_dir)
    loaded = proc.tokenizer
    assert type(loaded).__name__ == "Qwen2Tokenizer" and loaded.padding_side == "left"
    texts = [
        "Yes", "No", "0 1 2 3 4 5", "Not yes. 42 é ünïcode\n\n  tabs\t!",
        "<|im_start|>assistant\nYes<|im_end|><|endoftext|>",
        "<|vision_start|><|image_pad|><|image_pad|><|vision_end|>",
    ]
    for text in texts:
        assert loaded(text)["input_ids"] == built(text)["input_ids"], text
    for word in [*DIGITS, "Yes", "No"]:
        assert len(loaded.encode(word, add_special_tokens=False)) == 1, word
    assert loaded.eos_token == "<|im_end|>" and loaded.pad_token == "<|endoftext|>"
    assert proc.image_processor.patch_size == 14 and proc.image_processor.merge_size == 2
    msg = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    text = proc.apply_chat_template(msg, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n<|im_start|>assistant\n"
    )


# ------------------------------------------------------------------------------------------ scores


def test_each_criterion_is_a_component_in_unit_interval(judge: mllm.QwenVLJudge, batch: dict, tiny_qwen_dir) -> None:
    assert "mllm_judge" in registry.available()
    out = judge(batch["images"], batch["prompts"], **_conditions(batch))
    assert list(out) == CRITERIA
    for key, value in out.items():
        assert value.shape == (4,) and value.dtype == torch.float32, key
        assert torch.isfinite(value).all() and (value >= 0).all() and (value <= 1).all(), key
    # Through a composite with per-output weights: one labelled entry per criterion.
    spec = {"components": [{"name": "mllm_judge", "weight": {"presence": 1.0, "interaction": 0.5},
                            "options": _options(tiny_qwen_dir)}]}
    total = build(spec)(batch["images"], batch["prompts"], **_conditions(batch))
    assert set(total) == {f"mllm_judge/{c}" for c in CRITERIA} | {"total"}
    torch.testing.assert_close(total["total"], out["presence"] + 0.5 * out["interaction"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("criterion", ["presence", "interaction"])
def test_forward_score_equals_generate_score_scale(judge: mllm.QwenVLJudge, batch: dict, criterion: str) -> None:
    scores = judge(batch["images"], batch["prompts"], **_conditions(batch))[criterion]
    inputs = judge.prepare(batch["images"], batch["prompts"], criterion, **_conditions(batch))
    mask = inputs["attention_mask"]
    assert (mask == 0).any() and mask[:, -1].all()  # padded, on the left
    assert len({tuple(t) for t in inputs["image_grid_thw"].tolist()}) > 2  # images of several sizes
    tok = judge.processor.tokenizer
    batched = _reference_score(_generate_first_logits(judge, inputs), "scale", tok)
    torch.testing.assert_close(scores, batched, atol=1e-5, rtol=0)
    # ... and one sample at a time (no padding at all).
    for i in range(4):
        sl = slice(i, i + 1)
        one = judge.prepare(batch["images"][sl], batch["prompts"][sl], criterion, **_conditions(batch, sl))
        ref = _reference_score(_generate_first_logits(judge, one), "scale", tok)
        torch.testing.assert_close(scores[sl], ref, atol=1e-5, rtol=0)
    assert scores.std() > 1e-4  # the samples really are scored differently


def test_forward_score_equals_generate_score_yesno(yesno_judge: mllm.QwenVLJudge, batch: dict) -> None:
    judge = yesno_judge
    assert judge.templates["held"].kind == "yesno" and judge.templates["quality"].roles == ("result",)
    out = judge(batch["images"], batch["prompts"], product_images=batch["product_images"])
    assert list(out) == ["held", "quality"]
    tok = judge.processor.tokenizer
    for criterion, kind in (("held", "yesno"), ("quality", "scale")):
        inputs = judge.prepare(batch["images"], batch["prompts"], criterion, product_images=batch["product_images"])
        ref = _reference_score(_generate_first_logits(judge, inputs), kind, tok)
        torch.testing.assert_close(out[criterion], ref, atol=1e-5, rtol=0)
        assert ((out[criterion] > 0) & (out[criterion] < 1)).all()


def test_batching_and_chunking_do_not_change_scores(judge: mllm.QwenVLJudge, batch: dict) -> None:
    full = judge(batch["images"], batch["prompts"], **_conditions(batch))
    saved = judge.batch_size
    try:
        for bs in (1, 5, 12):
            judge.batch_size = bs
            again = judge(batch["images"], batch["prompts"], **_conditions(batch))
            for c in CRITERIA:
                torch.testing.assert_close(again[c], full[c], atol=1e-5, rtol=0)
    finally:
        judge.batch_size = saved
    for i in range(4):
        sl = slice(i, i + 1)
        one = judge(batch["images"][sl], batch["prompts"][sl], **_conditions(batch, sl))
        for c in CRITERIA:
            torch.testing.assert_close(one[c], full[c][sl], atol=1e-5, rtol=0)


def test_conditions_accept_pil_images_and_paths(judge: mllm.QwenVLJudge, batch: dict, tmp_path: Path) -> None:
    from PIL import Image

    def pil(t: torch.Tensor) -> Image.Image:
        return Image.fromarray((t.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())

    persons = [pil(t) for t in batch["person_images"]]
    paths = []
    for i, t in enumerate(batch["product_images"]):
        paths.append(str(tmp_path / f"product{i}.png"))
        pil(t).save(paths[-1])
    ref = judge(batch["images"], batch["prompts"], **_conditions(batch))
    out = judge(batch["images"], batch["prompts"], person_images=persons, product_images=paths)
    for c in CRITERIA:
        torch.testing.assert_close(out[c], ref[c], atol=1e-5, rtol=0)


def test_missing_image_conditions_raise_value_error(judge, yesno_judge, batch: dict) -> None:
    with pytest.raises(ValueError, match="person_images"):
        judge(batch["images"], batch["prompts"], product_images=batch["product_images"])
    with pytest.raises(ValueError, match="product_images"):
        judge(batch["images"], batch["prompts"], person_images=batch["person_images"])
    with pytest.raises(ValueError, match=r"criteria \['held'\] need the 'product_images' condition"):
        yesno_judge(batch["images"], batch["prompts"])
    with pytest.raises(ValueError, match="3 images for 4"):
        judge(batch["images"], batch["prompts"], person_images=batch["person_images"][:3],
              product_images=batch["product_images"])


def test_role_images_are_rounded_8_bit_even_when_narrow(judge: mllm.QwenVLJudge, batch: dict) -> None:
    """Images reach the processor as 8-bit PIL images (rounded, as a saved PNG), whatever their width."""
    import numpy as np

    from slas.images import quantize

    n = batch["images"].shape[0]
    narrow = torch.rand(n, 3, 5, 3)  # 3 px wide: must not be read as channels-last
    roles = judge._role_images(narrow, {"person_images": narrow, "product_images": narrow})
    for role in ("person", "product", "result"):
        for pil, x in zip(roles[role], narrow, strict=True):
            assert pil.size == (3, 5) and pil.mode == "RGB"
            torch.testing.assert_close(torch.from_numpy(np.array(pil)).permute(2, 0, 1) / 255, quantize(x))


# --------------------------------------------------------------------------------------- templates


def test_template_error_is_a_slas_error_and_a_value_error() -> None:
    from slas.errors import SlasError

    assert issubclass(mllm.TemplateError, SlasError) and issubclass(mllm.TemplateError, ValueError)


def test_builtin_templates_are_versioned_and_parsed() -> None:
    assert list(mllm.load_templates()) == CRITERIA
    assert list(mllm.load_templates(["interaction", "presence"])) == ["interaction", "presence"]
    v1 = mllm.load_templates(CRITERIA, template_version="v1")
    for name, t in v1.items():
        assert t.kind == "scale" and t.roles == ("person", "product", "result"), name
        assert Path(t.path).parent == mllm.TEMPLATES_ROOT / "product_in_hand" / "v1"
        assert not t.text.startswith("#") and "0 to 5" in t.text and t.description
        assert "{prompt}" in t.text and "hold the mug" in t.render("hold the mug")
    with pytest.raises(mllm.TemplateError, match=r"unknown template_version 'v9'.*\['v1'\]"):
        mllm.load_templates(template_version="v9")
    with pytest.raises(mllm.TemplateError, match="no template for criteria"):
        mllm.load_templates(["presence", "sharpness"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("# kind: stars\nRate it.", "unknown kind 'stars'"),
        ("Rate it.", "missing '# kind: ...' header"),
        ("# kind: scale\n# images: person, hand\nRate it.", "unknown image role"),
        ("# kind: scale\n# images: person\nRate it.", "including 'result'"),
        ("# kind: yesno\n# colour: red\nIs it?", "unknown header field 'colour'"),
        ("# kind: yesno\n# images: result\n", "no instruction text"),
        ("# kind: yesno\nIs it {product}?", r"unknown placeholder\(s\) \['product'\]"),
    ],
)
def test_bad_template_fails_clearly_at_preflight_and_build(
    tiny_qwen_dir: Path, tmp_path: Path, text: str, message: str
) -> None:
    (tmp_path / "bad.txt").write_text(text)
    with pytest.raises(mllm.TemplateError, match=message):
        mllm.load_template(tmp_path / "bad.txt")
    options = _options(tiny_qwen_dir, templates_dir=str(tmp_path))
    for call in (lambda: registry.preflight("mllm_judge", options),
                 lambda: build({"components": [{"name": "mllm_judge", "options": options}]})):
        with pytest.raises(PreflightError, match=message) as err:
            call()
        assert "\n" not in str(err.value) and "bad.txt" in str(err.value)


def test_preflight_names_the_download_command_before_loading(monkeypatch, tmp_path: Path) -> None:
    import huggingface_hub.constants
    import transformers

    empty = tmp_path / "hf_cache"
    empty.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(empty))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(empty))

    def no_load(*args, **kwargs):
        raise AssertionError("nothing may be loaded before preflight passes")

    monkeypatch.setattr(transformers.Qwen2_5_VLForConditionalGeneration, "from_pretrained", no_load)
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", no_load)
    for call in (lambda: registry.preflight("mllm_judge", {}),
                 lambda: build({"components": [{"name": "mllm_judge"}]})):
        with pytest.raises(PreflightError) as err:
            call()
        msg = str(err.value)
        assert "\n" not in msg and "hf download Qwen/Qwen2.5-VL-7B-Instruct" in msg
    with pytest.raises(PreflightError, match="unknown option"):
        registry.preflight("mllm_judge", {"modle": "x"})
    with pytest.raises(PreflightError, match="max_pixels"):
        registry.preflight("mllm_judge", {"max_pixels": 0})
