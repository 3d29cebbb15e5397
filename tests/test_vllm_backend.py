"""The vLLM backend (imitalign/generate/vllm_backend.py) against a stand-in ``vllm`` module.

What this checks: our mapping from vLLM 0.33.0's offline API to ``Sample`` rows — the names and arguments we
call (``LLM(model, dtype, seed, logprobs_mode, max_model_len)``, ``get_tokenizer``, ``SamplingParams(n,
temperature, top_p, max_tokens, seed, logprobs)``, ``generate(TokensPrompt dicts, params, use_tqdm)``), and
the shapes we read back (``RequestOutput.outputs``, ``CompletionOutput.index/token_ids/logprobs/finish_reason``,
per-token ``dict[token_id, Logprob]`` or a ``FlatLogprobs`` container). The stand-in mirrors what the 0.33.0
source does with them, read from the wheel: outputs in request order, ``n`` children seeded ``seed + j``
(v1/engine/parallel_sampling.py), ``n > 1`` refused for greedy, raw (temperature-1) log-probs with the sampled
token always present (v1/sample/sampler.py), stop on the tokenizer's EOS or the generation config's
``eos_token_id`` with the stop token kept in ``token_ids`` and ``finish_reason`` "stop", else "length"
(v1/core/sched/utils.py, v1/engine/detokenizer.py). It samples from a real tiny model, so the numbers
(log-probs vs a teacher-forced forward, EOS rows) are real.

What it does not check: vLLM itself (its kernels, its RNG, its scheduler, whether a future version changes
these shapes), GPU memory, several processes under ``accelerate launch``. The stand-in's draws are not vLLM's.
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import subprocess
import sys
import types
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from imitalign.generate.kshot import PromptSet, check_k, engine_groups, generate_k, resolve_backend
from imitalign.generate.vllm_backend import sample_vllm
from imitalign.gym.tokenizer import build_tokenizer
from tests.helpers import tiny_llama

K, MAX_NEW = 3, 6
PROMPTS = [f"write about sea and forest , {w} =>" for w in ("short", "medium", "long", "short", "long")]

# ---------------------------------------------------------------------------------------------------------------
# the stand-in: vLLM 0.33.0's API shapes (file:line of the wheel's source in the comments)


@dataclass
class Logprob:  # vllm/logprobs.py:13
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


class FlatLogprobs:  # vllm/logprobs.py:32 — a sequence whose items are dict[token_id, Logprob]
    def __init__(self) -> None:
        self.start_indices: list[int] = []
        self.end_indices: list[int] = []
        self.token_ids: list[int] = []
        self.logprobs: list[float] = []

    def append(self, position: dict[int, Logprob]) -> None:
        self.start_indices.append(len(self.logprobs))
        for t, lp in position.items():
            self.token_ids.append(t)
            self.logprobs.append(lp.logprob)
        self.end_indices.append(len(self.logprobs))

    def __len__(self) -> int:
        return len(self.start_indices)

    def __getitem__(self, i: int) -> dict[int, Logprob]:
        return {self.token_ids[k]: Logprob(self.logprobs[k]) for k in range(self.start_indices[i], self.end_indices[i])}

    def __iter__(self):
        return (self[i] for i in range(len(self)))


@dataclass
class CompletionOutput:  # vllm/outputs.py:59
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: Any
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class RequestOutput:  # vllm/outputs.py:169
    def __init__(self, request_id, prompt, prompt_token_ids, prompt_logprobs, outputs, finished, **kwargs):
        self.request_id, self.prompt, self.prompt_token_ids = request_id, prompt, prompt_token_ids
        self.prompt_logprobs, self.outputs, self.finished = prompt_logprobs, outputs, finished


class SamplingParams:  # vllm/sampling_params.py:271 (a msgspec Struct: keyword fields only)
    def __init__(self, *, n: int = 1, temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None,
                 max_tokens: int | None = 16, logprobs: int | None = None, flat_logprobs: bool = False) -> None:
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
        if logprobs is not None and logprobs != -1 and logprobs < 0:
            raise ValueError(f"logprobs must be non-negative or -1, got {logprobs}.")
        if temperature < 1e-5 and n > 1:  # sampling_params.py:769
            raise ValueError(f"n must be 1 when using greedy sampling, got {n}.")
        if seed is not None and not -(2**63) <= seed < 2**63:  # int64 seeds (v1/worker/gpu/sample/states.py:26)
            raise OverflowError(seed)
        self.n, self.temperature, self.top_p, self.seed = n, temperature, top_p, seed
        self.max_tokens, self.logprobs, self.flat_logprobs = max_tokens, logprobs, flat_logprobs


LLM_KWARGS = {  # explicit LLM.__init__ parameters (entrypoints/llm.py:177) and EngineArgs fields it forwards
    "tokenizer", "trust_remote_code", "tensor_parallel_size", "dtype", "seed", "gpu_memory_utilization",
    "enforce_eager", "max_model_len", "logprobs_mode", "max_logprobs", "distributed_executor_backend",
}
EXECUTOR_BACKENDS = ("ray", "mp", "uni", "external_launcher")  # config/parallel.py (ParallelConfig._verify_args)
LOG_ENV = "VLLM_STANDIN_LOG"  # a file: every LLM built appends its arguments and where it would run
LOGPROBS_MODES = ("raw_logits", "raw_logprobs", "processed_logits", "processed_logprobs")  # config/model.py:101


class LLM:
    """Samples with the transformers model at ``model``, one token at a time from a full forward."""

    reverse_completions = False  # return each request's completions out of index order
    flat = False  # return FlatLogprobs whatever flat_logprobs says
    calls: list[dict[str, Any]] = []

    def __init__(self, model: str, **kwargs: Any) -> None:
        unknown = set(kwargs) - LLM_KWARGS
        if unknown:
            raise TypeError(f"unexpected LLM arguments {sorted(unknown)}")
        self.mode = kwargs.get("logprobs_mode", "raw_logprobs")  # config/model.py:291
        assert self.mode in LOGPROBS_MODES
        self.max_model_len = kwargs.get("max_model_len") or 10**9
        self.kwargs = kwargs
        self.device = self._device(kwargs)
        self.model = AutoModelForCausalLM.from_pretrained(model).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        gen_eos = GenerationConfig.from_pretrained(model).eos_token_id  # sampling_params.py:775
        self.stop_ids = {self.tokenizer.eos_token_id} | set([gen_eos] if isinstance(gen_eos, int) else gen_eos or [])
        LLM.calls.append({"kwargs": kwargs, "seeds": []})

    @staticmethod
    def _device(kwargs: dict[str, Any]) -> str:
        """Where vLLM's worker would run. external_launcher (v1/executor/uniproc_executor.py,
        ExecutorWithExternalLauncher): the launcher's RANK / LOCAL_RANK / WORLD_SIZE are required, the worker takes
        cuda:LOCAL_RANK, and the torchrun world must be a multiple of the tensor-parallel size
        (initialize_model_parallel reshapes the ranks into (-1, pp, tp)). Otherwise one process: the first GPU."""
        backend = kwargs.get("distributed_executor_backend")
        assert backend is None or backend in EXECUTOR_BACKENDS, backend
        tp = kwargs.get("tensor_parallel_size", 1)
        if backend != "external_launcher":
            assert "RANK" not in os.environ or os.environ.get("WORLD_SIZE") == "1", "several ranks, each on cuda:0"
            return "cuda:0"
        for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            if name not in os.environ:
                raise KeyError(f"external_launcher needs {name} (torchrun's environment)")
        assert int(os.environ["WORLD_SIZE"]) % tp == 0, "the world must be a multiple of tensor_parallel_size"
        return f"cuda:{os.environ['LOCAL_RANK']}"

    def _log(self, n_requests: int) -> None:
        if os.environ.get(LOG_ENV):
            record = {"kwargs": self.kwargs, "device": self.device, "rank": os.environ.get("RANK"), "n": n_requests}
            with open(os.environ[LOG_ENV], "a") as f:
                f.write(json.dumps(record) + "\n")

    def get_tokenizer(self):
        return self.tokenizer

    def generate(self, prompts, sampling_params=None, *, use_tqdm=True):
        if not isinstance(sampling_params, list) or len(sampling_params) != len(prompts):
            raise ValueError("The lengths of prompts and params must be the same.")  # entrypoints/common/offline.py:262
        self._log(len(prompts))
        outs = []
        for r, (prompt, params) in enumerate(zip(prompts, sampling_params, strict=True)):
            comps = [self._complete(list(prompt["prompt_token_ids"]), params, j) for j in range(params.n)]
            if self.reverse_completions:
                comps.reverse()
            outs.append(RequestOutput(str(r), None, prompt["prompt_token_ids"], None, comps, True))
        return outs

    @torch.no_grad()
    def _complete(self, prompt: list[int], params: SamplingParams, j: int) -> CompletionOutput:
        seed = None if params.seed is None else params.seed + j  # v1/engine/parallel_sampling.py:81
        LLM.calls[-1]["seeds"].append(seed)
        gen = torch.Generator().manual_seed(seed if seed is not None else 0)
        ids: list[int] = []
        steps = FlatLogprobs() if params.flat_logprobs or self.flat else []
        reason = None
        while reason is None:
            logits = self.model(torch.tensor([prompt + ids])).logits[0, -1].float()
            raw = torch.log_softmax(logits, -1)
            if params.temperature < 1e-5:
                t = int(raw.argmax())
            else:
                probs = torch.softmax(logits / params.temperature, -1)
                srt, order = probs.sort(descending=True)
                keep = srt.cumsum(0) - srt < params.top_p  # the nucleus (at least the top token)
                probs = torch.zeros_like(probs).scatter(0, order[keep], srt[keep])
                t = int(torch.multinomial(probs / probs.sum(), 1, generator=gen))
            scores = raw if self.mode == "raw_logprobs" else torch.log_softmax(logits / params.temperature, -1)
            entry = {t: Logprob(float(scores[t]), rank=1 + int((scores > scores[t]).sum()))}  # sampled token first
            for r, v in enumerate(scores.topk(params.logprobs or 0).indices.tolist()):
                entry.setdefault(v, Logprob(float(scores[v]), rank=r + 1))
            ids.append(t)
            steps.append(entry)
            if t in self.stop_ids:  # v1/core/sched/utils.py:105-111
                reason = "stop"
            elif len(ids) >= params.max_tokens or len(prompt) + len(ids) >= self.max_model_len:
                reason = "length"
        # the stop token stays in token_ids, not in text (v1/engine/detokenizer.py:107-128)
        text = self.tokenizer.decode(ids[:-1] if reason == "stop" else ids, skip_special_tokens=True)
        cum = sum(s[t].logprob for s, t in zip(steps, ids, strict=True))
        return CompletionOutput(j, text, ids, cum, steps, reason)


@pytest.fixture
def fake_vllm(monkeypatch):
    mod = types.ModuleType("vllm")
    mod.__spec__ = importlib.machinery.ModuleSpec("vllm", None)  # find_spec("vllm") finds it
    for obj in (LLM, SamplingParams, RequestOutput, CompletionOutput, Logprob):
        setattr(mod, obj.__name__, obj)
    monkeypatch.setitem(sys.modules, "vllm", mod)
    monkeypatch.setattr(LLM, "calls", [])
    monkeypatch.setattr(LLM, "reverse_completions", False)
    monkeypatch.setattr(LLM, "flat", False)
    return mod


# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny llama and the gym tokenizer; the generation config adds stop ids so that some rows finish."""
    tok = build_tokenizer()
    model = tiny_llama(len(tok))
    model.generation_config = GenerationConfig(eos_token_id=[tok.eos_token_id, *range(10, 40)])
    path = tmp_path_factory.mktemp("vllm") / "model"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def stop_ids(model_dir):
    return {AutoTokenizer.from_pretrained(model_dir).eos_token_id, *range(10, 40)}


