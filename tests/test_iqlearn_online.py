"""Online IQLearn (a share α of the policy's own samples in the TD term): hand-computed numbers, α = 0 is the
offline objective exactly, bad α is a clear error."""

from __future__ import annotations

import math

import pytest
import torch

from imitalign import objectives

# Demonstrations: A has 3 response tokens, B has 1 (then junk padding).
LOGPS = [[-1.0, -2.0, -0.5], [-3.0, math.nan, -math.inf]]
VALUES = [[0.3, 0.7, -0.2], [1.1, 5.0, math.nan]]
MASK = [[True, True, True], [True, False, False]]
# The policy's own samples: C has 2 response tokens, D has 1.
P_LOGPS = [[-0.4, -1.5], [-2.5, 7.0]]
P_VALUES = [[0.2, 0.9], [0.6, math.inf]]
P_MASK = [[True, True], [True, False]]
LAM, GAMMA = 0.5, 0.9


def demo(requires_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.tensor(LOGPS, dtype=torch.float64, requires_grad=requires_grad),
        torch.tensor(MASK),
        torch.tensor(VALUES, dtype=torch.float64, requires_grad=requires_grad),
    )


def own(requires_grad: bool = False) -> dict[str, torch.Tensor]:
    return {
        "policy_token_logps": torch.tensor(P_LOGPS, dtype=torch.float64, requires_grad=requires_grad),
        "policy_token_mask": torch.tensor(P_MASK),
        "policy_token_values": torch.tensor(P_VALUES, dtype=torch.float64, requires_grad=requires_grad),
    }


def test_alpha_zero_with_own_samples_equals_offline_iqlearn_exactly() -> None:
    logps, mask, values = demo(requires_grad=True)
    offline, m_off = objectives.iqlearn(logps, mask, values, lam=LAM, gamma=GAMMA)
    offline.sum().backward()
    g_logps, g_values = logps.grad.clone(), values.grad.clone()

    logps2, mask2, values2 = demo(requires_grad=True)
    policy = own(requires_grad=True)
    online, m_on = objectives.iqlearn(logps2, mask2, values2, lam=LAM, gamma=GAMMA, alpha=0.0, **policy)
    assert online.shape == (4,)
    assert torch.equal(online[:2], offline)  # bit for bit
    assert torch.equal(online[2:], torch.zeros(2, dtype=torch.float64))
    assert online.sum().item() == offline.sum().item()
    assert m_on["loss"].item() == m_off["loss"].item() and m_on["td_penalty"].item() == m_off["td_penalty"].item()
    online.sum().backward()
    assert torch.equal(logps2.grad, g_logps) and torch.equal(values2.grad, g_values)
    assert torch.equal(policy["policy_token_logps"].grad, torch.zeros(2, 2, dtype=torch.float64))


def test_online_iqlearn_hand_computed() -> None:
    alpha = 0.25
    logps, mask, values = demo()
    losses, metrics = objectives.iqlearn(logps, mask, values, lam=LAM, gamma=GAMMA, alpha=alpha, **own())
    # demonstrations: r_A = [−1.33, −1.12, −0.70], r_B = [−1.90]; n_D = 4
    r_a = [-1.0 + 0.3 - GAMMA * 0.7, -2.0 + 0.7 + GAMMA * 0.2, -0.5 - 0.2]
    r_b = [-3.0 + 1.1]
    demo_a = sum(-lp for lp in LOGPS[0]) + LAM * (1 - alpha) * sum(r * r for r in r_a)
    demo_b = 3.0 + LAM * (1 - alpha) * r_b[0] ** 2
    # own samples: r_C = [−0.4 + 0.2 − 0.9·0.9, −1.5 + 0.9 − 0], r_D = [−2.5 + 0.6]; n_P = 3
    r_c = [-0.4 + 0.2 - GAMMA * 0.9, -1.5 + 0.9]
    r_d = [-2.5 + 0.6]
    own_c = LAM * alpha * sum(r * r for r in r_c)
    own_d = LAM * alpha * r_d[0] ** 2
    expected = torch.tensor([demo_a / 4, demo_b / 4, own_c / 3, own_d / 3], dtype=torch.float64)
    torch.testing.assert_close(losses, expected, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(metrics["loss"], expected.sum())
    torch.testing.assert_close(
        metrics["td_penalty/policy"], torch.tensor((sum(r * r for r in r_c) + r_d[0] ** 2) / 3, dtype=torch.float64)
    )
    # num_policy_tokens overrides the own samples' normaliser (gradient accumulation / DDP)
    losses10, _ = objectives.iqlearn(
        logps, mask, values, lam=LAM, gamma=GAMMA, alpha=alpha, num_policy_tokens=10, **own()
    )
    torch.testing.assert_close(losses10[2:], expected[2:] * 3 / 10)


def test_alpha_one_drops_the_demonstrations_td_term() -> None:
    logps, mask, values = demo()
    losses, _ = objectives.iqlearn(logps, mask, values, lam=LAM, gamma=GAMMA, alpha=1.0, **own())
    mle, _ = objectives.mle(logps, mask)
    torch.testing.assert_close(losses[:2], mle)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, math.inf])
