"""The attack registry, the AutoAttack-style ensemble and `robustness --attack`.

One contract test runs over every registered attack (the bounded ones and those that
choose their perturbation's size); the ensemble is tested with its standard members.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from advmnist.attacks import PGD
from advmnist.attacks.autoattack import MISCLASSIFIED, ROBUST, AutoAttack, robust_accuracy_after
from advmnist.attacks.norms import get_norm
from advmnist.attacks.registry import REGISTRY, AttackEntry, get_entry, names
from advmnist.cli import main
from advmnist.errors import InvalidInput
from advmnist.experiments.robustness import RobustnessCurve, RobustnessSettings, robustness_curve
from advmnist.experiments.shards import Shard

EPS = {"linf": 0.1, "l2": 1.0}


@pytest.fixture(scope="module")
def digits(mnist_small):
    _, test = mnist_small
    return test.images[:20], test.labels[:20]


def small(name: str, norm: str, eps, **options):
    """The registered attack with a fiftieth of its iterations, at least 2 (PGD and APGD 2 steps, Square 100
    queries; the ensemble's members alike; the per-image noise 120 steps, the universal one 20)."""
    entry = get_entry(name)
    return entry.make(norm, eps, iterations=max(2, entry.default_budget // 50), **options)


def plain_predictions(model, *batches):
    """A plain forward pass of the frozen model in a graph of its own, one call for every batch of images: the
    predictions for each batch, and for each batch rounded to 8-bit pixels."""
    rounded = [(np.round(np.clip(b, 0, 1) * 255) / 255).astype(np.float32) for b in batches]
    predictions = model.predict_proba(np.concatenate(list(batches) + rounded)).argmax(1)
    return np.split(predictions, len(predictions) // len(batches[0]))


def check_contract(result, images, labels, eps: float | None, norm: str, model, targets=None) -> None:
    """In the ball (if bounded) and in [0, 1]; success and 8-bit success as a plain forward pass sees them; the
    info of a bounded attack (which step broke each image)."""
    assert result.adversarial.min() >= 0 and result.adversarial.max() <= 1
    predictions, clean, predictions_8bit, _ = plain_predictions(model, result.adversarial, images)
    np.testing.assert_array_equal(predictions != labels if targets is None else predictions == targets,
                                  result.success)
    np.testing.assert_array_equal(predictions_8bit, result.predictions_8bit)
    if eps is None:
        return
    size = get_norm(norm).measure(result.adversarial - images)
    assert (size <= eps * (1 + 1e-5) + 1e-6).all(), size.max()
    steps, broken_at = result.info["steps_run"], result.info["broken_at"]
    assert steps.dtype == broken_at.dtype == np.int64 and steps.shape == broken_at.shape == labels.shape
    np.testing.assert_array_equal(broken_at == -1, ~result.success)
    misclassified = clean != labels
    assert (broken_at[misclassified] == 0).all() and (steps[misclassified] == 0).all()  # no work on them
    assert (broken_at <= steps).all()


@pytest.mark.parametrize("name,norm", [(name, norm) for name, entry in REGISTRY.items() for norm in entry.norms])
@pytest.mark.slow
def test_every_registered_attack_keeps_the_contract(name, norm, tiny_model, digits, mnist_small):
    images, labels = digits
    entry = get_entry(name)
    eps = EPS[norm] if entry.bounded else None
    targets = None if entry.untargeted else (labels + 1) % 10  # the attacks without an untargeted criterion
    attack = small(name, norm, eps, fit_images=mnist_small[0].images) if name == "universal" else small(name, norm,
                                                                                                        eps)
    result = attack(tiny_model.logits, images, labels, targets=targets, seed=1)
    check_contract(result, images, labels, eps, norm, tiny_model, targets)
    assert result.success.any() and not result.success.all()  # a real attack on a weak model, not a trivial one
    # the same seed, the same bytes: a shard of the images gets, image by image, what the whole run got
    positions = Shard(1, 3).positions(len(images))
    part = attack(tiny_model.logits, images[positions], labels[positions], seed=1, positions=positions,
                  population=len(images), targets=None if targets is None else targets[positions])
    for key, value in part.arrays().items():
        assert value.tobytes() == result.arrays()[key][positions].tobytes(), key
    if not entry.targeted:
        with pytest.raises(InvalidInput, match="only the untargeted criterion"):
            attack(tiny_model.logits, images, labels, targets=(labels + 1) % 10, seed=1)


@pytest.mark.slow
def test_pgd_draws_again_with_another_seed(tiny_model, digits):
    images, labels = digits
    runs = [small("pgd", "linf", 0.1)(tiny_model.logits, images, labels, seed=s).adversarial for s in (1, 2)]
    assert runs[0].tobytes() != runs[1].tobytes()


@pytest.mark.slow
def test_the_ensemble_is_the_worst_case_of_its_members(tiny_model, digits, autoattack_members):
    images, labels = digits
    ensemble = AutoAttack("linf", 0.06, steps=2)
    assert ensemble.members == autoattack_members
    result = ensemble(tiny_model.logits, images, labels, seed=2)
    check_contract(result, images, labels, 0.06, "linf", tiny_model)
    broken_by = result.info["broken_by"]
    misclassified = tiny_model.predict_proba(images).argmax(1) != labels
    np.testing.assert_array_equal(broken_by == MISCLASSIFIED, misclassified)
    alone = []
    for k in range(len(ensemble.members)):
        # the member alone, with the budget it has in the ensemble, on every image
        member = ensemble.member(k, 0.06)(tiny_model.logits, images, labels, seed=2)
        check_contract(member, images, labels, 0.06, "linf", tiny_model)
        alone.append(member.success)
        # an image this member breaks alone was broken by it or by an earlier member, never counted robust
        assert np.isin(broken_by[member.success], [MISCLASSIFIED, *range(k + 1)]).all()
        assert (member.success[broken_by == k]).all()  # and what the ensemble credits to it, it breaks alone
        assert result.success.mean() >= member.success.mean()
    np.testing.assert_array_equal(result.success, np.any(alone, axis=0))
    assert (result.success & ~misclassified).any()
    after = robust_accuracy_after(result)
    assert after[0] == pytest.approx(1 - misclassified.mean()) and after[-1] == pytest.approx(1 - result.success.mean())
    assert all(b <= a for a, b in zip(after, after[1:]))
    robust = ~result.success
    assert robust.any() and (result.info["member_steps"][robust] > 0).all()  # every member attacked them


def test_the_ensemble_checks_its_members_and_its_criterion(tiny_model, digits, monkeypatch, autoattack_members):
    from advmnist.attacks import autoattack

    images, labels = digits
    for kwargs in ({"norm": "l1"}, {"eps": 1.5}, {"eps": -0.1}, {"steps": 0}, {"members": ["pgd", "nope"]},
                   {"members": ["pgd", "pgd"]}, {"members": ["auto"]}, {"members": []}):
        with pytest.raises(InvalidInput, match="expected"):
            AutoAttack(**{"norm": "linf", "eps": 0.1, **kwargs})
    with pytest.raises(InvalidInput, match="only the untargeted criterion"):
        AutoAttack("linf", 0.1, steps=2)(tiny_model.logits, images, labels, targets=(labels + 1) % 10)
    # a member must be an attack bounded by eps: not the ensemble, nor an attack that picks its own size
    for member in ("auto", "minimal", "universal"):
        with pytest.raises(InvalidInput, match="expected distinct members among"):
            AutoAttack("linf", 0.1, members=["pgd", member])
    assert AutoAttack("linf", 0.1).members == autoattack.STANDARD == tuple(autoattack_members)


def test_the_registry_makes_and_refuses():
    class LinfOnly(PGD):
        NORMS = ("linf",)

    entry = AttackEntry("linf-only", LinfOnly, "test entry", options={"steps": 7})
    assert entry.default_budget == 7 and entry.make("linf", 0.1, iterations=3).steps == 3
    assert get_entry("pgd").default_budget == 40 and get_entry("auto").default_budget == 100
    with pytest.raises(InvalidInput, match="expected a norm that linf-only supports"):
        entry.make("l2", 0.1)
    with pytest.raises(InvalidInput, match="expected an attack in"):
        get_entry("nope")
    # the bounded attacks and the others: robustness takes only the first, transfer all of them
    assert names(bounded=True) == ["pgd", "apgd-ce", "apgd-t", "fab-t", "square", "auto"]
    assert names(bounded=False) == ["minimal", "attack", "universal"] and len(names()) == len(REGISTRY) == 9
    with pytest.raises(InvalidInput, match="expected an attack bounded by eps"):
        RobustnessSettings(attack="minimal").resolved()
    with pytest.raises(InvalidInput, match="expected the images a universal noise is fitted on"):
        get_entry("universal").make("linf")
    noise = get_entry("attack").make("l1", iterations=5)
    assert noise.regularizer.name == "l1" and noise.regularizer.weight == 1e-2 and noise.steps == 5


def _curve(members, broken_by, eps_fooled):
    count = len(broken_by)
    return RobustnessCurve.from_images("m", [0.0, 0.1, 0.2], np.asarray(eps_fooled, float), np.zeros((count, 28, 28),
                                       np.float32), np.zeros(count, bool), 1.0, members=members,
                                       broken_by=np.asarray(broken_by), broken_at=np.zeros(count, np.int64),
                                       member_seconds=[0.0] * len(members))


def test_gradient_masking_is_flagged_above_one_percent(autoattack_members, monkeypatch):
    monkeypatch.setitem(REGISTRY, "blind", AttackEntry("blind", PGD, "as if gradient-free", gradient_free=True))
    inf = np.inf
    # 200 images: the gradient-free member, last, broke 2 (1 %: no warning) or 3 (1.5 %: warning)
    for broke, warned in ((2, False), (3, True)):
        broken_by = [0] * 50 + [1] * broke + [ROBUST] * (150 - broke)
        eps_fooled = [0.1] * 50 + [0.2] * broke + [inf] * (150 - broke)
        notes = _curve(["pgd", "blind"], broken_by, eps_fooled).warnings()
        assert any("gradient masking" in n and f"blind fooled {broke} of 200" in n for n in notes) == warned
    # first in line, it breaks what no gradient attack was given a chance at: no sign of masking
    assert not _curve(["blind", "pgd"], [0] * 10 + [ROBUST] * 10, [0.1] * 10 + [inf] * 10).warnings()


def test_robust_accuracy_after_each_member_per_eps():
    inf = np.inf
    curve = _curve(["a", "b"], [MISCLASSIFIED, 0, 1, 1, 0, ROBUST], [0.0, 0.1, 0.1, 0.2, 0.2, inf])
    assert curve.robust_accuracy == pytest.approx([5 / 6, 3 / 6, 1 / 6])
    expected = [[5 / 6] * 3, [5 / 6, 4 / 6, 3 / 6], [3 / 6, 2 / 6, 1 / 6]]
    for row, want in zip(curve.robust_accuracy_after(), expected):
        assert row == pytest.approx(want)


@pytest.mark.slow
def test_the_plain_forward_pass_catches_a_false_claim(tiny_model, digits):
    images, labels = digits
    settings = RobustnessSettings(eps=(0.0, 0.1), steps=5)
    curve = robustness_curve(tiny_model.logits, images, labels, settings, model="tiny")
    assert curve.recheck(tiny_model.predict_proba, images, labels, norm="linf").all()
    assert curve.summary()["unconfirmed"] == 0 and not curve.warnings()
    robust = int(np.flatnonzero(np.isinf(curve.eps_fooled))[0])
    fooled = int(np.flatnonzero(curve.eps_fooled == 0.1)[0])
    curve.eps_fooled[robust] = 0.1  # claim a robust image was fooled (its "example" is the original)
    curve.eps_fooled[fooled] = 0.01  # and an example outside the ball it is claimed for
    np.testing.assert_array_equal(np.flatnonzero(~curve.recheck(tiny_model.predict_proba, images, labels,
                                                                norm="linf")), sorted([robust, fooled]))
    assert "2 of 20 verdicts not confirmed" in curve.warnings()[0]


@pytest.mark.slow
def test_robustness_attack_auto_reports_each_member(tiny_run, mnist_small, monkeypatch, tmp_path, autoattack_members):
    from advmnist.data.mnist import Split

    _, test = mnist_small
    monkeypatch.setattr("advmnist.data.mnist.load_split", lambda *a, rows=None, **k: Split(test.images[rows],
                                                                                     test.labels[rows]))
    result = CliRunner().invoke(main, ["robustness", "--attack", "auto", "--steps", "2", "--count", "16", "--eps",
                                       "0,0.05,0.1", "--model", str(tiny_run[0]), "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    model = record["models"][0]
    assert record["settings"]["attack"] == "auto" and model["members"] == list(autoattack_members)
    assert model["unconfirmed"] == 0 and model["examples"] > 0
    table = model["robust_accuracy_after"]
    assert [row[-1] for row in table] == model["robust_accuracy"] and table[0][0] == model["clean_accuracy"]
    assert "after " + autoattack_members[0] in result.stderr and "0 verdicts unconfirmed" in result.stderr
    arrays = np.load(tmp_path / "robustness_linf_auto.npz")
    assert list(arrays["members"]) == list(autoattack_members)
    assert arrays["broken_by"].shape == arrays["broken_at"].shape == arrays["confirmed"].shape == (1, 16)
    fooled = np.isfinite(arrays["eps_fooled"][0]) & (arrays["eps_fooled"][0] > 0)
    assert (arrays["broken_by"][0][fooled] >= 0).all() and (arrays["broken_at"][0][fooled] >= 0).all()
    assert (tmp_path / "robustness_linf_auto.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args, message", [
    (["--attack", "nope"], "'pgd'"),
    (["--attack", "auto", "--target", "9-d"], "supports only the untargeted criterion"),
    (["--attack", "auto", "--starts", "2"], "expected no --starts"),
    (["--attack", "auto", "--eps", "0,1.5"], "expected every eps in [0, 1]"),
    (["--attack", "pgd", "--norm", "l2"], "expected a norm that --attack pgd supports (linf)"),
])
def test_robustness_attack_bad_input_is_a_clear_error(bad_input, monkeypatch, args, message):
    class LinfOnly(PGD):
        NORMS = ("linf",)

    monkeypatch.setitem(REGISTRY, "pgd", AttackEntry("pgd", LinfOnly, "PGD for linf only", targeted=True))
    bad_input(["robustness"] + args, "robustness_linf_auto.json", message)
