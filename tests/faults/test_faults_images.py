"""Bad image files (made by the test): one line naming the file from every loader, a stated pixel limit."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from slas.errors import SlasError
from slas.images import MAX_PIXELS_ENV, ImageError, load_image
from slas.testing.cli import error_text, run_cli


def _bad_files(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("not an image\n")
    good = tmp_path / "good.png"
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    huge = tmp_path / "huge.png"
    Image.new("1", (20000, 20000)).save(huge)  # 1-bit: a small file that decodes to 400 megapixels
    return {"empty": empty, "text": text, "truncated": truncated, "huge": huge}


@pytest.mark.parametrize("kind", ["empty", "text", "truncated", "huge"])
def test_every_bad_image_is_one_line_naming_the_file(tmp_path, kind):
    path = _bad_files(tmp_path)[kind]
    with pytest.raises(ImageError) as err:
        load_image(path)
    message = str(err.value)
    assert isinstance(err.value, SlasError) and "\n" not in message and str(path) in message
    if kind == "huge":
        assert "400000000 pixels" in message and "64,000,000" in message and MAX_PIXELS_ENV in message


def test_the_pixel_limit_is_settable(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    Image.new("RGB", (100, 100)).save(path)
    monkeypatch.setenv(MAX_PIXELS_ENV, "5000")
    with pytest.raises(ImageError, match="10,000 pixels is over the limit of 5,000"):
        load_image(path)
    monkeypatch.setenv(MAX_PIXELS_ENV, "20000")
    assert load_image(path).shape == (3, 100, 100)


@pytest.mark.parametrize("kind", ["empty", "text", "huge"])
def test_reward_score_says_which_file_in_one_line(tmp_path, kind, brightness_reward):
    folder = tmp_path / "images"
    folder.mkdir()
    src = _bad_files(tmp_path)[kind]
    (folder / src.name).write_bytes(src.read_bytes())
    (tmp_path / "prompts.txt").write_text("a red circle\n")
    result = run_cli("reward", "score", "--reward", brightness_reward, "--images", folder, "--prompts",
                     tmp_path / "prompts.txt")
    errors = [line for line in error_text(result).splitlines() if line.startswith("error: ")]
    assert result.exit_code == 2 and len(errors) == 1 and "Traceback" not in error_text(result), error_text(result)
    assert src.name in errors[0]
