"""imitalign: aligning language models as imitation learning.

From Python (see the README's "From Python")::

    from imitalign import Config, train, objectives, iterate, generate, evaluate

    result = train(Config.model_validate({...}))        # the loop of `imitalign train`
    loss_fn = objectives.build("dil_lsif")               # a pure loss function of log-prob tensors
    rows = generate("runs/x/model", ["a prompt"], n=4)   # sample rows
    scores = evaluate(model, tokenizer, prompts, reward_fn=...)   # gold/judge reward, win rates, KL, diversity
    iterate("configs/online/....yaml")                   # the loop of `imitalign iterate`

Everything is imported on first use: ``import imitalign`` loads neither torch nor transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {  # public name -> (module, attribute); None: the module itself
    "Config": ("imitalign.config", "Config"),
    "load_config": ("imitalign.config", "load_config"),
    "TrainResult": ("imitalign.train.loop", "TrainResult"),
    "Trainer": ("imitalign.train.loop", "Trainer"),
    "train": ("imitalign.train", None),  # a callable package: imitalign/_callable.py
    "generate": ("imitalign.generate", None),  # a callable package
    "objectives": ("imitalign.objectives", None),
    "iterate": ("imitalign.loops.iterate", "iterate"),
    "evaluate": ("imitalign.eval.evaluate", "evaluate_model"),
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'imitalign' has no attribute {name!r}")
    module, attr = _LAZY[name]
    mod = importlib.import_module(module)
    return mod if attr is None else getattr(mod, attr)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
