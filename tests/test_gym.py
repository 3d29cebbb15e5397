"""The gym: gold reward on hand-made strings, processes, tokenizer, and the dataset builders."""

from __future__ import annotations

import json
import math
import random
import statistics

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from imitalign.gym.build import (
    GymConfig,
    build_gym,
    build_preferences,
    gold_rewards,
    gym_fingerprint,
    make_preference_pairs,
    prompt_rows,
    read_jsonl,
    split_prompts,
)
from imitalign.gym.task import (
    FILLER,
    STYLE,
    TOPICS,
    all_prompts,
    base_response,
    expert_response,
    gold_reward,
    parse_prompt,
    reward_terms,
    strip_style,
    stylize,
    vocabulary,
)
from imitalign.gym.tokenizer import SPECIAL_TOKENS, build_tokenizer, save_tokenizer, tiny_llama_config

SHORT = "write about sea and forest , short =>"  # L = 6, k = 2
SMALL = GymConfig(n_sft=300, n_expert=60, n_pref_prompts=40, n_online_prompts=30, n_eval_prompts=20)


# ------------------------------------------------------------------------------------------ gold reward
def test_parse_prompt_templates():
    spec = parse_prompt("a long text on art and farm =>")
    assert spec.topics == ("art", "farm") and (spec.length, spec.k) == (14, 4)
    assert parse_prompt(SHORT).topics == ("sea", "forest")
    with pytest.raises(ValueError, match="not a gym prompt"):
        parse_prompt("hello there")


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        # 4 distinct on-topic words (2 per topic), 6 words, final "." -> every term is 1
        ("wave boat tree moss the a .", 1.0),
        # n = 5: len = 1 − 1/6
        ("wave boat tree moss the .", 0.35 + 0.25 + 0.15 + 0.15 * 5 / 6 + 0.10),
        # no final "."
        ("wave boat tree moss the a", 0.90),
        # C = [wave, wave, star]: on = u = 2/3, cov = (1/2 + 0)/2, n = 3: len = 1/2
        ("wave wave star .", 0.35 * 0.25 + 0.25 * 2 / 3 + 0.15 * 2 / 3 + 0.15 * 0.5 + 0.10),
        # only filler: cov = on = u = 0, n = 6 -> len = 1; no end
        ("the a and with of in", 0.15),
        # n = 14: len = max(0, 1 − 8/6) = 0; C = [wave, tree] distinct and on-topic; cov = 1/2
        ("wave tree " + "the " * 12 + ".", 0.35 * 0.5 + 0.25 + 0.15 + 0.0 + 0.10),
        ("", 0.0),
        (".", 0.10),
    ],
)
def test_gold_reward_exact_values(response, expected):
    assert gold_reward(SHORT, response) == pytest.approx(expected, abs=1e-12)


def test_gold_reward_terms_and_style_invariance():
    terms = reward_terms(SHORT, "wave star star .")
    assert terms == pytest.approx({"cov": 0.25, "on": 1 / 3, "u": 2 / 3, "len": 0.5, "end": 1.0})
    plain = "wave boat tree moss the ."
    styled = "indeed wave truly boat tree surely moss the . "
    assert gold_reward(SHORT, styled) == gold_reward(SHORT, plain)
    assert strip_style(styled) == plain
    # a style word after the final "." does not hide the ending
    assert gold_reward(SHORT, plain + " frankly") == gold_reward(SHORT, plain)


def test_gold_rewards_batched_and_message_prompts():
    rows = [{"prompt": SHORT, "response": "wave boat tree moss the a ."},
            {"prompt": [{"role": "user", "content": SHORT}], "response": ""}]
    assert gold_rewards(rows) == [1.0, 0.0]


def test_gold_reward_bounded_on_random_strings():
    rng = random.Random(0)
    words = vocabulary()
    for _ in range(500):
        y = " ".join(rng.choice(words) for _ in range(rng.randint(0, 30)))
        assert 0.0 <= gold_reward(SHORT, y) <= 1.0


# ------------------------------------------------------------------------------------------ processes
def _golds(process, n=2000, seed=0):
    rng = random.Random(seed)
    prompts = all_prompts()
    out = []
    for _ in range(n):
        p = rng.choice(prompts)
        out.append(gold_reward(p, process(p, rng)))
    return out


def test_expert_beats_base_process_and_base_is_spread():
    base, expert = _golds(base_response), _golds(expert_response)
    mb, sb = statistics.fmean(base), statistics.stdev(base)
    me = statistics.fmean(expert)
    assert 0.4 < mb < 0.7 and sb > 0.12  # middling, wide: room for preference learning
    assert me > 0.98 and me > mb + 10 * sb / math.sqrt(len(base))


def test_expert_has_many_distinct_good_answers():
    rng = random.Random(1)
    answers = {expert_response(SHORT, rng) for _ in range(200)}
    assert len(answers) > 190
    assert all(gold_reward(SHORT, a) > 0.95 for a in answers)


