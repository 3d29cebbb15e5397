"""Sampling: :mod:`~imitalign.generate.sampler` (transformers ``generate``, seeded per row), K samples per prompt
across processes (:mod:`~imitalign.generate.kshot`), vLLM when installed (:mod:`~imitalign.generate.vllm_backend`).

The package is callable: ``imitalign.generate(model, prompts, n=4)`` is :func:`imitalign.generate.sampler.generate`.
"""

from imitalign._callable import make_callable

make_callable(__name__, "imitalign.generate.sampler", "generate")
