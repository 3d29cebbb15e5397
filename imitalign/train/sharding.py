"""Sharded training through accelerate: FSDP2 (torch's ``fully_shard``) and DeepSpeed ZeRO-2/3.

What the training loop asks of this module, in order:

- ``accelerator_kwargs(cfg)``: with ``train.fsdp`` (and no FSDP config from ``accelerate launch``), accelerate's
  FSDP plugin with ``fsdp_version: 2``: each decoder layer (the model's ``_no_split_modules``) is
  ``fully_shard``-ed, then the whole engine (the root group holds embeddings, final norm and LM head),
  parameters resharded after forward, a sharded checkpoint format (torch.distributed.checkpoint), and under
  bf16 mixed precision bf16 parameters for compute with fp32 gradient reduction.
- ``engage(accelerator, cfg)``: gradients reduced in fp32 under bf16 (also for a launcher's FSDP config);
  accelerate ignores its FSDP plugin when the processes are a CPU (gloo)
  group (``MULTI_CPU``); this installs it in accelerate's state so that ``prepare``, ``get_state_dict``,
  ``save_state`` and ``load_state`` take their FSDP2 paths — the code accelerate runs on GPUs — on CPU.
- ``shard_frozen(accelerator, module)``: a frozen reference copy sharded like the policy (no optimiser).
- ``full_state_dict`` / ``consolidated_copy``: the full weights, gathered on the main process, as a plain CPU
  model (LoRA kept) that ``save_pretrained`` writes as usual.
- ``full_tensor``: a full tensor of a parameter whatever its sharding (for the reference-cache fingerprint).

Under FSDP2 the engine's fused LM head reads ``lm_head.weight`` inside the engine's forward, where the root
group is unsharded; under ZeRO-3 the engine calls the head module so that DeepSpeed's hooks gather its weight
(``imitalign.model.logprobs._fusable``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


def _launched_with_fsdp() -> bool:
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def fsdp2_plugin(mixed_precision: str) -> Any:
    """accelerate's FSDP2 plugin as ``configs/accelerate/fsdp2.yaml`` sets it up; under bf16 the parameters are
    cast to bf16 for compute and the gradients reduced in fp32."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import MixedPrecisionPolicy

    policy = None
    if mixed_precision == "bf16":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="transformer_based_wrap",  # the classes of the model's _no_split_modules
        reshard_after_forward=True,
        state_dict_type="SHARDED_STATE_DICT",
        cpu_ram_efficient_loading=False,
        mixed_precision_policy=policy,
    )


def accelerator_kwargs(cfg: Any, mixed_precision: str) -> dict[str, Any]:
    """Extra ``Accelerator(...)`` arguments of the ``train`` section (``fsdp_plugin`` with ``train.fsdp``, unless
    ``accelerate launch`` already brings an FSDP configuration)."""
    if not cfg.train.fsdp or _launched_with_fsdp():
        return {}
    return {"fsdp_plugin": fsdp2_plugin(mixed_precision)}


def engage(accelerator: Any, cfg: Any, mixed_precision: str) -> None:
    """fp32 gradient reduction under FSDP2 + bf16. With ``train.fsdp`` on a CPU process group, accelerate's state
    made FSDP2 (it stays ``MULTI_CPU`` otherwise and would wrap the engine in DDP); one process has nothing to
    shard and is left as it is."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    if accelerator.is_fsdp2:
        _reduce_in_fp32(accelerator.state.fsdp_plugin)
    if not cfg.train.fsdp or accelerator.distributed_type != DistributedType.MULTI_CPU:
        return
    plugin = fsdp2_plugin(mixed_precision)
    # AcceleratorState copies PartialState's shared state whenever it is built again: set both
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    AcceleratorState._shared_state["distributed_type"] = DistributedType.FSDP
    AcceleratorState._shared_state["fsdp_plugin"] = plugin
    log.info("FSDP2 engaged on a CPU process group of %d processes", accelerator.num_processes)


def _reduce_in_fp32(plugin: Any) -> None:
    """bf16 compute, fp32 gradient reduction: accelerate's launcher config sets both to the mixed-precision
    dtype, and summing bf16 gradients over many processes loses digits."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    policy = plugin.mixed_precision_policy
    if isinstance(policy, MixedPrecisionPolicy) and policy.param_dtype == torch.bfloat16:
        if policy.reduce_dtype != torch.float32:
            plugin.mixed_precision_policy = MixedPrecisionPolicy(
                param_dtype=torch.bfloat16,
                reduce_dtype=torch.float32,
                output_dtype=policy.output_dtype,
                cast_forward_inputs=policy.cast_forward_inputs,
            )


