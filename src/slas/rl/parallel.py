"""Data-parallel strategies of the trainer: one process, DDP, FSDP2 full shard, DeepSpeed ZeRO-2/3.

The strategy is picked from the environment the launcher sets: ``accelerate launch`` with one of the
shipped configs (``configs/accelerate/*.yaml``) exports ``ACCELERATE_USE_FSDP``/``FSDP_*`` or
``ACCELERATE_USE_DEEPSPEED``/``ACCELERATE_DEEPSPEED_*``; plain ``torchrun`` (or accelerate's multi-GPU
default) exports only ``WORLD_SIZE`` and gets DDP. The trainer calls the strategy at the few points where
they differ (preparing the trainable module, backward, gradient norm, optimizer step, checkpoint state) and
never looks at the model: a policy offers its trainable module through
:class:`~slas.rl.protocols.ShardablePolicy`; a policy that does not is trained with replicated weights and
a hand-written gradient all-reduce, as before.

What stays the same under every strategy (``slas.rl.trainer``): each rank rolls out its own slice of the
global group list, rewards and group ids are gathered so advantages (SLAS's batch std included) are those
of the global batch, and each optimizer step minimises the mean loss over the global batch. So N ranks
with ``prompts_per_iter`` groups each train like one process with ``N * prompts_per_iter`` groups.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from slas.config import TrainerConfig
from slas.errors import SlasError
from slas.rl import distributed
from slas.rl.protocols import Policy, ShardablePolicy


class StrategyError(SlasError):
    """A launch setting or run config this strategy cannot train (one line, before any model loads)."""


def _flag(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() in ("1", "true", "yes")


def _local(t: Tensor) -> Tensor:
    """This rank's part of a (possibly DTensor) tensor."""
    return t.to_local() if hasattr(t, "to_local") else t


def _full(t: Tensor) -> Tensor:
    """The whole value of a (possibly DTensor) tensor; a collective for a sharded one."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


class Strategy:
    """One process, or replicated weights with the gradient all-reduced by hand (a policy that is not a
    :class:`ShardablePolicy` under torchrun). Every other strategy derives from this one."""

    name = "single"
    sharded = False  # weights split over ranks: checkpoints gather them, resumes scatter them
    one_rank_forward = True  # rank 0 may run the model alone (held-out evaluation); not with sharded weights

    def __init__(self) -> None:
        self.rank, self.world = distributed.rank_and_world()

    # -------------------------------------------------------------------- before the model
    def check(self, config: TrainerConfig) -> None:
        """Refuse, in one line, a run config this strategy cannot train (called before any model loads)."""

    # -------------------------------------------------------------------- setup
    def prepare(self, policy: Policy, make_optimizer: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]
                ) -> torch.optim.Optimizer:
        """Wrap or shard the policy's trainable module and build its optimizer over the parameters it trains."""
        return make_optimizer(policy.trainable_parameters())

    @contextlib.contextmanager
    def training(self, policy: Policy) -> Iterator[None]:
        """Inside: the policy's training forwards go through the wrapper that synchronises gradients."""
        yield

    # -------------------------------------------------------------------- one optimizer step
    def before_forward(self, sync: bool) -> None:
        """Whether the backward of the next training forward must synchronise gradients (the last one of an
        optimizer step); accumulating ones need not."""

    def backward(self, loss: Tensor) -> None:
        loss.backward()

    def reduce_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """After the step's last backward: every rank holds the mean gradient over ranks."""
        distributed.average_gradients(params)

    def clip_grad_norm(self, params: list[torch.nn.Parameter], max_norm: float | None) -> float | None:
        """The total gradient norm before clipping (clipped to ``max_norm`` unless None); the same on every rank.
        None: the optimizer step clips and measures it (:meth:`grad_norm_after_step`)."""
        if max_norm is not None:
            return float(_full(torch.nn.utils.clip_grad_norm_(params, max_norm)))
        grads = [p.grad for p in params if p.grad is not None]
        return float(_full(torch.nn.utils.get_total_norm(grads))) if grads else 0.0

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.step()

    def grad_norm_after_step(self) -> float:
        return float("nan")

    def zero_grad(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)

    def all_finite(self, params: list[torch.nn.Parameter]) -> bool:
        """Whether every trainable weight is finite, on every rank."""
        ok = float(all(bool(torch.isfinite(_local(p)).all()) for p in params))
        if self.world > 1 and self.sharded:
            ok = distributed.mean_over_ranks({"ok": ok})["ok"]
        return ok == 1.0

    # -------------------------------------------------------------------- checkpoints
    def trainable_state(self, policy: Policy) -> dict[str, Tensor] | None:
        """The trainable module's full state dict for rank 0 to write (a collective on every rank), or None
        when the policy saves its own (unsharded) weights."""
        return None

    def optimizer_state(self, optimizer: torch.optim.Optimizer, policy: Policy) -> Any:
        """What rank 0 writes as ``optimizer.pt`` (a collective on every rank when sharded)."""
        return optimizer.state_dict()

    def load_trainable(self, policy: Policy, directory: Path) -> None:
        policy.load_trainable(directory)

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, policy: Policy, state: Any) -> None:
        _expect_format(state, "position", self.name)
        optimizer.load_state_dict(state)

    def describe(self) -> str:
        return f"{self.name} ({self.world} process{'es' if self.world > 1 else ''})"


