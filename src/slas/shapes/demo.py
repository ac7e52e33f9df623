"""``slas demo``: DanceGRPO and SLAS post-train the shipped shapes-world model, and the judge says who hacked.

Both methods start from the same weights with the same seeds, prompts and budget; they differ only in
the advantage shaping. The training reward is the two learned proxies (the "HPS" preference scorer and
the "CLIP score" model, through the real ``hpsv21`` and ``clip`` reward classes). The ground-truth judge
(detector + GenEval rules) never trains anything: it scores held-out test-split prompts before, during
and after training, about ``eval_images_per_tag`` images per tag (the same prompts and seeds every
time), so every score carries a standard error and every gain a paired one. Every run is a job of the
store (named ``demo-<method>``, kept out of the model registry), with its metrics in the tracker.
What it writes is in :mod:`slas.shapes.report`.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from slas.config import SLASConfig, config_from_dict
from slas.eval.geneval import GENEVAL_TAGS, summarize
from slas.rl.diagnostics import group_amplification
from slas.rl.protocols import Callback, Policy
from slas.rl.trainer import Trainer
from slas.shapes import assets, report
from slas.shapes.evaluate import expand, judge
from slas.shapes.models import IMAGE_SIZE, TEXT_MAX_LENGTH
from slas.shapes.prompts import metadata

METHODS: dict[str, dict[str, Any]] = {
    "dancegrpo": {"preset": "dancegrpo"},
    "slas": {"preset": "slas", "power": 2.0},
}
"""The demo's two methods (``rl`` config sections); SLAS uses the configs' default power."""


@dataclass(frozen=True)
class DemoPlan:
    """The budget of one post-training run and its evaluation (the same for every method).

    The optimiser settings come from measurements (``../shared/shapes-experiments.md`` and the README): at
    lr 1e-4 and four optimizer steps an iteration, 20 steps driven by a *pure-noise* reward lowered the judge
    as much as the ground truth as reward did, so updates that size destroy the model whatever the reward;
    at lr 3e-5 with one step an iteration the ground truth raises it. Independent noise per image (no shared
    initial noise, eta 1) keeps a group's samples different enough to rank.
    """

    iterations: int = 64
    prompts_per_iter: int = 8
    group_size: int = 8
    num_steps: int = 8
    eval_every: int = 16
    eval_images_per_tag: int = 96  # judged images per tag, spread over the tag's prompts (>= 1 each)
    eval_prompts_per_tag: int = 0  # 0: every test prompt
    lr: float = 3e-5
    eta: float = 1.0
    clip_range: float = 1e-2
    shared_noise: bool = False
    grad_accum: int = 4  # micro-batches (of 16 samples) per optimizer step: one step an iteration


FULL = DemoPlan()
QUICK = DemoPlan(iterations=16, eval_every=8, eval_images_per_tag=24, eval_prompts_per_tag=4)


def demo_config(name: str, rl: dict[str, Any], plan: DemoPlan, *, out_dir: Path, seed: int = 0,
                assets_root: Path | None = None, device: str = "cpu", run_name: str | None = None) -> SLASConfig:
    """The run config of one method: FLUX policy on the shipped model, proxies as the reward.

    The run (its folder, job and MLflow run) is called ``run_name`` (default ``name``); it registers no model.
    """
    root = assets.check_assets(assets_root)
    return config_from_dict({
        "run": {"name": run_name or name, "output_dir": str(out_dir), "seed": seed, "iterations": plan.iterations,
                "checkpoint_every": plan.iterations, "progress": True, "register_model": False},
        "model": {"family": "flux", "path": str(root / assets.T2I), "dtype": "float32", "device": device,
                  "finetune": "full"},
        "data": {"prompts": str(root / assets.TRAIN_PROMPTS), "shuffle": True},
        "sample": {"resolution": IMAGE_SIZE, "num_steps": plan.num_steps, "eta": plan.eta, "sde_kind": "dance",
                   "group_size": plan.group_size, "prompts_per_iter": plan.prompts_per_iter,
                   "groups_per_call": plan.prompts_per_iter, "max_sequence_length": TEXT_MAX_LENGTH,
                   "shared_noise": plan.shared_noise},
        "rl": rl,
        "train": {"lr": plan.lr, "clip_range": plan.clip_range, "timestep_fraction": 0.6, "batch_size": 16,
                  "gradient_accumulation_steps": plan.grad_accum, "max_grad_norm": 1.0},
        "reward": {"components": assets.reward_components(root)},
    })


EVAL_BATCH = 128  # images per pipeline call when evaluating


def eval_records(plan: DemoPlan) -> list[dict]:
    """The held-out test prompts the judge sees (at most ``eval_prompts_per_tag`` of each tag)."""
    test = metadata("test")
    if not plan.eval_prompts_per_tag:
        return test
    return [r for tag in GENEVAL_TAGS for r in [x for x in test if x["tag"] == tag][: plan.eval_prompts_per_tag]]


def balanced_expand(records: Sequence[dict], images_per_tag: int, seed: int = 0) -> tuple[list[dict], list[int]]:
    """Every record ``ceil(images_per_tag / prompts of its tag)`` times, each image with its own fixed seed.

    GenEval's overall is the mean of the tag scores, so its noise is set by the smallest tags: equal
    images per tag (rather than per prompt) is what makes the overall score's standard error small.
    """
    count: dict[str, int] = {}
    for r in records:
        count[r["tag"]] = count.get(r["tag"], 0) + 1
    recs = [r for r in records for _ in range(max(1, math.ceil(images_per_tag / count[r["tag"]])))]
    return recs, [seed * 1_000_003 + i for i in range(len(recs))]


class Evaluator:
    """Held-out scores of a policy: the judge (GenEval-style, per tag, with standard errors and the per-image
    verdicts for paired comparisons) and the proxy reward's mean (every component, vividness included)."""

    def __init__(self, plan: DemoPlan, seed: int = 0) -> None:
        self.plan = plan
        self.seed = seed
        self.records, self.seeds = balanced_expand(eval_records(plan), plan.eval_images_per_tag, seed)

    def __call__(self, policy: Policy, reward: Callable[..., dict[str, Tensor]]) -> tuple[dict[str, Any], Tensor]:
        prompts = [r["prompt"] for r in self.records]
        images = policy.generate(prompts, self.seeds, batch_size=EVAL_BATCH)
        verdicts = judge(images, self.records)
        tags = [r["tag"] for r in self.records]
        proxy = reward(images, prompts)
        return {"judge": summarize(tags, verdicts), "judge_se": report.judge_se(tags, verdicts),
                "proxy": {k: float(v.float().mean()) for k, v in proxy.items()},
                "tags": tags, "verdicts": [bool(v) for v in verdicts]}, images


