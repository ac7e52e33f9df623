"""One typed config for every run, loaded from YAML with ``--set a.b=value`` overrides.

Every error is raised as :class:`ConfigError` with one line naming the offending key, before any model
is touched.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from slas.errors import SlasError, one_line
from slas.paths import expand_shapes_refs, runs_root
from slas.rl.advantages import PRESETS
from slas.torch_utils import DeviceError, parse_device


class ConfigError(SlasError, ValueError):
    """A config file, key or value is wrong; the message is one line that names it."""


class _Strict(BaseModel):
    """Unknown keys are errors, and so are ``.inf``/``.nan`` in any number: a learning rate of ``.inf``
    trains every weight to NaN and still ends as a completed run."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def _non_finite_key(value: Any, key: str = "") -> str | None:
    """The dotted key of the first non-finite float inside ``value`` (free-form options the typed fields
    do not reach), or ``None``."""
    if isinstance(value, float):
        return None if math.isfinite(value) else key
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list | tuple) else ()
    for k, v in items:
        found = _non_finite_key(v, f"{key}.{k}" if key else str(k))
        if found is not None:
            return found
    return None


class LoraSettings(_Strict):
    rank: int = Field(128, gt=0)
    alpha: float = Field(256.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(["to_q", "to_k", "to_v", "to_out.0"], min_length=1)
    lr: float | None = Field(None, gt=0, description="learning rate when finetune=lora (None: train.lr)")


class ModelConfig(_Strict):
    family: Literal["sd", "flux", "qwen_image_edit", "flux_kontext"] = Field(
        description="sd, flux (text-to-image); qwen_image_edit (Qwen-Image-Edit-2509, QwenImageEditPlusPipeline), "
                    "flux_kontext (FLUX.1 Kontext) for editing pairs")
    path: str = Field(min_length=1, description="local diffusers directory or a cached hub id")
    revision: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "auto"
    finetune: Literal["full", "lora"] = "full"
    lora: LoraSettings = LoraSettings()
    gradient_checkpointing: bool = False

    @field_validator("device")
    @classmethod
    def _device_name(cls, value: str) -> str:
        """A name torch can parse (``banana`` fails here; whether the device is present is preflight's)."""
        try:
            parse_device(value)
        except DeviceError as exc:
            raise ValueError(str(exc)) from None
        return value


PairSplit = Literal["train", "val", "test"]
"""The splits an editing pair may be in (``slas.editing.checks.SPLITS``)."""
DEFAULT_MIN_IMAGE_SIZE = 64  # px, shortest side of an editing pair's photo (``slas.editing.checks``)


class DataConfig(_Strict):
    """Exactly one of ``prompts`` (text-to-image) and ``pairs`` (product-in-hand editing, ``slas.editing.data``)."""

    prompts: str | None = Field(None, min_length=1, description="a .txt (one per line), .jsonl or .csv prompt file")
    pairs: str | None = Field(
        None, min_length=1, description="editing pairs: a .jsonl/.csv of {id, person, product, ...} or a folder "
                                        "(persons/, products/, optional pairs.jsonl or pairs.csv)"
    )
    field: str | None = None
    shuffle: bool = True
    split: PairSplit | None = Field("train", description="pairs: train on the rows of this split (None: every row)")
    min_image_size: int = Field(DEFAULT_MIN_IMAGE_SIZE, ge=1, description="pairs: shortest photo side accepted, px")

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        """A run trains on prompts or on editing pairs, never both or neither."""
        if (self.prompts is None) == (self.pairs is None):
            given = "both" if self.prompts is not None else "neither"
            raise ValueError(f"give exactly one of data.prompts (text-to-image) or data.pairs (editing), not {given}")
        return self


class SampleConfig(_Strict):
    resolution: int = Field(512, gt=0)
    num_steps: int = Field(50, ge=2)
    eta: float = Field(1.0, ge=0, description="SDE noise scale; 0 = the deterministic ODE/DDIM chain (train.objective=nft only)")
    guidance_scale: float = Field(5.0, ge=0)
    shift: float | None = Field(None, gt=0, description="FLUX: static sigma shift; None keeps the scheduler's")
    sde_kind: Literal["dance", "flow"] = "dance"
    group_size: int = Field(16, ge=1)
    prompts_per_iter: int = Field(2, ge=1)
    groups_per_call: int = Field(1, ge=1)
    shared_noise: bool = True
    negative_prompt: str = ""
    true_cfg_scale: float = Field(
        1.0, ge=1, description="edit policies: true classifier-free guidance with negative_prompt when > 1 "
                               "(Qwen-Image-Edit's pipeline default is 4)")
    condition_size: int | None = Field(
        None, gt=0, description="edit policies: each input photo is fitted into a square of this side (px; aspect "
                                "kept, white margins) before the VAE encodes it (None: sample.resolution)")
    vl_condition_size: int = Field(
        384, gt=0, description="Qwen-Image-Edit: side (px) of the square each photo is fitted into for its Qwen2.5-VL "
                               "encoder (the pipeline resizes to an area of 384^2)")
    max_sequence_length: int = Field(512, gt=0)


class AutoPowerSettings(_Strict):
    """How ``rl.power: auto`` picks p each iteration (``slas.rl.power``): the largest of ``candidates`` evenly
    spaced powers in [p_min, p_max] whose predicted approx KL of the iteration's weight change (the optimizer's
    Adam steps, or 1/2 (step * updates)^2 lambda_max(F) ||g(p)||^2 for ``step_model: sgd``) stays within
    ``kl_budget``. Read only when ``rl.power`` is ``auto``."""

    p_min: float = Field(1.0, gt=0, description="smallest power the rule may pick")
    p_max: float = Field(3.0, gt=0, description="largest power the rule may pick")
    candidates: int = Field(9, ge=2, le=1001, description="powers tried, evenly spaced from p_min to p_max")
    every: int = Field(1, ge=1, description="re-estimate the Fisher's largest eigenvalue every N iterations (held in between)")
    iters: int = Field(20, ge=1, le=1000, description="power-iteration steps at most")
    tol: float = Field(1e-3, gt=0, lt=1, description="power iteration stops when the estimate changes by at most this (relative)")
    pairs: int = Field(32, ge=2, le=4096, description="(sample, step) pairs whose gradients the estimates use, per rank and "
                       "iteration (memory: pairs x trainable parameters x 4 bytes)")
    kl_budget: float | None = Field(None, gt=0, description="per-iteration approx-KL budget (None: train.clip_range^2 / 2)")
    step_model: Literal["adam", "sgd"] | None = Field(
        None, description="the weight change the KL is predicted for: adam = the optimizer's own Adam/AdamW steps from "
                          "its state, sgd = step_size * updates * g bounded through lambda_max (None: adam when the "
                          "optimizer is a torch Adam/AdamW over the trained parameters, else sgd)")
    step_size: float | None = Field(None, gt=0, description="sgd step model: step size (None: the run's learning rate)")

    @model_validator(mode="after")
    def _ordered(self) -> AutoPowerSettings:
        if self.p_max < self.p_min:
            raise ValueError(f"p_max={self.p_max:g} is below p_min={self.p_min:g}")
        return self


class RLConfig(_Strict):
    """Advantage shaping. ``power`` is the SLAS exponent: the dancegrpo preset always uses (prompt, 1), so
    any other power set with it is an error rather than silently ignored. ``power: auto`` picks it each
    iteration within a stability bound (``auto_power``; slas and custom presets only)."""

    preset: Literal["dancegrpo", "slas", "custom"] = "slas"
    std_scope: Literal["prompt", "batch", "none"] | None = None
    power: float | Literal["auto"] | None = None
    auto_power: AutoPowerSettings = AutoPowerSettings()
    clip: float | None = Field(5.0, gt=0)
    eps: float = Field(1e-8, gt=0)
    shape_before_norm: bool = True
    near_flat_std: float = Field(
        0.01, gt=0, description="diagnostics only: a group whose reward std is below this (reward units) is near-flat"
    )

    @field_validator("power", mode="before")
    @classmethod
    def _number_or_auto(cls, value: Any) -> Any:
        """A finite number > 0 or ``auto``, checked here so that the error is one plain line (pydantic would
        name the union member it tried, ``rl.power.constrained-float``)."""
        if value is None or value == "auto":
            return value
        try:
            if isinstance(value, bool):
                raise TypeError(value)
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{value!r} is neither a number > 0 nor 'auto'") from None
        if not math.isfinite(number) or number <= 0:
            raise ValueError(f"must be a finite number > 0 or 'auto', got {value!r}")
        return number

    @model_validator(mode="after")
    def _apply_preset(self) -> RLConfig:
        if self.power == "auto" and self.preset == "dancegrpo":
            raise ValueError("rl.power=auto needs rl.preset=slas or custom (dancegrpo always uses power 1)")
        if self.preset == "custom":
            if self.std_scope is None or self.power is None:
                raise ValueError("rl.preset=custom needs both rl.std_scope and rl.power")
            return self
        scope, power = PRESETS[self.preset]
        if self.std_scope is not None and self.std_scope != scope:
            raise ValueError(f"rl.std_scope={self.std_scope} conflicts with rl.preset={self.preset} ({scope})")
        if power is not None and self.power is not None and self.power != power:
            raise ValueError(f"rl.power={self.power:g} conflicts with rl.preset={self.preset} (power {power:g})")
        object.__setattr__(self, "std_scope", scope)
        object.__setattr__(self, "power", power if power is not None else (self.power or 2.0))
        return self


class EMASettings(_Strict):
    enabled: bool = False
    decay: float = Field(0.995, gt=0, lt=1)


class NFTSettings(_Strict):
    """DiffusionNFT (``slas.editing.nft``), read when ``train.objective`` is ``nft``. The defaults are Edit-R1's
    (PKU-YuanGroup/Edit-R1 config/qwen_image_edit_nft.py and config/base.py; see docs/objectives.md)."""

    beta: float = Field(1.0, gt=0, description="mix of current and old velocity: v+ = beta v + (1 - beta) v_old "
                                               "(Edit-R1: config.beta = 1.0)")
    kl_coef: float = Field(1e-4, ge=0, description="weight of mean (v - v_ref)^2 (Edit-R1: config.train.beta = 1e-4)")
    adv_clip_max: float = Field(5.0, gt=0, description="A_max of r = clamp(A / A_max / 2 + 0.5, 0, 1) (Edit-R1: 5)")
    timesteps: Literal["schedule", "uniform"] = Field(
        "schedule", description="t per term: distinct steps of the rollout's own schedule (Edit-R1), or uniform "
                                "between its smallest and largest sigma")
    timesteps_per_sample: int | None = Field(
        None, ge=1, description="loss terms per sample (None: sample.num_steps - 1; Edit-R1: int(6 * 0.99) = 5)")
    x0_weighting: bool = Field(True, description="divide each sample's x0 error by its mean |x0 error| (Edit-R1)")
    old_decay_flat: int = Field(0, ge=0, description="old (sampling) policy: no lag for this many optimizer steps")
    old_decay_rate: float = Field(
        0.001, ge=0, description="old <- d old + (1 - d) current after each iteration, d = min((step - flat) * rate, "
                                 "max); 0 = the old policy is the current one (Edit-R1 decay_type 1: 0, 0.001, 0.5)")
    old_decay_max: float = Field(0.5, ge=0, lt=1, description="old policy: the largest decay d")


class TrainConfig(_Strict):
    objective: Literal["grpo", "nft"] = Field(
        "grpo", description="grpo: PPO-clip on the SDE chain (slas.rl.objectives); nft: DiffusionNFT (train.nft)")
    nft: NFTSettings = NFTSettings()
    lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = Field(1e-8, gt=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    clip_range: float = Field(1e-4, gt=0, description="PPO ratio clip epsilon")
    kl_coef: float = Field(0.0, ge=0)
    timestep_fraction: float = Field(1.0, gt=0, le=1)
    timestep_selection: Literal["random", "first"] = "random"
    batch_size: int = Field(1, ge=1, description="samples per training micro-batch")
    gradient_accumulation_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")
    ema: EMASettings = EMASettings()


class RewardComponent(_Strict):
    name: str = Field(min_length=1)
    weight: float | dict[str, float] = 1.0
    options: dict[str, Any] = {}
    backend: Literal["local", "remote"] = Field(
        "local", description="local: built here from the registry; remote: scored by `slas reward serve` at url "
                             "(the served spec holds the options; see slas.rewards.remote)")
    url: str | None = Field(None, description="remote: the server's base URL, http://host:port")
    token_env: str = Field("SLAS_REWARD_TOKEN", min_length=1, description="remote: env var holding the bearer token")
    token_file: str | None = Field(None, description="remote: file holding the bearer token (instead of token_env)")
    timeout: float = Field(120.0, gt=0, description="remote: seconds to wait for one scoring request")
    retries: int = Field(1, ge=0, description="remote: extra tries of a failed request before the batch scores NaN")

    @field_validator("options")
    @classmethod
    def _finite_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        """The typed fields refuse ``.inf``/``.nan`` through the model config; free-form options are checked here."""
        key = _non_finite_key(value)
        if key is not None:
            raise ValueError(f"options.{key} is not a finite number; give a finite value")
        return value

    @model_validator(mode="after")
    def _remote_fields(self) -> RewardComponent:
        """A remote component names its server and nothing the server holds; a local one has no server."""
        if self.backend == "remote":
            if not self.url:
                raise ValueError(f"reward {self.name}: backend remote needs url (http://host:port of `slas reward serve`)")
            if self.options:
                raise ValueError(f"reward {self.name}: a remote component takes no options (set them in the served spec)")
        elif self.url is not None or self.token_file is not None:
            raise ValueError(f"reward {self.name}: url/token_file are for backend: remote")
        return self


class RewardConfig(_Strict):
    components: list[RewardComponent] = Field(min_length=1)
    normalize: Literal["none", "group_zscore"] = "none"


RUN_NAME_CHARS = "letters, digits, '.', '_' and '-'"
_RUN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


class RunConfig(_Strict):
    name: str = Field("run", min_length=1, description=f"the run dir's folder name: {RUN_NAME_CHARS}")
    output_dir: str | None = Field(
        None, description="folder of run dirs, used as given (None: slas.paths.runs_root(), i.e. ./runs or $SLAS_HOME/runs)"
    )
    seed: int = 0
    iterations: int = Field(100, ge=1)
    checkpoint_every: int = Field(50, ge=1)
    log_images_every: int | None = Field(
        None, ge=0, description="log a grid of the rollout's images every N iterations (None: checkpoint_every; 0: never)"
    )
    progress: bool = True
    register_model: bool = Field(
        True, description="register the final checkpoint as a version of the MLflow model named run.name; false "
                          "keeps throwaway runs (demos, benchmarks, smoke tests) out of the model registry"
    )

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        """One folder name: ``../../victim`` or ``/etc`` as a name would write (and move earlier outputs) outside
        ``run.output_dir``."""
        if not _RUN_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a run name: use one folder name of {RUN_NAME_CHARS}, "
                             "not starting with '.' (no '/', no '..')")
        return value


def run_dir_of(run: RunConfig) -> Path:
    """``run.output_dir/run.name`` (or under :func:`slas.paths.runs_root`), refused with :class:`ConfigError`
    when it resolves outside that folder (a symlink out of it): a fresh run moves what it finds in its run
    dir aside and writes its own outputs there, so it must never be someone else's folder."""
    root = Path(run.output_dir) if run.output_dir is not None else runs_root()
    run_dir = root / run.name
    if not run_dir.resolve().is_relative_to(root.resolve()):
        raise ConfigError(f"run.name: run dir {run_dir} resolves to {run_dir.resolve()}, outside the runs folder "
                          f"{root.resolve()}; choose another run.name (or remove the link)")
    return run_dir


class EvalConfig(_Strict):
    """A held-out evaluation during training (``slas.eval.during``): GenEval's rules on the live policy's
    deterministic samples every ``every`` iterations and at the last one, logged as ``eval/geneval/<tag>``
    and recorded in the job store. With it, the held-out ``overall`` instead of the training reward decides
    which registered version is ``best`` (a reward can be gamed; a held-out judge is much harder to game).
    The detector and prompt file are checked at preflight, before any model loads."""

    every: int | None = Field(None, ge=1, description="evaluate every N iterations (None: run.checkpoint_every)")
    benchmark: Literal["geneval"] = "geneval"
    detector: str = Field("shapes", min_length=1, description="shapes (the shapes world's judge) or mask2former")
    metadata: str | None = Field(
        None, description="GenEval metadata .jsonl (None: the shapes world's test split for the shapes detector, "
                          "GenEval's 553 prompts otherwise)"
    )
    images_per_prompt: int = Field(1, ge=1)
    prompts_limit: int | None = Field(
        None, ge=1, description="evaluate this many prompts, taken round-robin over the tags (None: all)"
    )
    seed: int = Field(0, description="seed of the per-image initial noise (the same for every evaluation)")
    batch_size: int = Field(8, ge=1, description="images per sampler call")
    detector_model: str | None = Field(None, description="mask2former: local dir of the COCO Mask2Former")
    clip_model: str | None = Field(None, description="mask2former: local dir of the CLIP model judging colours")


def check_objective(sample: SampleConfig, rl: RLConfig, train: TrainConfig) -> None:
    """What ``train.objective`` needs of the other sections (ValueError, one line naming the keys): GRPO's
    importance ratio needs a stochastic chain (eta > 0); DiffusionNFT has its own KL and no step log-probs."""
    if train.objective == "grpo":
        if sample.eta == 0:
            raise ValueError("sample.eta=0 samples a deterministic chain without log-probs; train.objective=grpo "
                             "needs sample.eta > 0 (or set train.objective=nft)")
        return
    if rl.power == "auto":
        raise ValueError("rl.power=auto bounds GRPO's step log-prob updates; it needs train.objective=grpo, not nft")
    if train.kl_coef > 0:
        raise ValueError(f"train.kl_coef={train.kl_coef:g} is GRPO's KL; with train.objective=nft set train.nft.kl_coef")
    k = train.nft.timesteps_per_sample
    if train.nft.timesteps == "schedule" and k is not None and k > sample.num_steps:
        raise ValueError(f"train.nft.timesteps_per_sample={k} exceeds sample.num_steps={sample.num_steps} "
                         "(timesteps=schedule draws distinct steps of the rollout's schedule)")


class SLASConfig(_Strict):
    run: RunConfig = RunConfig()
    model: ModelConfig
    data: DataConfig
    sample: SampleConfig = SampleConfig()
    rl: RLConfig = RLConfig()
    train: TrainConfig = TrainConfig()
    reward: RewardConfig
    eval: EvalConfig | None = Field(None, description="held-out evaluation during training (None: off)")

    @model_validator(mode="after")
    def _run_dir_inside_its_root(self) -> SLASConfig:
        run_dir_of(self.run)
        return self

    @model_validator(mode="after")
    def _objective_fits(self) -> SLASConfig:
        check_objective(self.sample, self.rl, self.train)
        if self.train.objective == "nft" and self.model.family == "sd":
            raise ValueError("train.objective=nft needs a flow-matching model; model.family=sd is a DDPM "
                             "(use train.objective=grpo)")
        return self

    @property
    def run_dir(self) -> Path:
        """``run.output_dir/run.name``; without an output dir, under :func:`slas.paths.runs_root` (the one
        rule of where outputs go, so ``SLAS_HOME`` moves runs too); see :func:`run_dir_of`."""
        return run_dir_of(self.run)

    @property
    def learning_rate(self) -> float:
        """``model.lora.lr`` for a LoRA run that sets it, else ``train.lr``."""
        lora = self.model.lora
        return lora.lr if self.model.finetune == "lora" and lora.lr else self.train.lr

    def trainer_config(self) -> TrainerConfig:
        """The sections the trainer reads, with the learning rate resolved."""
        return TrainerConfig(run=self.run, sample=self.sample, rl=self.rl, train=self.train,
                             lr=self.learning_rate, run_dir=self.run_dir)


class TrainerConfig(_Strict):
    """What ``slas.rl.trainer.Trainer`` reads: its own config sections and an already-resolved learning rate
    (the trainer never sees the model section)."""

    run: RunConfig = RunConfig()
    sample: SampleConfig = SampleConfig()
    rl: RLConfig = RLConfig()
    train: TrainConfig = TrainConfig()
    lr: float = Field(gt=0)
    run_dir: Path

    @model_validator(mode="after")
    def _objective_fits(self) -> TrainerConfig:
        check_objective(self.sample, self.rl, self.train)
        return self


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping names a key twice; PyYAML would keep the last silently (a second ``run:`` section replaced
    the first whole)."""

    def __init__(self, key: Any, first: yaml.Mark, again: yaml.Mark) -> None:
        super().__init__(problem=f"duplicate key {key!r} at line {again.line + 1} (first at line {first.line + 1})",
                         problem_mark=again)
        self.key = key


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, plus YAML 1.2 floats without a dot (``1e-5``; YAML 1.1 reads them as strings),
    and refusing a key given twice in one mapping (:class:`DuplicateKeyError`)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        self._refuse_duplicate_keys(node)
        return super().construct_mapping(node, deep=deep)

    def _refuse_duplicate_keys(self, node: yaml.MappingNode) -> None:
        """Explicit keys only: keys merged in with ``<<:`` may be overridden, as YAML intends."""
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: PyYAML's own error says so
                continue
            if first is not key_node.start_mark:
                raise DuplicateKeyError(key, first, key_node.start_mark)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(text: str) -> Any:
    """Parse YAML as the config does (safe, with ``1e-5`` read as a float, a key given twice an error)."""
    return yaml.load(text, Loader=_Loader)


def yaml_problem(source: str, exc: yaml.YAMLError) -> str:
    """One line on what is wrong with the YAML of ``source``: a duplicate key with both lines and the fix,
    else the line it broke at."""
    if isinstance(exc, DuplicateKeyError):
        return f"{source}: {exc.problem}; merge them into one"
    mark = getattr(exc, "problem_mark", None)
    return f"{source} is not valid YAML at line {mark.line + 1}" if mark else f"{source} is not valid YAML"


def read_text_file(path: Path, what: str) -> str:
    """The UTF-8 text of ``path``, or :class:`ConfigError` naming it when it is binary (NUL bytes, or not
    UTF-8): a wrong file given by mistake (a checkpoint, an image) should say so, not fail deep in a parser."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read ({exc.strerror or one_line(exc)}); check its permissions") from None
    nul = data.find(b"\x00")
    if nul >= 0:
        raise ConfigError(f"{what} {path} is a binary file (NUL byte at offset {nul}); give a UTF-8 text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {exc.start}); give a UTF-8 text file") from None