def _forwarding_ddp() -> type:
    """DDP whose unknown attributes are the wrapped module's (``net.config`` in a policy's forward), as
    DeepSpeed's engine does; built on first use so that importing this module stays light."""
    from torch.nn.parallel import DistributedDataParallel

    class ForwardingDDP(DistributedDataParallel):
        def __getattr__(self, name: str) -> Any:
            try:
                return super().__getattr__(name)
            except AttributeError:
                if name == "module":  # not set yet (during __init__)
                    raise
                return getattr(self.module, name)

    return ForwardingDDP


class DDPStrategy(Strategy):
    """Replicated weights, gradients all-reduced in buckets during the backward (torch DDP), skipped for the
    accumulating backwards of an optimizer step (``no_sync``). The launch: torchrun, or ``accelerate
    launch --config_file configs/accelerate/ddp.yaml``."""

    name = "ddp"

    def __init__(self) -> None:
        super().__init__()
        self.ddp: Any = None

    def prepare(self, policy, make_optimizer):
        if self.world > 1 and isinstance(policy, ShardablePolicy):
            module = policy.trainable_module()
            device = next(module.parameters()).device
            ids = [device.index] if device.type == "cuda" else None
            # broadcasts rank 0's weights and buffers: every rank starts from the same ones. Gradients are views
            # into DDP's all-reduce buckets (no second copy of them: 4 bytes per trained parameter saved).
            # SLAS_DDP_FIND_UNUSED=1 for a model whose forward skips trained parameters (DDP then says so)
            self.ddp = _forwarding_ddp()(module, device_ids=ids, output_device=ids[0] if ids else None,
                                               gradient_as_bucket_view=True,
                                               find_unused_parameters=_flag("SLAS_DDP_FIND_UNUSED"))
        return make_optimizer(policy.trainable_parameters())

    @contextlib.contextmanager
    def training(self, policy):
        if self.ddp is None:
            yield
            return
        policy.use_trainable_module(self.ddp)
        try:
            yield
        finally:
            policy.use_trainable_module(None)
            self.ddp.require_backward_grad_sync = True

    def before_forward(self, sync: bool) -> None:
        if self.ddp is not None:
            self.ddp.require_backward_grad_sync = sync  # what DDP's no_sync() sets

    def reduce_gradients(self, params):
        if self.ddp is None:  # a policy without a module to wrap: the hand-written all-reduce
            super().reduce_gradients(params)
            return
        for p in params:  # a parameter no backward reached holds no gradient on any rank: count it as zero
            if p.grad is None:
                p.grad = torch.zeros_like(p)


