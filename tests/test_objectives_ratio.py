"""Pair objectives (DPO, IPO, hinge, SimPO, DIL, Bregman) and the registry, against hand-computed numbers."""

from __future__ import annotations

import inspect
import math
import sys
import textwrap

import pytest
import torch

from imitalign import objectives
from imitalign.objectives import ratio

# Two pairs. Pair 0: ρ_w = −3.2 − (−3.0) = −0.2, ρ_l = −4.1 − (−3.5) = −0.6, |y_w| = 4, |y_l| = 7.
#            Pair 1: ρ_w = −10 − (−9) = −1.0,   ρ_l = −8 − (−9.5) = 1.5,   |y_w| = 5, |y_l| = 3.
PC, PR, RC, RR = [-3.2, -10.0], [-4.1, -8.0], [-3.0, -9.0], [-3.5, -9.5]
LC, LR = [4, 5], [7, 3]
RHO_W = [PC[i] - RC[i] for i in range(2)]
RHO_L = [PR[i] - RR[i] for i in range(2)]
RHO_W_NORM = [RHO_W[i] / LC[i] for i in range(2)]
RHO_L_NORM = [RHO_L[i] / LR[i] for i in range(2)]

PAIR_NAMES = ["dpo", "ipo", "hinge", "simpo", "dil_lsif", "dil_ukl", "dil_bce"]
PAIR_METRICS = {
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margin",
    "accuracy",
    "logps/chosen",
    "logps/rejected",
}


def f64(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def pair_inputs(requires_grad: bool = False) -> tuple[torch.Tensor, ...]:
    pc, pr = f64(PC).requires_grad_(requires_grad), f64(PR).requires_grad_(requires_grad)
    return pc, pr, f64(RC), f64(RR), torch.tensor(LC), torch.tensor(LR)


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def assert_close(actual: torch.Tensor, expected: list[float] | float, tol: float = 1e-10) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=tol, rtol=tol)


# ------------------------------------------------------------------------------------------------- DPO
def test_dpo_matches_hand_computation() -> None:
    losses, metrics = objectives.dpo(*pair_inputs(), beta=0.1)
    expected = [-log_sigmoid(0.1 * (RHO_W[i] - RHO_L[i])) for i in range(2)]
    assert expected[0] == pytest.approx(0.6733472, abs=1e-6)  # −log σ(0.04) = log 2 − 0.02 + 0.0002 − …
    assert_close(losses, expected)
    assert_close(metrics["loss"], sum(expected) / 2)
    assert_close(metrics["rewards/chosen"], 0.1 * (RHO_W[0] + RHO_W[1]) / 2)
    assert_close(metrics["rewards/rejected"], 0.1 * (RHO_L[0] + RHO_L[1]) / 2)
    assert_close(metrics["rewards/margin"], 0.1 * ((RHO_W[0] - RHO_L[0]) + (RHO_W[1] - RHO_L[1])) / 2)
    assert_close(metrics["accuracy"], 0.5)  # pair 0: −0.02 > −0.06; pair 1: −0.1 < 0.15
    assert_close(metrics["logps/chosen"], (PC[0] + PC[1]) / 2)
    assert_close(metrics["logps/rejected"], (PR[0] + PR[1]) / 2)


def test_dpo_label_smoothing_is_conservative_dpo() -> None:
    eps, beta = 0.2, 0.5
    losses, _ = objectives.dpo(*pair_inputs(), beta=beta, label_smoothing=eps)
    z = [beta * (RHO_W[i] - RHO_L[i]) for i in range(2)]
    assert_close(losses, [-(1 - eps) * log_sigmoid(z[i]) - eps * log_sigmoid(-z[i]) for i in range(2)])
    with pytest.raises(ValueError, match="label_smoothing"):
        objectives.dpo(*pair_inputs(), label_smoothing=0.7)


