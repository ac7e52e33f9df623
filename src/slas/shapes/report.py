"""What ``slas demo`` writes: scores with their standard errors, report.json/.md, curves, mechanism plots and
labelled sample grids.

Every judge score comes with its standard error, because the differences the demo shows are a few
hundredths: a tag's score is a mean of 0/1 verdicts (binomial SE), the overall score is GenEval's mean
of the tag scores (its SE the root of the summed tag variances over the tag count), and a gain compares
the same prompts and seeds before and after training, so its SE comes from the per-image paired
differences (much smaller than two independent SEs would give).
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from slas.eval.geneval import GENEVAL_TAGS
from slas.images import to_pil

TAGS = ("overall", *GENEVAL_TAGS)
COLORS = {"dancegrpo": "tab:red", "slas": "tab:blue"}
MARKERS = {"dancegrpo": "o", "slas": "s"}


# ------------------------------------------------------------------------------------------------ statistics


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def _se(xs: Sequence[float]) -> float:
    """Standard error of the mean of ``xs`` (sample std / sqrt n; 0 for fewer than two values)."""
    n = len(xs)
    if n < 2:
        return 0.0
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1) / n)


def _by_tag(tags: Sequence[str], values: Sequence[float]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for tag, v in zip(tags, values, strict=True):
        out.setdefault(tag, []).append(float(v))
    return out


def _with_overall(per_tag: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """Adds GenEval's overall (mean of the tag scores) and its SE (tags are independent samples)."""
    scores = [s for s, _ in per_tag.values()]
    se = math.sqrt(sum(e * e for _, e in per_tag.values())) / len(per_tag)
    return {"overall": (_mean(scores), se), **per_tag}


def judge_se(tags: Sequence[str], verdicts: Sequence[bool]) -> dict[str, float]:
    """``{tag: SE}`` of the accuracies :func:`slas.eval.geneval.summarize` reports, ``overall`` included."""
    groups = _by_tag(tags, [float(v) for v in verdicts])
    return {t: se for t, (_, se) in _with_overall({t: (_mean(v), _se(v)) for t, v in groups.items()}).items()}


def paired_gain(tags: Sequence[str], before: Sequence[bool], after: Sequence[bool]) -> dict[str, tuple[float, float]]:
    """``{tag: (after - before, SE)}`` from per-image paired differences (same prompt and seed), plus overall."""
    diffs = [float(a) - float(b) for a, b in zip(after, before, strict=True)]
    groups = _by_tag(tags, diffs)
    return _with_overall({t: (_mean(v), _se(v)) for t, v in groups.items()})