@pytest.fixture(scope="module")
def prompts():
    tok = build_tokenizer()
    return PromptSet(list(PROMPTS), [tok(p)["input_ids"] for p in PROMPTS], [{"id": i} for i in range(len(PROMPTS))],
                     [f"f:{i}" for i in range(len(PROMPTS))])


def _teacher_forced(model, prompt, response):
    full = torch.tensor([prompt + response])
    with torch.no_grad():
        logp = torch.log_softmax(model(full).logits[0, :-1].float(), dim=-1)
    return logp[len(prompt) - 1 :].gather(1, full[0, len(prompt) :, None]).squeeze(1)


def test_kshot_vllm_gives_k_rows_per_prompt_with_the_transformers_schema(fake_vllm, model_dir, prompts, tmp_path):
    kw = {"k": K, "max_new_tokens": MAX_NEW, "seed": 5, "temperature": 0.8}
    generate_k(model_dir, prompts, tmp_path / "t.jsonl", backend="transformers", **kw)
    stats = generate_k(model_dir, prompts, tmp_path / "v.jsonl", backend="vllm", **kw)
    t_rows = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    v_rows = [json.loads(line) for line in (tmp_path / "v.jsonl").read_text().splitlines()]
    assert stats.backend == "vllm" and stats.samples == len(PROMPTS) * K
    check_k(v_rows, len(PROMPTS), K)
    assert len(v_rows) == len(t_rows) == len(PROMPTS) * K
    names = [(r["prompt_index"], r["sample_idx"]) for r in v_rows]
    assert names == [(r["prompt_index"], r["sample_idx"]) for r in t_rows]
    for v, t in zip(v_rows, t_rows, strict=True):
        assert list(v) == list(t)  # same columns, same order
        assert {k: type(x) for k, x in v.items()} == {k: type(x) for k, x in t.items()}
        assert v["prompt"] == t["prompt"] and v["id"] == t["id"] == v["prompt_index"]
    # the LLM was built with explicit raw log-probs and a context just long enough
    (call,) = LLM.calls
    assert call["kwargs"]["logprobs_mode"] == "raw_logprobs"
    assert call["kwargs"]["max_model_len"] == max(map(len, prompts.prompt_ids)) + MAX_NEW
    # every row (i, j) had its own seed (vLLM seeds child j with seed + j)
    assert len(set(call["seeds"])) == len(PROMPTS) * K
    # the file's rows are sample_vllm's: n_tokens and logp agree with the per-token log-probs
    direct = sample_vllm(str(model_dir), prompts.prompt_ids, list(range(len(PROMPTS))), n=K, temperature=0.8,
                         max_new_tokens=MAX_NEW, seed=5)
    assert [r["n_tokens"] for r in v_rows] == [s.n_tokens for s in direct]
    assert [r["logp"] for r in v_rows] == pytest.approx([sum(s.token_logps) for s in direct], abs=1e-6)
    assert [r["response"] for r in v_rows] == [s.text for s in direct]


