"""Rendering and tokenising: real chat templates on the real HH-RLHF and Alpaca rows (the prompt/response
boundary round-trips, one BOS, one EOS), exact truncation lengths, and collation to the contract's batches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from imitalign.data.collate import collate_demos, collate_pairs, collate_prompts, pad_id_for
from imitalign.data.formats import parse_rows
from imitalign.data.records import DataError, DemonstrationRecord, PreferenceRecord, PromptRecord
from imitalign.data.sources import iter_rows
from imitalign.data.templates import Renderer, TemplateError, load_template, shipped_templates
from imitalign.data.tokenize import (
    TokenizedDemo,
    TokenizedPair,
    TokenizedPrompt,
    _fit,
    response_text,
    tokenize_demo,
    tokenize_pair,
    tokenize_prompt,
    tokenize_records,
)

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"  # ../shared/data/real
pytestmark = pytest.mark.skipif(not REAL.exists(), reason="../shared/data/real is absent")
TEMPLATES = REAL / "chat_templates"
HH = REAL / "hh_rlhf" / "harmless-base_test.jsonl.gz"


@pytest.fixture(scope="module")
def gpt2():
    from transformers import GPT2TokenizerFast

    return GPT2TokenizerFast.from_pretrained(str(REAL / "tokenizers" / "gpt2"))


@pytest.fixture(scope="module")
def chatml():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(REAL / "tokenizers" / "chatml_6400"))


@pytest.fixture(scope="module")
def hh_records():
    records, _ = parse_rows(iter_rows(str(HH)), warn=False)
    assert len(records) == 2303
    return records


def decode(tok, ids: list[int]) -> str:
    return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def check_round_trip(tok, renderer: Renderer, records, examples, *, eos_in_text: bool) -> None:
    """decode(prompt_ids) is the rendered prompt; decode(response_ids) the rendered response (ending at the
    EOS, with the EOS appended when the template does not write it); EOS exactly once, at the end."""
    eos = tok.eos_token_id
    for rec, ex in zip(records, examples, strict=True):
        prompt_text, texts = renderer.render_many(rec.prompt, [rec.chosen, rec.rejected])
        assert decode(tok, ex.prompt_ids) == prompt_text, rec.source
        for text, ids in zip(texts, (ex.chosen_ids, ex.rejected_ids), strict=True):
            expected = text.rstrip() if eos_in_text else text + tok.eos_token
            assert decode(tok, ids) == expected, rec.source
            assert ids[-1] == eos and ids.count(eos) == 1, rec.source


# ------------------------------------------------------------------------------------------ real HH rows


def test_hh_with_the_chatml_tokenizers_own_template(chatml, hh_records):
    renderer = Renderer(chatml, "auto")
    assert renderer.name == "the tokenizer's chat template"
    examples = [ex for ex, _ in tokenize_records(hh_records, "preference", chatml, renderer, 4096)]
    assert all(isinstance(ex, TokenizedPair) for ex in examples)  # nothing dropped at 4096 (longest is 1431)
    assert max(len(e.prompt_ids) + max(len(e.chosen_ids), len(e.rejected_ids)) for e in examples) == 1431
    # <|im_end|> is this tokenizer's eos: the template writes it (then "\n", which is dropped), nothing is added.
    check_round_trip(chatml, renderer, hh_records, examples, eos_in_text=True)
    # No BPE merge crosses the boundary: prompt_ids + response_ids is the tokenisation of the whole text.
    for rec, ex in list(zip(hh_records, examples, strict=True))[::5]:
        whole = renderer.render_full(rec.prompt, rec.chosen).rstrip()
        assert chatml(whole, add_special_tokens=False).input_ids == ex.prompt_ids + ex.chosen_ids, rec.source
    first = examples[0]
    assert first.prompt_ids[:1] == [chatml.convert_tokens_to_ids("<|im_start|>")]  # bos written once, by the template
    assert decode(chatml, first.prompt_ids).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert decode(chatml, first.chosen_ids).startswith("No, sorry!")
    assert first.chosen_ids[-1] == chatml.eos_token_id == 2


@pytest.mark.parametrize(("name", "merges", "too_long"), [("llama3", 0, 0), ("qwen2_5", 0, 0)])
def test_hh_with_real_template_files_on_the_chatml_tokenizer(chatml, hh_records, name, merges, too_long):
    records = hh_records[::6]  # 384 rows (all of them pass too; a sixth keeps the suite fast)
    renderer = Renderer(chatml, str(TEMPLATES / f"{name}.jinja"))
    results = tokenize_records(records, "preference", chatml, renderer, 4096, check_boundary=True)
    assert sum(n.boundary_merge for _, n in results) == merges
    assert sum(n.dropped is not None for _, n in results) == too_long
    eos_in_text = name == "qwen2_5"  # qwen2_5 ends a turn with <|im_end|> (eos); llama3 with <|eot_id|> (not eos)
    check_round_trip(chatml, renderer, records, [ex for ex, _ in results], eos_in_text=eos_in_text)


def test_hh_with_llama3_on_gpt2_one_bos_one_eos_and_boundary_merges(gpt2, hh_records):
    records = hh_records[::8]
    renderer = Renderer(gpt2, str(TEMPLATES / "llama3.jinja"))
    results = tokenize_records(records, "preference", gpt2, renderer, 4096, check_boundary=True)
    examples = [ex for ex, _ in results]
    # The template writes bos_token (GPT-2's is <|endoftext|>, also its eos); GPT-2 adds none: exactly one.
    assert all(ex.prompt_ids[0] == 50256 and ex.prompt_ids.count(50256) == 1 for ex in examples)
    # "<|eot_id|>" is plain text to GPT-2, so EOS is appended after it.
    check_round_trip(gpt2, renderer, records, examples, eos_in_text=False)
    assert decode(gpt2, examples[0].chosen_ids).endswith("<|eot_id|><|endoftext|>")
    # The prompt ends in "\n\n": alone one token (628), before a word two (198, 198): every row differs from
    # tokenising the whole text, and the split is the prompt's own tokenisation (as at generation time).
    assert sum(n.boundary_merge for _, n in results) == len(records)
    assert examples[0].prompt_ids[-1] == 628


@pytest.mark.parametrize("name", ["llama3_1", "llama3_2", "qwen3", "gemma", "phi3"])
def test_hh_with_the_other_real_templates(chatml, gpt2, hh_records, name):
    records = hh_records[:80]
    for tok in (chatml, gpt2):
        renderer = Renderer(tok, str(TEMPLATES / f"{name}.jinja"))
        results = tokenize_records(records, "preference", tok, renderer, 8192)
        eos_in_text = tok is chatml and name == "qwen3" or name == "phi3"  # phi3 writes eos_token itself
        check_round_trip(tok, renderer, records, [ex for ex, _ in results], eos_in_text=eos_in_text)


def test_a_template_that_breaks_the_prefix_is_named(chatml, hh_records):
    renderer = Renderer(chatml, str(TEMPLATES / "deepseekv3.jinja"))
    with pytest.raises(TemplateError) as err:
        tokenize_pair(hh_records[0], chatml, renderer, 1024)
    msg = str(err.value)
    assert msg.startswith(f"{HH}:1: chat template '{TEMPLATES / 'deepseekv3.jinja'}' breaks the prompt/response split")
    assert "<think>" in msg  # the generation prompt opens a think block the conversation does not have


def test_template_errors_are_named(chatml):
    gemma = Renderer(chatml, str(TEMPLATES / "gemma.jinja"), system_prompt="Be brief.")
    rec = DemonstrationRecord([{"role": "user", "content": "hi"}], "hello", "x.jsonl:3")
    with pytest.raises(
        TemplateError, match=r"^x.jsonl:3: chat template .*gemma.jinja' failed .*System role not supported"
    ):
        tokenize_demo(rec, chatml, gemma, 64)
    with pytest.raises(TemplateError, match="unknown chat template 'llama9'; use auto, none, one of chatml, llama3"):
        Renderer(chatml, "llama9")
    with pytest.raises(TemplateError, match="chat template file not found: missing.jinja"):
        Renderer(chatml, "missing.jinja")


def test_shipped_templates_match_the_real_ones(chatml, hh_records):
    assert shipped_templates() == ["chatml", "llama3", "qwen2_5", "zephyr"]
    system = [{"role": "system", "content": "You are terse."}]
    for name in ("llama3", "qwen2_5"):
        ours, real = Renderer(chatml, name), Renderer(chatml, str(TEMPLATES / f"{name}.jinja"))
        assert ours.name == f"chat template {name!r}"
        for rec in hh_records[::10]:
            for prompt in (rec.prompt, system + rec.prompt):
                assert ours.render_prompt(prompt) == real.render_prompt(prompt)
                assert ours.render_full(prompt, rec.chosen) == real.render_full(prompt, rec.chosen)
    # The tokenizer's own template, minus its think block, is ChatML.
    msgs = [{"role": "user", "content": "Hi"}]
    assert Renderer(chatml, "chatml").render(msgs, "Yo") == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        "Yo<|im_end|>\n",
    )
    assert "eos_token" in load_template("zephyr")


# ------------------------------------------------------------------------------------------ plain text, Alpaca


def test_alpaca_plain_gpt2_appends_exactly_one_eos(gpt2):
    renderer = Renderer(gpt2, "auto")  # GPT-2 has no chat template
    assert renderer.is_plain and renderer.name == "plain"
    for name, n in (("alpaca_tiny.json", 100), ("alpaca_en_demo.json", 999)):
        records, _ = parse_rows(iter_rows(str(REAL / "alpaca" / name)), strict=True)
        results = tokenize_records(records, "demonstration", gpt2, renderer, 4096, check_boundary=True)
        examples = [ex for ex, _ in results]
        assert len(examples) == n and all(isinstance(ex, TokenizedDemo) for ex in examples)
        assert sum(note.boundary_merge for _, note in results) == 0  # plain prompts end in one "\n": no merges
        for rec, ex in zip(records, examples, strict=True):
            assert decode(gpt2, ex.prompt_ids) == rec.prompt[0]["content"].rstrip() + "\n"
            assert 50256 not in ex.prompt_ids  # no BOS: GPT-2 adds none
            assert ex.response_ids[-1] == 50256 and ex.response_ids.count(50256) == 1
            assert decode(gpt2, ex.response_ids) == rec.response + "<|endoftext|>"
    first = examples[0]
    assert decode(gpt2, first.prompt_ids) == "Describe a process of making crepes.\n"


def test_plain_multi_turn_rendering(gpt2):
    r = Renderer(gpt2, "none", system_prompt="Be kind.")
    msgs = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
    ]
    assert r.render(msgs, "See you.") == (
        "Be kind.\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Bye\n\nAssistant:",
        " See you.",
    )
    assert Renderer(gpt2, "none").render(msgs[:1], "Hello.") == ("Hi\n", "Hello.")


def test_bos_is_added_once(gpt2):
    from transformers import GPT2TokenizerFast

    tok = GPT2TokenizerFast.from_pretrained(str(REAL / "tokenizers" / "gpt2"), add_bos_token=True)
    assert tok("Hi").input_ids[0] == tok.bos_token_id == 50256
    rec = DemonstrationRecord([{"role": "user", "content": "Hi"}], "Hello.", "x:1")
    plain, _ = tokenize_demo(rec, tok, Renderer(tok, "none"), 64)
    assert plain.prompt_ids == [50256, *gpt2("Hi\n").input_ids]  # the tokenizer's BOS, once
    templated, _ = tokenize_demo(rec, tok, Renderer(tok, "llama3"), 64)
    assert templated.prompt_ids[:2] != [50256, 50256] and templated.prompt_ids[0] == 50256  # template's BOS only


def test_eos_rule():
    class Tok:
        eos_token = "<|im_end|>"

    assert response_text(Tok, "Yo<|im_end|>\n") == ("Yo<|im_end|>", True)
    assert response_text(Tok, "Yo<|eot_id|>") == ("Yo<|eot_id|>", False)
    assert response_text(Tok, "Yo\n") == ("Yo\n", False)


# ------------------------------------------------------------------------------------------ truncation


def _pair(gpt2, prompt_words: int, chosen_words: int, rejected_words: int) -> PreferenceRecord:
    """Words " w" are one GPT-2 token each; with the plain template the prompt is "p w w …\\n"."""
    prompt = "p" + " w" * (prompt_words - 1)
    rec = PreferenceRecord(
        [{"role": "user", "content": prompt}], "c" + " w" * (chosen_words - 1), "r" + " w" * (rejected_words - 1), "x:1"
    )
    ex, note = tokenize_pair(rec, gpt2, Renderer(gpt2, "none"), 10_000)
    # prompt: the words and "\n"; responses: the words and EOS.
    assert (len(ex.prompt_ids), len(ex.chosen_ids), len(ex.rejected_ids)) == (
        prompt_words + 1,
        chosen_words + 1,
        rejected_words + 1,
    )
    assert not note.truncated
    return rec


def test_truncation_cuts_the_prompt_from_the_left_first(gpt2):
    rec = _pair(gpt2, 19, 9, 5)  # prompt 20, chosen 10, rejected 6 tokens
    full, _ = tokenize_pair(rec, gpt2, Renderer(gpt2, "none"), 10_000)
    ex, note = tokenize_pair(rec, gpt2, Renderer(gpt2, "none"), 25)
    assert (len(ex.prompt_ids), len(ex.chosen_ids), len(ex.rejected_ids)) == (15, 10, 6)
    assert ex.prompt_ids == full.prompt_ids[-15:] and ex.chosen_ids == full.chosen_ids
    assert (note.prompt_cut, note.response_cut, note.dropped) == (5, 0, None)


def test_truncation_then_cuts_responses_from_the_right(gpt2):
    rec = _pair(gpt2, 19, 29, 5)  # prompt 20, chosen 30, rejected 6
    full, _ = tokenize_pair(rec, gpt2, Renderer(gpt2, "none"), 10_000)
    ex, note = tokenize_pair(rec, gpt2, Renderer(gpt2, "none"), 24)
    # The prompt is cut no further than max_length // 2 = 12 tokens, then chosen is cut to the 12 left.
    assert (len(ex.prompt_ids), len(ex.chosen_ids), len(ex.rejected_ids)) == (12, 12, 6)
    assert ex.prompt_ids == full.prompt_ids[-12:]
    assert ex.chosen_ids == full.chosen_ids[:12] and ex.chosen_ids[-1] != gpt2.eos_token_id  # cut: no EOS
    assert ex.rejected_ids == full.rejected_ids
    assert (note.prompt_cut, note.response_cut) == (8, 18)


def test_max_prompt_length_caps_the_prompt_and_floors_the_cut(gpt2):
    rec = _pair(gpt2, 19, 29, 5)
    renderer = Renderer(gpt2, "none")
    ex, note = tokenize_pair(rec, gpt2, renderer, 100, max_prompt_length=8)  # fits, but the cap applies
    assert (len(ex.prompt_ids), len(ex.chosen_ids), note.prompt_cut) == (8, 30, 12)
    ex, note = tokenize_pair(rec, gpt2, renderer, 40, max_prompt_length=16)
    assert (len(ex.prompt_ids), len(ex.chosen_ids), len(ex.rejected_ids)) == (16, 24, 6)


def test_prompt_longer_than_max_length_is_dropped(gpt2):
    rec = _pair(gpt2, 19, 9, 5)
    renderer = Renderer(gpt2, "none")
    for max_length, max_prompt_length in ((20, None), (18, None), (18, 30)):
        ex, note = tokenize_pair(rec, gpt2, renderer, max_length, max_prompt_length)
        assert ex is None and note.dropped == "prompt_too_long" and note.prompt_tokens == 20
    ex, note = tokenize_pair(rec, gpt2, renderer, 18, max_prompt_length=10)  # the cap keeps its end instead
    assert (len(ex.prompt_ids), len(ex.chosen_ids)) == (10, 8)


def test_fit_counts_empty_responses_and_cut_responses():
    def shrink(n: int, inside: bool) -> None:  # a prompt that cannot be shortened
        return None

    _, _, note = _fit([1, 10], [[20, 2], []], 8, None, shrink)
    assert note.dropped == "no_response_left"
    # both responses of a pair cut: counted as two responses in one row
    _, (c, r), note = _fit([1, 10, 11, 12], [[20, 21, 22, 23, 2], [30, 31, 32, 33, 34, 2]], 8, None, shrink)
    assert (len(c), len(r), note.responses_cut, note.prompt_cut) == (4, 4, 2, 0)


def test_prompts_for_generation(chatml):
    rec = PromptRecord([{"role": "user", "content": "Hi"}], "x:1")
    ex, note = tokenize_prompt(rec, chatml, Renderer(chatml, "chatml"), 64)
    assert isinstance(ex, TokenizedPrompt)
    assert decode(chatml, ex.prompt_ids) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    # a cap shorter than the role headers cannot keep a well-formed prompt: the row is dropped, not cut mid-header
    ex, note = tokenize_prompt(rec, chatml, Renderer(chatml, "chatml"), 64, max_prompt_length=3)
    assert ex is None and note.dropped == "prompt_too_long"
    assert tokenize_prompt(rec, chatml, Renderer(chatml, "chatml"), 4)[1].dropped == "prompt_too_long"
    with pytest.raises(DataError, match="needs a PreferenceRecord"):
        tokenize_pair(DemonstrationRecord([], "r", "x:2"), chatml, Renderer(chatml), 64)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ collation


def test_collate_pairs_layout():
    items = [TokenizedPair([5, 6, 7], [8, 9], [10], "a"), TokenizedPair([11], [12, 13, 14, 15], [16, 17], "b")]
    batch = collate_pairs(items, pad_id=0)
    assert set(batch) == {"input_ids", "attention_mask", "response_mask"}
    assert batch["input_ids"].dtype == torch.long and batch["attention_mask"].dtype == torch.long
    assert batch["response_mask"].dtype == torch.bool
    assert batch["input_ids"].tolist() == [
        [5, 6, 7, 8, 9],  # chosen of pair 0
        [11, 12, 13, 14, 15],  # chosen of pair 1
        [5, 6, 7, 10, 0],  # rejected of pair 0
        [11, 16, 17, 0, 0],  # rejected of pair 1
    ]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]
    assert batch["response_mask"].int().tolist() == [[0, 0, 0, 1, 1], [0, 1, 1, 1, 1], [0, 0, 0, 1, 0], [0, 1, 1, 0, 0]]
    padded = collate_pairs(items, pad_id=99, pad_to_multiple_of=8)
    assert padded["input_ids"].shape == (4, 8) and padded["input_ids"][2, 4:].tolist() == [99] * 4
    assert padded["response_mask"][:, 5:].sum() == 0


def test_collate_demos_and_prompts(gpt2):
    demos = [TokenizedDemo([1, 2], [3], "a"), TokenizedDemo([4], [5, 6, 7], "b")]
    batch = collate_demos(demos, pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 0], [4, 5, 6, 7]]
    assert batch["response_mask"].int().tolist() == [[0, 0, 1, 0], [0, 1, 1, 1]]
    prompts = collate_prompts([TokenizedPrompt([1, 2, 3], "a"), TokenizedPrompt([4], "b")], pad_id=0)
    assert prompts["input_ids"].tolist() == [[1, 2, 3], [0, 0, 4]]  # left padding for generation
    assert prompts["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert pad_id_for(gpt2) == 50256  # no pad token: eos
    with pytest.raises(ValueError, match="empty batch"):
        collate_demos([], 0)
