"""slas.files.write_atomic: the one atomic text writer (a leaf: it imports nothing from slas)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import slas.files
from slas.files import write_atomic


def test_writes_creates_folders_and_replaces(tmp_path):
    path = tmp_path / "a" / "b" / "out.jsonl"
    assert write_atomic(path, "one\n") == path
    write_atomic(path, "two\n")
    assert path.read_text() == "two\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.jsonl"]  # no temp file left behind


def test_a_failed_write_keeps_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "out.txt"
    write_atomic(path, "kept\n")
    with pytest.raises(TypeError):
        write_atomic(path, b"not text")  # type: ignore[arg-type]
    assert path.read_text() == "kept\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_is_a_leaf():
    tree = ast.parse(Path(slas.files.__file__).read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in names if m == "slas" or m.startswith("slas.")]