@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.6, 0.8)])
def test_token_logps_equal_a_teacher_forced_forward(fake_vllm, model_dir, prompts, flat, temperature, top_p):
    LLM.flat = flat
    out = sample_vllm(str(model_dir), prompts.prompt_ids, list(range(len(PROMPTS))), n=K, temperature=temperature,
                      top_p=top_p, max_new_tokens=MAX_NEW, seed=1)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    assert len(out) == len(PROMPTS) * K
    for s in out:
        assert len(s.token_logps) == len(s.response_ids) and s.token_entropies == []
        expected = _teacher_forced(model, prompts.prompt_ids[s.prompt_index], s.response_ids)
        assert torch.tensor(s.token_logps) == pytest.approx(expected, abs=1e-4)  # raw: temperature 1, no top-p
        assert s.logp == pytest.approx(float(expected.sum()), abs=1e-4)


def test_eos_rows(fake_vllm, model_dir, prompts, stop_ids):
    tok = AutoTokenizer.from_pretrained(model_dir)
    out = sample_vllm(str(model_dir), prompts.prompt_ids * 4, list(range(4 * len(PROMPTS))), n=4,
                      max_new_tokens=MAX_NEW, seed=0)
    finished = [s for s in out if s.finished]
    cut = [s for s in out if not s.finished]
    assert finished and cut  # both kinds occur
    for s in finished:  # the stop token ends response_ids, is counted, and is not in the text
        assert s.response_ids[-1] in stop_ids and not set(s.response_ids[:-1]) & stop_ids
        assert s.text == tok.decode(s.response_ids[:-1], skip_special_tokens=True)
        assert s.n_tokens == len(s.response_ids) == len(s.token_logps)
    for s in cut:
        assert len(s.response_ids) == MAX_NEW and not set(s.response_ids) & stop_ids
        assert s.text == tok.decode(s.response_ids, skip_special_tokens=True)