def test_alpha_outside_unit_interval_is_a_clear_error(alpha: float) -> None:
    logps, mask, values = demo()
    with pytest.raises(ValueError, match=r"alpha .* must be in \[0, 1\]"):
        objectives.iqlearn(logps, mask, values, alpha=alpha, **own())
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        objectives.build("iqlearn", {"alpha": alpha})(logps, mask, values)


def test_alpha_without_own_samples_or_partial_tensors_is_an_error() -> None:
    logps, mask, values = demo()
    with pytest.raises(ValueError, match="none were given"):
        objectives.iqlearn(logps, mask, values, alpha=0.1)
    policy = own()
    del policy["policy_token_values"]
    with pytest.raises(ValueError, match="all of"):
        objectives.iqlearn(logps, mask, values, alpha=0.1, **policy)


# ------------------------------------------------------------------------------------------ through the loop
def _loop_cfg(tmp_path, name: str, options: dict, policy_samples: bool, **train_kw):
    import json
    import random

    from imitalign.config import load_config
    from imitalign.gym.tokenizer import save_tokenizer
    from tests.helpers import TINY_LLAMA
    from tests.test_train import write_demos

    demos = tmp_path / "demos.jsonl"
    if not demos.exists():
        write_demos(demos, 48, 0)
        rng = random.Random(1)
        with (tmp_path / "own.jsonl").open("w") as f:  # "own samples": noisier responses to the same prompts
            for _ in range(20):
                words = " ".join(
                    rng.choice(["wave", "boat", "street", "tree", "the"]) for _ in range(rng.randint(1, 6))
                )
                f.write(json.dumps({"prompt": "write about forest , short =>", "response": words}) + "\n")
        save_tokenizer(tmp_path / "tok")
    data = {"train": {"path": str(demos)}, "eval_fraction": 0.25, "chat_template": "none", "max_length": 64}
    if policy_samples:
        data["policy_samples"] = {"path": str(tmp_path / "own.jsonl")}
    raw = {
        "run": {"output_dir": str(tmp_path / name), "seed": 3},
        "model": {"config": dict(TINY_LLAMA), "tokenizer": str(tmp_path / "tok")},
        "data": data,
        "objective": {"name": "iqlearn", "options": options},
        "train": {
            "batch_size": 6,
            "lr": 3e-3,
            "max_steps": 5,
            "warmup_ratio": 0.0,
            "log_every": 1,
            "schedule": "constant",
            **train_kw,
        },
    }
    return load_config(None, raw=raw)


def _weights(model_dir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


@pytest.mark.parametrize("packing", [False, True])
def test_loop_with_alpha_zero_and_own_samples_equals_offline_training(tmp_path, packing) -> None:
    from imitalign.train.loop import train

    torch.set_num_threads(1)
    offline = train(_loop_cfg(tmp_path, "offline", {"lam": 0.5}, False, packing=packing), quiet=True)
    online0 = train(_loop_cfg(tmp_path, "alpha0", {"lam": 0.5, "alpha": 0.0}, True, packing=packing), quiet=True)
    a, b = _weights(offline.model_dir), _weights(online0.model_dir)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # α > 0: the own samples' TD term changes the update, and is logged
    online = train(_loop_cfg(tmp_path, "alpha05", {"lam": 0.5, "alpha": 0.5}, True, packing=packing), quiet=True)
    c = _weights(online.model_dir)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert online.train_metrics["td_penalty/policy"] > 0
    assert online.eval_metrics.keys() == offline.eval_metrics.keys()  # eval is on demonstrations only


def test_loop_rejects_bad_alpha_and_misplaced_own_samples_before_loading(tmp_path) -> None:
    from imitalign.config import ConfigError
    from imitalign.train.loop import train

    with pytest.raises(ConfigError, match=r"alpha .* must be in \[0, 1\]"):
        train(_loop_cfg(tmp_path, "bad", {"alpha": 1.5}, True), quiet=True)
    with pytest.raises(ConfigError, match="none were given"):
        train(_loop_cfg(tmp_path, "noown", {"alpha": 0.2}, False), quiet=True)
    cfg = _loop_cfg(tmp_path, "mle", {}, True)
    cfg = cfg.model_copy(update={"objective": cfg.objective.model_copy(update={"name": "mle"})})
    with pytest.raises(ConfigError, match="does not use the policy's own samples"):
        train(cfg, quiet=True)
    assert not (tmp_path / "bad").exists() and not (tmp_path / "mle").exists()  # nothing started
