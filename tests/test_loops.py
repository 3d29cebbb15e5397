"""Pairing, rejection-sampling acceptance, exact K-sample sharding and the K checks of the online loops."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from imitalign.generate.kshot import PromptSet, check_k, rows_of, sample_shard, shard
from imitalign.gym.tokenizer import build_tokenizer
from imitalign.loops.pairs import make_pairs
from imitalign.loops.rejection import accept, acceptance_probs, incremental_etas
from imitalign.loops.scoring import check_samples
from tests.helpers import REPO, tiny_llama


def rows(prompt_index: int, scores: list[float], responses: list[str] | None = None, n_tokens=None):
    responses = responses or [f"resp{j}" for j in range(len(scores))]
    return [
        {"prompt": f"p{prompt_index}", "response": r, "score": s, "prompt_index": prompt_index, "sample_idx": j,
         "n_tokens": (n_tokens[j] if n_tokens else 3)}
        for j, (s, r) in enumerate(zip(scores, responses, strict=True))
    ]


# ------------------------------------------------------------------------------------------ pairing
def test_max_min_pairs_best_and_worst_and_counts_drops():
    data = (
        rows(0, [0.2, 0.9, 0.5, 0.1])  # → (1, 3)
        + rows(1, [0.4, 0.4, 0.4, 0.4])  # all alike → all_tied
        + rows(2, [0.3, 0.8, 0.0, 0.6], responses=["a", "b", "  ", ""])  # 2 empty dropped → (1, 0)
        + rows(3, [0.5, 0.7, 0.1, 0.2], responses=["", "x", "", ""])  # one left → too_few
        + rows(4, [0.7, 0.2, 0.7, 0.2])  # argmax/argmin ties → lowest sample_idx: (0, 1)
    )
    pairs, st = make_pairs(data, mode="max_min", tie_eps=1e-6)
    got = [(p["prompt_index"], p["chosen_sample_idx"], p["rejected_sample_idx"]) for p in pairs]
    assert got == [(0, 1, 3), (2, 1, 0), (4, 0, 1)]
    assert pairs[0]["chosen"] == "resp1" and pairs[0]["rejected"] == "resp3"
    assert (pairs[0]["chosen_score"], pairs[0]["rejected_score"]) == (0.9, 0.1)
    assert st.prompts == 5 and st.samples == 20 and st.pairs == 3
    assert dict(st.dropped) == {"all_tied": 1, "too_few": 1}
    assert st.empty_responses == 2 + 3


def test_tie_epsilon_length_penalty_and_random_modes():
    near = rows(0, [0.50, 0.505, 0.502])
    assert make_pairs(near, tie_eps=0.01)[1].dropped["all_tied"] == 1
    assert make_pairs(near, tie_eps=0.001)[1].pairs == 1
    # length penalty, score − α·tokens: 0.9 − 0.8 = 0.1, 0.6 − 0.2 = 0.4, 0.3 − 0.1 = 0.2 → best 1, worst 0
    long = rows(0, [0.9, 0.6, 0.3], n_tokens=[8, 2, 1])
    p, _ = make_pairs(long, length_penalty=0.1)
    assert (p[0]["chosen_sample_idx"], p[0]["rejected_sample_idx"]) == (1, 0)
    assert p[0]["chosen_score"] == 0.6  # the raw reward is kept
    # max_random: the best against another sample; random: any two, higher one chosen; both seeded
    data = [r for i in range(40) for r in rows(i, [0.1, 0.9, 0.3, 0.6])]
    mr, _ = make_pairs(data, mode="max_random", seed=1)
    assert all(q["chosen_sample_idx"] == 1 and q["rejected_sample_idx"] in (0, 2, 3) for q in mr)
    assert {q["rejected_sample_idx"] for q in mr} == {0, 2, 3}
    rnd, _ = make_pairs(data, mode="random", seed=1)
    assert all(q["chosen_score"] > q["rejected_score"] for q in rnd)
    assert len({(q["chosen_sample_idx"], q["rejected_sample_idx"]) for q in rnd}) > 3
    assert make_pairs(data, mode="random", seed=1)[0] == rnd  # deterministic
    assert make_pairs(list(reversed(data)), mode="random", seed=1)[0][0] in rnd  # order-free draws
    ties, st = make_pairs(rows(0, [0.5, 0.5]), mode="random")
    assert not ties and st.dropped["tie"] == 1
    with pytest.raises(ValueError, match="unknown pairing mode"):
        make_pairs(data, mode="best")
    with pytest.raises(ValueError, match="no 'score' column"):
        make_pairs([{"prompt": "p", "response": "r"}, {"prompt": "p", "response": "s"}])


# ------------------------------------------------------------------------------------------ rejection
def test_acceptance_equals_the_formula_and_its_limits():
    scores = [1.0, 0.5, 0.0, 0.9]
    eta = 0.5
    probs = acceptance_probs(scores, eta)
    assert probs == pytest.approx([1.0, math.exp(-1.0), math.exp(-2.0), math.exp(-0.2)])
    assert probs[1] == pytest.approx(0.36787944)
    assert acceptance_probs(scores, float("inf")) == [1.0] * 4
    assert acceptance_probs(scores, 0.0) == [1.0, 0.0, 0.0, 0.0]
    assert acceptance_probs(scores, 1e-9) == pytest.approx([1.0, 0.0, 0.0, 0.0])

    data = [r for i in range(200) for r in rows(i, [1.0, 0.5, 0.0, 0.9])]
    all_kept, st = accept(data, eta=1e12)
    assert len(all_kept) == 800 and st["accepted"] == 800
    best, _ = accept(data, eta=1e-9)
    assert len(best) == 200 and all(r["sample_idx"] == 0 for r in best)
    bon, _ = accept(data, eta=123.0, method="best_of_n")
    assert [r["sample_idx"] for r in bon] == [0] * 200
    kept, st = accept(data, eta=eta, seed=3)
    rate = {j: sum(r["sample_idx"] == j for r in kept) / 200 for j in range(4)}
    for j, p in enumerate(probs):  # empirical acceptance within 4 standard errors of the formula
        assert abs(rate[j] - p) <= 4 * math.sqrt(p * (1 - p) / 200) + 1e-9, (j, rate[j], p)
    assert st["mean_accept_prob"] == pytest.approx(sum(probs) / 4)
    assert accept(data, eta=eta, seed=3)[0] == kept  # seeded
    empty, _ = accept(rows(0, [5.0, 1.0], responses=["", "x"]), eta=1e-9)
    assert [r["response"] for r in empty] == ["x"]  # an empty response is never accepted


def test_incremental_etas_compose_to_the_target_tilt():
    etas = [4.0, 2.0, 1.0]
    inc = incremental_etas(etas)
    assert inc == pytest.approx([4.0, 4.0, 2.0])
    assert sum(1 / e for e in inc) == pytest.approx(1 / etas[-1])  # π_0·e^{r/4}·e^{r/4}·e^{r/2} = π_0·e^{r/1}
    with pytest.raises(ValueError, match="strictly decrease"):
        incremental_etas([1.0, 2.0])


# ------------------------------------------------------------------------------------------ K and shards
def test_shards_partition_the_prompts_exactly():
    for n in (0, 1, 7, 13):
        for world in (1, 2, 3, 8):
            parts = [shard(n, world, r) for r in range(world)]
            flat = sorted(i for p in parts for i in p)
            assert flat == list(range(n))  # no dropped tail, no duplicate
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def _prompt_set(n: int) -> PromptSet:
    tok = build_tokenizer()
    prompts = [f"write about sea and forest , {['short', 'medium', 'long'][i % 3]} =>" for i in range(n)]
    ids = [tok(p)["input_ids"] for p in prompts]
    return PromptSet(prompts, ids, [{"id": i} for i in range(n)], [f"f:{i}" for i in range(n)])


def test_two_shards_of_an_odd_prompt_set_give_exactly_k_each_and_match_one_process():
    tok = build_tokenizer()
    model = tiny_llama(len(tok))
    ps, k = _prompt_set(7), 3
    kw = {"k": k, "max_new_tokens": 5, "seed": 11, "batch_size": 4}
    merged = []
    for rank in range(2):
        merged += rows_of(ps, sample_shard(model, tok, ps, shard(len(ps), 2, rank), **kw))
    merged.sort(key=lambda r: (r["prompt_index"], r["sample_idx"]))
    check_k(merged, 7, k)
    assert len(merged) == 21
    single = rows_of(ps, sample_shard(model, tok, ps, list(range(7)), **kw))
    assert [r["response"] for r in merged] == [r["response"] for r in single]  # global row seeds
    assert merged[5]["id"] == 1  # the prompt row's other columns are kept


def test_k_checks_name_the_problem():
    good = [r for i in range(3) for r in rows(i, [0.0] * 4)]
    check_samples(good, 4)
    with pytest.raises(ValueError, match="is not K = 3 per prompt"):
        check_samples(good, 3)
    with pytest.raises(ValueError, match="prompt 1 has samples \\[0, 1, 1, 3\\]"):
        check_k([dict(r, sample_idx=1) if r["prompt_index"] == 1 and r["sample_idx"] == 2 else r for r in good], 3, 4)
    with pytest.raises(ValueError, match="prompt 2 has samples \\[\\]"):
        check_k(good[:8], 3, 4)
    with pytest.raises(ValueError, match="needs 'prompt' and 'response'"):
        check_samples([{"prompt": "p"}], None)


def test_generate_under_accelerate_launch_with_two_processes(tmp_path):
    """Two real processes (torchrun under ``accelerate launch --multi_gpu``; gloo on a CPU-only machine), 7
    prompts, K = 3: every prompt exactly 3 samples, once, and the same rows as one process."""
    tok = build_tokenizer()
    model = tiny_llama(len(tok))
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in _prompt_set(7).prompts))
    out = tmp_path / "samples.jsonl"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "imitalign.cli",
           "generate", str(tmp_path / "model"), str(prompts), "--out", str(out), "--k", "3",
           "--max-new-tokens", "5", "--chat-template", "none", "--seed", "11"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = [json.loads(line) for line in out.read_text().splitlines()]
    check_k(got, 7, 3)
    assert len(got) == 21 and not list(tmp_path.glob("samples.jsonl.shard*"))
    single = rows_of(_prompt_set(7), sample_shard(model, tok, _prompt_set(7), list(range(7)), k=3,
                                                   max_new_tokens=5, seed=11))
    assert [r["response"] for r in got] == [r["response"] for r in single]


def test_backend_choice():
    import importlib.util

    from imitalign.generate.kshot import resolve_backend

    assert resolve_backend("transformers") == "transformers"
    if importlib.util.find_spec("vllm") is None:
        assert resolve_backend("auto") == "transformers"
        with pytest.raises(ValueError, match="needs the vllm package"):
            resolve_backend("vllm")
    with pytest.raises(ValueError, match="unknown generation backend"):
        resolve_backend("tgi")
