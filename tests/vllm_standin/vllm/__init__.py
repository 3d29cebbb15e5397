"""A ``vllm`` module for the processes that tests launch (``PYTHONPATH=tests/vllm_standin``): the stand-in of
tests/test_vllm_backend.py (vLLM 0.33.0's offline API shapes, sampling from the real tiny model)."""

from tests.test_vllm_backend import LLM, CompletionOutput, Logprob, RequestOutput, SamplingParams

__all__ = ["LLM", "CompletionOutput", "Logprob", "RequestOutput", "SamplingParams"]