# the member tags pydantic puts in an error's location inside a union (``weight.float``), not config keys
_UNION_TAG = re.compile(r"(float|int|str|bool|none|(list|dict|tuple)\[.*\])")


def _field_of(loc: tuple) -> tuple:
    """``loc`` up to its first union member tag: the config key the error is about."""
    for i, part in enumerate(loc):
        if isinstance(part, str) and _UNION_TAG.fullmatch(part):
            return loc[:i]
    return loc


def _union_error(errors: list[dict]) -> dict:
    """The first error, or for a union field the member's error that is about the value rather than its
    type (``weight: {a: .nan}`` fails as a float too, which says nothing)."""
    first = errors[0]
    field = _field_of(first["loc"])
    if field == first["loc"]:
        return first
    same = [e for e in errors if _field_of(e["loc"]) == field and not e["type"].endswith("_type")]
    return same[0] if same else first


def _first_error(err: ValidationError) -> str:
    e = _union_error(err.errors())
    loc = ".".join(str(p) for p in e["loc"] if not (isinstance(p, str) and _UNION_TAG.fullmatch(p)))
    if e["type"] == "extra_forbidden":
        return f"{loc}: unknown key"
    if e["type"] == "missing":
        return f"{loc}: required key is missing"
    msg = e["msg"].removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg


def _list_index(items: list, part: str, key: str, where: str) -> int:
    """``part`` as an index into an existing list (``reward.components.0.weight``)."""
    if not part.isdigit() or int(part) >= len(items):
        raise ConfigError(f"--set {key}: {where} is a list of {len(items)}; index it with 0..{len(items) - 1}")
    return int(part)


def apply_override(data: dict, override: str) -> None:
    """Set ``a.b.c=value`` in a nested dict; the value is parsed as YAML (numbers, bools, lists). A number
    indexes an existing list (``reward.components.0.options.model=/models/judge``)."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {override!r}: expected key=value")
    parts = key.strip().split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        where = ".".join(parts[: i + 1])
        nxt = node[_list_index(node, part, key, ".".join(parts[:i]))] if isinstance(node, list) else node.setdefault(part, {})
        if not isinstance(nxt, dict | list):
            raise ConfigError(f"--set {key}: {where} is not a section")
        node = nxt
    last = _list_index(node, parts[-1], key, ".".join(parts[:-1])) if isinstance(node, list) else parts[-1]
    try:
        node[last] = load_yaml(raw) if raw.strip() else raw
    except DuplicateKeyError as exc:
        raise ConfigError(f"--set {key}: value {raw!r} names {exc.key!r} twice; keep one") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML") from exc


def _refuse_repeated_overrides(overrides: list[str]) -> None:
    """``--set a=1 ... --set a=2``: which one was meant is a guess, so neither is taken."""
    given: dict[str, str] = {}
    for ov in overrides:
        key, _, raw = ov.partition("=")
        key = key.strip()
        if key in given and given[key] != raw:
            raise ConfigError(f"--set {key} is given twice ({given[key]!r} and {raw!r}); give it once")
        given.setdefault(key, raw)


def _drop_the_files_power(data: dict, overrides: list[str]) -> None:
    """``--set rl.preset=dancegrpo`` over a file written for SLAS: the file's ``rl.power`` was the exponent
    of the file's own preset, so a preset switched by an override that fixes the power drops it. A power
    set by an override too (or written beside that preset in the file) stays, and conflicts."""
    keys = {ov.partition("=")[0].strip() for ov in overrides}
    rl = data.get("rl")
    if "rl.preset" not in keys or "rl.power" in keys or not isinstance(rl, dict):
        return
    preset = rl.get("preset")
    if isinstance(preset, str) and preset in PRESETS and PRESETS[preset][1] is not None:
        rl.pop("power", None)


def config_from_dict(data: dict, overrides: list[str] | None = None) -> SLASConfig:
    """Validate a config mapping after applying ``key=value`` overrides (one-line :class:`ConfigError`).

    Strings ``shapes:<path>`` name files of the shipped shapes world (:func:`slas.paths.expand_shapes_refs`)."""
    data = yaml.safe_load(yaml.safe_dump(data))  # deep copy
    _refuse_repeated_overrides(list(overrides or []))
    for ov in overrides or []:
        apply_override(data, ov)
    _drop_the_files_power(data, list(overrides or []))
    data = expand_shapes_refs(data)  # "shapes:t2i" -> the shipped shapes world's model folder
    try:
        return SLASConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"config error: {_first_error(err)}") from None


def reward_config(data: Any, source: str) -> RewardConfig:
    """Validate a reward section read from ``source`` (a file or an inline spec); one-line :class:`ConfigError`."""
    try:
        return RewardConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{source}: {_first_error(err)}") from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> SLASConfig:
    """Read a YAML config, apply ``key=value`` overrides and validate it (one-line errors)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = load_yaml(read_text_file(p, "config file")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(yaml_problem(f"config file {p}", exc)) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level")
    return config_from_dict(data, overrides)


def flatten(cfg: BaseModel | dict, prefix: str = "") -> dict[str, Any]:
    """Flatten a config into ``{"a.b": value}`` (for tracker params)."""
    data = cfg.model_dump(mode="json") if isinstance(cfg, BaseModel) else cfg
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