def zero_stage(accelerator: Any) -> int:
    """The DeepSpeed ZeRO stage of this run (0 without DeepSpeed)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return 0
    return int(accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0))


def is_sharded(accelerator: Any) -> bool:
    """Parameters live in shards (FSDP2, ZeRO-3): a plain read of a parameter may see a shard or a placeholder."""
    return bool(accelerator.is_fsdp2) or zero_stage(accelerator) == 3


def lockstep_batches(n_local: int, accelerator: Any) -> int:
    """How many forwards this process must run so that all processes run the same number.

    Under FSDP2 and ZeRO-3 every forward is a collective (the layers' parameters are all-gathered), so a process
    that stops after fewer batches than another leaves it waiting forever. A process with fewer batches of its
    own runs discarded forwards up to the most any process has. Unsharded: its own count."""
    if accelerator.num_processes == 1 or not is_sharded(accelerator):
        return n_local
    counts = accelerator.gather(torch.tensor([n_local], device=accelerator.device))
    return int(counts.max())


def _layer_classes(module: nn.Module) -> tuple[type, ...]:
    names = set(getattr(module, "_no_split_modules", None) or [])
    return tuple({type(m) for m in module.modules() if type(m).__name__ in names})


def shard_frozen(accelerator: Any, module: nn.Module) -> nn.Module:
    """A frozen module (the reference copy) sharded like the policy: under FSDP2 each decoder layer then the
    root ``fully_shard``-ed with the policy's mixed-precision policy; under ZeRO-3 a DeepSpeed inference engine
    with the run's ZeRO config; otherwise accelerate's evaluation-mode ``prepare_model`` (device placement)."""
    module.eval().requires_grad_(False)
    if accelerator.is_fsdp2:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        plugin = accelerator.state.fsdp_plugin
        kw = {"reshard_after_forward": True, "mp_policy": plugin.mixed_precision_policy or MixedPrecisionPolicy()}
        module = module.to(accelerator.device)
        layers = _layer_classes(module)
        for sub in module.modules():
            if layers and isinstance(sub, layers):
                fully_shard(sub, **kw)
        fully_shard(module, **kw)
        return module
    if zero_stage(accelerator) == 3:  # as TRL does for its reference model; needs a GPU (not run on CPU)
        import copy

        import deepspeed

        config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
        config.pop("optimizer", None)
        config.pop("scheduler", None)
        engine, *_ = deepspeed.initialize(model=module, config=config)
        return engine.eval()
    return accelerator.prepare_model(module, evaluation_mode=True)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor: a DTensor (FSDP2) gathered — a collective, every process must call it in the same
    order; a ZeRO-3 parameter gathered from its partitions; anything else as it is."""
    from torch.distributed.tensor import DTensor

    if isinstance(t, DTensor):
        return t.full_tensor()
    if hasattr(t, "ds_id"):
        import deepspeed

        with deepspeed.zero.GatheredParameters([t], modifier_rank=None):
            return t.data.detach().clone()
    return t


def named_full_tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``module``'s state-dict entries as full tensors (see :func:`full_tensor`)."""
    params = dict(module.named_parameters(remove_duplicate=False))
    for name, t in module.state_dict(keep_vars=True).items():
        yield name, full_tensor(params.get(name, t)).detach()


def full_state_dict(accelerator: Any, engine: nn.Module) -> dict[str, torch.Tensor]:
    """The prepared engine's full weights on the main process (empty elsewhere). A collective under FSDP2 and
    ZeRO-3: every process calls it. ZeRO-3 needs ``stage3_gather_16bit_weights_on_model_save: true``."""
    state = accelerator.get_state_dict(engine)
    return state if accelerator.is_main_process else {}


def consolidated_copy(lm: nn.Module, state: dict[str, torch.Tensor], prefix: str = "lm.") -> nn.Module:
    """A plain CPU copy of ``lm`` (a causal LM or a peft model around one) holding ``state`` — the full weights
    from :func:`full_state_dict`, keys under ``prefix`` — built on the meta device and filled without copies.
    Buffers (never sharded) are copied from ``lm``."""
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    with torch.device("meta"):
        plain = type(base)(base.config)
        if hasattr(lm, "peft_config"):
            from peft import get_peft_model

            plain = get_peft_model(plain, lm.peft_config[lm.active_adapter])
    plain.to_empty(device="cpu")
    ours = {k[len(prefix) :]: v.detach().cpu() for k, v in state.items() if k.startswith(prefix)}
    result = plain.load_state_dict(ours, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(
            f"the consolidated weights do not fit the model: missing {result.missing_keys[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}"
        )
    (plain.get_base_model() if hasattr(plain, "get_base_model") else plain).tie_weights()
    buffers = dict(lm.named_buffers())  # buffers are never sharded: the rotary tables etc. come from lm
    for name, buf in plain.named_buffers():
        if name in buffers:
            buf.copy_(buffers[name].detach().cpu())
    return plain.eval()
