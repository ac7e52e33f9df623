"""The review app served on a free loopback port and driven with gradio_client, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from gradio_client import Client

from slas.platform.db import open_store
from slas.testing.cli import error_text, run_cli
from slas.testing.postgres import free_port
from slas.testing.review import make_review_set
from slas.ui.app import launch

A, B = "base", "run/iter_2"


@pytest.fixture
def served(store_url, tmp_path):
    """(store, set id, base URL) of a running app on ``store_url`` (both backends)."""
    store = open_store(store_url)
    set_id = make_review_set(store, tmp_path / "set", editing=True)
    port = free_port()
    demo = launch(store, port=port, block=False, quiet=True)
    try:
        yield store, set_id, f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
        store.close()


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_rating_lands_in_the_database(served):
    store, set_id, url = served
    client = Client(url, verbose=False)
    progress, prompt, person, product, left, right, slider, rewards, last = client.predict(
        "ann", set_id, A, B, api_name="/start")
    assert progress.startswith("Pair 1 of 4") and "Instruction:" in prompt and last == ""
    assert person["visible"] and product["visible"]  # an editing set shows its inputs
    assert left.endswith(".png") and list(slider) == [left, right]
    assert [row[0] for row in rewards["data"]] == ["aesthetic", "clip"]
    out = client.predict("ann", "too glossy", ["over-saturated"], api_name="/rate_b")
    assert out[0].startswith("Pair 2 of 4") and "right better" in out[8]
    assert out[9:] == ("", [])  # comment and tags cleared for the next pair
    (row,) = store.list_ratings(sample_set_id=set_id)
    assert (row.rater, row.choice, row.comment, row.tags) == ("ann", "b", "too glossy", ["over-saturated"])
    shown = {s.id: s.checkpoint_label for s in store.list_samples(set_id)}
    assert f"Left was **{shown[row.sample_id]}**, right was **{shown[row.other_sample_id]}**" in out[8]
    taken = client.predict("ann", api_name="/undo")  # a mis-keyed rating taken back: the same pair again
    assert taken[:2] == (progress, prompt) and "Took back" in taken[8] and store.list_ratings(sample_set_id=set_id) == []
    client.predict("ann", "too glossy", ["over-saturated"], api_name="/rate_b")
    # a second rater in another session rates at once; both ratings are kept with their raters
    other = Client(url, verbose=False)
    other.predict("bob", set_id, A, B, api_name="/start")
    other.predict("bob", "", [], api_name="/rate_tie")
    assert sorted(r.rater for r in store.list_ratings(sample_set_id=set_id)) == ["ann", "bob"]
    with pytest.raises(Exception, match="enter your name as rater"):
        other.predict("", "", [], api_name="/rate_a")
    table, _agree, summary = client.predict(set_id, api_name="/leaderboard")
    assert {r[0] for r in table["data"]} == {A, B} and "2 ratings by 2 rater(s)" in summary
    with pytest.raises(Exception, match="sample set 'abc' is not an id"):
        client.predict("ann", "abc", A, B, api_name="/start")
    with pytest.raises(Exception, match="no sample set with id 999"):
        client.predict("ann", 999, A, B, api_name="/start")
    exported = client.predict(set_id, "jsonl", api_name="/export_ratings")
    with open(exported, encoding="utf-8") as fh:
        assert fh.read().count("\n") == 2


def test_files_are_served_only_from_gradio_s_own_cache(served, tmp_path):
    store, set_id, url = served
    image = store.list_samples(set_id)[0].image_path
    assert _status(url) == 200
    for crafted in ("/etc/passwd", image, str(tmp_path / "set" / ".." / "set" / "00" / "p0000_seed0.png")):
        assert _status(f"{url}gradio_api/file={crafted}") == 403, crafted


def test_logins_are_enforced_and_name_the_rater(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'slas.db'}")
    set_id = make_review_set(store, tmp_path / "set")
    port = free_port()
    demo = launch(store, port=port, block=False, quiet=True, logins=[("ann", "pw1")])
    try:
        url = f"http://127.0.0.1:{port}/"
        with pytest.raises(Exception):  # noqa: B017  gradio_client raises its own or httpx's error
            Client(url, verbose=False)
        client = Client(url, auth=("ann", "pw1"), verbose=False)
        client.predict("mallory", set_id, A, B, api_name="/start")
        client.predict("mallory", "", [], api_name="/rate_a")  # the typed name cannot override the login
        assert [r.rater for r in store.list_ratings()] == ["ann"]
    finally:
        demo.close()
        store.close()


def test_cli_refuses_other_addresses_without_logins(monkeypatch):
    monkeypatch.delenv("SLAS_UI_AUTH", raising=False)
    r = run_cli("ui", "--host", "0.0.0.0")
    assert r.exit_code == 2
    assert error_text(r) == ("error: refusing to serve the review UI on 0.0.0.0 without logins: set "
                             "SLAS_UI_AUTH=user:password or pass --credentials FILE (or bind to 127.0.0.1)")
    monkeypatch.setenv("SLAS_UI_AUTH", "ann:")
    r = run_cli("ui", "--host", "10.1.2.3")
    assert r.exit_code == 2 and "SLAS_UI_AUTH: expected user:password" in error_text(r)


def test_slas_ui_serves_the_store_on_loopback(tmp_path, monkeypatch):
    monkeypatch.delenv("SLAS_UI_AUTH", raising=False)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "slas", "ui", "--port", str(port)], env=dict(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    status = None
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status = _status(f"http://127.0.0.1:{port}/")
                break
            except urllib.error.URLError:  # not listening yet
                time.sleep(0.3)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert status == 200, out
    assert f"review UI on http://127.0.0.1:{port} (store: " in out
