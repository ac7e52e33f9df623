"""`slas sample --pairs`: editing comparison sets (person | product | each checkpoint's edit) of a tiny
FLUX.1 Kontext, rendered into the job store, read back by `slas samples` and shown by the review UI."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from slas.editing.checks import DEFAULT_INSTRUCTION
from slas.images import load_image
from slas.platform.db import open_store
from slas.platform.sampling import SamplingError, plan_sample_set
from slas.rewards import register
from slas.rewards.preservation import PersonPreservationReward
from slas.rewards.registry import unregister
from slas.rl.checkpoint import MARKER
from slas.testing.cli import error_text as err
from slas.testing.cli import run_cli as slas

SAMPLE = {"resolution": 32, "num_steps": 4, "condition_size": 32, "max_sequence_length": 32, "group_size": 2}
PRODUCT_RED = {"mug": 40, "cap": 220}  # the red level of each product photo (what `test_edit_inputs` reads back)


def photo(path: Path, seed: int, red: int | None = None) -> Path:
    """An 80x72 RGB photo: seeded noise (a person), or a flat colour with that red level (a product)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if red is None:
        pixels = np.random.default_rng(seed).integers(0, 256, (72, 80, 3), dtype=np.uint8)
    else:
        pixels = np.zeros((72, 80, 3), dtype=np.uint8) + np.array([red, 90, 30], dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def make_pairs(root: Path) -> Path:
    """persons/{ann,bob}.png, products/{mug,cap}.png and pairs.jsonl: ann+mug, bob+mug (train), ann+cap (test)."""
    photo(root / "persons" / "ann.png", 1)
    photo(root / "persons" / "bob.png", 2)
    for name, red in PRODUCT_RED.items():
        photo(root / "products" / f"{name}.png", 0, red)
    rows = [{"id": "ann-mug", "person": "persons/ann.png", "product": "products/mug.png"},
            {"id": "bob-mug", "person": "persons/bob.png", "product": "products/mug.png"},
            {"id": "ann-cap", "person": "persons/ann.png", "product": "products/cap.png", "split": "test",
             "instruction": "Put the cap in the person's hand"}]
    path = root / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def kontext_config(root: Path, model: Path, pairs: Path, family: str = "flux_kontext") -> Path:
    cfg = {"run": {"name": "edit", "output_dir": str(root / "runs")},
           "model": {"family": family, "path": str(model), "finetune": "full"},
           "data": {"pairs": str(pairs)}, "sample": SAMPLE,
           "reward": {"components": [{"name": "person_preservation"}]}}
    path = root / f"{family}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _edit_inputs_factory():
    """Reads the conditions as the trainer passes them: one product image per edit, in order."""

    def reward(images, prompts, **conditions):
        products = conditions["product_images"]
        assert isinstance(products, list) and len(products) == len(images) == len(conditions["person_images"])
        red = [float(np.asarray(p.convert("RGB"))[..., 0].mean()) for p in products]
        return {"product_red": torch.tensor(red)}

    return reward


def _perturbed_checkpoint(tiny_kontext_dir: Path, root: Path) -> Path:
    """A complete full-fine-tune checkpoint: the tiny transformer with seeded noise added to its weights."""
    from slas.config import ModelConfig, SampleConfig
    from slas.policies import load_policy

    policy = load_policy(ModelConfig(family="flux_kontext", path=str(tiny_kontext_dir)), SampleConfig(**SAMPLE))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in policy.denoiser.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    ckpt = root / "iter_000001"
    policy.save_trainable(ckpt / "trainable")
    (ckpt / MARKER).write_text("1")
    return ckpt


@pytest.fixture(scope="module")
def edit_set(tmp_path_factory, tiny_kontext_dir) -> dict:
    """`slas sample --checkpoints base,CKPT --pairs pairs.jsonl --seeds 0,1 --reward ...` rendered once."""
    root = tmp_path_factory.mktemp("edit_set")
    pairs = make_pairs(root / "photos")
    config = kontext_config(root, tiny_kontext_dir, pairs)
    ckpt = _perturbed_checkpoint(tiny_kontext_dir, root)
    store_url = f"sqlite:///{root / 'home' / 'slas.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLAS_HOME", str(root / "home"))
        mp.setenv("SLAS_DATABASE_URL", store_url)
        register("test_edit_inputs")(_edit_inputs_factory)
        try:
            r = slas("sample", "--checkpoints", f"base,{ckpt}", "--config", config, "--pairs", pairs,
                     "--seeds", "0,1", "--batch-size", "4", "--reward", "person_preservation,test_edit_inputs:0")
        finally:
            unregister("test_edit_inputs")
    assert r.exit_code == 0, err(r) + r.stdout
    set_id = int(re.search(r"sample set (\d+): ", r.stdout).group(1))
    return {"root": root, "photos": root / "photos", "pairs": pairs, "config": config, "store_url": store_url,
            "set_id": set_id, "stdout": r.stdout, "out": root / "home" / "samples" / str(set_id)}


