"""Remote rewards: ``slas reward serve`` in a real process, ``backend: remote`` scoring through it, auth, the
bounded queue, timeouts, batching, and a server killed mid-run (NaN, counted, recovered; never a crash)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from slas.config import reward_config
from slas.images import quantize, to_pil
from slas.preflight import PreflightError, preflight_reward
from slas.rewards import CompositeReward, build
from slas.rewards.remote import RemoteReward, RemoteRewardWarning, check_url, encode_request, health
from slas.rewards.serve import RewardServer, ServeError
from slas.rl.trainer import Trainer
from slas.testing.cli import error_text, run_cli
from slas.testing.fakes import PairSource, WalkPolicy, walk_config

TOKEN = "s3cret-token"
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # as the client: no $HTTP_PROXY
SERVED = {"components": [{"name": "vividness"},
                         {"name": "person_preservation", "weight": 0.5, "options": {"resolution": 32}}]}


def _start_server(spec: Path, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, int]:
    """``python -m slas reward serve SPEC ARGS`` as a child process; its port once it listens."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "slas", "reward", "serve", str(spec), *args], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )
    line = proc.stdout.readline()  # the "listening on" line, printed once the socket is bound
    if "listening on" not in line:
        proc.kill()
        raise AssertionError(f"the server did not start: {line!r} {proc.stderr.read()}")
    return proc, int(line.split("listening on http://", 1)[1].split()[0].rsplit(":", 1)[1])


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
    proc.stdout.close()
    proc.stderr.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """A real server on all interfaces (so a token is required), reached through loopback."""
    spec = tmp_path_factory.mktemp("serve") / "reward.yaml"
    spec.write_text(yaml.safe_dump({"run": {"name": "judge"}, "reward": SERVED}))  # a run config's reward: section
    proc, port = _start_server(spec, "--port", "0", "--host", "0.0.0.0", "--batch-size", "8",
                               env={"SLAS_REWARD_TOKEN": TOKEN})
    yield f"http://127.0.0.1:{port}"
    _stop(proc)


def _remote_spec(url: str, **fields) -> dict:
    return {"components": [{"name": c["name"], "weight": c.get("weight", 1.0), "backend": "remote", "url": url,
                            **fields} for c in SERVED["components"]]}


def _batch(n: int = 4, seed: int = 0, size: int = 24) -> torch.Tensor:
    """8-bit-exact images (what a PNG carries), so remote and local see the same pixels."""
    return quantize(torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)))


