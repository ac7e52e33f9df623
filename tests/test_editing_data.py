"""Editing pairs: every bad-row kind named by file and line, all problems at once, the folder layout, group
keys, the product-held-out split, the data source's determinism and resume, `slas data check` and preflight."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from slas.config import ConfigError, config_from_dict
from slas.editing.checks import DEFAULT_INSTRUCTION, PairsError
from slas.editing.data import (
    CONDITIONS,
    EditingSource,
    EditPair,
    check_pairs,
    load_pairs,
    pairs_jsonl,
    split_by_product,
)
from slas.preflight import PreflightError, preflight
from slas.rl.protocols import DataSource
from slas.testing.cli import run_cli


def png(path: Path, size: tuple[int, int] = (80, 72), color: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def photos(tmp_path) -> Path:
    """persons/{ann,bob}.png and products/{mug,cap,pen}.png, all valid."""
    for name in ("ann", "bob"):
        png(tmp_path / "persons" / f"{name}.png", color=(10, 200, 10))
    for i, name in enumerate(("mug", "cap", "pen")):
        png(tmp_path / "products" / f"{name}.png", color=(10, 10, 60 * i + 50))
    return tmp_path


def good_rows() -> list[dict]:
    return [
        {"id": "1", "person": "persons/ann.png", "product": "products/mug.png"},
        {"id": "2", "person": "persons/bob.png", "product": "products/cap.png", "instruction": "Hold the cap",
         "description": "a red cap", "split": "test"},
        {"id": 3, "person": "./persons/ann.png", "product": "products//pen.png", "split": "train"},
    ]


def test_a_clean_file_gives_its_pairs_with_defaults(photos):
    src = write_jsonl(photos / "pairs.jsonl", good_rows())
    result = check_pairs(src)
    assert result.ok and result.rows == 3
    first, second, third = result.pairs
    assert first.instruction == DEFAULT_INSTRUCTION and first.split == "train" and first.description is None
    assert second.instruction == "Hold the cap" and second.split == "test" and second.description == "a red cap"
    assert third.id == "3" and third.key == "persons/ann.png|products/pen.png"  # paths normalised
    assert third.person_path == photos / "persons" / "ann.png"
    assert result.summary() == {"rows": 3, "pairs": 3, "problems": 0, "persons": 2, "products": 3,
                                "splits": {"test": 1, "train": 2}, "products_in_several_splits": 0}
    assert [p.id for p in load_pairs(src, split="train")] == ["1", "3"]
    assert [p.id for p in load_pairs(src)] == ["1", "2", "3"]


def test_every_bad_row_kind_is_one_line_naming_file_and_line_all_at_once(photos):
    png(photos / "products" / "tiny.png", size=(200, 40))
    (photos / "products" / "notes.png").write_text("not an image at all")
    full = photos / "products" / "full.png"
    png(full, size=(128, 128))
    (photos / "products" / "cut.png").write_bytes(full.read_bytes()[:-60])  # truncated PNG
    rows = [
        {"id": "ok", "person": "persons/ann.png", "product": "products/mug.png"},          # 1
        {"id": "a", "person": "persons/nobody.png", "product": "products/mug.png"},        # 2 missing file
        {"id": "b", "person": "persons/ann.png", "product": "products/notes.png"},         # 3 not an image
        {"id": "c", "person": "persons/ann.png", "product": "products/cut.png"},           # 4 truncated
        {"id": "d", "person": "persons/ann.png", "product": "products/tiny.png"},          # 5 too small
        {"id": "ok", "person": "persons/bob.png", "product": "products/mug.png"},          # 6 duplicate id
        {"id": "f", "person": "persons/ann.png"},                                          # 7 missing field
        {"id": "g", "person": 5, "product": "products/cap.png"},                           # 8 bad type
        {"id": "h", "person": "persons/bob.png", "product": "products/cap.png", "split": "tran"},  # 9 split
        {"id": "i", "person": "persons/bob.png", "product": "products/pen.png", "colour": "red"},  # 10 unknown
        {"id": "j", "person": "persons/bob.png", "product": "products/pen.png", "instruction": "  "},  # 11 empty
        "{not json",                                                                        # 12
        {"id": "k", "person": "persons/ann.png", "product": "products/mug.png"},          # 13 repeated pair
    ]
    src = write_jsonl(photos / "pairs.jsonl", rows)
    result = check_pairs(src)
    by_line: dict[int, list[str]] = {}
    for line in result.problems:
        assert line.startswith(f"{src}:") and "\n" not in line
        by_line.setdefault(int(line[len(str(src)) + 1:].split(":", 1)[0]), []).append(line)
    assert sorted(by_line) == list(range(2, 14))  # every bad row, none of the good one
    assert all(len(lines) == 1 for lines in by_line.values())
    expect = {
        2: "person: " + str(photos / "persons" / "nobody.png") + ": image file not found",
        3: "product: " + str(photos / "products" / "notes.png") + ": not an image file PIL can read",
        4: "product: " + str(photos / "products" / "cut.png") + ": damaged image",
        5: "product: " + str(photos / "products" / "tiny.png") + ": 200x40 px is smaller than 64 px",
        6: "duplicate id 'ok' (first at line 1)",
        7: "missing field 'product'",
        8: "field 'person' must be a string, got int 5",
        9: "unknown split 'tran'; use one of train, val, test",
        10: "unknown field 'colour'",
        11: "field 'instruction' is empty",
        12: "not JSON",
        13: "the pair persons/ann.png + products/mug.png repeats line 1",
    }
    for number, text in expect.items():
        assert by_line[number][0].startswith(f"{src}:{number}: {text}"), by_line[number]
    assert [p.id for p in result.pairs] == ["ok"] and result.rows == 13
    with pytest.raises(PairsError) as err:  # loading for training refuses the whole file, listing all
        load_pairs(src)
    assert err.value.problems == result.problems


def test_an_unusable_path_is_a_problem_not_a_crash(photos):
    src = write_jsonl(photos / "pairs.jsonl", [{"id": "1", "person": "a\x00b.png", "product": "products/mug.png"}])
    assert check_pairs(src).problems == [f"{src}:1: person: {str(photos / 'a')!r}"[:-1] + "\\x00b.png': not a usable "
                                         "path (embedded null byte)"]


def test_min_size_is_configurable(photos):
    src = write_jsonl(photos / "pairs.jsonl", good_rows()[:1])  # 80x72 photos
    assert check_pairs(src, min_size=72).ok
    person, product = check_pairs(src, min_size=73).problems
    assert person.startswith(f"{src}:1: person: ") and "80x72 px is smaller than 73 px" in person
    assert product.startswith(f"{src}:1: product: ")


def test_csv_rows_header_and_empty_cells(photos):
    src = photos / "pairs.csv"
    src.write_text("id,person,product,split,colour\n1,persons/ann.png,products/mug.png,,x\n"
                   "2,persons/bob.png,products/gone.png,test,y\n")
    result = check_pairs(src)
    assert result.problems[0] == f"{src}:1: unknown column 'colour'; columns are id, person, product, " \
                                 "instruction, description, split"
    assert result.problems[1].startswith(f"{src}:3: product: ") and "image file not found" in result.problems[1]
    assert len(result.problems) == 2 and result.pairs[0].split == "train"  # an empty cell is absent
    src.write_text("id,person\n1,persons/ann.png\n")
    assert check_pairs(src).problems == [f"{src}:1: missing column 'product'; every row needs id, person, product"]


def test_whole_file_problems_are_one_line(tmp_path):
    assert check_pairs(tmp_path / "none.jsonl").problems == [f"{tmp_path / 'none.jsonl'}: pairs file or folder not found"]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert check_pairs(empty).problems == [f"{empty}: holds no pairs; write one row a pair (id, person, product)"]
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(b"\x89PNG\x00\x00")
    (problem,) = check_pairs(binary).problems
    assert "binary file" in problem and str(binary) in problem
    with pytest.raises(PairsError, match="no pairs in split 'val'"):
        load_pairs(_one_row(tmp_path), split="val")


def _one_row(root: Path) -> Path:
    png(root / "persons" / "p.png")
    png(root / "products" / "q.png")
    return write_jsonl(root / "one.jsonl", [{"id": "x", "person": "persons/p.png", "product": "products/q.png"}])


def test_folder_layout_is_every_person_by_every_product_with_split_folders(photos):
    png(photos / "products" / "test" / "bag.png")
    (photos / "persons" / ".DS_Store").write_bytes(b"\x00junk")  # hidden and other files are ignored
    (photos / "products" / "README.txt").write_text("our products")
    result = check_pairs(photos)
    assert result.ok, result.problems
    assert result.rows == 8 and len(result.pairs) == 8
    ids = {p.id: p for p in result.pairs}
    assert ids["ann__bag"].split == "test" and ids["bob__mug"].split == "train"
    assert ids["ann__bag"].key == "persons/ann.png|products/test/bag.png"
    assert ids["ann__bag"].instruction == DEFAULT_INSTRUCTION
    assert {p.id for p in load_pairs(photos, split="test")} == {"ann__bag", "bob__bag"}


def test_folder_layout_problems_name_the_photo(photos):
    png(photos / "persons" / "kid.png", size=(30, 30))
    png(photos / "products" / "shoes" / "boot.png")
    png(photos / "products" / "test" / "mug.jpg")  # the same product name in two splits
    result = check_pairs(photos)
    folder = photos / "products" / "shoes"
    assert result.problems[0].startswith(f"{folder}: unknown subfolder of products/")
    assert any(line.startswith(f"{photos / 'persons' / 'kid.png'}: 30x30 px is smaller") for line in result.problems)
    assert any(line.startswith(f"{photos / 'products' / 'mug.png'}: another photo has the name 'mug'")
               for line in result.problems)
    assert len(result.problems) == 4
    assert {p.person for p in result.pairs} == {"persons/ann.png", "persons/bob.png"}
    assert {p.product for p in result.pairs} == {"products/cap.png", "products/pen.png"}


def test_a_pairs_file_in_the_folder_is_read_instead_of_all_pairs(photos):
    write_jsonl(photos / "pairs.jsonl", good_rows()[:2])
    assert [p.id for p in check_pairs(photos).pairs] == ["1", "2"]
    missing = photos.parent / "nothing_here"
    missing.mkdir()
    problems = check_pairs(missing).problems
    assert len(problems) == 2 and problems[0].startswith(f"{missing}: no persons/ folder")


def _pairs(n_persons: int, n_products: int) -> list[EditPair]:
    return [EditPair(id=f"{i}_{j}", person=f"persons/{i}.png", product=f"products/{j}.png", root=Path("."))
            for i in range(n_persons) for j in range(n_products)]


def test_split_by_product_holds_out_whole_products_deterministically():
    pairs = _pairs(4, 10)
    train, held = split_by_product(pairs, 0.3, seed=7)
    held_products = {p.product for p in held}
    assert len(held_products) == 3 and len(train) + len(held) == len(pairs)
    assert not held_products & {p.product for p in train}  # never a held-out product in training
    assert len(held) == 3 * 4  # every person of a held-out product is held out with it
    again = split_by_product(list(reversed(pairs)), 0.3, seed=7)  # the order of the pairs does not matter
    assert {p.product for p in again[1]} == held_products
    assert any({p.product for p in split_by_product(pairs, 0.3, seed=s)[1]} != held_products for s in range(1, 6))
    assert len({p.product for p in split_by_product(pairs, 0.01, seed=0)[1]}) == 1  # above 0: at least one
    assert split_by_product(pairs, 0.0, seed=0) == (pairs, [])
    for bad in (1.0, -0.1):
        with pytest.raises(PairsError, match="held_out_fraction"):
            split_by_product(pairs, bad)
    with pytest.raises(PairsError, match="at least 2"):
        split_by_product(_pairs(3, 1), 0.5)


def test_pairs_jsonl_round_trips_from_another_folder(photos):
    src = write_jsonl(photos / "pairs.jsonl", good_rows())
    pairs = load_pairs(src)
    out = photos / "elsewhere" / "copy.jsonl"
    out.parent.mkdir()
    out.write_text(pairs_jsonl(pairs, out.parent))
    again = load_pairs(out)
    assert json.loads(out.read_text().splitlines()[0]) == {
        "id": "1", "person": "../persons/ann.png", "product": "../products/mug.png", "split": "train"}
    assert [(p.person_path.resolve(), p.product_path.resolve(), p.instruction, p.description, p.split) for p in again] \
        == [(p.person_path.resolve(), p.product_path.resolve(), p.instruction, p.description, p.split) for p in pairs]


def test_data_split_cli_writes_pairs_with_whole_products_held_out(photos):
    for name in ("bag", "hat", "cup", "box", "fan", "toy", "pot"):
        png(photos / "products" / f"{name}.png")
    out = photos / "pairs.jsonl"
    result = run_cli("data", "split", photos, "--held-out", "0.2", "--seed", "1", "--out", out)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{out}: train 16 pairs (8 products), test 4 pairs (2 products, never in train)"
    written = load_pairs(photos)  # the folder now reads its pairs.jsonl
    train = {p.product for p in written if p.split == "train"}
    test = {p.product for p in written if p.split == "test"}
    assert len(written) == 20 and len(test) == 2 and not train & test
    again = photos / "again.jsonl"
    assert run_cli("data", "split", photos, "--held-out", "0.2", "--seed", "1", "--out", again).exit_code == 0
    assert {p.product for p in load_pairs(again, split="test")} == test  # the same seed holds out the same products
    bad = run_cli("data", "split", photos / "nowhere", "--out", photos / "x.jsonl")
    assert bad.exit_code == 2 and "pairs file or folder not found" in bad.output and not (photos / "x.jsonl").exists()


def test_source_groups_are_keyed_by_the_pair_and_carry_rgb_images(photos):
    rows = good_rows()
    rows[0]["instruction"] = "A different sentence"
    src = write_jsonl(photos / "pairs.jsonl", rows)
    a = EditingSource.from_path(src, split=None, shuffle=False)
    b = EditingSource(load_pairs(write_jsonl(photos / "other.jsonl", good_rows())), shuffle=False)
    assert isinstance(a, DataSource)
    ga, gb = a.next(3), b.next(3)
    assert [g.key for g in ga] == [g.key for g in gb]  # the instruction never changes the key
    assert ga[0].prompt == "A different sentence" and gb[0].prompt == DEFAULT_INSTRUCTION
    for g in ga:
        assert tuple(g.conditions) == CONDITIONS
        person, product = g.conditions["person_images"], g.conditions["product_images"]
        assert person.mode == product.mode == "RGB" and person.size == (80, 72)
    assert ga[0].conditions["person_images"].getpixel((0, 0)) == (10, 200, 10)
    assert [g.key for g in EditingSource.from_path(src, shuffle=False).next(2)] == [
        "persons/ann.png|products/mug.png", "persons/ann.png|products/pen.png"]  # split "train" by default


def test_source_is_deterministic_and_resumes_where_it_stopped(photos):
    pairs = check_pairs(photos).pairs  # 2 persons x 3 products
    keys = [g.key for g in EditingSource(pairs, seed=3).next(14)]
    assert keys == [g.key for g in EditingSource(pairs, seed=3).next(14)]
    assert keys != [g.key for g in EditingSource(pairs, seed=4).next(14)]
    assert sorted(keys[:6]) == sorted(p.key for p in pairs) and keys[:6] != keys[6:12]  # an epoch each, reshuffled
    first = EditingSource(pairs, seed=3)
    first.next(8)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = EditingSource(pairs, seed=3)
    resumed.load_state_dict(state)
    assert [g.key for g in resumed.next(6)] == keys[8:14]
    with pytest.warns(RuntimeWarning, match="differ from the checkpoint"):
        EditingSource(pairs[:-1], seed=3).load_state_dict(state)


def test_data_check_cli_prints_problems_and_summary(photos):
    src = write_jsonl(photos / "pairs.jsonl", good_rows())
    clean = run_cli("data", "check", src)
    assert clean.exit_code == 0, clean.output
    assert clean.stdout.strip() == f"{src}: 3 rows, 3 usable pairs, 2 persons, 3 products; splits: test 1, train 2; 0 problems"
    bad = write_jsonl(photos / "bad.jsonl", [*good_rows(), {"id": "1", "person": "persons/x.png", "product": "products/mug.png"}])
    result = run_cli("data", "check", bad)
    assert result.exit_code == 1
    *problems, summary = result.stdout.strip().splitlines()
    assert problems == [f"{bad}:4: person: {photos / 'persons' / 'x.png'}: image file not found",
                        f"{bad}:4: duplicate id '1' (first at line 1); give every row its own id"]
    assert summary == f"{bad}: 4 rows, 3 usable pairs, 2 persons, 3 products; splits: test 1, train 2; 2 problems"
    small = run_cli("data", "check", src, "--min-size", "73")  # the photos are 80x72
    assert small.exit_code == 1 and len(small.stdout.strip().splitlines()) == 3 * 2 + 1
    assert run_cli("data", "check", "--help").exit_code == 0


def test_data_config_takes_exactly_one_of_prompts_and_pairs(tmp_path):
    base = {"model": {"family": "sd", "path": "x"}, "reward": {"components": [{"name": "clip"}]}}
    cfg = config_from_dict({**base, "data": {"pairs": "pairs.jsonl"}})
    assert cfg.data.split == "train" and cfg.data.min_image_size == 64 and cfg.data.prompts is None
    for data, word in (({}, "neither"), ({"prompts": "p.txt", "pairs": "q.jsonl"}, "both")):
        with pytest.raises(ConfigError) as err:
            config_from_dict({**base, "data": data})
        assert str(err.value) == ("config error: data: give exactly one of data.prompts (text-to-image) or "
                                  f"data.pairs (editing), not {word}")
    with pytest.raises(ConfigError, match=r"data\.split"):
        config_from_dict({**base, "data": {"pairs": "q.jsonl", "split": "holdout"}})
    assert config_from_dict({**base, "data": {"pairs": "q.jsonl", "split": None}}).data.split is None


def test_preflight_reports_model_every_bad_row_and_reward_together(photos, monkeypatch):
    import huggingface_hub.constants

    from slas import run
    from slas.t2i.sd import SDPolicy

    cache = photos / "hub"  # an empty Hugging Face cache: the reward's CLIP model is absent
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))

    def boom(*args, **kwargs):
        pytest.fail("heavy work started before preflight failed")

    monkeypatch.setattr(SDPolicy, "from_pretrained", classmethod(boom))
    monkeypatch.setattr(run, "build", boom)
    monkeypatch.setattr(run.EditingSource, "from_path", classmethod(boom))
    src = write_jsonl(photos / "pairs.jsonl", [*good_rows(), {"id": "9", "person": "persons/ann.png"},
                                               {"id": "10", "person": "persons/ann.png", "product": "products/no.png"}])
    cfg = config_from_dict({"model": {"family": "sd", "path": str(photos / "no_model"), "device": "cpu"},
                            "data": {"pairs": str(src)}, "reward": {"components": [{"name": "image_similarity"}]}})
    for check in (preflight, run.build_trainer):
        with pytest.raises(PreflightError) as err:
            check(cfg)
        problems = err.value.problems
        assert len(problems) == 4 and str(err.value).splitlines() == problems
        assert problems[0].startswith("model.path: ") and str(photos / "no_model") in problems[0]
        assert problems[1] == f"data.pairs: {src}:4: missing field 'product'; every row needs id, person, product"
        assert problems[2].startswith(f"data.pairs: {src}:5: product: ") and "image file not found" in problems[2]
        assert problems[3].startswith("reward image_similarity") or problems[3].startswith("reward.components.0")


def test_slas_train_on_a_pairs_folder_keys_groups_by_pair_and_refuses_a_bad_photo(photos, tiny_kontext_dir, monkeypatch):
    """The wiring end to end: data.pairs -> EditingSource -> a tiny Kontext policy -> 2 iterations, resumable."""
    import yaml

    from slas.platform.tracking import read_metrics

    monkeypatch.setenv("SLAS_MLFLOW", "0")
    out = photos.parent / "runs"
    config = photos.parent / "edit.yaml"
    config.write_text(yaml.safe_dump({
        "run": {"name": "edit", "output_dir": str(out), "iterations": 2, "checkpoint_every": 2, "progress": False,
                "register_model": False},
        "model": {"family": "flux_kontext", "path": str(tiny_kontext_dir), "device": "cpu", "finetune": "lora",
                  "lora": {"rank": 2, "alpha": 4, "target_modules": ["to_q", "to_v"]}},
        "data": {"pairs": str(photos)},
        "sample": {"resolution": 32, "num_steps": 3, "group_size": 2, "prompts_per_iter": 2, "eta": 0.7,
                   "condition_size": 32, "max_sequence_length": 32, "guidance_scale": 1.0},
        "train": {"batch_size": 2},
        "reward": {"components": [{"name": "vividness"}]},
    }))
    result = run_cli("train", config)
    assert result.exit_code == 0, result.output
    assert [r["step"] for r in read_metrics(out / "edit" / "metrics.jsonl")] == [1, 2]
    state = json.loads((out / "edit" / "checkpoints" / "iter_000002" / "trainer_state.json").read_text())["data"]
    source = EditingSource(check_pairs(photos).pairs, seed=0)
    source.next(4)  # 2 iterations x 2 pairs
    assert state == source.state_dict()
    (photos / "products" / "cap.png").write_bytes(b"GIF89a broken")
    bad = run_cli("train", config, "--set", "run.name=bad")
    assert bad.exit_code == 2 and not (out / "bad" / "metrics.jsonl").exists()
    assert f"error: data.pairs: {photos / 'products' / 'cap.png'}: " in bad.output


def test_the_shipped_example_is_clean_as_file_and_as_folder(tmp_path):
    import shutil

    example = Path(__file__).resolve().parents[1] / "data" / "editing_example"
    result = check_pairs(example)
    assert result.ok and len(result.pairs) == 2 and result.summary()["products"] == 1
    groups = EditingSource(result.pairs, shuffle=False).next(2)
    assert groups[0].conditions["person_images"].size == (384, 384) and groups[0].prompt == DEFAULT_INSTRUCTION
    folder = shutil.copytree(example, tmp_path / "example")
    (folder / "pairs.jsonl").unlink()  # the folder layout alone gives the same pairs
    assert {p.key for p in check_pairs(folder).pairs} == {p.key for p in result.pairs}
