"""Range rules of objective options, written as in the docstrings: ``"> 0"``, ``">= 0"``, ``"[0, 0.5)"``.

Each objective's spec lists a rule per numeric option (:attr:`ObjectiveSpec.rules`); :func:`check_rule`
applies one at config time, so ``beta: -1`` is refused with the option's name before any file is written or
any model is loaded (the loss functions keep their own checks for direct callers).
"""

from __future__ import annotations

import math
import re

_BOUND = re.compile(r"^\s*(>=|>|<=|<)\s*(-?[\d.eE+-]+)\s*$")
_INTERVAL = re.compile(r"^\s*([\[(])\s*(-?[\d.eE+-]+)\s*,\s*(-?[\d.eE+-]+)\s*([\])])\s*$")


def holds(rule: str, value: float) -> bool:
    """Whether ``value`` (finite) satisfies ``rule``: a one-sided bound (``> 0``) or an interval (``[0, 1)``)."""
    if not math.isfinite(value):
        return False
    m = _BOUND.match(rule)
    if m:
        op, bound = m.group(1), float(m.group(2))
        return {">": value > bound, ">=": value >= bound, "<": value < bound, "<=": value <= bound}[op]
    m = _INTERVAL.match(rule)
    if m:
        lo_closed, lo, hi, hi_closed = m.group(1) == "[", float(m.group(2)), float(m.group(3)), m.group(4) == "]"
        above = value >= lo if lo_closed else value > lo
        below = value <= hi if hi_closed else value < hi
        return above and below
    raise ValueError(f"not a range rule: {rule!r} (use '> 0', '>= 0' or an interval like '[0, 0.5)')")


def check_rule(objective: str, option: str, rule: str, value: object) -> None:
    """Raise ValueError naming ``option`` when ``value`` (a number; non-numbers are checked elsewhere) breaks
    ``rule``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if not holds(rule, float(value)):
        where = f"must be {rule}" if rule.lstrip()[0] in "<>" else f"must be in {rule}"
        raise ValueError(f"options.{option} = {value!r} {where} (objective {objective})")
