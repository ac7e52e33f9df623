"""The one error path of `slas` (every slas error: `error: <line>`, exit 2) and its one-line warnings."""

from __future__ import annotations

import warnings
from pathlib import Path

from slas.testing.cli import error_text, run_cli


def test_slas_warnings_are_one_line_without_a_source_path(monkeypatch, tmp_path):
    """A warning raised in slas code (as tracking's on a resumed run with a changed setting) reads
    `warning: <message>`; Python's `tracking.py:820: RuntimeWarning:` prefix and source line are gone."""
    import slas.shapes.demo

    slas_file = str(Path(slas.__file__).parent / "platform" / "tracking" / "mlflow_client.py")

    def warn_like_tracking(out, **_):
        warnings.warn_explicit("MLflow param sample.eta changed on resume: 1.0 -> 0.5", RuntimeWarning, slas_file, 820)
        warnings.warn_explicit("a library's own warning", DeprecationWarning, "/elsewhere/lib.py", 7)

    monkeypatch.setattr(slas.shapes.demo, "run_demo", warn_like_tracking)
    with warnings.catch_warnings(record=True) as elsewhere:
        warnings.simplefilter("always")
        before = warnings.showwarning
        r = run_cli("demo", "--out", tmp_path)
        assert warnings.showwarning is before  # put back when the command ends
    assert r.exit_code == 0, error_text(r)
    lines = error_text(r).splitlines()
    assert "warning: MLflow param sample.eta changed on resume: 1.0 -> 0.5" in lines
    assert not any("mlflow_client.py" in line or "RuntimeWarning" in line for line in lines)
    assert "warning: a library's own warning" not in lines  # another library's goes where it went before
    assert [str(w.message) for w in elsewhere] == ["a library's own warning"]


def test_a_slas_error_from_any_command_is_one_error_line_and_exit_2(monkeypatch, tmp_path):
    import slas.shapes.demo
    from slas.errors import SlasError

    def fail(out, **_):
        raise SlasError("something named, and how to fix it")

    monkeypatch.setattr(slas.shapes.demo, "run_demo", fail)
    r = run_cli("demo", "--out", tmp_path)
    assert r.exit_code == 2 and error_text(r) == "error: something named, and how to fix it"