def test_sample_idx_from_the_completion_index_and_global_prompt_index(fake_vllm, model_dir, prompts):
    ids, names = prompts.prompt_ids, list(range(len(PROMPTS)))
    kw = {"n": K, "max_new_tokens": MAX_NEW, "seed": 3}
    ordered = sample_vllm(str(model_dir), ids, names, **kw)
    LLM.reverse_completions = True
    shuffled = sample_vllm(str(model_dir), ids, names, **kw)
    assert [(s.prompt_index, s.sample_idx) for s in shuffled] == [(i, j) for i in names for j in range(K)]
    assert [s.response_ids for s in shuffled] == [s.response_ids for s in ordered]
    assert len({tuple(s.response_ids) for s in ordered}) > len(PROMPTS)  # children differ: the check has teeth
    # a shard (global indices 1 and 3) draws what the whole set draws for those prompts
    part = sample_vllm(str(model_dir), [ids[1], ids[3]], [1, 3], **kw)
    assert [(s.prompt_index, s.sample_idx) for s in part] == [(i, j) for i in (1, 3) for j in range(K)]
    assert [s.response_ids for s in part] == [s.response_ids for s in ordered if s.prompt_index in (1, 3)]
    assert sample_vllm(str(model_dir), [], [], **kw) == []  # an empty shard builds no LLM
    assert len(LLM.calls) == 3