def _post(url: str, body: dict, token: str | None = None, timeout: float = 30) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    req = urllib.request.Request(f"{url}/score", data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with DIRECT.open(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# --------------------------------------------------------------------------------- a real server process


def test_remote_scoring_equals_local_scoring(served, monkeypatch, tmp_path):
    images, persons = _batch(seed=1), _batch(seed=2)
    persons[:2] = images[:2]  # two edits keep their person exactly
    pil_persons = [to_pil(p) for p in persons]
    group_ids = torch.tensor([0, 0, 1, 1])
    local = build(SERVED)(images, ["hold it"] * 4, group_ids=group_ids, person_images=pil_persons)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    remote_cfg = reward_config(_remote_spec(served, token_file=str(token_file)), "test")
    preflight_reward(remote_cfg)  # the server is up and serves both names: no error, no warning
    composite = build(remote_cfg)
    remote = composite(images, ["hold it"] * 4, group_ids=group_ids, person_images=pil_persons)
    session = composite.components[0][2].session
    assert composite.components[1][2].session is session and session.batches == 1  # one request for both
    assert set(remote) == set(local) == {"vividness", "person_preservation", "total"}
    for key in local:
        assert torch.allclose(remote[key], local[key], atol=1e-6), (key, remote[key], local[key])
    assert remote["person_preservation"][:2].tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    # the token from the environment works the same; tensors and paths as conditions too
    monkeypatch.setenv("SLAS_REWARD_TOKEN", TOKEN)
    paths = []
    for i, p in enumerate(pil_persons):
        p.save(tmp_path / f"p{i}.png")
        paths.append(str(tmp_path / f"p{i}.png"))
    again = build(_remote_spec(served))(images, ["hold it"] * 4, group_ids=group_ids, person_images=paths)
    assert torch.allclose(again["total"], local["total"], atol=1e-6)


def test_the_server_answers_every_component_and_the_total(served):
    images = _batch(2, seed=3)
    body = encode_request(images, ["a", "b"], {"person_images": images})
    status, answer = _post(served, body, TOKEN)
    assert status == 200
    assert set(answer["scores"]) == {"vividness", "person_preservation", "total"}
    assert answer["scores"]["person_preservation"] == pytest.approx([1.0, 1.0], abs=1e-5)
    assert answer["components"] == ["vividness", "person_preservation"] and answer["n"] == 2
    assert answer["parts"] == [{"vividness": answer["scores"]["vividness"]},
                               {"person_preservation": answer["scores"]["person_preservation"]}]
    status, answer = _post(served, {"prompts": ["a"], "images": ["not base64!"]}, TOKEN)
    assert status == 400 and "images[0]" in answer["error"]
    status, answer = _post(served, {**body, "prompts": ["a"]}, TOKEN)
    assert status == 400 and "prompts" in answer["error"]


def test_a_non_loopback_server_refuses_missing_and_wrong_tokens(served, monkeypatch):
    body = encode_request(_batch(1), ["a"], {"person_images": _batch(1)})
    assert _post(served, body)[0] == 401
    assert _post(served, body, "wrong")[0] == 401
    assert health(served)["auth"] is False and health(served, token=TOKEN)["auth"] is True
    monkeypatch.setenv("SLAS_REWARD_TOKEN", "wrong")
    with pytest.raises(PreflightError, match="refuses the token"):
        preflight_reward(reward_config(_remote_spec(served), "test"))
    with pytest.warns(RemoteRewardWarning, match="HTTP 401") as caught:
        out = build(_remote_spec(served, retries=0))(_batch(1), ["a"], person_images=_batch(1))
    assert torch.isnan(out["total"]).all() and torch.isnan(out["vividness"]).all()
    assert len(caught) == 1  # one line for the batch, not one per component


def test_refuses_to_start_on_a_non_loopback_address_without_a_token(tmp_path, monkeypatch):
    monkeypatch.delenv("SLAS_REWARD_TOKEN", raising=False)
    spec = tmp_path / "reward.json"
    spec.write_text(json.dumps(SERVED))
    result = run_cli("reward", "serve", spec, "--port", "0", "--host", "0.0.0.0")
    assert result.exit_code != 0
    assert "refusing to serve on 0.0.0.0 without a token" in error_text(result)
    empty = tmp_path / "empty-token"
    empty.write_text("\n")
    result = run_cli("reward", "serve", spec, "--port", "0", "--host", "0.0.0.0", "--token-file", empty)
    assert result.exit_code != 0 and "is empty" in error_text(result)
    with pytest.raises(ServeError, match="without a token"):
        RewardServer(CompositeReward([("n", 1.0, lambda *a, **k: {})]), host="0.0.0.0")


def test_preflight_checks_the_url_and_warns_when_the_server_is_not_up(served, monkeypatch):
    monkeypatch.setenv("SLAS_REWARD_TOKEN", TOKEN)
    with pytest.raises(PreflightError, match=r"reward.components.0.url: 'judge:80' is not an http"):
        preflight_reward(reward_config(_remote_spec("judge:80"), "test"))
    with pytest.raises(PreflightError, match=r"serves \['vividness', 'person_preservation'\], not 'hpsv21'"):
        preflight_reward(reward_config({"components": [{"name": "hpsv21", "backend": "remote", "url": served}]}, "t"))
    with pytest.warns(RemoteRewardWarning, match="does not answer now"):
        preflight_reward(reward_config(_remote_spec("http://127.0.0.1:9"), "test"))  # discard port: nothing there
    assert check_url("https://judge.internal:8443/slas/") == "https://judge.internal:8443/slas"


# ------------------------------------------------------------------- queue, timeout, batching (in-process)


class _Gate:
    """A reward that blocks until released and records each call's batch size."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.sizes: list[int] = []

    def __call__(self, images, prompts, **conditions):
        self.sizes.append(images.shape[0])
        self.release.wait(20)
        return {"brightness": images.mean((1, 2, 3))}


def _wait_for(predicate, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


def test_requests_are_batched_and_the_queue_is_bounded():
    gate = _Gate()
    server = RewardServer(CompositeReward([("brightness", 1.0, gate)]), max_queue=3, batch_size=8, timeout=30).start()
    try:
        sizes = [24, 24, 16, 24, 24]  # request 2 has other image sizes: it cannot join 1 and 3
        batches = [_batch(2, seed=i, size=size) for i, size in enumerate(sizes)]
        bodies = [encode_request(b, ["a", "b"], {"group_ids": torch.tensor([0, 1])}) for b in batches]
        answers: dict[int, tuple[int, dict]] = {}

        def send(i: int) -> None:
            answers[i] = _post(server.url, bodies[i])

        threads = [threading.Thread(target=send, args=(0,))]
        threads[0].start()
        _wait_for(lambda: server.status()["scoring"] == 1)  # request 0 is being scored (blocked)
        for i in (1, 2, 3):
            threads.append(threading.Thread(target=send, args=(i,)))
            threads[-1].start()
            _wait_for(lambda i=i: server.status()["queued"] == i)  # in this order
        status, answer = _post(server.url, bodies[4])  # three wait already: refused at once
        assert status == 503 and "queue is full" in answer["error"]
        gate.release.set()
        for t in threads:
            t.join(20)
        assert [answers[i][0] for i in range(4)] == [200, 200, 200, 200]
        assert gate.sizes == [2, 4, 2]  # 1 and 3 waited together and were scored in one call; 2 alone
        for i in range(4):
            expected = batches[i].mean((1, 2, 3)).tolist()
            assert answers[i][1]["scores"]["brightness"] == pytest.approx(expected, abs=1e-6)
    finally:
        gate.release.set()
        server.close()


def test_a_request_past_its_timeout_is_answered_504_and_scores_nan():
    gate = _Gate()
    server = RewardServer(CompositeReward([("brightness", 1.0, gate)]), timeout=0.3).start()
    try:
        started = time.monotonic()
        status, answer = _post(server.url, encode_request(_batch(1), ["a"], {}))
        assert status == 504 and "not scored within 0.3 s" in answer["error"]
        assert time.monotonic() - started < 5
        reward = RemoteReward.connect("brightness", server.url, retries=0)
        with pytest.warns(RemoteRewardWarning, match=r"batch 1 \(2 images\) scored NaN after 1 try: HTTP 504"):
            out = reward(_batch(2), ["a", "b"])
        assert torch.isnan(out["brightness"]).all() and reward.session.failures == 1
        gate.release.set()
        _wait_for(lambda: server.status()["scoring"] == 0)
        # a client timeout shorter than the scoring: the same NaN, the reason "timed out"
        gate.release.clear()
        slow_client = RemoteReward.connect("brightness", server.url, timeout=0.2, retries=0)
        with pytest.warns(RemoteRewardWarning, match="timed out"):
            assert torch.isnan(slow_client(_batch(1), ["a"])["brightness"]).all()
    finally:
        gate.release.set()
        server.close()


def test_a_failing_merged_call_is_retried_request_by_request():
    def picky(images, prompts, **conditions):
        if "bad" in prompts:
            raise ValueError("cannot score 'bad'")
        return {"n": torch.full((images.shape[0],), float(len(prompts)))}

    server = RewardServer(CompositeReward([("n", 1.0, picky)]), batch_size=8)
    jobs = [_parse(encode_request(_batch(1, seed=i), [p], {})) for i, p in enumerate(["ok", "bad", "ok"])]
    server._score(jobs)
    assert jobs[0].result["scores"] == {"n": [1.0], "total": [1.0]} and jobs[2].result["parts"] == [{"n": [1.0]}]
    assert jobs[1].result is None and "cannot score 'bad'" in jobs[1].error
    server.close()


def _parse(body: dict):
    from slas.rewards.serve import parse_request

    return parse_request(body, time.monotonic() + 10)


# -------------------------------------------------------------------------- a server killed mid-run


def test_a_server_killed_mid_run_gives_nan_is_counted_and_recovers(tmp_path):
    spec = tmp_path / "vivid.yaml"
    spec.write_text(yaml.safe_dump({"components": [{"name": "vividness"}]}))
    proc, port = _start_server(spec, "--port", "0")
    url = f"http://127.0.0.1:{port}"
    remote = build({"components": [{"name": "vividness", "backend": "remote", "url": url, "retries": 0,
                                    "timeout": 10}]})
    trainer = Trainer(walk_config(tmp_path, iterations=3), WalkPolicy(), remote, PairSource())
    try:
        first = trainer.step()
        assert first["reward/nonfinite"] == 0 and first["reward/vividness/mean"] > 0
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        with pytest.warns(RemoteRewardWarning, match="scored NaN after 1 try: connection refused") as caught:
            second = trainer.step()  # the whole batch is NaN: masked, counted, no crash
        assert len([w for w in caught if issubclass(w.category, RemoteRewardWarning)]) == 1  # one line per batch
        assert second["reward/nonfinite"] == 12  # 2 groups x 6
        assert torch.isfinite(trainer.policy.mu).all()  # masked: the NaNs never reach the weights
        _stop(proc)
        proc, _ = _start_server(spec, "--port", str(port))  # the server comes back on its port
        third = trainer.step()
        assert third["reward/nonfinite"] == 0 and third["reward/vividness/mean"] > 0
        assert trainer.iteration == 3
    finally:
        _stop(proc)


def test_remote_component_config_errors_are_one_line():
    from slas.config import ConfigError

    with pytest.raises(ConfigError, match="backend remote needs url"):
        reward_config({"components": [{"name": "vividness", "backend": "remote"}]}, "spec")
    with pytest.raises(ConfigError, match="takes no options"):
        reward_config({"components": [{"name": "vividness", "backend": "remote", "url": "http://a:1",
                                       "options": {"x": 1}}]}, "spec")
    with pytest.raises(ConfigError, match="for backend: remote"):
        reward_config({"components": [{"name": "vividness", "url": "http://a:1"}]}, "spec")


def test_image_conditions_travel_as_png():
    pil = Image.new("RGB", (5, 4), (10, 200, 30))
    body = encode_request(_batch(1, size=4), ["a"], {"product_images": [pil], "target": [0.5],
                                                    "group_ids": torch.tensor([3])})
    job = _parse(body)
    assert job.conditions["product_images"][0].size == (5, 4)
    assert job.conditions["product_images"][0].getpixel((0, 0)) == (10, 200, 30)
    assert job.conditions["target"] == [0.5] and job.conditions["group_ids"].tolist() == [3]
    with pytest.raises(ValueError, match="condition 'model'"):
        encode_request(_batch(1), ["a"], {"model": object()})


def test_a_remote_component_returns_the_served_components_own_keys():
    """A one-criterion judge labels its output by the component's name, but weights are by its key: the
    remote component returns the key, so ``weight: {presence: 2}`` weighs the same remotely and locally."""
    def judge(images, prompts, **conditions):
        return {"presence": images.mean((1, 2, 3))}

    server = RewardServer(CompositeReward([("judge", 1.0, judge)])).start()
    try:
        images = _batch(3)
        local = CompositeReward([("judge", {"presence": 2.0}, judge)])(images, ["a"] * 3)
        remote = build({"components": [{"name": "judge", "backend": "remote", "url": server.url,
                                        "weight": {"presence": 2.0}}]})(images, ["a"] * 3)
        assert torch.allclose(remote["total"], local["total"], atol=1e-6) and bool((local["total"] > 0).all())
        assert torch.allclose(remote["judge"], local["judge"], atol=1e-6)
    finally:
        server.close()


def test_one_request_per_batch_and_a_refilled_buffer_is_a_new_batch():
    calls = []

    def judge(images, prompts, **conditions):
        calls.append(images.shape[0])
        return {"presence": images.mean((1, 2, 3)), "interaction": images.amax((1, 2, 3))}

    server = RewardServer(CompositeReward([("judge", 1.0, judge), ("bright", 1.0, judge)])).start()
    try:
        spec = {"components": [{"name": "judge", "backend": "remote", "url": server.url},
                               {"name": "bright", "backend": "remote", "url": server.url}]}
        reward = build(spec)
        buffer = _batch(2, seed=0)
        first = reward(buffer, ["a", "b"], group_ids=torch.tensor([0, 1]))
        assert calls == [2, 2]  # one request: the server scored both of its components once
        assert set(first) == {"judge/presence", "judge/interaction", "bright/presence", "bright/interaction", "total"}
        buffer.copy_(_batch(2, seed=1))  # the same tensor object, refilled
        second = reward(buffer, ["a", "b"], group_ids=torch.tensor([0, 1]))
        assert calls == [2, 2, 2, 2]
        assert not torch.allclose(first["judge/presence"], second["judge/presence"])
        assert torch.allclose(second["judge/presence"], buffer.mean((1, 2, 3)), atol=1e-6)
    finally:
        server.close()


def test_the_scoring_thread_survives_its_own_failures(monkeypatch):
    server = RewardServer(CompositeReward([("bright", 1.0, lambda images, prompts, **c: {"b": images.mean((1, 2, 3))})]))
    server.start()
    try:
        real = server._score
        monkeypatch.setattr(server, "_score", lambda batch: (_ for _ in ()).throw(RuntimeError("boom")))
        status, answer = _post(server.url, encode_request(_batch(1), ["a"], {}))
        assert status == 500 and "scoring failed: RuntimeError: boom" in answer["error"]
        monkeypatch.setattr(server, "_score", real)
        status, answer = _post(server.url, encode_request(_batch(1), ["a"], {}))
        assert status == 200 and answer["scores"]["bright"] == pytest.approx([_batch(1).mean().item()], abs=1e-6)
    finally:
        server.close()