def first_last(values: Sequence[float], k: int) -> dict[str, float]:
    """Mean of the first and of the last ``k`` values (a noisy per-iteration series, summarised)."""
    k = max(1, min(k, len(values) // 2 or 1))
    return {"first": _mean(values[:k]), "last": _mean(values[-k:])}


# ---------------------------------------------------------------------------------------------- report files


def method_summary(run: Mapping[str, Any], window: int) -> dict[str, Any]:
    """One method's entry of report.json (the contract's keys plus standard errors and the training reward)."""
    first, last = run["evals"][0], run["evals"][-1]
    gain = paired_gain(first["tags"], first["verdicts"], last["verdicts"])
    rewards = [m["reward/total/mean"] for m in run["metrics"]]
    return {
        "proxy_reward": {"before": first["proxy"]["total"], "after": last["proxy"]["total"]},
        "judge": {"before": {t: first["judge"].get(t, 0.0) for t in TAGS},
                  "after": {t: last["judge"].get(t, 0.0) for t in TAGS}},
        "judge_se": {"before": {t: first["judge_se"].get(t, 0.0) for t in TAGS},
                     "after": {t: last["judge_se"].get(t, 0.0) for t in TAGS}},
        "judge_gain": {t: {"mean": gain[t][0], "se": gain[t][1]} for t in TAGS if t in gain},
        "vividness": {"before": first["proxy"].get("vividness"), "after": last["proxy"].get("vividness")},
        "train_reward": first_last(rewards, window),
        "job_id": run.get("job_id"),
    }


def build_report(runs: Mapping[str, Mapping[str, Any]], seconds: float, plan: Any) -> dict[str, Any]:
    """report.json: ``seconds``, ``iterations``, ``eval_images`` and per method the summary above."""
    window = max(1, plan.iterations // 4)
    any_run = next(iter(runs.values()))
    report = {"seconds": seconds, "iterations": plan.iterations, "eval_images": len(any_run["evals"][0]["verdicts"]),
              "train_reward_window": window,
              "methods": {name: method_summary(run, window) for name, run in runs.items()}}
    if len(runs) == 2:
        (a, ra), (b, rb) = runs.items()
        last_a, last_b = ra["evals"][-1], rb["evals"][-1]
        diff = paired_gain(last_a["tags"], last_a["verdicts"], last_b["verdicts"])["overall"]
        report["difference"] = {"of": b, "minus": a, "judge_after": {"mean": diff[0], "se": diff[1]}}
    return report


def _pm(mean: float, se: float, signed: bool = False) -> str:
    return f"{mean:+.3f} ± {se:.3f}" if signed else f"{mean:.3f} ± {se:.3f}"


def _table(report: Mapping[str, Any]) -> list[str]:
    lines = ["| method | tag | judge before | judge after | gain (paired) |", "|---|---|---|---|---|"]
    for name, m in report["methods"].items():
        for t in TAGS:
            b, a = m["judge"]["before"][t], m["judge"]["after"][t]
            bse, ase = m["judge_se"]["before"][t], m["judge_se"]["after"][t]
            g = m["judge_gain"].get(t, {"mean": a - b, "se": 0.0})
            label = f"**{t}**" if t == "overall" else t
            lines.append(f"| {name} | {label} | {_pm(b, bse)} | {_pm(a, ase)} | {_pm(g['mean'], g['se'], True)} |")
    return lines


def _proxy_table(report: Mapping[str, Any]) -> list[str]:
    lines = ["| method | training reward, first -> last iterations | held-out proxy before -> after | "
             "held-out vividness before -> after |", "|---|---|---|---|"]
    for name, m in report["methods"].items():
        tr, px, vv = m["train_reward"], m["proxy_reward"], m["vividness"]
        viv = f"{vv['before']:.3f} -> {vv['after']:.3f}" if vv["before"] is not None else "-"
        lines.append(f"| {name} | {tr['first']:.4f} -> {tr['last']:.4f} | {px['before']:.4f} -> {px['after']:.4f} | {viv} |")
    return lines


def what_this_shows(report: Mapping[str, Any]) -> str:
    """One paragraph, written from the numbers: who gained judge accuracy, whether that is beyond noise,
    whether the training reward rose, and whether the proxy rose while the truth fell (hacking)."""
    parts = []
    for name, m in report["methods"].items():
        g = m["judge_gain"]["overall"]
        z = g["mean"] / g["se"] if g["se"] > 0 else 0.0
        size = ("within noise" if abs(z) < 2 else "beyond noise") + f" ({z:+.1f} standard errors)"
        tr = m["train_reward"]
        px = m["proxy_reward"]
        hacked = px["after"] > px["before"] and g["mean"] < 0
        parts.append(
            f"{name} moved the held-out judge by {g['mean']:+.3f} ± {g['se']:.3f}, {size}; its training reward went "
            f"{'up' if tr['last'] > tr['first'] else 'down'} ({tr['first']:.3f} -> {tr['last']:.3f})"
            + ("; its held-out proxy rose while the judge fell: it gamed the proxy." if hacked else ".")
        )
    if "difference" in report:
        d = report["difference"]
        mean, se = d["judge_after"]["mean"], d["judge_after"]["se"]
        ahead = d["of"] if mean > 0 else d["minus"]
        verdict = "a difference within noise" if abs(mean) < 2 * se else f"{ahead} ahead beyond noise"
        parts.append(f"After training, {d['of']} minus {d['minus']} on the judge: {mean:+.3f} ± {se:.3f} (paired over "
                     f"the same images): {verdict}.")
    parts.append(
        f"The judge (ground truth: the world's detector + GenEval's rules) scored {report['eval_images']} held-out "
        "images per evaluation, the same prompts and seeds before and after; it never trains anything. "
        "One seed is one seed: `slas bench hacking` repeats this over seeds."
    )
    return " ".join(parts)


def markdown(report: Mapping[str, Any], plan: Any, paths: Mapping[str, str] | None = None) -> str:
    """report.md: setup, what it shows, the per-tag before/after table with SEs, the reward table, files."""
    lines = [
        "# shapes-world demo: DanceGRPO vs SLAS",
        "",
        f"{report['iterations']} iterations x {plan.prompts_per_iter} prompts x {plan.group_size} images, "
        f"{plan.num_steps} sampling steps, lr {plan.lr:g}; held-out judge on {report['eval_images']} images "
        f"(about {plan.eval_images_per_tag} per tag); {report['seconds']:.0f} s in all.",
        "",
        "## What this shows",
        "",
        textwrap.fill(what_this_shows(report), 110),
        "",
        "## Judge accuracy per tag (mean ± standard error)",
        "",
        *_table(report),
        "",
        "## Rewards",
        "",
        f"Training reward: mean over the first and the last {report['train_reward_window']} iterations (each "
        "iteration's prompts differ, so single iterations are noisy). Vividness is the bias planted in the "
        "preference proxy (saturation + contrast); it is logged, never rewarded on its own.",
        "",
        *_proxy_table(report),
        "",
    ]
    if paths:
        lines += ["## Files", "", *[f"- {what}: `{where}`" for what, where in paths.items()], ""]
    return "\n".join(lines)


def write_report(out_dir: Path, report: Mapping[str, Any], plan: Any, paths: Mapping[str, str]) -> None:
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    (out_dir / "report.md").write_text(markdown(report, plan, paths))


# --------------------------------------------------------------------------------------------------- plots


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display on a server)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, axes, path: Path, legend_size: int = 8) -> None:
    """Grid and legend (where something is labelled) on every axis, then write ``path`` and free the figure."""
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)