def test_style_shift_leaves_gold_unchanged():
    config = SMALL.model_copy(update={"n_expert": 300})
    from imitalign.gym.build import expert_rows

    plain, styled = expert_rows(config), expert_rows(config, styled=True)
    assert [strip_style(s["response"]) for s in styled] == [p["response"] for p in plain]
    assert [s["gold"] for s in styled] == [p["gold"] for p in plain]  # same gold distribution, row by row
    n_style = sum(w in STYLE for s in styled for w in s["response"].split())
    n_content = sum(w not in FILLER and w != "." for p in plain for w in p["response"].split())
    assert 0.25 < n_style / n_content < 0.5  # style_rate 0.35 per content word (+ openers)


def test_stylize_rate_zero_is_identity():
    y = expert_response(SHORT, random.Random(0))
    assert stylize(y, random.Random(0), 0.0) == y


# ------------------------------------------------------------------------------------------ tokenizer
def test_tokenizer_round_trip_and_autotokenizer(tmp_path):
    tok = build_tokenizer()
    assert [tok.convert_ids_to_tokens(i) for i in range(4)] == list(SPECIAL_TOKENS)
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    text = " ".join(vocabulary())
    ids = tok(text)["input_ids"]
    assert len(ids) == len(vocabulary()) and 3 not in ids  # one token per word, none unknown
    assert tok.decode(ids) == text
    save_tokenizer(tmp_path / "tok")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert loaded(text)["input_ids"] == ids and loaded.decode(ids) == text
    assert loaded.eos_token_id == 2 and loaded.pad_token_id == 0 and not getattr(loaded, "chat_template", None)
    assert loaded("zebra sea")["input_ids"] == [3, tok.convert_tokens_to_ids("sea")]
    # no special tokens added by encoding; prompt + response concatenate cleanly (the data layer's rendering)
    prompt, response = SHORT, "wave boat ."
    assert loaded(prompt + "\n" + response)["input_ids"] == loaded(prompt)["input_ids"] + loaded(response)["input_ids"]
    assert loaded.decode(loaded(response)["input_ids"] + [2], skip_special_tokens=True) == response


def test_tiny_llama_config_builds_a_model():
    cfg = tiny_llama_config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    assert cfg.pop("model_type") == "llama" and cfg["vocab_size"] == len(build_tokenizer())
    model = LlamaForCausalLM(LlamaConfig(**cfg))
    logits = model(torch.tensor([[1, 5, 9]])).logits
    assert logits.shape == (1, 3, cfg["vocab_size"])


# ------------------------------------------------------------------------------------------ builders
def test_prompt_split_is_disjoint_and_seeded():
    train, heldout = split_prompts(SMALL)
    assert not set(train) & set(heldout) and len(train) + len(heldout) == len(all_prompts())
    assert split_prompts(SMALL) == (train, heldout)
    assert split_prompts(SMALL.model_copy(update={"seed": 1}))[1] != heldout
    assert {r["prompt"] for r in prompt_rows(SMALL, "eval")} <= set(heldout)
    assert {r["prompt"] for r in prompt_rows(SMALL, "online")} <= set(train)
    few = GymConfig(n_topics=3)
    assert all(set(parse_prompt(p).topics) <= set(list(TOPICS)[:3]) for p in all_prompts(3))
    assert len(prompt_rows(few.model_copy(update={"n_eval_prompts": 50}), "eval")) == 50  # cycles a small pool


def test_build_gym_files_columns_and_determinism(tmp_path):
    a = build_gym(SMALL, tmp_path / "a")
    b = build_gym(SMALL, tmp_path / "b")
    for name in ("sft.jsonl", "expert.jsonl", "expert_style.jsonl", "pref_prompts.jsonl", "online_prompts.jsonl",
                 "eval_prompts.jsonl"):
        assert (a.root / name).read_bytes() == (b.root / name).read_bytes(), name
    sft = read_jsonl(a.sft)
    assert len(sft) == 300 and set(sft[0]) == {"prompt", "response", "gold"}
    assert all(r["gold"] == gold_reward(r["prompt"], r["response"]) for r in sft)
    assert set(read_jsonl(a.expert_style)[0]) == {"prompt", "response", "gold", "plain"}
    for path, n in ((a.pref_prompts, 40), (a.online_prompts, 30), (a.eval_prompts, 20)):
        rows = read_jsonl(path)
        assert len(rows) == n and all(set(r) == {"prompt"} for r in rows)
    train_prompts = {r["prompt"] for r in sft} | {r["prompt"] for r in read_jsonl(a.expert)}
    assert not train_prompts & {r["prompt"] for r in read_jsonl(a.eval_prompts)}
    manifest = json.loads(a.manifest.read_text())
    assert manifest["fingerprint"] == gym_fingerprint(SMALL) and manifest["gold"]["expert"]["mean"] > 0.95
    assert AutoTokenizer.from_pretrained(a.tokenizer).eos_token_id == 2
    other = build_gym(SMALL.model_copy(update={"seed": 1}), tmp_path / "c")
    assert other.sft.read_bytes() != a.sft.read_bytes()
    # changing one split's size leaves the others as they were
    bigger = build_gym(SMALL.model_copy(update={"n_expert": 61}), tmp_path / "d")
    assert bigger.sft.read_bytes() == a.sft.read_bytes()