def test_dpo_length_normalize_uses_per_token_ratios() -> None:
    losses, metrics = objectives.dpo(*pair_inputs(), beta=0.1, length_normalize=True)
    assert_close(losses, [-log_sigmoid(0.1 * (RHO_W_NORM[i] - RHO_L_NORM[i])) for i in range(2)])
    assert_close(metrics["rewards/chosen"], 0.1 * (RHO_W_NORM[0] + RHO_W_NORM[1]) / 2)


def test_dpo_gradient_matches_closed_form() -> None:
    pc, pr, rc, rr, lc, lr = pair_inputs(requires_grad=True)
    beta = 0.1
    losses, _ = objectives.dpo(pc, pr, rc, rr, lc, lr, beta=beta)
    losses.sum().backward()
    # d/dlogπ(y_w) [−log σ(βΔ)] = −β σ(−βΔ); d/dlogπ(y_l) = +β σ(−βΔ)
    sig = [1 / (1 + math.exp(beta * (RHO_W[i] - RHO_L[i]))) for i in range(2)]
    assert_close(pc.grad, [-beta * s for s in sig])
    assert_close(pr.grad, [beta * s for s in sig])


# ------------------------------------------------------------------------------------------ IPO, hinge
def test_ipo_sum_and_length_normalized() -> None:
    beta = 0.1
    losses, metrics = objectives.ipo(*pair_inputs(), beta=beta)
    assert_close(losses, [(RHO_W[i] - RHO_L[i] - 1 / (2 * beta)) ** 2 for i in range(2)])
    assert losses[0].item() == pytest.approx((0.4 - 5.0) ** 2)
    assert_close(metrics["rewards/chosen"], beta * (RHO_W[0] + RHO_W[1]) / 2)
    losses, _ = objectives.ipo(*pair_inputs(), beta=beta, length_normalize=True)  # TRL's IPO
    assert_close(losses, [(RHO_W_NORM[i] - RHO_L_NORM[i] - 5.0) ** 2 for i in range(2)])


def test_hinge_values_and_zero_region() -> None:
    losses, _ = objectives.hinge(*pair_inputs(), beta=0.1)
    assert_close(losses, [max(0.0, 1 - 0.1 * (RHO_W[i] - RHO_L[i])) for i in range(2)])
    assert_close(losses, [0.96, 1.25])
    losses, _ = objectives.hinge(*pair_inputs(), beta=4.0)  # pair 0: margin 4·0.4 = 1.6 > 1 → 0
    assert_close(losses, [0.0, 1 + 4.0 * 2.5])


# ------------------------------------------------------------------------------------------------ SimPO
def test_simpo_is_reference_free_and_length_normalized() -> None:
    pc, pr, _, _, lc, lr = pair_inputs()
    beta, gamma = 2.0, 0.5
    losses, metrics = objectives.simpo(pc, pr, None, None, lc, lr, beta=beta, gamma=gamma)
    r_w = [beta * PC[i] / LC[i] for i in range(2)]
    r_l = [beta * PR[i] / LR[i] for i in range(2)]
    assert_close(losses, [-log_sigmoid(r_w[i] - r_l[i] - gamma) for i in range(2)])
    assert_close(metrics["rewards/chosen"], sum(r_w) / 2)
    assert_close(metrics["rewards/rejected"], sum(r_l) / 2)
    assert_close(metrics["accuracy"], 0.5)  # pair 0: −1.6 < −1.171 (wrong); pair 1: −4 > −5.33 (right)
    # references are ignored when given; the length_normalize flag cannot switch it off
    same, _ = objectives.simpo(*pair_inputs(), beta=beta, gamma=gamma, length_normalize=False)
    assert torch.equal(same, losses)
    with pytest.raises(ValueError, match="lengths"):
        objectives.simpo(pc, pr, None, None, None, None)


