"""Unpaired objectives: hand-computed values, unpaired DIL = paired DIL on a pair's two halves, KTO against
TRL's KTOTrainer loss on fixed inputs (skipped without TRL), BCO against its paper's formula."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from imitalign import objectives
from imitalign.objectives import ratio
from imitalign.objectives.unpaired import RewardShift, bco, dil_unpaired, kto


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64)


def labels(*xs: bool) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.bool)


def nls(x: float) -> float:  # −log σ(x)
    return math.log1p(math.exp(-x))


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_dil_unpaired_hand_computed():
    # ρ = policy − reference = [0.5, −1, 2]; labels D, U, U; β = 1, sums (no length normalisation)
    pol, ref, lab = t(-1.0, -3.0, 0.0), t(-1.5, -2.0, -2.0), labels(True, False, False)
    losses, m = dil_unpaired(pol, None, ref, None, None, lab, generator="bce", length_normalize=False)
    # (B/n_D)·(−log σ(0.5)), (B/n_U)·(−log σ(1)), (B/n_U)·(−log σ(−2)) with B = 3, n_D = 1, n_U = 2
    assert losses.tolist() == pytest.approx([3 * nls(0.5), 1.5 * nls(1.0), 1.5 * nls(-2.0)], rel=1e-12)
    assert float(losses.mean()) == pytest.approx(nls(0.5) + 0.5 * (nls(1.0) + nls(-2.0)), rel=1e-12)  # E_D + E_U
    assert float(m["rewards/desirable"]) == pytest.approx(0.5) and float(m["rewards/undesirable"]) == pytest.approx(0.5)
    losses, _ = dil_unpaired(pol, None, ref, None, None, lab, generator="lsif", length_normalize=False, beta=2.0)
    e = math.exp
    assert float(losses.mean()) == pytest.approx(-e(1.0) + 0.5 * (0.5 * e(-2.0) ** 2 + 0.5 * e(4.0) ** 2), rel=1e-12)
    losses, _ = dil_unpaired(pol, None, ref, None, None, lab, generator="ukl", length_normalize=False)
    assert float(losses.mean()) == pytest.approx(-0.5 + 0.5 * (e(-1.0) + e(2.0)), rel=1e-12)


@pytest.mark.parametrize("name", ["lsif", "ukl", "bce"])
def test_dil_unpaired_on_a_pairs_halves_is_paired_dil(name):
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(6, generator=g, dtype=torch.float64) * 3 - 20 for _ in range(4))
    lc, lr = torch.randint(3, 30, (6,), generator=g), torch.randint(3, 30, (6,), generator=g)
    paired, _ = getattr(ratio, f"dil_{name}")(pc, pr, rc, rr, lc, lr, beta=0.7)
    fn = objectives.build(f"dil_{name}_unpaired", {"beta": 0.7})
    halves, _ = fn(
        torch.cat([pc, pr]), None, torch.cat([rc, rr]), None, torch.cat([lc, lr]), labels(*[1] * 6, *[0] * 6)
    )
    assert float(halves.mean()) == pytest.approx(float(paired.mean()), rel=1e-12)
    # any-Bregman from the generator by autograd: LSIF's Bregman form is the closed form + ½, UKL's and BCE's equal it
    generic = objectives.build("bregman_unpaired", {"generator": name, "beta": 0.7})
    gen, _ = generic(
        torch.cat([pc, pr]), None, torch.cat([rc, rr]), None, torch.cat([lc, lr]), labels(*[1] * 6, *[0] * 6)
    )
    assert float(gen.mean()) == pytest.approx(float(halves.mean()) + (0.5 if name == "lsif" else 0.0), rel=1e-9)


def test_dil_unpaired_gradient_raises_desirable_and_lowers_undesirable():
    pol = t(-2.0, -2.0).requires_grad_(True)
    losses, _ = dil_unpaired(
        pol, None, t(-2.0, -2.0), None, None, labels(True, False), generator="bce", length_normalize=False
    )
    losses.mean().backward()
    assert pol.grad[0] < 0 < pol.grad[1]


def test_kto_hand_computed_and_z0_clamped_and_detached():
    pol, ref = t(-1.0, -2.0, -3.0), t(-1.5, -1.0, -3.0)  # ρ = [0.5, −1, 0]
    kl_pol, kl_ref = t(-4.0, -2.0, -3.0), t(-5.0, -2.4, -2.8)  # mean(1, 0.4, −0.2) = 0.4
    lab = labels(True, False, True)
    losses, m = kto(pol, kl_pol, ref, kl_ref, None, lab, beta=0.5, desirable_weight=1.0, undesirable_weight=2.0)
    z0 = 0.4
    expected = [1 - sig(0.5 * (0.5 - z0)), 2 * (1 - sig(0.5 * (z0 + 1.0))), 1 - sig(0.5 * (0.0 - z0))]
    assert losses.tolist() == pytest.approx(expected, rel=1e-12)
    assert float(m["kl"]) == pytest.approx(z0)
    # a negative KL estimate is clamped to 0, and no gradient flows through z0
    kl_pol2 = kl_pol.clone().requires_grad_(True)
    _, m = kto(pol, kl_pol2 - 10, ref, kl_ref, None, lab, beta=0.5)
    assert float(m["kl"]) == 0.0
    losses, _ = kto(pol, kl_pol2, ref, kl_ref, None, lab, beta=0.5)
    assert not losses.requires_grad or torch.autograd.grad(losses.sum(), kl_pol2, allow_unused=True)[0] is None
    with pytest.raises(ValueError, match="kto needs the mismatched pairs' log-probs"):
        kto(pol, None, ref, None, None, lab)


def test_kto_matches_trl_kto_trainer_loss():
    trl_kto = pytest.importorskip("trl.trainer.kto_trainer")
    pol, ref = t(-1.0, -2.0, -3.0, -0.5), t(-1.5, -1.0, -3.0, -0.25)
    kl_pol, kl_ref = t(-4.0, -2.0, -3.0, -1.0), t(-5.0, -2.4, -2.8, -1.5)
    lab = labels(True, False, True, False)
    ours, _ = kto(pol, kl_pol, ref, kl_ref, None, lab, beta=0.3, desirable_weight=1.3, undesirable_weight=0.8)

    class Model:  # each sequence's summed log-prob is fixed: input_ids[:, 0] names the value to return
        training = False

        def __call__(self, input_ids, labels, **_):
            values = torch.cat([pol, kl_pol])[input_ids[:, 0]].float()
            n = input_ids.shape[0]
            return SimpleNamespace(
                log_probs=values.unsqueeze(1), entropy=torch.zeros(n, 1), mean_logits=torch.zeros(n, 1)
            )

    b = len(lab)
    batch = {
        "input_ids": torch.stack([torch.arange(b), torch.zeros(b, dtype=torch.long)], 1),
        "attention_mask": torch.ones(b, 2, dtype=torch.long),
        "completion_mask": torch.tensor([[0, 1]] * b),
        "KL_input_ids": torch.stack([torch.arange(b, 2 * b), torch.zeros(b, dtype=torch.long)], 1),
        "KL_attention_mask": torch.ones(b, 2, dtype=torch.long),
        "KL_completion_mask": torch.tensor([[0, 1]] * b),
        "label": lab,
        "ref_logps": ref.float(),
        "ref_KL_logps": kl_ref.float(),
    }
    model = Model()
    trainer = SimpleNamespace(
        model=model,
        accelerator=SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x),
        calculate_KL=True,
        precompute_ref_logps=True,
        aux_loss_enabled=False,
        loss_type="kto",
        beta=0.3,
        desirable_weight=1.3,
        undesirable_weight=0.8,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    trainer._compute_kl_logps = trl_kto.KTOTrainer._compute_kl_logps.__get__(trainer)
    theirs = trl_kto.KTOTrainer._compute_loss(trainer, model, batch, return_outputs=False)
    assert float(ours.mean()) == pytest.approx(float(theirs), rel=1e-6)
    assert trainer._metrics["eval"]["kl"][0] == pytest.approx(float((kl_pol - kl_ref).mean()), rel=1e-6)


def test_bco_paper_formula_and_running_shift():
    pol, ref, lab = t(1.0, -1.0, 0.5), t(0.0, 0.0, 0.0), labels(True, False, False)
    losses, m = bco(pol, None, ref, None, None, lab, beta=1.0)
    delta = 0.5 * (1.0 + 0.5 * (-1.0 + 0.5))  # ½(mean desirable reward + mean undesirable reward) = 0.375
    assert float(m["delta"]) == pytest.approx(delta)
    assert losses.tolist() == pytest.approx([nls(1.0 - delta), nls(-(-1.0 - delta)), nls(-(0.5 - delta))], rel=1e-12)
    losses, m = bco(pol, None, ref, None, None, lab, beta=2.0, delta=0.1)
    assert losses.tolist() == pytest.approx([nls(2.0 - 0.1), nls(2.0 + 0.1), nls(-(1.0 - 0.1))], rel=1e-12)
    shift = RewardShift()
    assert shift.update(t(1.0, -1.0, 0.5), lab) == pytest.approx(0.375)
    assert shift.update(t(3.0, 0.0), labels(True, False)) == pytest.approx(0.5 * (2.0 + (-0.5 / 3)))
    again = RewardShift()
    again.load_state_dict(shift.state_dict())
    assert again.delta == shift.delta


def test_unpaired_specs_and_options():
    spec = objectives.get("kto")
    assert (spec.kind, spec.needs_reference, spec.reduction) == ("unpaired_kl", True, "mean")
    assert objectives.get("bco").kind == objectives.get("dil_bce_unpaired").kind == "unpaired"
    with pytest.raises(ValueError, match="needs option\\(s\\) generator"):
        objectives.build("bregman_unpaired")
    with pytest.raises(ValueError, match="unknown option 'lambda_d'"):
        objectives.build("kto", {"lambda_d": 1.0})