def _flat(result: dict[str, Any]) -> dict[str, float]:
    out = {f"eval/judge/{k}": v for k, v in result["judge"].items()}
    out.update({f"eval/judge/{k}_se": v for k, v in result["judge_se"].items()})
    out.update({f"eval/proxy/{k}": v for k, v in result["proxy"].items()})
    return out


class EvalCallback(Callback):
    """Evaluates held-out prompts at the start (or takes the shared ``before``), every ``plan.eval_every``
    iterations and at the last one; results go into the iteration's metrics and ``evals``. With ``grids``,
    writes the labelled ``grid_before.png`` once before training. Also keeps, every iteration, each training
    group's (reward std, amplification) for the mechanism plot."""

    def __init__(self, evaluator: Evaluator, until: int, before: dict[str, Any] | None, grids: Path | None) -> None:
        self.evaluator = evaluator
        self.until = until
        self.before = before
        self.grids = grids
        self.evals: list[dict[str, Any]] = []
        self.groups: list[tuple[float, float]] = []

    def _evaluate(self, trainer: Trainer) -> dict[str, float]:
        result, _ = self.evaluator(trainer.policy, trainer.reward)
        self.evals.append({"iteration": trainer.iteration, **result})
        return _flat(result)

    def on_train_begin(self, trainer: Trainer) -> None:
        if self.grids is not None and not (self.grids / "grid_before.png").is_file():
            save_grid(trainer.policy, self.grids / "grid_before.png", self.evaluator.seed)
        if self.before is None:
            metrics0 = self._evaluate(trainer)
        else:
            self.evals.append({"iteration": 0, **self.before})
            metrics0 = _flat(self.before)
        if trainer.tracker is not None:
            trainer.tracker.log_metrics(metrics0, step=0)

    def on_step_end(self, trainer: Trainer, metrics: dict[str, float]) -> dict[str, float] | None:
        if trainer.last_batch is not None:
            std, amp, has = group_amplification(*trainer.last_batch)
            self.groups += [(float(s), float(a)) for s, a in zip(std[has], amp[has], strict=True)]
        due = trainer.iteration % self.evaluator.plan.eval_every == 0 or trainer.iteration == self.until
        return self._evaluate(trainer) if due else None


def post_train(config: SLASConfig, evaluator: Evaluator, *, before: dict[str, Any] | None = None,
               store=None, grids: Path | None = None, method: str | None = None) -> dict[str, Any]:
    """Train one method as a store job, evaluating every ``plan.eval_every`` iterations.

    Returns ``{"evals": [{"iteration", "judge", "judge_se", "proxy", "tags", "verdicts"}...], "metrics": [...],
    "groups": [(std, amplification)...], "status", "job_id", "run_dir"}``. ``before`` (the shared iteration-0
    evaluation) is computed here when not given. With ``grids``, labelled sample grids ``grid_before.png``
    (once) and ``grid_after_<method>.png`` are written there.
    """
    from slas.run import run_training

    evals = EvalCallback(evaluator, config.run.iterations, before, grids)
    outcome = run_training(config, store=store, callbacks=[evals])
    if grids is not None:
        save_grid(outcome.trainer.policy, grids / f"grid_after_{method or config.run.name}.png", evaluator.seed)
    return {"evals": evals.evals, "metrics": _read_history(config), "groups": evals.groups,
            "status": outcome.status, "job_id": outcome.job_id, "run_dir": config.run_dir}