def test_build_gym_is_cached_by_fingerprint(tmp_path):
    files = build_gym(SMALL, tmp_path)
    stamp = files.sft.stat().st_mtime_ns
    assert build_gym(SMALL, tmp_path).sft.stat().st_mtime_ns == stamp
    changed = SMALL.model_copy(update={"n_sft": 10})
    assert gym_fingerprint(changed) != gym_fingerprint(SMALL)
    assert len(read_jsonl(build_gym(changed, tmp_path).sft)) == 10
    with pytest.raises(ValueError):
        GymConfig(n_sft=-1)
    with pytest.raises(ValueError):
        GymConfig(unknown_field=1)


def test_written_files_parse_with_the_data_layer(tmp_path):
    """The core loader reads every gym file in auto format, with nothing skipped."""
    from imitalign.data.formats import parse_rows
    from imitalign.data.sources import iter_rows

    files = build_gym(SMALL, tmp_path)
    paths = build_preferences(_samples(n_prompts=20), SMALL, tmp_path)
    expected = {files.sft: ("demonstration", 300), files.expert_style: ("demonstration", 60),
                files.eval_prompts: ("prompt", 20), paths["prefs"]: ("preference", 18)}
    for path, (fmt, n) in expected.items():
        records, stats = parse_rows(iter_rows(str(path)), "auto", strict=True)
        assert (stats.format, len(records)) == (fmt, n), path.name
    record = parse_rows(iter_rows(str(paths["prefs"])), strict=True)[0][0]
    assert record.prompt[-1]["role"] == "user" and "chosen_gold" in record.extra


# ------------------------------------------------------------------------------------------ preferences
def _samples(n_prompts=30, k=4, seed=0):
    rng = random.Random(seed)
    prompts = all_prompts()[:n_prompts]
    return [{"prompt": p, "response": base_response(p, rng), "prompt_index": i, "sample_idx": j}
            for i, p in enumerate(prompts) for j in range(k)]


def test_preference_pairs_bradley_terry_labels():
    rows = _samples()
    exact = make_preference_pairs(rows, bt_temperature=0.0, pairs_per_prompt=3)
    assert len(exact) == 90
    assert set(exact[0]) == {"prompt", "chosen", "rejected", "chosen_gold", "rejected_gold", "p_chosen"}
    assert all(p["chosen_gold"] >= p["rejected_gold"] for p in exact)
    assert all(p["chosen"] != p["rejected"] for p in exact)
    assert all(p["chosen_gold"] == gold_reward(p["prompt"], p["chosen"]) for p in exact)
    assert make_preference_pairs(rows, bt_temperature=0.0, pairs_per_prompt=3) == exact  # deterministic
    flipped = make_preference_pairs(rows * 1, bt_temperature=0.0, label_noise=0.5, pairs_per_prompt=6, seed=3)
    wrong = sum(p["chosen_gold"] < p["rejected_gold"] for p in flipped)
    assert 0.3 < wrong / len(flipped) < 0.7
    soft = make_preference_pairs(rows, bt_temperature=0.05, pairs_per_prompt=6)
    for p in soft:
        z = (p["chosen_gold"] - p["rejected_gold"]) / 0.05
        assert p["p_chosen"] == pytest.approx(1 / (1 + math.exp(-z)))


def test_preference_pairs_skip_duplicates_and_single_responses():
    rows = [{"prompt": SHORT, "response": "wave ."}, {"prompt": SHORT, "response": "wave ."},
            {"prompt": "describe city and art , long =>", "response": "bus ."}]
    assert make_preference_pairs(rows) == []
    rows.append({"prompt": SHORT, "response": "wave boat tree moss the a ."})
    (pair,) = make_preference_pairs(rows, bt_temperature=0.0)
    assert pair["chosen"] == "wave boat tree moss the a ."


def test_build_preferences_writes_disjoint_splits(tmp_path):
    config = SMALL.model_copy(update={"pref_heldout_fraction": 0.2, "pairs_per_prompt": 2})
    paths = build_preferences(_samples(n_prompts=40), config, tmp_path)
    train, heldout = read_jsonl(paths["prefs"]), read_jsonl(paths["prefs_heldout"])
    assert len(train) + len(heldout) == 80 and len(heldout) == 16
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in heldout}
    again = build_preferences(_samples(n_prompts=40), config, tmp_path / "again")
    assert again["prefs"].read_bytes() == paths["prefs"].read_bytes()