@pytest.fixture
def in_store(edit_set, monkeypatch) -> dict:
    monkeypatch.setenv("SLAS_DATABASE_URL", edit_set["store_url"])
    return edit_set


def _pixels(path: str | Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def test_an_editing_set_stores_person_product_and_each_checkpoints_edit(in_store):
    s = in_store
    assert "12 images (2 checkpoints x 3 pairs x 2 seeds)" in s["stdout"]
    with open_store() as store:
        sset = store.get_sample_set(s["set_id"])
        rows = store.list_samples(s["set_id"])
    meta = sset.meta
    assert meta["status"] == "complete" and meta["kind"] == "edit" and meta["num_pairs"] == 3
    assert meta["pairs_file"] == str(s["pairs"].resolve()) and meta["split"] == "all" and meta["seeds"] == [0, 1]
    assert "prompts_file" not in meta
    out = Path(meta["out_dir"])
    assert out == s["out"].resolve() and len(rows) == 12

    photos = s["photos"]
    expected = {("ann.png", "mug.png"), ("bob.png", "mug.png"), ("ann.png", "cap.png")}
    seen = set()
    for row in rows:
        for path in (row.image_path, row.person_image, row.product_image):
            assert Path(path).is_absolute() and Path(path).is_file() and Path(path).resolve().is_relative_to(out)
        assert Path(row.person_image).parent == out / "inputs"
        person_name = next(n for n in ("ann", "bob") if f"_{n}.png" in row.person_image)
        product_name = next(n for n in PRODUCT_RED if f"_{n}.png" in row.product_image)
        seen.add((f"{person_name}.png", f"{product_name}.png"))
        # the copies hold exactly the pixels of the photos the model was conditioned on
        assert np.array_equal(_pixels(row.person_image), _pixels(photos / "persons" / f"{person_name}.png"))
        assert np.array_equal(_pixels(row.product_image), _pixels(photos / "products" / f"{product_name}.png"))
        want = "Put the cap in the person's hand" if product_name == "cap" else DEFAULT_INSTRUCTION
        assert row.prompt == want and _pixels(row.image_path).shape == (32, 32, 3)
    assert seen == expected
    assert len(list((out / "inputs").iterdir())) == 4  # each distinct photo once (ann is in two pairs, mug too)

    # pairing: a (pair, seed) has one row per checkpoint with the same input paths
    by = {(r.checkpoint_label, r.person_image, r.product_image, r.seed): r for r in rows}
    labels = sorted({r.checkpoint_label for r in rows})
    assert labels == ["base", "iter_000001"] and len(by) == 12
    base = {k[1:]: _pixels(v.image_path) for k, v in by.items() if k[0] == "base"}
    tuned = {k[1:]: _pixels(v.image_path) for k, v in by.items() if k[0] == "iter_000001"}
    assert set(base) == set(tuned)
    for (person, product, seed), image in base.items():
        if seed == 0:
            assert np.abs(image - base[(person, product, 1)]).max() > 10  # another seed, other noise
    assert min(np.abs(tuned[k] - base[k]).mean() for k in base) > 0.5  # other weights, other edits
    inputs_of = {}
    for k, image in base.items():
        inputs_of.setdefault(k[2], []).append(image)
    assert np.abs(inputs_of[0][0] - inputs_of[0][1]).max() > 0  # other inputs, other edits at one seed


def test_rewards_see_the_person_and_product_of_each_edit(in_store):
    with open_store() as store:
        rows = store.list_samples(in_store["set_id"])
    preservation = PersonPreservationReward()
    for row in rows:
        assert set(row.rewards) == {"person_preservation", "test_edit_inputs", "total"}  # one key each: its name
        product = next(n for n in PRODUCT_RED if f"_{n}.png" in row.product_image)
        assert row.rewards["test_edit_inputs"] == pytest.approx(PRODUCT_RED[product])  # this row's product
        # the stored preservation is that of the saved edit against this row's person photo
        with Image.open(row.person_image) as im:
            person = im.convert("RGB")
        again = preservation(load_image(row.image_path)[None], [row.prompt], person_images=[person])
        value = float(again["person_preservation"][0])
        assert 0 <= value <= 1 and row.rewards["person_preservation"] == pytest.approx(value, abs=1e-5), row.image_path
        assert row.rewards["total"] == pytest.approx(value, abs=1e-5)  # test_edit_inputs has weight 0


def test_the_manifest_lists_person_product_and_pair_beside_each_edit(in_store):
    out = in_store["out"]
    manifest = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(manifest) == 12
    assert all(set(m) == {"image", "prompt", "seed", "checkpoint", "person", "product", "pair"} for m in manifest)
    assert {m["pair"] for m in manifest} == {"ann-mug", "bob-mug", "ann-cap"}
    for m in manifest:
        assert m["person"].startswith("inputs/") and (out / m["person"]).is_file() and (out / m["image"]).is_file()
    cap = next(m for m in manifest if m["pair"] == "ann-cap")
    assert cap["product"].endswith("_cap.png") and cap["person"].endswith("_ann.png")


def test_samples_cli_shows_and_exports_the_inputs(in_store):
    set_id, out = in_store["set_id"], in_store["out"]
    r = slas("samples", "list")
    assert r.exit_code == 0, err(r)
    line = next(x for x in r.stdout.splitlines() if x.strip().startswith(str(set_id)))
    assert line.split()[:6] == [str(set_id), "complete", "12", "2", "0", "edit"]
    r = slas("samples", "show", set_id)
    assert r.exit_code == 0, err(r)
    assert "kind:    edit (person + product -> edit)   pairs: 3   seeds: 2" in r.stdout
    assert f"pairs:   {in_store['pairs'].resolve()} (split all)" in r.stdout
    assert f"inputs:  {out.resolve() / 'inputs'}" in r.stdout and "person_preservation" in r.stdout
    r = slas("samples", "export", set_id)
    assert r.exit_code == 0, err(r)
    rows = list(csv.DictReader((out / "rows.csv").open()))
    assert len(rows) == 12
    for row in rows:  # relative to the export beside the images: the folder moves as a whole
        assert row["person_image"].startswith("inputs/") and (out / row["person_image"]).is_file()
        assert row["product_image"].startswith("inputs/") and (out / row["product_image"]).is_file()


def test_the_review_ui_pair_view_shows_person_and_product(in_store):
    from slas.ui.app import _view_outputs
    from slas.ui.handlers import next_pair, rate

    set_id = in_store["set_id"]
    with open_store() as store:
        view = next_pair(store, set_id, "base", "iter_000001", "ann")
        assert view.is_editing and view.total == 6
        assert view.left.person_image == view.right.person_image and view.left.product_image == view.right.product_image
        values = _view_outputs(store, view, {"set_id": set_id}, "")
        _, _, prompt, person, product, left = values[:6]
        assert prompt.startswith("**Instruction:**")
        assert person["visible"] and product["visible"]
        assert np.array_equal(np.asarray(person["value"], dtype=np.int16), _pixels(view.left.person_image))
        assert np.array_equal(np.asarray(product["value"], dtype=np.int16), _pixels(view.left.product_image))
        assert np.array_equal(np.asarray(left, dtype=np.int16), _pixels(view.left.image_path))
        rating = rate(store, set_id, view.left.id, view.right.id, rater="ann", choice="a")
        assert rating.other_sample_id == view.right.id


def test_split_chooses_pairs_and_meta_records_it(in_store):
    s = in_store
    plan = plan_sample_set("base", None, "3", pairs=s["photos"], split="test", config=s["config"])  # the folder's pairs.jsonl
    assert plan.kind == "edit" and [p.id for p in plan.pairs] == ["ann-cap"] and plan.num_images == 1
    assert plan.prompts == ["Put the cap in the person's hand"]
    assert plan.meta["split"] == "test" and plan.meta["num_pairs"] == 1 and plan.meta["kind"] == "edit"
    with pytest.raises(SamplingError, match=r"has no pairs in split 'val' \(it has: train 2, test 1\)"):
        plan_sample_set("base", None, "0", pairs=s["pairs"], split="val", config=s["config"])


def test_bad_pairs_input_fails_in_one_line_before_any_model_loads(edit_set, tiny_kontext_dir, tmp_path, monkeypatch):
    from slas.editing.kontext import KontextPolicy

    def boom(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(KontextPolicy, "from_pretrained", classmethod(boom))
    photos = edit_set["photos"]
    good = json.dumps({"id": "a", "person": str(photos / "persons" / "ann.png"),
                       "product": str(photos / "products" / "mug.png")})
    one_bad = tmp_path / "one_bad.jsonl"
    one_bad.write_text(good + "\n" + json.dumps({"id": "b", "person": "nobody.png",
                                                  "product": str(photos / "products" / "mug.png")}) + "\n")
    two_bad = tmp_path / "two_bad.jsonl"
    two_bad.write_text(good + "\n" + good.replace('"a"', '"b"').replace("mug.png", "nope.png") + "\n"
                       + '{"id": "c", "person": "x.png"}\n')
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    config, pairs = edit_set["config"], edit_set["pairs"]
    sd_config = kontext_config(tmp_path, tmp_path / "no_model", pairs, family="sd")
    base = ["--checkpoints", "base", "--config", config]
    cases = [
        ([*base, "--pairs", one_bad], [f"--pairs: {one_bad}:2: person: "]),
        ([*base, "--pairs", two_bad], [f"--pairs: {two_bad}:2: product: ", f"--pairs: {two_bad}:3: "]),
        ([*base, "--pairs", tmp_path / "none.jsonl"], [f"--pairs: {tmp_path / 'none.jsonl'}: pairs file or folder not found"]),
        ([*base, "--pairs", pairs, "--prompts", prompts], ["exactly one of --prompts (text-to-image) or --pairs"]),
        (base, ["exactly one of --prompts (text-to-image) or --pairs (editing), not neither"]),
        ([*base, "--pairs", pairs, "--split", "holdout"], ["--split: unknown split 'holdout'"]),
        ([*base, "--prompts", prompts, "--split", "test"], ["--split chooses editing pairs"]),
        ([*base, "--pairs", pairs, "--field", "text"], ["--field reads a prompt file's column"]),
        ([*base, "--prompts", prompts], ["--prompts: base is a flux_kontext model (editing)"]),
        (["--checkpoints", "base", "--config", sd_config, "--pairs", pairs], ["--pairs: base is a sd model"]),
    ]
    for args, expected in cases:
        r = slas("sample", *args)
        lines = err(r).splitlines()
        assert r.exit_code == 2 and len(lines) == len(expected), (args, err(r))
        for line, want in zip(lines, expected, strict=True):
            assert line.startswith("error: ") and want in line, (args, line)
    with open_store() as store:
        assert store.list_sample_sets() == []  # nothing was recorded for rejected input


def test_reward_score_of_an_editing_set_scores_the_edits_with_their_inputs(in_store, tmp_path):
    """`slas reward score --images SET`: the inputs/ photos are conditions of their edits, not scored images,
    and each edit scores what `slas sample --reward` stored for it."""
    out = in_store["out"]
    with open_store() as store:
        stored = {Path(s.image_path).resolve(): s.rewards for s in store.list_samples(in_store["set_id"])}
    for folder, n in ((out, 12), (out / "01_iter_000001", 6)):
        scores = tmp_path / f"scores_{n}.jsonl"
        r = slas("reward", "score", "--images", folder, "--reward", "person_preservation", "--out", scores)
        assert r.exit_code == 0, err(r)
        records = [json.loads(line) for line in scores.read_text().splitlines()]
        assert len(records) == n and not any(rec["image"].startswith("inputs/") for rec in records)
        for rec in records:
            want = stored[(folder / rec["image"]).resolve()]["person_preservation"]
            assert rec["person_preservation"] == pytest.approx(want, abs=1e-5), rec["image"]
    r = slas("reward", "score", "--images", out / "inputs", "--reward", "person_preservation")
    assert r.exit_code == 2 and "holds only input photos" in err(r)
