"""Every attack advmnist has, by name: one line each.

Two kinds. The **bounded** attacks look for an adversarial example within a budget eps
(PGD, the AutoAttack members, the ensemble): ``advmnist robustness --attack NAME`` and
the ensemble (:mod:`advmnist.attacks.autoattack`) take theirs from here. The others
choose their perturbation's size themselves: ``minimal`` (the smallest one, FMN),
``attack`` (the reference's per-image noise under a penalty) and ``universal`` (one
noise per target class). ``advmnist transfer --attack NAME`` offers them all, ``advmnist
minimal`` builds its attack from here, and the contract tests run over every entry.

An entry knows its class, the norms it supports, which criteria it supports (real
targets, untargeted), which option counts its iterations (``steps``, or ``queries`` for
a black-box attack) and the options that differ from the class's defaults;
:meth:`AttackEntry.make` builds the attack. Adding an attack is one module in
``attacks/`` (a subclass of :class:`~advmnist.attacks.base.Attack` with ``NORMS``; a
bounded one takes ``(norm, eps, **options)``) and one :func:`register` line below.
"""
from __future__ import annotations

import dataclasses
import inspect
from types import MappingProxyType
from typing import Callable, Mapping

from advmnist.attacks.apgd import APGD
from advmnist.attacks.base import Attack
from advmnist.attacks.fab import FAB
from advmnist.attacks.fmn import MinimalNorm
from advmnist.attacks.norms import make_regularizer
from advmnist.attacks.pgd import PGD
from advmnist.attacks.square import Square
from advmnist.attacks.targeted_noise import PerImageNoise
from advmnist.attacks.universal_noise import UniversalNoise
from advmnist.errors import InvalidInput


@dataclasses.dataclass(frozen=True)
class AttackEntry:
    """One attack of the registry.

    Args:
        name: what ``--attack`` calls it.
        cls: the :class:`Attack` subclass; its ``NORMS`` are the norms it supports.
        description: one line for ``--help`` and the docs.
        targeted: whether it supports the targeted criterion (real targets).
        untargeted: whether it supports the untargeted criterion (any wrong class).
        gradient_free: whether it never looks at a gradient (a black-box search such as Square): when it breaks
            images that the gradient attacks missed, the gradients may be masked.
        budget: the option that counts its iterations (``steps``, ``queries``).
        options: options that differ from the class's defaults (seed-independent).
        build: how to make an attack that is not bounded, ``build(norm, fit_images, **options)``; ``None`` for a
            bounded attack, made as ``cls(norm, eps, **options)``.
    """

    name: str
    cls: type
    description: str
    targeted: bool = False
    gradient_free: bool = False
    untargeted: bool = True
    budget: str = "steps"
    options: Mapping = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    build: Callable | None = None

    @property
    def bounded(self) -> bool:
        """Whether it attacks within a budget eps (``robustness --attack`` offers these)."""
        return self.build is None

    @property
    def norms(self) -> tuple[str, ...]:
        return tuple(self.cls.NORMS)

    @property
    def default_budget(self) -> int:
        """The iterations the attack runs unless told otherwise."""
        return int(self.default(self.budget))

    def accepts(self, option: str) -> bool:
        return option in inspect.signature(self.cls.__init__).parameters

    def default(self, option: str):
        """What ``option`` is when not given: this entry's value, or the class's default."""
        if option in self.options:
            return self.options[option]
        return inspect.signature(self.cls.__init__).parameters[option].default

    def check_norm(self, norm: str) -> None:
        if norm not in self.norms:
            raise InvalidInput(f"expected a norm that {self.name} supports ({', '.join(self.norms)}), got {norm!r}")

    def make(self, norm: str, eps=None, *, iterations: int | None = None, fit_images=None, **options) -> Attack:
        """The attack for ``norm`` and, if bounded, budget ``eps`` (a number or one per image); ``iterations``
        sets its budget option (steps or queries), ``fit_images`` the images a universal noise is fitted on,
        ``options`` any other of its options."""
        self.check_norm(norm)
        chosen = {**self.options, **options}
        if iterations is not None:
            chosen[self.budget] = int(iterations)
        if self.bounded:
            return self.cls(norm, eps, **chosen)
        return self.build(norm, fit_images, **chosen)


REGISTRY: dict[str, AttackEntry] = {}


def register(name: str, cls: type, description: str, **fields) -> AttackEntry:
    """Add an attack under ``name`` (see :class:`AttackEntry` for ``fields``)."""
    if name in REGISTRY:
        raise ValueError(f"attack {name!r} is registered twice")
    if "options" in fields:
        fields["options"] = MappingProxyType(dict(fields["options"]))
    entry = AttackEntry(name, cls, description, **fields)
    REGISTRY[name] = entry
    return entry


def get_entry(name: str) -> AttackEntry:
    if name not in REGISTRY:
        raise InvalidInput(f"expected an attack in {sorted(REGISTRY)}, got {name!r}")
    return REGISTRY[name]


def names(*, bounded: bool | None = None) -> list[str]:
    """The registered names, in order; only the bounded ones (or only the others) if asked."""
    return [name for name, entry in REGISTRY.items() if bounded is None or entry.bounded == bounded]


def _fitted_universal_noise(norm: str, fit_images, **options) -> UniversalNoise:
    if fit_images is None:
        raise InvalidInput("expected the images a universal noise is fitted on (fit_images), got none")
    return UniversalNoise(fit_images, **options)


register("pgd", PGD, "projected gradient descent with random starts on the cross-entropy (Madry et al. 2018)",
         targeted=True)
register("apgd-ce", APGD, "APGD on the cross-entropy: PGD with a step size that adapts at checkpoints "
         "(Croce & Hein 2020)", options={"loss": "ce"})
register("apgd-t", APGD, "APGD-T: APGD on the targeted DLR loss towards each of the 9 next classes in turn "
         "(Croce & Hein 2020)", options={"loss": "dlr-targeted"})
register("fab-t", FAB, "FAB-T: steps to the linearized boundary of each of the 9 next classes in turn "
         "(Croce & Hein 2020)", options={"targeted": True})
register("square", Square, "Square Attack: random square-shaped changes kept when they lower the margin, no "
         "gradient (Andriushchenko et al. 2020)", gradient_free=True, budget="queries")
# the ensemble of the attacks above (it looks its members up here when it is built)
from advmnist.attacks.autoattack import AutoAttack  # noqa: E402

register("auto", AutoAttack, "AutoAttack's standard ensemble (Croce & Hein 2020): APGD-CE, APGD-T, FAB-T, Square "
         "in turn, each on the images still standing")

# the attacks that choose their perturbation's size themselves (not bounded by an eps)
register("minimal", MinimalNorm, "FMN: the smallest perturbation in the norm that reaches the target (Pintor et al. "
         "2021), 8 starts", targeted=True, build=lambda norm, fit_images, **options: MinimalNorm(norm, **options))
register("attack", PerImageNoise, "the reference's per-image noise: Adam on the cross-entropy plus the norm's "
         "penalty (weight 0.01)", targeted=True, untargeted=False, options={"weight": 1e-2},
         build=lambda norm, fit_images, weight, **options: PerImageNoise(make_regularizer(norm, weight), **options))
register("universal", UniversalNoise, "one noise per target class fitted on the training images, within Linf "
         "0.35", targeted=True, untargeted=False, build=_fitted_universal_noise)
