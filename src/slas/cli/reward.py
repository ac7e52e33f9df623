"""``slas reward score`` (score images with a reward spec before training with it) and ``slas reward serve``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from slas.cli.common import SlasTyper, fail

app = SlasTyper(help="Reward models: score images before training with them; serve them over HTTP.")


def _condition_folders(items: list[str]) -> dict[str, str]:
    """``NAME=FOLDER`` options as a mapping."""
    folders = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or not name:
            fail(f"--condition {item!r}: expected NAME=FOLDER")
        folders[name] = folder
    return folders


def _print_table(records: list[dict[str, Any]], keys: list[str]) -> None:
    typer.echo("\t".join(["image", *keys, "prompt"]))
    for r in records:
        typer.echo("\t".join([r["image"], *(f"{r[k]:.4f}" for k in keys), r["prompt"][:60]]))


def _print_summary(records: list[dict[str, Any]], label: str = "") -> None:
    from slas.rewards.score import summarize

    for key, (mean, std) in summarize(records).items():
        typer.echo(f"{label}{key}: mean {mean:.4f} std {std:.4f} over {len(records)} images")


@app.command("score")
def score(
    reward: Annotated[str, typer.Option("--reward", help="YAML (run config or reward section) or name[:weight],...")],
    images: Annotated[Path, typer.Option("--images", help="folder of images, subfolders included (e.g. a `slas sample` "
                                                          "set: one subfolder per checkpoint), scored in path order")],
    prompts: Annotated[Path | None, typer.Option("--prompts", help="prompt file: one prompt, or one per image "
                                                                  "(default: the set's samples.jsonl)")] = None,
    condition: Annotated[
        list[str] | None, typer.Option("--condition", metavar="NAME=FOLDER",
                                       help="per-image condition images, e.g. reference_images=refs/")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="write one JSON line per image here")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, metavar="N", help="images per reward call")] = 16,
) -> None:
    """Score a folder of images with a reward spec and print per-image scores and their summary.

    Each image is scored as its file decodes (the saved 8-bit PNG), so the scores are those of the files.
    Prompts come from --prompts, else from the samples.jsonl that `slas sample` writes beside its images.
    """
    from slas.preflight import preflight_reward
    from slas.rewards import build
    from slas.rewards.score import by_checkpoint, image_set, parse_reward_spec, score_images, score_keys

    spec = parse_reward_spec(reward)
    conditions = _condition_folders(condition or [])
    scored = image_set(images, prompts)
    preflight_reward(spec)
    typer.echo(f"scoring {len(scored.files)} image files under {images} as decoded from disk (8-bit); "
               f"prompts from {scored.prompt_source}", err=True)
    records = score_images(build(spec), scored, conditions, batch_size=batch_size)
    _print_table(records, score_keys(records))
    _print_summary(records)
    groups = by_checkpoint(records)
    if len(groups) > 1:  # a sample set: the comparison is per checkpoint
        for label, group in groups.items():
            _print_summary(group, f"[{label}] ")
    if out is not None:
        out.write_text("".join(json.dumps(r) + "\n" for r in records))


@app.command("serve")
def serve(
    spec: Annotated[str, typer.Argument(help="YAML/JSON file: a reward section (components, normalize) or a run config "
                                             "whose reward: section is served; or inline name[:weight],...")],
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="port to listen on (0: any free port)")],
    host: Annotated[str, typer.Option("--host", help="address to bind; anything but loopback needs a token")] = "127.0.0.1",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, metavar="B",
                                            help="images per reward call (waiting requests are merged up to it)")] = 16,
    max_queue: Annotated[int, typer.Option("--max-queue", min=1, metavar="Q",
                                           help="requests that may wait; more are answered 503")] = 16,
    timeout: Annotated[float, typer.Option("--timeout", min=0.001, metavar="S",
                                           help="seconds a request may wait and be scored; then 504")] = 300.0,
    token_file: Annotated[Path | None, typer.Option("--token-file", help="file holding the bearer token "
                                                                         "(default: $SLAS_REWARD_TOKEN)")] = None,
) -> None:
    """Serve a reward spec over HTTP for `backend: remote` components (POST /score, GET /health).

    Every component of the spec and its weighted total come back per image. Requests are batched, the
    queue is bounded (503 when full), each request times out (504). A token is required unless --host is
    loopback; clients send it as `Authorization: Bearer <token>`. See slas.rewards.serve.
    """
    from slas.preflight import preflight_reward
    from slas.rewards import build
    from slas.rewards.remote import read_token
    from slas.rewards.score import parse_reward_spec
    from slas.rewards.serve import RewardServer, check_bind

    token = read_token(token_file=token_file)
    check_bind(host, token)  # before any model loads
    config = parse_reward_spec(spec)
    preflight_reward(config)
    reward = build(config)
    try:
        server = RewardServer(reward, host=host, port=port,
                              batch_size=batch_size, max_queue=max_queue, timeout=timeout, token=token)
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    typer.echo(f"slas reward serve: listening on {server.url} (components: "
               f"{', '.join(server.components)}; batch {batch_size}, queue {max_queue}, timeout {timeout:g} s, "
               f"token {'required' if token else 'off (loopback)'})")
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        typer.echo("slas reward serve: stopped", err=True)