def test_greedy_sends_k_copies(fake_vllm, model_dir, prompts):
    out = sample_vllm(str(model_dir), prompts.prompt_ids[:2], [0, 1], n=K, temperature=0.0, max_new_tokens=MAX_NEW)
    assert [(s.prompt_index, s.sample_idx) for s in out] == [(i, j) for i in (0, 1) for j in range(K)]
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    for i in (0, 1):
        rows = [s.response_ids for s in out if s.prompt_index == i]
        assert rows[0] == rows[1] == rows[2]
        ref = model.generate(torch.tensor([prompts.prompt_ids[i]]), do_sample=False, max_new_tokens=MAX_NEW,
                             eos_token_id=sorted(LLM(str(model_dir)).stop_ids))
        assert rows[0] == ref[0, len(prompts.prompt_ids[i]) :].tolist()


def test_backend_resolution_without_cuda(fake_vllm, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # holds on GPU machines too
    assert resolve_backend("auto") == "transformers"  # vllm importable, but no GPU
    assert resolve_backend("vllm") == "vllm"


def test_vllm_under_several_processes_is_allowed(fake_vllm, monkeypatch):
    """Several processes: one external-launcher engine per rank (or per tensor-parallel group), so vLLM is no
    longer refused, and ``auto`` picks it whenever it is installed and a GPU is there."""
    assert resolve_backend("vllm", 2) == "vllm"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_backend("auto", 1) == resolve_backend("auto", 8) == "vllm"


def test_engine_groups():
    assert [engine_groups(4, r, 1) for r in range(4)] == [(4, 0), (4, 1), (4, 2), (4, 3)]
    assert [engine_groups(4, r, 2) for r in range(4)] == [(2, 0), (2, 0), (2, 1), (2, 1)]
    with pytest.raises(ValueError, match="must divide the number of processes"):
        engine_groups(3, 0, 2)


def _launch_generate(model_dir, prompts_file, out, processes: int, tp: int, log) -> None:
    """``imitalign generate --backend vllm`` under ``accelerate launch`` (torchrun, gloo on this CPU), the vllm
    stand-in importable in the launched processes."""
    from tests.helpers import REPO
    from tests.test_distributed import _free_port

    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           str(_free_port()), "-m", "imitalign.cli", "generate", str(model_dir), str(prompts_file), "--out", str(out),
           "--k", str(K), "--max-new-tokens", str(MAX_NEW), "--seed", "5", "--temperature", "0.8", "--backend", "vllm",
           "--chat-template", "none", "--tensor-parallel-size", str(tp)]
    path = os.pathsep.join([str(REPO / "tests" / "vllm_standin"), str(REPO)])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path, TOKENIZERS_PARALLELISM="false")
    env[LOG_ENV] = str(log)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


