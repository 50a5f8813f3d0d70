"""Attacks on a network: one contract (:class:`Attack` -> :class:`AttackResult`), one module each.

- :mod:`~advmnist.attacks.base`: the contract: input checks, the success criterion
  (targeted or untargeted, also after 8-bit rounding), the effective-perturbation norms.
- :mod:`~advmnist.attacks.norms`: norms (L2, L1, Linf) with both their penalty and
  their measured size; regularizers (a norm and a weight).
- :mod:`~advmnist.attacks.targeted_noise`: per-image targeted noise (:class:`PerImageNoise`).
- :mod:`~advmnist.attacks.universal_noise`: one noise per target class (:class:`UniversalNoise`).
- :mod:`~advmnist.attacks.fmn`: the smallest perturbation per image in a norm (:class:`MinimalNorm`).
- :mod:`~advmnist.attacks.pgd`: projected gradient descent within a budget eps (:class:`PGD`).
- :mod:`~advmnist.attacks.targets`: the target rules (9-d, d+1, random, a class).

A new attack is one module: subclass :class:`Attack`, implement ``run``, return an
:class:`AttackResult`; the base checks inputs and measures success and norms.
"""
from advmnist.attacks.base import UNTARGETED, Attack, AttackInterrupted, AttackResult, Draws
from advmnist.attacks.fmn import MinimalNorm
from advmnist.attacks.norms import L1, L2, NORMS, Linf, Norm, Regularizer, get_norm, make_regularizer
from advmnist.attacks.pgd import PGD
from advmnist.attacks.targeted_noise import PerImageNoise
from advmnist.attacks.targets import choose_targets, parse_target_rule
from advmnist.attacks.universal_noise import UniversalNoise, UniversalNoiseGraph

__all__ = ["UNTARGETED", "Attack", "AttackInterrupted", "AttackResult", "Draws", "L1", "L2", "Linf", "MinimalNorm",
           "NORMS", "Norm", "PGD", "PerImageNoise", "Regularizer", "UniversalNoise", "UniversalNoiseGraph",
           "choose_targets", "get_norm", "make_regularizer", "parse_target_rule"]
