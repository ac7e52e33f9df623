"""``slas bench hacking``: how much each advantage shaping hacks the shapes-world proxies, over seeds.

Every variant post-trains the shipped model from the same weights with the same per-seed prompts and
noise (only ``rl`` differs) and is scored on held-out test prompts by the proxy reward and by the
ground-truth judge, with the demo's evaluation (balanced over tags, the same images every time). Per
variant: mean and spread (std over seeds) of

* proxy gain  = proxy reward after - before (held-out images),
* judge gain  = judge overall accuracy after - before,
* hacking gap = relative proxy gain - relative judge gain (each divided by its "before" value):
  positive when the proxy rose more than the truth did; a run is *hacked* when proxy rose and judge fell;

and, paired by seed (same prompts, noise and evaluation images), each variant's judge gain minus
DanceGRPO's with a 95% t-interval over seeds. ``--long`` runs longer with evaluations along the way, so
over-optimisation (the judge peaking, then falling) can show; the plot has the judge against iterations.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import multiprocessing
import os
import shutil
import signal
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slas.bench import machine
from slas.errors import SlasError
from slas.shapes.demo import FULL, DemoPlan, Evaluator, demo_config, post_train, quiet_libraries

PUBLISHED = Path("benchmarks/results")  # where --publish writes the committed table and plot


class BenchError(SlasError, ValueError):
    """Bad ``slas bench hacking`` input, in one line."""


VARIANTS: dict[str, dict[str, Any]] = {
    "dancegrpo": {"preset": "dancegrpo"},
    "mean_only": {"preset": "custom", "std_scope": "none", "power": 1.0},
    "batch_std_p1": {"preset": "custom", "std_scope": "batch", "power": 1.0},
    **{
        f"slas_p{p:g}{'' if sbn else '_norm_first'}": {
            "preset": "custom", "std_scope": "batch", "power": p, "shape_before_norm": sbn,
        }
        for p in (1.5, 2.0, 3.0)
        for sbn in (True, False)
    },
    "slas_auto": {"preset": "slas", "power": "auto"},
}
"""dancegrpo = (prompt std, p 1); mean_only = prompt-centred only; batch_std_p1 = batch std, p 1; slas_pX =
batch std with power X, shaping the centred reward before normalising (``_norm_first``: the other reading);
slas_auto = SLAS with ``rl.power: auto`` (p chosen each iteration within the Fisher-based bound)."""
BASELINE = "dancegrpo"

BENCH_PLAN = dataclasses.replace(FULL, iterations=32, eval_every=32)  # the demo's settings, half its length
LONG_PLAN = dataclasses.replace(FULL, iterations=3 * FULL.iterations, eval_every=FULL.iterations // 2)
QUICK_PLAN = DemoPlan(iterations=2, prompts_per_iter=2, group_size=4, num_steps=4, eval_every=1,
                      eval_images_per_tag=1, eval_prompts_per_tag=1, lr=1e-4)


def _run_one(args: tuple[str, int, str, str, dict]) -> dict[str, Any]:
    """One (variant, seed) run; returns its before/after figures."""
    variant, seed, out, device, plan_kw = args
    plan = DemoPlan(**plan_kw)
    out_dir = Path(out) / f"seed{seed}"
    cfg = demo_config(variant, VARIANTS[variant], plan, out_dir=out_dir, seed=seed, device=device,
                      run_name=f"bench-{variant}")
    t = time.time()
    run = post_train(cfg, Evaluator(plan, seed))
    first, last = run["evals"][0], run["evals"][-1]
    return {"variant": variant, "seed": seed, "plan": plan_kw, "seconds": time.time() - t,
            "proxy_before": first["proxy"]["total"], "proxy_after": last["proxy"]["total"],
            "judge_before": first["judge"]["overall"], "judge_after": last["judge"]["overall"],
            "judge_after_tags": last["judge"], "eval_images": len(first["verdicts"]),
            "curve": [{"iteration": e["iteration"], "judge": e["judge"]["overall"], "proxy": e["proxy"]["total"],
                       "vividness": e["proxy"].get("vividness")} for e in run["evals"]],
            "power": [m["rl/power"] for m in run["metrics"] if "rl/power" in m]}


@contextlib.contextmanager
def _mlflow_off():
    old = os.environ.get("SLAS_MLFLOW")
    os.environ["SLAS_MLFLOW"] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SLAS_MLFLOW", None)
        else:
            os.environ["SLAS_MLFLOW"] = old


@contextlib.contextmanager
def sigterm_exits():
    """SIGTERM kills the pool's workers and raises ``SystemExit`` here, so a parallel bench stops at once.

    Python's default SIGTERM killed only the parent, and the spawned workers went on training for minutes.
    Raising alone is not enough: ``Pool.terminate`` signals its workers with SIGTERM, which a worker inside
    ``run_training`` takes as "stop after this iteration"; the worker then finishes its run and waits for a
    task the terminating pool never gives, and the pool waits for it (a deadlock, seen). A bench run is
    only kept once it finished (``results.jsonl``), so nothing is lost by killing the workers outright.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, _frame: Any) -> None:
        for child in multiprocessing.active_children():
            child.kill()
        sys.exit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _append(path: Path, record: dict[str, Any]) -> dict[str, Any]:
    with path.open("a") as fh:
        fh.write(json.dumps(record) + "\n")
    return record


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def _stats(xs: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarize(results: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per variant: mean/std over seeds of proxy gain, judge gain and hacking gap; hacked-run count."""
    out: dict[str, dict[str, Any]] = {}
    for variant in dict.fromkeys(r["variant"] for r in results):
        rs = [r for r in results if r["variant"] == variant]
        proxy = [r["proxy_after"] - r["proxy_before"] for r in rs]
        judge = [r["judge_after"] - r["judge_before"] for r in rs]
        gap = [p / abs(r["proxy_before"]) - j / max(r["judge_before"], 1e-6) for p, j, r in zip(proxy, judge, rs, strict=True)]
        out[variant] = {
            "seeds": len(rs),
            "proxy_gain": _stats(proxy), "judge_gain": _stats(judge), "hacking_gap": _stats(gap),
            "judge_after": _stats([r["judge_after"] for r in rs]),
            "hacked": sum(p > 0 and j < 0 for p, j in zip(proxy, judge, strict=True)),
        }
    return out


def t_quantile(df: int, q: float = 0.975) -> float:
    """Student's t quantile (for intervals over a handful of seeds, where 1.96 would be too narrow)."""
    from scipy.stats import t

    return float(t.ppf(q, df))


def paired_vs_baseline(results: Sequence[dict[str, Any]], baseline: str = BASELINE) -> dict[str, dict[str, Any]]:
    """Per variant: its judge gain minus the baseline's, paired by seed, as mean, SE and a 95% t-interval."""
    gain = {(r["variant"], r["seed"]): r["judge_after"] - r["judge_before"] for r in results}
    out: dict[str, dict[str, Any]] = {}
    for variant in dict.fromkeys(r["variant"] for r in results):
        if variant == baseline:
            continue
        d = [gain[(variant, s)] - gain[(baseline, s)] for (v, s) in gain if v == variant and (baseline, s) in gain]
        if len(d) < 2:
            continue
        mean, sd = statistics.fmean(d), statistics.stdev(d)
        half = t_quantile(len(d) - 1) * sd / math.sqrt(len(d))
        out[variant] = {"seeds": len(d), "mean": mean, "se": sd / math.sqrt(len(d)), "ci95": (mean - half, mean + half),
                        "wins": sum(x > 0 for x in d)}
    return out


def _pm(stat: tuple[float, float], digits: int, signed: bool) -> str:
    sign = "+" if signed else ""
    return f"{stat[0]:{sign}.{digits}f} ± {stat[1]:.{digits}f}"


def markdown(summary: dict[str, dict[str, Any]], paired: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    plan = meta["plan"]
    lines = [
        "# Reward hacking in the shapes world: advantage shapings compared",
        "",
        f"Machine: {meta['machine']}; date: {meta['date']}; {meta['seeds']} seeds per variant, paired by seed; runs "
        f"took {meta['seconds']:.0f} s in all (summed; {meta['jobs']} in parallel).",
        f"Each run: {plan['iterations']} iterations x {plan['prompts_per_iter']} prompts x {plan['group_size']} images, "
        f"lr {plan['lr']:g}, {plan['num_steps']} sampling steps; the judge scores {meta['eval_images']} held-out images "
        f"(about {plan['eval_images_per_tag']} per tag, the same images before and after).",
        "Gains are after - before; hacking gap = relative proxy gain - relative judge gain; "
        "hacked = runs with proxy up and judge down. Mean ± std over seeds.",
        "",
        "| variant | proxy gain | judge gain | hacking gap | judge after | hacked |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        cells = [_pm(s["proxy_gain"], 4, True), _pm(s["judge_gain"], 3, True), _pm(s["hacking_gap"], 3, True),
                 _pm(s["judge_after"], 3, False), f"{s['hacked']}/{s['seeds']}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if paired:
        lines += [
            "",
            f"Judge gain minus {BASELINE}'s, paired by seed (mean, standard error, 95% t-interval over seeds; "
            f"wins = seeds where the variant gained more):",
            "",
            "| variant | difference | SE | 95% interval | wins |",
            "|---|---|---|---|---|",
        ]
        for name, d in paired.items():
            lo, hi = d["ci95"]
            lines.append(f"| {name} | {d['mean']:+.3f} | {d['se']:.3f} | [{lo:+.3f}, {hi:+.3f}] | {d['wins']}/{d['seeds']} |")
    return "\n".join(lines) + "\n"


def plot(results: Sequence[dict[str, Any]], path: Path) -> None:
    """Held-out judge and vividness against iterations, mean over seeds per variant (long runs show the peak)."""
    from slas.shapes.report import pyplot, save_figure

    fig, axes = pyplot().subplots(1, 2, figsize=(12, 4.2))
    for i, variant in enumerate(dict.fromkeys(r["variant"] for r in results)):
        curves = [r["curve"] for r in results if r["variant"] == variant]
        its = [p["iteration"] for p in curves[0]]
        for ax, key in zip(axes, ("judge", "vividness"), strict=True):
            ys = [statistics.fmean(c[k][key] for c in curves) for k in range(len(its)) if curves[0][k][key] is not None]
            ax.plot(its[: len(ys)], ys, marker="os^vD<>ph*"[i % 10], color=f"C{i}", label=variant)
    axes[0].set(title="held-out judge (mean over seeds)", xlabel="iteration", ylabel="GenEval-style overall")
    axes[1].set(title="held-out vividness: the proxy's planted bias", xlabel="iteration", ylabel="mean vividness")
    save_figure(fig, axes, path, legend_size=7)


def run_hacking(seeds: int = 3, *, out: str | Path = "runs/bench_hacking", publish: bool = False,
                device: str = "cpu", jobs: int = 1, quick: bool = False, long: bool = False,
                variants: Sequence[str] | None = None) -> dict[str, Any]:
    """Run every (variant, seed); write ``results.json``, ``hacking.md`` and ``hacking.png`` under ``out`` (and,
    with ``publish``, the table and plot to ``benchmarks/results/``, named ``hacking`` or ``hacking_long``)."""
    if seeds < 1:
        raise BenchError(f"--num-seeds must be >= 1, got {seeds}")
    names = list(variants or VARIANTS)
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise BenchError(f"--variant: unknown variant(s) {unknown}; known: {list(VARIANTS)}")
    plan = QUICK_PLAN if quick else LONG_PLAN if long else BENCH_PLAN
    quiet_libraries()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = _run_all(names, seeds, plan, out, device, jobs)
    summary, paired = summarize(results), paired_vs_baseline(results) if BASELINE in names else {}
    meta = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "seeds": seeds, "jobs": jobs,
            "seconds": sum(r["seconds"] for r in results), "plan": plan.__dict__,
            "eval_images": results[0].get("eval_images")}
    report = {"meta": meta, "summary": summary, "paired": paired, "runs": results}
    (out / "results.json").write_text(json.dumps(report, indent=2))
    table = markdown(summary, paired, meta)
    stem = "hacking_long" if long else "hacking"
    (out / f"{stem}.md").write_text(table)
    plot(results, out / f"{stem}.png")
    targets = [out] + ([PUBLISHED] if publish else [])
    if publish:  # the same files, drawn once
        PUBLISHED.mkdir(parents=True, exist_ok=True)
        for suffix in (".md", ".png"):
            shutil.copyfile(out / f"{stem}{suffix}", PUBLISHED / f"{stem}{suffix}")
    print(table)
    print("wrote " + ", ".join(str((f / stem).resolve()) + ".md/.png" for f in targets) + f" and {(out / 'results.json').resolve()}")
    return report


def _run_all(names: Sequence[str], seeds: int, plan: DemoPlan, out: Path, device: str, jobs: int) -> list[dict[str, Any]]:
    """Every (variant, seed) run; finished ones are appended to ``out/results.jsonl`` at once, so an
    interrupted bench resumes where it stopped."""
    done_path = out / "results.jsonl"
    done = {(r["variant"], r["seed"]): r for r in _read_jsonl(done_path) if r.get("plan") == plan.__dict__}
    tasks = [(v, s, str(out), device, plan.__dict__) for s in range(seeds) for v in names if (v, s) not in done]
    from slas.platform.db import open_store

    open_store().close()  # create the job store once, before parallel runs open it
    with _mlflow_off():  # hundreds of short runs: the JSONL metrics and the store are enough
        if jobs > 1:
            threads = max(1, (os.cpu_count() or 1) // jobs)
            with sigterm_exits(), multiprocessing.get_context("spawn").Pool(jobs, initializer=_set_threads,
                                                                            initargs=(threads,)) as pool:
                for r in pool.imap_unordered(_run_one, tasks):
                    done[(r["variant"], r["seed"])] = _append(done_path, r)
        else:
            for t in tasks:
                r = _run_one(t)
                done[(r["variant"], r["seed"])] = _append(done_path, r)
    return [done[(v, s)] for s in range(seeds) for v in names]