# -------------------------------------------------------------------------------------------------- DIL
def test_dil_closed_forms_default_length_normalized_beta_one() -> None:
    w, l = RHO_W_NORM, RHO_L_NORM
    losses, metrics = objectives.dil_lsif(*pair_inputs())
    assert_close(losses, [-math.exp(w[i]) + 0.5 * math.exp(2 * l[i]) for i in range(2)])
    assert_close(metrics["ratio/chosen_log"], (w[0] + w[1]) / 2)
    assert_close(metrics["ratio/rejected_log"], (l[0] + l[1]) / 2)
    assert_close(metrics["ratio/clamped"], 0.0)
    losses, _ = objectives.dil_ukl(*pair_inputs())
    assert_close(losses, [-w[i] + math.exp(l[i]) for i in range(2)])
    losses, metrics = objectives.dil_bce(*pair_inputs())
    assert_close(losses, [-log_sigmoid(w[i]) - log_sigmoid(-l[i]) for i in range(2)])
    assert_close(metrics["rewards/chosen"], (w[0] + w[1]) / 2)
    assert_close(metrics["accuracy"], 0.5)  # −0.05 > −0.0857; −0.2 < 0.5


def test_dil_temperature_and_summed_ratios() -> None:
    beta = 0.5
    w = [beta * x for x in RHO_W]
    l = [beta * x for x in RHO_L]
    kw = {"beta": beta, "length_normalize": False}
    losses, metrics = objectives.dil_lsif(*pair_inputs(), **kw)
    assert_close(losses, [-math.exp(w[i]) + 0.5 * math.exp(2 * l[i]) for i in range(2)])
    assert_close(metrics["rewards/rejected"], (l[0] + l[1]) / 2)
    losses, _ = objectives.dil_ukl(*pair_inputs(), **kw)
    assert_close(losses, [-w[i] + math.exp(l[i]) for i in range(2)])
    losses, _ = objectives.dil_bce(*pair_inputs(), **kw)
    assert_close(losses, [-log_sigmoid(w[i]) - log_sigmoid(-l[i]) for i in range(2)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["dil_lsif", "dil_ukl", "dil_bce", "bregman"])
def test_dil_overflow_guard_keeps_loss_and_gradients_finite(name: str, dtype: torch.dtype) -> None:
    pc = torch.tensor([5000.0, -3.0], dtype=dtype, requires_grad=True)
    pr = torch.tensor([4000.0, -2.0], dtype=dtype, requires_grad=True)
    ref = torch.zeros(2, dtype=dtype)
    lengths = torch.tensor([1, 1])
    options = {"length_normalize": False, "generator": "lsif"}
    losses, metrics = objectives.get(name).fn(pc, pr, ref, ref, lengths, lengths, **options)
    losses.sum().backward()
    assert torch.isfinite(losses).all() and torch.isfinite(pc.grad).all() and torch.isfinite(pr.grad).all()
    assert all(torch.isfinite(v) for v in metrics.values())
    if name != "dil_bce":
        assert metrics["ratio/clamped"].item() == 0.5
    if name == "dil_lsif":  # clamped at ρ' = 20: −e^20 + ½e^40
        assert losses[0].item() == pytest.approx(-math.exp(20) + 0.5 * math.exp(40), rel=1e-2)


def test_lsif_clamp_is_configurable() -> None:
    pc, pr, rc, rr, lc, lr = pair_inputs()
    losses, _ = objectives.dil_lsif(pc, pr, rc, rr, lc, lr, length_normalize=False, max_log_ratio=-0.5)
    # pair 0: ρ_w = −0.2 → clamped to −0.5, ρ_l = −0.6 kept; pair 1: −1.0 kept, 1.5 → −0.5
    assert_close(losses, [-math.exp(-0.5) + 0.5 * math.exp(-1.2), -math.exp(-1.0) + 0.5 * math.exp(-1.0)])


# ---------------------------------------------------------------------------------------------- Bregman
@pytest.mark.parametrize(
    ("generator", "closed_form", "offset"),
    [("lsif", "dil_lsif", 0.5), ("ukl", "dil_ukl", 0.0), ("bce", "dil_bce", 0.0)],
)
@pytest.mark.parametrize("length_normalize", [True, False])
def test_bregman_matches_closed_forms_values_and_gradients(
    generator: str, closed_form: str, offset: float, length_normalize: bool
) -> None:
    f = objectives.BUILTIN_GENERATORS[generator]
    fn = objectives.make_bregman(f)
    kw = {"beta": 0.7, "length_normalize": length_normalize}

    pc, pr, rc, rr, lc, lr = pair_inputs(requires_grad=True)
    losses, metrics = fn(pc, pr, rc, rr, lc, lr, **kw)
    losses.sum().backward()
    grads = pc.grad.clone(), pr.grad.clone()

    pc2, pr2, *_ = pair_inputs(requires_grad=True)
    expected, expected_metrics = getattr(objectives, closed_form)(pc2, pr2, rc, rr, lc, lr, **kw)
    expected.sum().backward()

    assert_close(losses, (expected + offset).detach(), tol=1e-12)
    assert_close(grads[0], pc2.grad, tol=1e-12)
    assert_close(grads[1], pr2.grad, tol=1e-12)
    for key in PAIR_METRICS - {"loss"}:
        assert_close(metrics[key], expected_metrics[key], tol=1e-12)


def test_bregman_second_derivatives_exist() -> None:
    """create_graph=True: the Bregman loss is twice differentiable like the closed form."""
    pc, pr, rc, rr, lc, lr = pair_inputs(requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: objectives.bregman(a, b, rc, rr, lc, lr, generator=objectives.bce_generator)[0], (pc, pr)
    )
    assert torch.autograd.gradgradcheck(
        lambda a, b: objectives.bregman(a, b, rc, rr, lc, lr, generator=objectives.ukl_generator)[0], (pc, pr)
    )


def test_bregman_without_autograd_graph() -> None:
    inputs = pair_inputs()
    expected, _ = objectives.dil_ukl(*inputs)
    with torch.no_grad():
        losses, _ = objectives.bregman(*inputs, generator="ukl")
    assert_close(losses, expected, tol=1e-12)
    with torch.inference_mode():
        losses, _ = objectives.bregman(*pair_inputs(), generator="ukl")
    assert_close(losses, expected, tol=1e-12)


@pytest.fixture()
def generator_module(tmp_path, monkeypatch) -> str:
    source = """
        import torch

        def lsif(t):
            return 0.5 * (t - 1.0) ** 2

        def chi2_like(t):
            return (t - 1.0) ** 2 + t * torch.log(t)

        NOT_CALLABLE = 3.0
    """
    (tmp_path / "my_generators.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_generators"
    sys.modules.pop("my_generators", None)


def test_bregman_from_module_string(generator_module: str) -> None:
    f = objectives.load_generator(f"{generator_module}:lsif")
    assert f(torch.tensor(3.0)).item() == 2.0
    fn = objectives.build("bregman", {"generator": f"{generator_module}:lsif"})
    losses, _ = fn(*pair_inputs())
    expected, _ = objectives.dil_lsif(*pair_inputs())
    assert_close(losses, expected + 0.5, tol=1e-12)
    # a new generator: f(t) = (t−1)² + t log t, f'(t) = 2(t−1) + log t + 1; loss = [f'(r_l) r_l − f(r_l)] − f'(r_w)
    fn = objectives.build("bregman", {"generator": f"{generator_module}:chi2_like", "beta": 1.0})
    losses, _ = fn(*pair_inputs())
    r_w, r_l = math.exp(RHO_W_NORM[0]), math.exp(RHO_L_NORM[0])
    fp = lambda t: 2 * (t - 1) + math.log(t) + 1  # noqa: E731
    f_ = lambda t: (t - 1) ** 2 + t * math.log(t)  # noqa: E731
    assert losses[0].item() == pytest.approx(fp(r_l) * r_l - f_(r_l) - fp(r_w), abs=1e-12)


def test_load_generator_errors(generator_module: str) -> None:
    with pytest.raises(ValueError, match="expected 'package.module:function'"):
        objectives.load_generator("no_colon_here")
    with pytest.raises(ValueError, match="module 'surely_not_a_module_xyz' not found"):
        objectives.load_generator("surely_not_a_module_xyz:f")
    with pytest.raises(ValueError, match="has no attribute 'missing'"):
        objectives.load_generator(f"{generator_module}:missing")
    with pytest.raises(ValueError, match="not a callable"):
        objectives.load_generator(f"{generator_module}:NOT_CALLABLE")
    with pytest.raises(ValueError, match="needs option"):
        objectives.build("bregman", {})
    with pytest.raises(ValueError, match="needs a generator"):
        objectives.bregman(*pair_inputs())


def test_register_bregman_adds_a_named_objective(generator_module: str) -> None:
    spec = objectives.register_bregman("dil_test_lsif", f"{generator_module}:lsif")
    try:
        assert "dil_test_lsif" in objectives.names() and spec.needs_reference and spec.kind == "pair"
        losses, _ = objectives.build("dil_test_lsif", {"length_normalize": False})(*pair_inputs())
        expected, _ = objectives.dil_lsif(*pair_inputs(), length_normalize=False)
        assert_close(losses, expected + 0.5, tol=1e-12)
        with pytest.raises(ValueError, match="already registered"):
            objectives.register_bregman("dil_test_lsif", objectives.lsif_generator)
    finally:
        from imitalign.objectives import registry

        registry._REGISTRY.pop("dil_test_lsif", None)


# ------------------------------------------------------------------------------------- common behaviour
@pytest.mark.parametrize("name", [*PAIR_NAMES, "bregman"])
def test_pair_metrics_are_detached_scalars(name: str) -> None:
    pc, pr, rc, rr, lc, lr = pair_inputs(requires_grad=True)
    options = {"generator": "bce"} if name == "bregman" else {}
    losses, metrics = objectives.build(name, options)(pc, pr, rc, rr, lc, lr)
    assert losses.shape == (2,) and losses.requires_grad
    assert PAIR_METRICS <= set(metrics)
    for key, value in metrics.items():
        assert isinstance(value, torch.Tensor) and value.dim() == 0 and not value.requires_grad, key
    assert_close(metrics["loss"], losses.detach().mean())


@pytest.mark.parametrize("name", ["dpo", "ipo", "hinge", "dil_lsif", "dil_ukl", "dil_bce"])
def test_pair_shape_and_reference_checks(name: str) -> None:
    fn = objectives.get(name).fn
    pc, pr, rc, rr, lc, lr = pair_inputs()
    with pytest.raises(ValueError, match=r"shape \[B\]"):
        fn(pc[None], pr[None], rc[None], rr[None], lc, lr)
    with pytest.raises(ValueError, match="rejected_logps"):
        fn(pc, pr[:1], rc, rr, lc, lr)
    with pytest.raises(ValueError, match="reference"):
        fn(pc, pr, None, rr, lc, lr)
    with pytest.raises(ValueError, match="beta"):
        fn(pc, pr, rc, rr, lc, lr, beta=0.0)
    with pytest.raises(ValueError, match="lengths"):
        fn(pc, pr, rc, rr, None, None, length_normalize=True)


# --------------------------------------------------------------------------------------------- registry
def test_unknown_objective_lists_known_names() -> None:
    with pytest.raises(ValueError) as err:
        objectives.get("dpp")
    message = str(err.value)
    known = ", ".join(sorted(objectives.names()))
    assert message.startswith(f"unknown objective 'dpp'; known: {known}")
    assert "did you mean 'dpo'" in message
    assert "bco, bradley_terry, bregman, bregman_unpaired, dil_bce" in message


def test_registry_names_kinds_and_flags() -> None:
    assert objectives.names() == sorted(
        ["bradley_terry", "bregman", "dil_bce", "dil_lsif", "dil_ukl", "discriminator_bce", "dpo", "hinge",
         "ipo", "iqlearn", "mle", "simpo", "kto", "bco", "dil_lsif_unpaired", "dil_ukl_unpaired", "dil_bce_unpaired",
         "bregman_unpaired"]
    )  # fmt: skip
    for name in [*PAIR_NAMES, "bregman"]:
        spec = objectives.get(name)
        assert spec.kind == "pair" and spec.reduction == "mean" and not spec.needs_values
        assert spec.needs_reference == (name != "simpo")
    assert objectives.get("dpo").defaults == {"beta": 0.1, "length_normalize": False, "label_smoothing": 0.0}
    assert objectives.get("ipo").defaults == {"beta": 0.1, "length_normalize": False}
    assert objectives.get("dil_lsif").defaults == {"beta": 1.0, "length_normalize": True, "max_log_ratio": 20.0}
    assert objectives.get("dil_bce").defaults == {"beta": 1.0, "length_normalize": True}
    assert objectives.get("simpo").defaults == {"beta": 2.0, "length_normalize": True, "gamma": 0.5}
    assert objectives.get("mle").kind == "token" and objectives.get("mle").reduction == "sum"
    iq = objectives.get("iqlearn")
    assert iq.needs_values and iq.reduction == "sum" and iq.defaults == {"lam": 0.1, "gamma": 1.0, "alpha": 0.0}
    assert objectives.get("bradley_terry").kind == "reward_pair"
    assert objectives.get("discriminator_bce").kind == "classifier"
    assert objectives.get("dpo").doc.startswith("Direct Preference Optimisation")


@pytest.mark.parametrize("name", objectives.names())
def test_registry_defaults_match_function_signatures(name: str) -> None:
    spec = objectives.get(name)
    params = inspect.signature(spec.fn).parameters
    for key, value in spec.defaults.items():
        assert key in params, f"{name}: option {key} is not a parameter of {spec.fn.__name__}"
        assert params[key].default == value, f"{name}: {key} default differs between registry and function"


def test_build_binds_defaults_and_options() -> None:
    fn = objectives.build("dpo", {"beta": 0.5})
    expected, _ = objectives.dpo(*pair_inputs(), beta=0.5)
    assert torch.equal(fn(*pair_inputs())[0], expected)
    fn = objectives.build("dil_bce", {})
    expected, _ = objectives.dil_bce(*pair_inputs(), beta=1.0, length_normalize=True)
    assert torch.equal(fn(*pair_inputs())[0], expected)
    spec = objectives.get("dpo", beta=0.3)
    assert spec.defaults["beta"] == 0.3 and objectives.get("dpo").defaults["beta"] == 0.1


def test_build_rejects_unknown_or_mistyped_options() -> None:
    with pytest.raises(ValueError, match=r"unknown option 'bta' — did you mean 'beta'\? \(accepted: beta, "):
        objectives.build("dpo", {"bta": 0.1})
    with pytest.raises(ValueError, match="accepted: none"):
        objectives.build("mle", {"beta": 0.1})
    with pytest.raises(ValueError, match="must be a number"):
        objectives.build("dpo", {"beta": "0.1"})
    with pytest.raises(ValueError, match="true or false"):
        objectives.build("dil_bce", {"length_normalize": "yes"})
    with pytest.raises(ValueError, match="unknown objective"):
        objectives.build("dil", {})


def test_generic_call_with_uniform_keywords() -> None:
    """A trainer can call any pair objective with the same keywords: extra ones are ignored."""
    for name in PAIR_NAMES:
        losses, _ = ratio.__dict__[name](*pair_inputs(), beta=0.1, length_normalize=True, gamma=0.5, lam=1.0)
        assert torch.isfinite(losses).all()
