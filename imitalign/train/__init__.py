"""The one training loop (:mod:`imitalign.train.loop`: the ``Trainer``), what differs per objective kind
(:mod:`~imitalign.train.kinds`), batching, checkpoints, the reference pass and metrics.

The package is callable: ``imitalign.train(cfg, resume=False, quiet=False)`` is :func:`imitalign.train.loop.train`.
"""

from imitalign._callable import make_callable

make_callable(__name__, "imitalign.train.loop", "train")
