"""The attacks that measure robust accuracy within a budget eps, by name: one line each.

``advmnist robustness --attack NAME`` and the ensemble (:mod:`advmnist.attacks.autoattack`)
take their attacks from here. An entry knows its class, the norms it supports, whether
it supports the targeted criterion, which option counts its iterations (``steps``, or
``queries`` for a black-box attack) and the options that differ from the class's
defaults; :meth:`AttackEntry.make` builds the attack for a norm and a budget. Adding an
attack is one module in ``attacks/`` (a subclass of :class:`~advmnist.attacks.base.Attack`
with ``NORMS``, taking ``(norm, eps, **options)``) and one :func:`register` line below.
"""
from __future__ import annotations

import dataclasses
import inspect
from types import MappingProxyType
from typing import Mapping

from advmnist.attacks.apgd import APGD
from advmnist.attacks.base import Attack
from advmnist.attacks.fab import FAB
from advmnist.attacks.pgd import PGD
from advmnist.attacks.square import Square
from advmnist.errors import InvalidInput


@dataclasses.dataclass(frozen=True)
class AttackEntry:
    """One attack of the registry.

    Args:
        name: what ``--attack`` calls it.
        cls: the :class:`Attack` subclass; its ``NORMS`` are the norms it supports.
        description: one line for ``--help`` and the docs.
        targeted: whether it supports the targeted criterion (real targets), not only the untargeted one.
        gradient_free: whether it never looks at a gradient (a black-box search such as Square): when it breaks
            images that the gradient attacks missed, the gradients may be masked.
        budget: the option that counts its iterations (``steps``, ``queries``).
        options: options that differ from the class's defaults (seed-independent).
    """

    name: str
    cls: type
    description: str
    targeted: bool = False
    gradient_free: bool = False
    budget: str = "steps"
    options: Mapping = dataclasses.field(default_factory=lambda: MappingProxyType({}))

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

    def make(self, norm: str, eps, *, iterations: int | None = None, **options) -> Attack:
        """The attack for ``norm`` and budget ``eps`` (a number or one per image); ``iterations`` sets its
        budget option (steps or queries), ``options`` any other of its options."""
        self.check_norm(norm)
        chosen = {**self.options, **options}
        if iterations is not None:
            chosen[self.budget] = int(iterations)
        return self.cls(norm, eps, **chosen)


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


def names() -> list[str]:
    return list(REGISTRY)


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
