"""The README's Python examples ("From Python") run as written, in order, in one namespace (a few seconds)."""

from __future__ import annotations

import math
import re

import pytest

from imitalign.objectives import registry
from tests.helpers import REPO


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_public_api_names_and_cheap_import() -> None:
    import subprocess
    import sys

    import imitalign
    import imitalign.eval.evaluate
    import imitalign.generate.sampler
    import imitalign.loops.iterate
    import imitalign.train.loop
    from imitalign import Config, evaluate, generate, iterate, objectives, train

    code = "import sys, imitalign; assert 'torch' not in sys.modules, 'import imitalign loaded torch'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    assert callable(train) and callable(generate) and train is imitalign.train  # callable packages
    assert (train.__call_module__, train.__call_name__) == ("imitalign.train.loop", "train")
    assert (generate.__call_module__, generate.__call_name__) == ("imitalign.generate.sampler", "generate")
    assert iterate is imitalign.loops.iterate.iterate and evaluate is imitalign.eval.evaluate.evaluate_model
    assert Config is imitalign.config.Config and objectives.get("dil_lsif").kind == "pair"


def test_readme_python_examples_run(tmp_path, monkeypatch, capsys) -> None:
    blocks = python_blocks((REPO / "README.md").read_text())
    assert len(blocks) == 3, "the README's From Python section has three examples"
    monkeypatch.chdir(tmp_path)
    ns: dict = {"__name__": "readme"}
    try:
        for block in blocks:
            exec(compile(block, "README.md", "exec"), ns)
    finally:
        registry._REGISTRY.pop("dil_alpha_half", None)
    # (a) trained from a config built in code: 4 steps, a model folder transformers loads
    assert ns["result"].steps == 4 and (ns["result"].model_dir / "model.safetensors").is_file()
    # (b) the plain loop learns the pairs: chosen tokens (0..24) above rejected ones (25..49)
    assert float(ns["metrics"]["accuracy"]) == 1.0
    z = ns["logits"].detach()
    assert float(z[:25].min()) > float(z[25:].max())
    # (c) the registered generator trained through the loop, with a finite loss
    out = capsys.readouterr().out.splitlines()
    assert math.isfinite(float(out[-1]))
    assert "dil_alpha_half" not in registry.names()
    # generate(model folder, prompts) = the sampler's rows of the loaded model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from imitalign import generate
    from imitalign.generate.sampler import encode_prompts, sample, sample_rows

    prompts = ["write about sea , short =>", "write about food , short =>"]
    rows = generate(ns["result"].model_dir, prompts, n=2, max_new_tokens=5, seed=3)
    model = AutoModelForCausalLM.from_pretrained(ns["result"].model_dir)
    tok = AutoTokenizer.from_pretrained(ns["result"].model_dir)
    assert rows == sample_rows(prompts, sample(model, tok, encode_prompts(tok, prompts), n=2, max_new_tokens=5, seed=3))
    assert [r["prompt_index"] for r in rows] == [0, 0, 1, 1]


def test_python_blocks_extracts_fenced_code() -> None:
    text = "a\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny = 2\n```\n"
    assert python_blocks(text) == ["x = 1\n", "y = 2\n"]
    with pytest.raises(ZeroDivisionError):
        exec(python_blocks("```python\n1 / 0\n```")[0], {})
