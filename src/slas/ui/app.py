"""The Gradio Blocks review app: blind pair ratings (Compare), what they add up to (Leaderboard), and how
training went (Runs: curves from MLflow, rollout grids, config differences).

The page only wires components to :mod:`slas.ui.handlers` and :mod:`slas.ui.leaderboard`; every image it
shows is read through :mod:`slas.ui.imagefiles` and handed to Gradio as pixels, so no request can name a
file. Keys on the Compare tab (outside text boxes): 1 / A / Left arrow = left better, 2 / B / Right arrow
= right better, 3 / T = tie, 4 / X = both bad, S = skip, U = undo the last rating.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr

from slas.errors import SlasError
from slas.platform.db import Store
from slas.platform.samplesets import format_rows, get_set, rating_rows
from slas.ui.handlers import (
    TAGS,
    PairView,
    checkpoint_choices,
    clean_rater,
    next_pair,
    rate,
    reveal,
    reward_rows,
    set_choices,
    undo,
)
from slas.ui.imagefiles import load_checked, set_roots
from slas.ui.leaderboard import rater_agreement, reward_agreement, standings
from slas.ui.runs import config_diff, curves_figure, metric_keys, rollout_grids, run_choices, run_curves

TITLE = "slas review"
CHOICES = {"a": "A better (left) [1]", "b": "B better (right) [2]", "tie": "Tie [3]", "both_bad": "Both bad [4]"}
BUTTON_IDS = {"a": "rate-a", "b": "rate-b", "tie": "rate-tie", "both_bad": "rate-bad"}
KEYS_JS = """
<script>
(() => {
  const keys = {"1": "rate-a", "a": "rate-a", "ArrowLeft": "rate-a", "2": "rate-b", "b": "rate-b",
                "ArrowRight": "rate-b", "3": "rate-tie", "t": "rate-tie", "4": "rate-bad", "x": "rate-bad",
                "s": "skip-pair", "u": "undo"};
  document.addEventListener("keydown", (e) => {
    const t = e.target;
    if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
    const typing = t && (t.tagName === "TEXTAREA" || t.tagName === "SELECT" || t.isContentEditable ||
      (t.tagName === "INPUT" && !["checkbox", "radio", "button", "range"].includes(t.type)));
    if (typing) return;  // a tag just ticked keeps the focus on its checkbox: keys still rate
    const id = keys[e.key.length === 1 ? e.key.toLowerCase() : e.key];
    if (!id) return;
    const el = document.getElementById(id);
    const button = el && (el.tagName === "BUTTON" ? el : el.querySelector("button"));
    if (button && !button.disabled) { e.preventDefault(); button.click(); }
  });
})();
</script>
"""
CSS = """
#progress {font-size: 0.95em; opacity: 0.85}
#prompt {font-size: 1.15em}
/* small renders (a 32 px shapes model, 64 px tests) fill the box with hard pixel edges, so artefacts show */
.pair-image img {width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated}
"""
EMPTY_STATE: dict[str, Any] = {}
IMAGE_HEIGHT = 360  # px on the page; small renders are scaled up so artefacts show


def _fail(exc: Exception) -> gr.Error:
    """A slas error as the page shows it: the one line, no traceback."""
    return gr.Error(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def _plain(text: str) -> str:
    """``text`` shown literally inside Markdown (a prompt's ``*`` or ``<`` is not formatting)."""
    return re.sub(r"([\\`*_{}\[\]()<>#+!|~-])", r"\\\1", text)


def _set_id(value: Any, what: str = "sample set") -> int:
    """An id from a dropdown that also takes typed values."""
    try:
        return int(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{what} {value!r} is not an id") from None


def _view_outputs(store: Store, view: PairView | None, state: dict[str, Any], last: str) -> list[Any]:
    """Values for (state, progress, prompt, person, product, left, right, slider, rewards, last)."""
    if view is None:
        done = "All pairs of this comparison are rated by you." if state.get("set_id") else "Pick a set and two checkpoints."
        return [dict(state, left=None, right=None), done, "", gr.update(value=None, visible=False),
                gr.update(value=None, visible=False), None, None, None, [], last]
    roots = set_roots(get_set(store, view.set_id))
    left, right = load_checked(view.left.image_path, roots), load_checked(view.right.image_path, roots)
    person = load_checked(view.left.person_image, roots) if view.left.person_image else None
    product = load_checked(view.left.product_image, roots) if view.left.product_image else None
    state = dict(state, left=view.left.id, right=view.right.id, left_label=view.left_label, right_label=view.right_label)
    progress = f"Pair {view.position + 1} of {view.total} · {view.total - view.position - 1} left after this one"
    prompt = f"**{'Instruction' if view.is_editing else 'Prompt'}:** {_plain(view.left.prompt)}  ·  seed {view.left.seed}"
    return [state, progress, prompt, gr.update(value=person, visible=person is not None),
            gr.update(value=product, visible=product is not None), left, right, (left, right), reward_rows(view), last]


def build_app(store: Store, *, login_required: bool = False, mlflow_ui: str | None = None) -> gr.Blocks:
    """The review app over ``store`` (not launched). ``login_required``: the rater name is the login;
    ``mlflow_ui``: the MLflow UI's address for run links (default: the tracking URI when it is a server)."""

    def who(rater: str, request: gr.Request | None) -> str:
        """The rater a rating is stored under: the login when logins are on (a page cannot rate as someone
        else), else the name typed in."""
        user = getattr(request, "username", None) if request is not None else None
        return user if login_required and user else rater

    def start(rater: str, set_id: int | None, a: str | None, b: str | None, state: dict[str, Any],
              request: gr.Request) -> list[Any]:
        rater = who(rater, request)
        if set_id is None or not a or not b:
            raise gr.Error("pick a sample set and two checkpoints")
        try:
            state = {"set_id": _set_id(set_id), "a": a, "b": b, "skipped": []}
            return _view_outputs(store, next_pair(store, state["set_id"], a, b, rater), state, "")
        except SlasError as exc:
            raise _fail(exc) from None

    def rate_with(choice: str):
        def handler(rater: str, comment: str, tags: list[str], state: dict[str, Any], request: gr.Request) -> list[Any]:
            rater = who(rater, request)
            if not state or state.get("left") is None:
                raise gr.Error("no pair on screen: pick a set and two checkpoints, then Start")
            try:
                clean_rater(rater)
                row = rate(store, state["set_id"], state["left"], state["right"], rater=rater, choice=choice,
                           comment=comment, tags=tags)
                state = dict(state, last_rating=row.id)
                last = reveal(state["left_label"], state["right_label"], choice)
                view = next_pair(store, state["set_id"], state["a"], state["b"], rater,
                                 skip=[tuple(p) for p in state.get("skipped", [])])
                return [*_view_outputs(store, view, state, last), "", []]
            except SlasError as exc:
                raise _fail(exc) from None

        return handler

    def skip(rater: str, state: dict[str, Any], request: gr.Request) -> list[Any]:
        rater = who(rater, request)
        if not state or state.get("left") is None:
            raise gr.Error("no pair on screen to skip")
        try:
            skipped = [*state.get("skipped", []), [state["left"], state["right"]]]
            state = dict(state, skipped=skipped)
            view = next_pair(store, state["set_id"], state["a"], state["b"], rater, skip=[tuple(p) for p in skipped])
            return _view_outputs(store, view, state, "Skipped; it comes back when nothing else is left.")
        except SlasError as exc:
            raise _fail(exc) from None

    def take_back(rater: str, state: dict[str, Any], request: gr.Request) -> list[Any]:
        rater = who(rater, request)
        if not state or not state.get("last_rating"):
            raise gr.Error("nothing to undo: no rating made in this session since the last undo")
        try:
            view = undo(store, state["set_id"], state["last_rating"], rater=rater)
            return _view_outputs(store, view, dict(state, last_rating=None),
                                 "Took back your last rating: rate this pair again.")
        except SlasError as exc:
            raise _fail(exc) from None

    def pick_set(set_id: int | None, a: str | None, b: str | None) -> tuple[Any, Any]:
        """The set's checkpoints as the two choices; picks already valid for the set are kept."""
        if set_id is None:
            return gr.update(choices=[], value=None), gr.update(choices=[], value=None)
        try:
            labels = checkpoint_choices(store, _set_id(set_id))
        except SlasError as exc:
            raise _fail(exc) from None
        a = a if a in labels else (labels[0] if labels else None)
        b = b if b in labels and b != a else next((x for x in labels if x != a), None)
        return gr.update(choices=labels, value=a), gr.update(choices=labels, value=b)

    def open_page(request: gr.Request) -> tuple[Any, Any, Any]:
        """Fresh set choices; ``?set=ID&a=LABEL&b=LABEL`` in the address preselects a comparison (a link to
        send to the other raters)."""
        choices = set_choices(store)
        query = dict(getattr(request, "query_params", None) or {})
        ids = {sid for _, sid in choices}
        wanted = int(query["set"]) if str(query.get("set", "")).isdigit() else None
        set_id = wanted if wanted in ids else (choices[0][1] if choices else None)
        update = gr.update(choices=choices, value=set_id)
        a_up, b_up = pick_set(set_id, query.get("a"), query.get("b")) if set_id is not None else (gr.update(), gr.update())
        return update, a_up, b_up

    def signed_in(request: gr.Request) -> Any:
        user = getattr(request, "username", None)
        if login_required and user:
            return gr.update(value=user, interactive=False)
        return gr.update()

    with gr.Blocks(title=TITLE, delete_cache=(3600, 86400)) as demo:  # served copies live a day
        gr.Markdown(f"## {TITLE}: blind side-by-side review")
        with gr.Tab("Compare"):
            state = gr.State(EMPTY_STATE)
            with gr.Row():
                rater = gr.Textbox(label="Rater (required)", placeholder="your name", elem_id="rater", scale=1)
                # custom values allowed: the choices change per session (new sets, the set's checkpoints) and
                # the handlers check every value against the store themselves
                set_dd = gr.Dropdown(label="Sample set", choices=set_choices(store), value=None, elem_id="set",
                                     allow_custom_value=True, scale=2)
                a_dd = gr.Dropdown(label="Checkpoint 1", choices=[], elem_id="ckpt-a", allow_custom_value=True, scale=2)
                b_dd = gr.Dropdown(label="Checkpoint 2", choices=[], elem_id="ckpt-b", allow_custom_value=True, scale=2)
                start_btn = gr.Button("Start", variant="primary", elem_id="start", scale=0)
            progress = gr.Markdown(elem_id="progress")
            prompt = gr.Markdown(elem_id="prompt")
            with gr.Row(equal_height=True):
                person = gr.Image(label="Person", type="pil", format="png", height=IMAGE_HEIGHT, visible=False, interactive=False,
                                   elem_classes="pair-image")
                product = gr.Image(label="Product", type="pil", format="png", height=IMAGE_HEIGHT, visible=False, interactive=False,
                                   elem_classes="pair-image")
                left = gr.Image(label="A (left)", type="pil", format="png", height=IMAGE_HEIGHT, interactive=False, elem_id="image-a",
                                elem_classes="pair-image")
                right = gr.Image(label="B (right)", type="pil", format="png", height=IMAGE_HEIGHT, interactive=False, elem_id="image-b",
                                 elem_classes="pair-image")
            with gr.Accordion("Slider (drag to compare A and B)", open=False):
                slider = gr.ImageSlider(label="A | B", type="pil", format="png", interactive=False, height=480)
            with gr.Row():
                buttons = {c: gr.Button(text, elem_id=BUTTON_IDS[c], variant="primary" if c in "ab" else "secondary")
                           for c, text in CHOICES.items()}
                skip_btn = gr.Button("Skip [S]", elem_id="skip-pair", variant="secondary")
                undo_btn = gr.Button("Undo last [U]", elem_id="undo", variant="secondary")
            with gr.Row():
                tags = gr.CheckboxGroup(list(TAGS), label="Tags (optional)", elem_id="tags", scale=3)
                comment = gr.Textbox(label="Comment (optional)", elem_id="comment", scale=2)
            last = gr.Markdown(elem_id="last-rating")
            rewards = gr.Dataframe(headers=["reward component", "A (left)", "B (right)"], label="Rewards",
                                   interactive=False, elem_id="rewards")
            gr.Markdown("Keys (outside text boxes): 1/A/← left better · 2/B/→ right better · 3/T tie · 4/X both bad · "
                        "S skip · U undo last. Checkpoint names are shown after each rating.")
        with gr.Tab("Leaderboard") as lb_tab:
            lb_set = gr.Dropdown(label="Sample set", choices=set_choices(store), value=None, elem_id="lb-set",
                                 allow_custom_value=True)
            lb_refresh = gr.Button("Refresh", elem_id="lb-refresh")
            lb_table = gr.Dataframe(label="Checkpoints (best Bradley–Terry score first)", interactive=False,
                                    elem_id="lb-table")
            lb_rewards = gr.Dataframe(label="Reward components vs people", interactive=False, elem_id="lb-rewards")
            lb_raters = gr.Markdown(elem_id="lb-raters")
            with gr.Row():
                lb_fmt = gr.Radio(["jsonl", "csv"], value="jsonl", label="Export format")
                lb_export = gr.Button("Export ratings", elem_id="lb-export")
                lb_file = gr.File(label="Ratings file", interactive=False)

        with gr.Tab("Runs") as runs_tab:
            with gr.Row():
                run_sel = gr.Dropdown(label="Runs (several are overlaid)", multiselect=True, choices=run_choices(store),
                                      allow_custom_value=True, elem_id="runs", scale=2)
                metric_sel = gr.Dropdown(label="Metrics", multiselect=True, choices=[], allow_custom_value=True,
                                         elem_id="metrics", scale=2)
                runs_btn = gr.Button("Show", elem_id="runs-show", scale=0)
            runs_info = gr.Markdown(elem_id="runs-info")
            curves = gr.Plot(label="Curves", elem_id="curves")
            grids = gr.Gallery(label="Rollout samples over training steps (first run picked)", columns=4,
                               elem_id="grids", format="png")
            with gr.Row():
                diff_a = gr.Dropdown(label="Config of run", choices=run_choices(store), allow_custom_value=True)
                diff_b = gr.Dropdown(label="against run", choices=run_choices(store), allow_custom_value=True)
            diff_tbl = gr.Dataframe(label="Config keys that differ", interactive=False, elem_id="config-diff")

        view_outputs = [state, progress, prompt, person, product, left, right, slider, rewards, last]
        demo.load(open_page, outputs=[set_dd, a_dd, b_dd], api_name=False)
        demo.load(signed_in, outputs=[rater], api_name=False)
        set_dd.change(pick_set, inputs=[set_dd, a_dd, b_dd], outputs=[a_dd, b_dd], api_name=False)
        start_btn.click(start, inputs=[rater, set_dd, a_dd, b_dd, state], outputs=view_outputs, api_name="start")
        for choice, btn in buttons.items():
            btn.click(rate_with(choice), inputs=[rater, comment, tags, state], outputs=[*view_outputs, comment, tags],
                      api_name=f"rate_{choice}")
        skip_btn.click(skip, inputs=[rater, state], outputs=view_outputs, api_name="skip")
        undo_btn.click(take_back, inputs=[rater, state], outputs=view_outputs, api_name="undo")
        lb_refresh.click(lambda s: leaderboard_tables(store, s), inputs=[lb_set],
                         outputs=[lb_table, lb_rewards, lb_raters], api_name="leaderboard")
        # a tab's components render when it is first opened: it starts on the set picked on Compare
        lb_tab.select(lambda s: (gr.update(choices=set_choices(store), value=s), *leaderboard_tables(store, s)),
                      inputs=[set_dd], outputs=[lb_set, lb_table, lb_rewards, lb_raters], api_name=False)
        lb_set.change(lambda s: leaderboard_tables(store, s), inputs=[lb_set],
                      outputs=[lb_table, lb_rewards, lb_raters], api_name=False)
        runs_tab.select(lambda: [gr.update(choices=run_choices(store))] * 3, outputs=[run_sel, diff_a, diff_b],
                        api_name=False)
        runs_btn.click(lambda ids, keys: show_runs(store, ids, keys, mlflow_ui=mlflow_ui), inputs=[run_sel, metric_sel],
                       outputs=[metric_sel, curves, runs_info, grids], api_name="runs")
        for dd in (diff_a, diff_b):
            dd.change(lambda a, b: diff_runs(store, a, b), inputs=[diff_a, diff_b], outputs=[diff_tbl],
                      api_name=False)
        lb_export.click(lambda s, f: export_ratings(store, s, f), inputs=[lb_set, lb_fmt], outputs=[lb_file],
                        api_name="export_ratings")
    return demo


def leaderboard_tables(store: Store, set_id: int | None) -> tuple[list[list[Any]], list[list[Any]], str]:
    """(standings rows, reward-agreement rows, rater-agreement text) of one set."""
    if set_id is None:
        return [], [], "Pick a sample set."
    try:
        sset = get_set(store, _set_id(set_id))
    except SlasError as exc:
        raise _fail(exc) from None
    samples = {s.id: s for s in store.list_samples(sset.id)}
    ratings = store.list_ratings(sample_set_id=sset.id)
    labels = checkpoint_choices(store, sset.id)
    rows = [[s.checkpoint, s.comparisons, s.wins, s.losses, s.ties, s.both_bad, _pct(s.win_rate),
             f"{_pct(s.win_rate_ci[0])} – {_pct(s.win_rate_ci[1])}", round(s.bt, 3),
             f"{s.bt_ci[0]:+.2f} – {s.bt_ci[1]:+.2f}"] for s in standings(ratings, samples, labels)]
    header = ["checkpoint", "rated", "wins", "losses", "ties", "both bad", "win rate", "95% CI",
              "Bradley–Terry", "95% CI"]
    agree = [[name, _pct(share), n] for name, (share, n) in reward_agreement(ratings, samples).items()]
    raters = rater_agreement(ratings)
    who = sorted({r.rater for r in ratings})
    text = (f"{len(ratings)} ratings by {len(who)} rater(s). Pairs rated by two or more people: {raters['pairs']}"
            + (f"; they agree in {_pct(float(raters['agreement']))} of {raters['comparisons']} comparisons."
               if raters["comparisons"] else "."))
    return (_frame(header, rows), _frame(["reward component", "agrees with people", "decisive pairs"], agree), text)


def show_runs(store: Store, job_ids: list[int] | None, keys: list[str] | None, *,
              mlflow_ui: str | None = None) -> tuple[Any, Any, str, Any]:
    """(metric choices, curves figure, sources and MLflow links, the first run's rollout grids)."""
    ids = [_set_id(j, "run") for j in (job_ids or [])]
    if not ids:
        return gr.update(choices=[], value=[]), None, "Pick one or more runs.", []
    try:
        runs = [run_curves(store, j, ui_url=mlflow_ui) for j in ids]
    except SlasError as exc:
        raise _fail(exc) from None
    available = metric_keys(runs)
    chosen = [k for k in (keys or []) if k in available] or available[:3]
    lines = []
    for r in runs:
        link = f" · [open in MLflow]({r.mlflow_url})" if r.mlflow_url else ""
        lines.append(f"- **#{r.job.id} {r.job.name}** ({r.job.status}): {len(r.series)} metrics from {r.source}{link}")
    return (gr.update(choices=available, value=chosen), curves_figure(runs, chosen), "\n".join(lines),
            rollout_grids(runs[0].job))


def diff_runs(store: Store, a: int | None, b: int | None) -> Any:
    """The config keys two runs set differently."""
    if a is None or b is None:
        return _frame(["config key", "run 1", "run 2"], [])
    try:
        ja, jb = store.get_job(_set_id(a, "run")), store.get_job(_set_id(b, "run"))
    except SlasError as exc:
        raise _fail(exc) from None
    return _frame(["config key", f"#{ja.id} {ja.name}", f"#{jb.id} {jb.name}"], config_diff(ja, jb))


def _frame(header: list[str], rows: list[list[Any]]) -> Any:
    """A table Gradio's Dataframe shows with ``header`` as its column names."""
    import pandas as pd  # Gradio's own dependency

    return pd.DataFrame(rows, columns=header)


def _pct(x: float) -> str:
    return "-" if x != x else f"{100 * x:.1f}%"


def export_ratings(store: Store, set_id: int | None, fmt: str) -> str:
    """Write the set's pair ratings (JSONL or CSV, for reward-model training) to a fresh temp file."""
    if set_id is None:
        raise gr.Error("pick a sample set to export")
    try:
        sset = get_set(store, _set_id(set_id))
        samples = {s.id: s for s in store.list_samples(sset.id)}
        folder = Path(tempfile.mkdtemp(prefix="slas-ratings-"))
        rows = rating_rows(store.list_ratings(sample_set_id=sset.id), samples, folder)
        path = folder / f"ratings_set{sset.id}.{fmt}"
        path.write_text(format_rows(rows, fmt), encoding="utf-8")
    except SlasError as exc:
        raise _fail(exc) from None
    return str(path)


def launch(store: Store, *, host: str = "127.0.0.1", port: int = 7860, logins: list[tuple[str, str]] | None = None,
           block: bool = True, quiet: bool = False, mlflow_ui: str | None = None) -> gr.Blocks:
    """Serve the app (the caller has checked the bind address against the logins: :mod:`slas.ui.auth`)."""
    demo = build_app(store, login_required=bool(logins), mlflow_ui=mlflow_ui)
    demo.queue(default_concurrency_limit=8)
    demo.launch(server_name=host, server_port=port, auth=logins or None, prevent_thread_lock=not block,
                quiet=quiet, show_error=True, footer_links=["api"], css=CSS, head=KEYS_JS,
                theme=gr.themes.Soft())
    return demo


__all__ = ["build_app", "diff_runs", "export_ratings", "launch", "leaderboard_tables", "show_runs"]