def _moving_average(xs: Sequence[float], k: int) -> list[float]:
    return [_mean(xs[max(0, i - k + 1) : i + 1]) for i in range(len(xs))]


def plot_curves(runs: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    """Left: training reward per iteration (faint) and its moving average, held-out proxy at evaluations.
    Right: the judge at evaluations with ±1 SE bars, on a fixed 0..1 scale so noise is not zoomed into."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for i, (name, run) in enumerate(runs.items()):
        color, marker = COLORS.get(name, f"C{i + 2}"), MARKERS.get(name, "^")
        steps = [m["step"] for m in run["metrics"]]
        reward = [m["reward/total/mean"] for m in run["metrics"]]
        axes[0].plot(steps, reward, color=color, alpha=0.2, lw=1)
        axes[0].plot(steps, _moving_average(reward, 8), color=color, lw=2, label=f"{name}: training rollouts (avg of 8)")
        it = [e["iteration"] for e in run["evals"]]
        axes[0].plot(it, [e["proxy"]["total"] for e in run["evals"]], marker=marker, ls="--", color=color,
                     label=f"{name}: held-out proxy")
        offset = (i - (len(runs) - 1) / 2) * 0.4  # side by side, so one method's markers never hide the other's
        axes[1].errorbar([x + offset for x in it], [e["judge"]["overall"] for e in run["evals"]],
                         yerr=[e["judge_se"]["overall"] for e in run["evals"]], marker=marker, color=color,
                         capsize=3, label=name)
    axes[0].set(title="proxy reward (HPS-like + CLIP-like)", xlabel="iteration", ylabel="mean reward")
    axes[1].set(title="judge: GenEval-style overall on held-out prompts (±1 SE)", xlabel="iteration",
                ylabel="accuracy", ylim=(0, 1))
    save_figure(fig, axes, path)


def plot_mechanism(runs: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    """The paper's mechanism, per method. Left: each training group's amplification |A| / |r - mean| against
    its within-group reward std (prompt-std normalisation blows flat groups up; SLAS does not). Right: the
    planted bias (vividness) of the training rollouts over iterations."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for i, (name, run) in enumerate(runs.items()):
        color = COLORS.get(name, f"C{i + 2}")
        pts = run.get("groups", [])
        if pts:
            axes[0].scatter([p[0] for p in pts], [p[1] for p in pts], s=6, alpha=0.35, color=color, label=name)
        steps = [m["step"] for m in run["metrics"] if "reward/vividness/mean" in m]
        viv = [m["reward/vividness/mean"] for m in run["metrics"] if "reward/vividness/mean" in m]
        if viv:
            axes[1].plot(steps, viv, color=color, alpha=0.25)
            axes[1].plot(steps, _moving_average(viv, 8), color=color, lw=2, label=f"{name} (avg of 8)")
    axes[0].set(title="amplification vs within-group reward std (one point per group and iteration)",
                xlabel="within-group std of the training reward", ylabel="mean |A| / |r - group mean|",
                xscale="log", yscale="log")
    axes[1].set(title="vividness of the training rollouts (the proxy's planted bias)", xlabel="iteration",
                ylabel="mean vividness")
    save_figure(fig, axes, path)


def labelled_grid(images: Tensor, prompts: Sequence[str], verdicts: Sequence[bool], *, per_row: int = 8,
                  scale: int = 4):
    """Samples upscaled ``scale`` times (nearest), each with a green (correct) or red (wrong) frame from the
    judge and its prompt wrapped underneath; a PIL image."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    side = images.shape[-1] * scale
    text_h, pad, frame = 40, 6, 3
    cell_w, cell_h = side + 2 * pad, side + text_h + 2 * pad
    rows = math.ceil(len(prompts) / per_row)
    canvas = Image.new("RGB", (per_row * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(canvas)
    for k, (img, prompt, ok) in enumerate(zip(images, prompts, verdicts, strict=True)):
        x, y = (k % per_row) * cell_w + pad, (k // per_row) * cell_h + pad
        tile = to_pil(img).resize((side, side), Image.Resampling.NEAREST)
        draw.rectangle([x - frame, y - frame, x + side + frame - 1, y + side + frame - 1],
                       fill=(40, 160, 60) if ok else (210, 40, 40))
        canvas.paste(tile, (x, y))
        text = textwrap.fill(prompt.removeprefix("a photo of "), 22)
        draw.multiline_text((x, y + side + frame + 1), ("ok  " if ok else "no  ") + text, fill="black", font=font,
                            spacing=1)
    return canvas


__all__ = [
    "build_report", "first_last", "judge_se", "labelled_grid", "markdown", "paired_gain", "plot_curves",
    "plot_mechanism", "save_figure", "what_this_shows", "write_report",
]