def _fsdp_block_names(module: torch.nn.Module) -> list[str]:
    """Class names of the blocks sharded one by one: ``FSDP_TRANSFORMER_CLS_TO_WRAP`` (the accelerate config's
    ``fsdp_transformer_layer_cls_to_wrap``) or the model's own ``_no_split_modules`` (diffusers sets it on
    the SD UNet, FLUX and Qwen-Image transformers)."""
    names = os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "").strip()
    if names:
        return [n.strip() for n in names.split(",") if n.strip()]
    return list(getattr(module, "_no_split_modules", None) or [])


class FSDPStrategy(Strategy):
    """FSDP2 full shard (``torch.distributed.fsdp.fully_shard``): every block of the trainable module (and the
    rest of it as the root) holds 1/N of the weights, gradients and Adam state; a block is all-gathered for
    its forward and backward and its gradients reduce-scattered after (every backward: accumulating unsharded
    gradients would cost a whole model's gradients per rank). The settings come from the accelerate config
    (``fsdp_version: 2``, ``fsdp_reshard_after_forward``, ``fsdp_offload_params``,
    ``fsdp_activation_checkpointing``, ``fsdp_transformer_layer_cls_to_wrap``, ``mixed_precision``).
    Full fine-tunes only: LoRA adapters are small and train under DDP."""

    name = "fsdp"
    sharded = True
    one_rank_forward = False

    def __init__(self) -> None:
        super().__init__()
        version = os.environ.get("FSDP_VERSION", "1")
        if version != "2":
            raise StrategyError(f"accelerate config: fsdp_version {version}; slas shards with FSDP2 "
                                "(set fsdp_version: 2, as configs/accelerate/fsdp.yaml does)")
        policy = os.environ.get("FSDP_AUTO_WRAP_POLICY", "TRANSFORMER_BASED_WRAP")
        if policy not in ("TRANSFORMER_BASED_WRAP", "NO_WRAP"):
            raise StrategyError(f"accelerate config: fsdp_auto_wrap_policy {policy}; slas shards by block "
                                "(TRANSFORMER_BASED_WRAP) or the whole module at once (NO_WRAP)")
        self.wrap_blocks = policy == "TRANSFORMER_BASED_WRAP"
        self.reshard_after_forward = _flag("FSDP_RESHARD_AFTER_FORWARD", True)
        self.offload = _flag("FSDP_OFFLOAD_PARAMS")
        self.activation_checkpointing = _flag("FSDP_ACTIVATION_CHECKPOINTING")
        precision = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
        self.param_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.module: torch.nn.Module | None = None

    def check(self, config: TrainerConfig) -> None:
        _refuse_unsharded_features(self.name, config)

    def prepare(self, policy, make_optimizer):
        if not isinstance(policy, ShardablePolicy):
            raise StrategyError(f"FSDP: {type(policy).__name__} does not offer its trainable module "
                                "(slas.rl.protocols.ShardablePolicy)")
        module = policy.trainable_module()
        if sum(p.numel() for p in policy.trainable_parameters()) < sum(p.numel() for p in module.parameters()):
            raise StrategyError("FSDP shards full fine-tunes; this policy trains adapters (LoRA): launch it "
                                "with configs/accelerate/ddp.yaml")
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

        if self.activation_checkpointing:
            if not hasattr(module, "enable_gradient_checkpointing"):
                raise StrategyError(f"fsdp_activation_checkpointing: {type(module).__name__} has no "
                                    "enable_gradient_checkpointing()")
            module.enable_gradient_checkpointing()  # block-wise recompute, inside the sharded blocks
        device = next(module.parameters()).device
        mesh = init_device_mesh(device.type, (self.world,))
        kwargs: dict[str, Any] = {"mesh": mesh,
                                  "mp_policy": MixedPrecisionPolicy(param_dtype=self.param_dtype,
                                                                    reduce_dtype=torch.float32)}
        if self.offload:
            kwargs["offload_policy"] = CPUOffloadPolicy()
        if self.wrap_blocks:
            names = set(_fsdp_block_names(module))
            if not names:
                raise StrategyError(f"FSDP: {type(module).__name__} names no blocks (_no_split_modules); set "
                                    "fsdp_transformer_layer_cls_to_wrap in the accelerate config")
            # innermost first: a block nested in another (SD's CrossAttnUpBlock2D holds ResnetBlock2Ds) is its own unit
            for sub in reversed(list(module.modules())):
                if sub is not module and type(sub).__name__ in names:
                    fully_shard(sub, reshard_after_forward=self.reshard_after_forward, **kwargs)
        fully_shard(module, **kwargs)  # the root: what no block holds (embeddings, norms, the output layer)
        self.module = module
        policy.use_trainable_module(None)  # sharding replaced the parameters: the policy collects them again
        return make_optimizer(policy.trainable_parameters())

    # gradients are reduce-scattered by every backward; the defaults (sync ignored, nothing to reduce) hold
    def reduce_gradients(self, params):
        for p in params:
            if p.grad is None:
                raise StrategyError("FSDP: a trained parameter got no gradient in this optimizer step")

    def trainable_state(self, policy):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # gathered to rank 0 (CPU), one block at a time; the other ranks get an empty dict
        return get_model_state_dict(self.module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def optimizer_state(self, optimizer, policy):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(self.module, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_trainable(self, policy, directory):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        state = policy.read_trainable(directory)  # every rank reads the full weights and keeps its shard
        set_model_state_dict(self.module, state, options=StateDictOptions(full_state_dict=True, strict=True))

    def load_optimizer_state(self, optimizer, policy, state):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        _expect_format(state, "name", self.name)
        set_optimizer_state_dict(self.module, optimizer, optim_state_dict=state,
                                 options=StateDictOptions(full_state_dict=True))


_WRITERS = {"position": "one process, torchrun or ddp.yaml", "name": "fsdp.yaml",
            "partitions": "a DeepSpeed config"}


def _expect_format(state: Any, want: str, strategy: str) -> None:
    """Refuse, in one line, optimizer state another strategy family wrote (it keeps it in another layout)."""
    if isinstance(state, dict) and "partitions" in state:
        have = "partitions"
    elif isinstance(state, dict) and any(isinstance(k, str) for k in state.get("state", {})):
        have = "name"
    else:
        have = "position"
    if have != want:
        raise StrategyError(f"optimizer.pt was written under {_WRITERS[have]} ({have}-keyed optimizer state); "
                            f"this run is {strategy}: resume it under {_WRITERS[have]}")


def _refuse_unsharded_features(name: str, config: TrainerConfig) -> None:
    """Features that keep or read a second copy of the weights outside the sharded module, or run the model
    on rank 0 alone, cannot run sharded; say which, in one line."""
    t = config.train
    if t.ema.enabled:
        raise StrategyError(f"{name}: train.ema keeps an unsharded copy of the weights; launch with "
                            "configs/accelerate/ddp.yaml or turn it off")
    if t.objective != "grpo":
        raise StrategyError(f"{name}: train.objective={t.objective} swaps in its own sampling weights, which a "
                            "sharded module does not allow; launch with configs/accelerate/ddp.yaml")
    if config.rl.power == "auto":
        raise StrategyError(f"{name}: rl.power=auto differentiates per sample outside the optimizer step; set a "
                            "fixed rl.power or launch with configs/accelerate/ddp.yaml")


class DeepSpeedStrategy(Strategy):
    """DeepSpeed ZeRO (stage 2: gradients and Adam state partitioned; stage 3: the weights too), the engine
    built by ``deepspeed.initialize`` from the accelerate config's DeepSpeed section or file, with its
    ``"auto"`` values resolved from the run config (:func:`resolve_deepspeed_config`). The engine clips
    (``gradient_clipping`` = ``train.max_grad_norm``) and steps; slas marks each optimizer step's last
    backward as the accumulation boundary. Needs CUDA (DeepSpeed does not train on a CPU here)."""

    name = "deepspeed"

    def __init__(self) -> None:
        super().__init__()
        self.engine: Any = None
        self.config: dict[str, Any] = {}
        self.stage = 0

    def check(self, config: TrainerConfig) -> None:
        self.config = resolve_deepspeed_config(deepspeed_config_from_env(), config, world=self.world)
        self.stage = int(self.config.get("zero_optimization", {}).get("stage", 0))
        self.sharded = self.stage >= 3
        self.one_rank_forward = self.stage < 3
        _refuse_unsharded_features(self.name, config)
        if not torch.cuda.is_available():
            raise StrategyError("DeepSpeed needs CUDA; on a CPU launch with configs/accelerate/ddp.yaml or fsdp.yaml")

    def prepare(self, policy, make_optimizer):
        import deepspeed

        if not isinstance(policy, ShardablePolicy):
            raise StrategyError(f"DeepSpeed: {type(policy).__name__} does not offer its trainable module "
                                "(slas.rl.protocols.ShardablePolicy)")
        module = policy.trainable_module()
        optimizer = make_optimizer(policy.trainable_parameters())
        self.engine, optimizer, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, config=self.config)
        policy.use_trainable_module(None)
        return optimizer

    @contextlib.contextmanager
    def training(self, policy):
        policy.use_trainable_module(self.engine)
        try:
            yield
        finally:
            policy.use_trainable_module(None)

    def before_forward(self, sync: bool) -> None:
        self.engine.set_gradient_accumulation_boundary(sync)

    def backward(self, loss: Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)  # the trainer already weights each term

    def reduce_gradients(self, params):
        """ZeRO reduces (and partitions) gradients during the backward of the boundary."""

    def clip_grad_norm(self, params, max_norm):
        return None  # known only after the engine's step (it clips there)

    def step(self, optimizer):
        self.engine.step()

    def grad_norm_after_step(self) -> float:
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def zero_grad(self, optimizer):
        self.engine.zero_grad()

    def all_finite(self, params):
        ok = 1.0
        if self.stage < 3:
            ok = float(all(bool(torch.isfinite(p).all()) for p in params))
        else:  # weights are partitioned: each rank checks its own partition
            ok = float(all(bool(torch.isfinite(p.ds_tensor).all()) for p in params if hasattr(p, "ds_tensor")))
        return distributed.mean_over_ranks({"ok": ok})["ok"] == 1.0

    def trainable_state(self, policy):
        if self.stage < 3:
            return None  # ZeRO-2 keeps whole weights on every rank: the policy saves them itself
        return self.engine._zero3_consolidated_16bit_state_dict()  # gathered to rank 0

    def optimizer_state(self, optimizer, policy):
        """Every rank's partition of the ZeRO optimizer, gathered to rank 0 (resumed with the same world size).
        Kept to tensors and plain values, so that it loads with ``weights_only`` like every checkpoint file:
        enums become their values; DeepSpeed's objects (its loss scaler, universal-checkpoint slice maps) are
        left out and the running optimizer's own are kept on resume."""
        import torch.distributed as dist

        parts: list[Any] | None = [None] * self.world if self.rank == 0 else None
        dist.gather_object(_plain(optimizer.state_dict()), parts, dst=0)
        return {"zero_stage": self.stage, "world_size": self.world, "partitions": parts}

    def load_optimizer_state(self, optimizer, policy, state):
        _expect_format(state, "partitions", self.name)
        if state.get("world_size") != self.world or state.get("zero_stage") != self.stage:
            raise StrategyError(f"optimizer.pt holds ZeRO-{state.get('zero_stage')} state of {state.get('world_size')} "
                                f"ranks; this run has ZeRO-{self.stage} on {self.world}: resume with the same layout")
        parts = [{"loss_scaler": optimizer.loss_scaler, **part} for part in state["partitions"]]
        optimizer.load_state_dict(parts, load_from_fp32_weights=True)

    def load_trainable(self, policy, directory):
        """Copied in place (the engine's weights are views into its flat buffers; replacing them would cut
        them off); the float32 masters come back with the optimizer state (``load_from_fp32_weights``)."""
        import deepspeed

        state = policy.read_trainable(directory)
        params = dict(policy.trainable_module().named_parameters())
        unknown = sorted(set(state) - set(params))
        if unknown:
            raise StrategyError(f"{directory}: weights for parameters the model lacks ({unknown[0]}, ...)")
        gathered = (deepspeed.zero.GatheredParameters([params[k] for k in state], modifier_rank=0)
                    if self.stage >= 3 else contextlib.nullcontext())
        with torch.no_grad(), gathered:
            if self.stage < 3 or self.rank == 0:
                for name, value in state.items():
                    params[name].data.copy_(value)


_DROP = object()


def _plain(obj: Any) -> Any:
    """``obj`` as tensors (on the CPU) and plain containers, what ``torch.load(weights_only=True)`` reads back:
    an enum becomes its value, a ``torch.Size`` a list; any other object is left out (``_DROP`` at the top)."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, enum.Enum):
        return _plain(obj.value)
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, list | tuple):  # torch.Size is a tuple
        items = [_plain(x) for x in obj]
        if any(x is _DROP for x in items):
            return _DROP
        return items if isinstance(obj, list | torch.Size) else tuple(items)
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            value = _plain(value)
            if value is not _DROP and isinstance(key, str | int):
                out[key] = value
        return out
    return _DROP


def deepspeed_config_from_env() -> dict[str, Any]:
    """The DeepSpeed config accelerate launch exported: the file ``deepspeed_config_file`` names, else one built
    from the inline fields (``zero_stage``, offload devices) by accelerate's own ``DeepSpeedPlugin``."""
    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if path:
        try:
            return json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise StrategyError(f"{path}: cannot read the DeepSpeed config ({type(exc).__name__}: {exc})") from None
    from accelerate.utils import DeepSpeedPlugin

    return dict(DeepSpeedPlugin().deepspeed_config)


def resolve_deepspeed_config(ds: dict[str, Any], config: TrainerConfig, *, world: int) -> dict[str, Any]:
    """``ds`` with every ``"auto"`` filled from the run config, so one DeepSpeed file serves every run:
    the micro batch is ``train.batch_size``; accumulation is the trainer's (1 here, boundaries set by slas);
    clipping is ``train.max_grad_norm``; bf16/fp16 follow ``ACCELERATE_MIXED_PRECISION``. A value set in
    the file that contradicts the run config is refused in one line."""
    t = config.train
    out = json.loads(json.dumps(ds))
    want = {"train_micro_batch_size_per_gpu": t.batch_size, "gradient_accumulation_steps": 1,
            "train_batch_size": t.batch_size * world, "gradient_clipping": t.max_grad_norm or 0.0}
    for key, value in want.items():
        have = out.get(key, "auto")
        if have == "auto":
            out[key] = value
        elif key != "gradient_clipping" and have != value:
            raise StrategyError(f"DeepSpeed config: {key} is {have}; slas sets it from the run config ({value}): "
                                'write "auto"')
    precision = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    for kind in ("bf16", "fp16"):
        section = out.get(kind)
        if isinstance(section, dict) and section.get("enabled") == "auto":
            section["enabled"] = precision == kind
    zero = out.setdefault("zero_optimization", {})
    for key, value in list(zero.items()):
        if value == "auto":  # bucket sizes: DeepSpeed's own defaults
            del zero[key]
    return out


def strategy_from_env() -> Strategy:
    """The strategy this process was launched for (see the module docstring)."""
    _, world = distributed.rank_and_world()
    if world == 1:  # one process trains alone whatever the accelerate config says
        return Strategy()
    if _flag("ACCELERATE_USE_DEEPSPEED"):
        return DeepSpeedStrategy()
    if _flag("ACCELERATE_USE_FSDP"):
        return FSDPStrategy()
    return DDPStrategy()
