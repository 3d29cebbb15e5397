"""Every loss of imitalign as a pure function of tensors, and a registry by name.

``ratio``: pair objectives on sequence log-probs (DPO, IPO, hinge/SLiC, SimPO, DIL-LSIF/UKL/BCE, Bregman from
a user generator); ``token``: demonstration objectives (MLE, IQLearn); ``reward``: Bradley–Terry and the
discriminator BCE. Each returns ``(losses, metrics)``; reduce ``losses`` as the spec's ``reduction`` says.
"""

from .ratio import (
    BUILTIN_GENERATORS,
    bce_generator,
    bregman,
    dil_bce,
    dil_lsif,
    dil_ukl,
    dpo,
    hinge,
    ipo,
    load_generator,
    lsif_generator,
    make_bregman,
    simpo,
    ukl_generator,
)
from .registry import KINDS, ObjectiveSpec, build, check_options, get, names, register, register_bregman
from .reward import bradley_terry, discriminator_bce
from .token import implicit_token_rewards, iqlearn, mle

__all__ = [
    "BUILTIN_GENERATORS",
    "KINDS",
    "ObjectiveSpec",
    "bce_generator",
    "bradley_terry",
    "bregman",
    "build",
    "check_options",
    "dil_bce",
    "dil_lsif",
    "dil_ukl",
    "discriminator_bce",
    "dpo",
    "get",
    "hinge",
    "implicit_token_rewards",
    "ipo",
    "iqlearn",
    "load_generator",
    "lsif_generator",
    "make_bregman",
    "mle",
    "names",
    "register",
    "register_bregman",
    "simpo",
    "ukl_generator",
]