@pytest.mark.parametrize("tp", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_vllm_engines_under_two_processes_equal_one(fake_vllm, model_dir, tmp_path, tp):
    """2 launched processes: each rank builds its own external-launcher engine (cuda:LOCAL_RANK, its own shard of
    the prompts); with tensor_parallel_size 2 both ranks form one engine and send it every prompt. Both give the
    rows of one in-process engine (per-row seeds), with exactly K per prompt. Cost: one launch (~40 s at load 8)."""
    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    from imitalign.generate.kshot import load_prompt_set

    prompt_set = load_prompt_set(str(prompts_file), AutoTokenizer.from_pretrained(model_dir), chat_template="none",
                                 max_new_tokens=MAX_NEW)
    generate_k(model_dir, prompt_set, tmp_path / "one.jsonl", backend="vllm", k=K, max_new_tokens=MAX_NEW, seed=5,
               temperature=0.8)
    one = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]
    check_k(one, len(PROMPTS), K)
    log = tmp_path / f"engines_tp{tp}.jsonl"
    _launch_generate(model_dir, prompts_file, tmp_path / f"two_tp{tp}.jsonl", 2, tp, log)
    two = [json.loads(line) for line in (tmp_path / f"two_tp{tp}.jsonl").read_text().splitlines()]
    assert [r["logp"] for r in one] == pytest.approx([r.pop("logp") for r in two], abs=1e-5)
    assert [{k: v for k, v in r.items() if k != "logp"} for r in one] == two, tp
    engines = sorted((json.loads(line) for line in log.read_text().splitlines()), key=lambda e: e["rank"])
    assert [e["rank"] for e in engines] == ["0", "1"]
    assert [e["device"] for e in engines] == ["cuda:0", "cuda:1"]  # each rank's engine on its own GPU
    for e in engines:
        assert e["kwargs"]["distributed_executor_backend"] == "external_launcher"
        assert e["kwargs"]["tensor_parallel_size"] == tp
        assert e["kwargs"]["max_model_len"] == max(map(len, prompt_set.prompt_ids)) + MAX_NEW  # the same engine
    # tp 1: the 5 prompts (K requests each at temperature > 0: one request of n = K) split 3 + 2; tp 2: all 5 twice
    assert [e["n"] for e in engines] == ([3, 2] if tp == 1 else [5, 5])