def _read_history(config: SLASConfig) -> list[dict[str, Any]]:
    from slas.platform.tracking import read_metrics

    return [m for m in read_metrics(config.run_dir / "metrics.jsonl") if m["step"] > 0]


# ------------------------------------------------------------------------------------------- outputs


def grid_prompts(per_tag: int = 4) -> list[dict]:
    """A fixed slice of test prompts for the sample grids: ``per_tag`` of every tag."""
    test = metadata("test")
    return [r for tag in GENEVAL_TAGS for r in [x for x in test if x["tag"] == tag][:per_tag]]


def save_grid(policy: Policy, path: Path, seed: int = 0) -> None:
    """Two samples of each :func:`grid_prompts` prompt, 8 a row, each with its prompt and the judge's verdict."""
    recs, seeds = expand(grid_prompts(), 2, seed)
    images = policy.generate([r["prompt"] for r in recs], seeds, batch_size=EVAL_BATCH)
    report.labelled_grid(images, [r["prompt"] for r in recs], judge(images, recs)).save(path)


def _log_files(runs: dict[str, dict[str, Any]], store, files: Sequence[Path]) -> None:
    """The report, curves and grids as artifacts of every method's MLflow run (a warning if MLflow is away)."""
    from slas.platform.tracking import default_tracking_uri, mlflow_enabled

    if not mlflow_enabled():
        return
    try:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=default_tracking_uri())
        run_ids = [store.get_job(run["job_id"]).mlflow_run_id for run in runs.values()]
        for run_id in filter(None, run_ids):
            for f in filter(Path.is_file, files):
                client.log_artifact(run_id, str(f), artifact_path="demo")
    except Exception as exc:  # the files are on disk either way
        warnings.warn(f"demo: could not log the report to MLflow: {str(exc).splitlines()[0]}", stacklevel=2)


def quiet_libraries() -> None:
    """The demo's terminal shows its own progress: no model-loading bars or database-migration lines."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    for name in ("alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run_demo(out_dir: str | Path = "runs/demo", *, quick: bool = False, seed: int = 0,
             methods: Sequence[str] = ("dancegrpo", "slas"), plan: DemoPlan | None = None) -> dict:
    """Post-train with each method, evaluate, and write report.json/.md, curves.png, mechanism.png and grids."""
    from slas.platform.db import open_store

    start = time.time()
    plan = plan or (QUICK if quick else FULL)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "grid_before.png").unlink(missing_ok=True)  # written by the first run, never a stale one
    quiet_libraries()
    evaluator = Evaluator(plan, seed)
    print(f"[demo] {len(methods)} methods x {plan.iterations} iterations; the judge scores {len(evaluator.records)} "
          f"held-out images every {plan.eval_every} iterations; outputs in {out.resolve()}", flush=True)
    configs = {m: demo_config(m, METHODS[m], plan, out_dir=out, seed=seed, run_name=f"demo-{m}") for m in methods}
    runs: dict[str, dict[str, Any]] = {}
    before = None
    store = open_store()
    try:
        for name, cfg in configs.items():
            t = time.time()
            runs[name] = run = post_train(cfg, evaluator, before=before, store=store, grids=out, method=name)
            before = {k: run["evals"][0][k] for k in ("judge", "judge_se", "proxy", "tags", "verdicts")}
            first, last = run["evals"][0], run["evals"][-1]
            print(f"[demo] {name} done in {time.time() - t:.0f} s: judge {first['judge']['overall']:.3f} -> "
                  f"{last['judge']['overall']:.3f} (± {last['judge_se']['overall']:.3f}), held-out proxy "
                  f"{first['proxy']['total']:.4f} -> {last['proxy']['total']:.4f}", flush=True)
        report.plot_curves(runs, out / "curves.png")
        report.plot_mechanism(runs, out / "mechanism.png")
        result = report.build_report(runs, time.time() - start, plan)
        paths = _paths(out, runs)
        report.write_report(out, result, plan, paths)
        _log_files(runs, store, [out / f for f in ("report.md", "report.json", "curves.png", "mechanism.png",
                                                   "grid_before.png", *(f"grid_after_{m}.png" for m in runs))])
    finally:
        store.close()
    print(report.markdown(result, plan, paths))
    return result


def _paths(out: Path, runs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """What the demo wrote, by what it is (printed and listed in report.md)."""
    root = out.resolve()
    paths = {"report": str(root / "report.md"), "numbers": str(root / "report.json"),
             "curves": str(root / "curves.png"), "mechanism plots": str(root / "mechanism.png"),
             "samples before training": str(root / "grid_before.png")}
    for name, run in runs.items():
        paths[f"samples after {name}"] = str(root / f"grid_after_{name}.png")
        paths[f"{name} run (metrics.jsonl, checkpoint)"] = str(Path(run["run_dir"]).resolve())
    return paths


__all__ = ["FULL", "METHODS", "QUICK", "DemoPlan", "EvalCallback", "Evaluator", "balanced_expand", "demo_config",
           "post_train", "run_demo"]
