"""Universal noise: one pattern that makes the frozen network read almost every image as one class.

The second reference experiment (Hvass-Labs' TensorFlow tutorial #12). The attack
itself is :class:`advmnist.attacks.UniversalNoise`; this module runs it against a
frozen model, one target class after another, and measures each noise's effect on the
10,000 test images.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from advmnist.attacks import UniversalNoise
from advmnist.data.mnist import NUM_CLASSES, Split
from advmnist.errors import InvalidInput
from advmnist.model.frozen import FrozenModel, confusion_matrix
from advmnist.fileio import display_path
from advmnist.report import figures
from advmnist import fileio
from advmnist.experiments import results

TARGET_CHOICES = tuple(str(c) for c in range(NUM_CLASSES)) + ("all",)


@dataclasses.dataclass(frozen=True)
class UniversalSettings:
    steps: int = 1000
    noise_limit: float = 0.35
    l2_weight: float = 0.02
    lr: float = 1e-2
    batch_size: int = 64
    seed: int = 0

    def attack(self, fit_images: np.ndarray, given: dict | None = None) -> UniversalNoise:
        return UniversalNoise(fit_images, steps=self.steps, noise_limit=self.noise_limit, l2_weight=self.l2_weight,
                              lr=self.lr, batch_size=self.batch_size, given=given)

    @staticmethod
    def file_stem(target: str, given: bool = False) -> str:
        """``universal_<t>`` (``universal_all``); ``_given`` when a saved noise was measured."""
        return f"universal_{target}" + ("_given" if given else "")


def target_list(target: str) -> list[int]:
    """``"3"`` -> [3]; ``"all"`` -> [0, ..., 9]."""
    return list(range(NUM_CLASSES)) if target == "all" else target_classes([target])


@dataclasses.dataclass
class NoiseEffect:
    """What one noise does to the test set."""

    target: int
    accuracy: float          # true label still predicted, with the noise
    fooled: float            # fraction of all test images predicted as the target
    confusion: np.ndarray    # rows: true label, columns: prediction with the noise
    predictions: np.ndarray  # per test image, with the noise

    def to_dict(self) -> dict:
        return {"target": self.target, "accuracy": self.accuracy, "fooled": self.fooled,
                "confusion_matrix": self.confusion.tolist()}


def noise_effect(predictions: np.ndarray, labels: np.ndarray, target: int) -> NoiseEffect:
    return NoiseEffect(target=int(target), accuracy=float((predictions == labels).mean()),
                       fooled=float((predictions == target).mean()),
                       confusion=confusion_matrix(labels, predictions), predictions=predictions)


@dataclasses.dataclass
class UniversalResult:
    noise: np.ndarray          # (T, 28, 28), one per target
    clean_accuracy: float
    effects: list[NoiseEffect]

    def to_dict(self) -> dict:
        return {"clean_accuracy": self.clean_accuracy, "effects": [e.to_dict() for e in self.effects]}


def target_classes(targets) -> list[int]:
    """The target classes of a universal noise, as ints in 0..9 (at least one)."""
    targets = [int(t) for t in targets]
    bad = [t for t in targets if not 0 <= t < NUM_CLASSES]
    if bad or not targets:
        raise InvalidInput(f"expected target classes in 0..9, got {targets}")
    return targets


def universal_attack(model: FrozenModel, train_images: np.ndarray, test: Split, targets,
                     settings: UniversalSettings = UniversalSettings(), *, progress: bool = False,
                     given_noise: np.ndarray | None = None) -> UniversalResult:
    """Optimize one universal noise per target against ``model``; measure each on ``test``.

    With ``given_noise`` (one 28x28 noise per target, e.g. saved by an earlier run against
    another network), nothing is optimized: the given noises are only measured.
    """
    targets = target_classes(targets)
    given = None if given_noise is None else dict(zip(targets, given_noise))
    attack = settings.attack(train_images, given)
    clean = model.predict_proba(test.images).argmax(1)
    noises, effects = [], []
    try:
        for target in targets:
            result = attack(model.logits, test.images, test.labels, targets=np.full(len(test), target),
                            seed=settings.seed, progress=progress)
            noises.append(result.noise[0] if len(result) else np.zeros(test.images.shape[1:], np.float32))
            effects.append(noise_effect(result.predictions, test.labels, target))
    except KeyboardInterrupt:
        if not noises:
            raise
        raise UniversalInterrupted(UniversalResult(noise=np.stack(noises), clean_accuracy=float(
            (clean == test.labels).mean()), effects=effects), targets[:len(noises)]) from None
    return UniversalResult(noise=np.stack(noises), clean_accuracy=float((clean == test.labels).mean()),
                           effects=effects)


class UniversalInterrupted(KeyboardInterrupt):
    """Ctrl-C after some targets' noises were finished: ``partial`` holds them, ``targets`` their classes."""

    def __init__(self, partial: UniversalResult, targets: list[int]):
        super().__init__(f"interrupted after {len(targets)} target(s)")
        self.partial, self.targets = partial, targets


# ---------------------------------------------------------------------------- its files and figures

def write_universal(out: Path, stem: str, result, targets: list[int], test, settings, *, model_path,
                    target: str, noise_file: Path | None) -> dict:
    """``universal``: figures per target, the noises (unless measured from a file), the metrics."""
    tag = "" if noise_file is None else "_given"
    files = universal_figures(result, targets, test.images, test.labels, out,
                                     noise_limit=settings.noise_limit, tag=tag)
    if noise_file is None:
        for t, noise in zip(targets, result.noise):
            fileio.write_npy(out / f"universal_noise_{t}.npy", noise)
        if target == "all":
            fileio.write_npy(out / "universal_noise_all.npy", result.noise)
    record = {**result.to_dict(), "model": display_path(model_path), "target": target, **results.record_files(files),
              "settings": {**dataclasses.asdict(settings),
                           "noise_file": display_path(noise_file) if noise_file else None}}
    fileio.write_json(out / f"{stem}.json", record)
    return record


def universal_figures(result, targets, test_images, test_labels, out_dir, *, noise_limit: float,
                      tag: str) -> dict[str, str]:
    """Per target: the noise, a 3x3 grid of noisy test images, the confusion matrix;
    for several targets also a 2x5 grid of the noises."""
    from pathlib import Path

    out_dir = Path(out_dir)
    files = {}
    for target, noise, effect in zip(targets, result.noise, result.effects):
        noise_png = out_dir / f"universal_noise_{target}{tag}.png"
        figures.noise_grid(noise[None], [f"noise -> {target}"], noise_png, limit=noise_limit,
                           suptitle=f"universal noise for target {target}", cell_inches=4.0)
        samples = np.clip(test_images[:9] + noise, 0.0, 1.0)
        titles = [f"true {lab}, pred {p}" for lab, p in zip(test_labels[:9], effect.predictions[:9])]
        colors = ["tab:red" if p == target else "black" for p in effect.predictions[:9]]
        samples_png = out_dir / f"universal_samples_{target}{tag}.png"
        figures.digit_grid(samples, titles, samples_png, title_colors=colors,
                           suptitle=f"test images + noise -> {target}: accuracy {effect.accuracy:.1%}")
        confusion_png = out_dir / f"universal_confusion_{target}{tag}.png"
        figures.confusion_figure(effect.confusion, confusion_png,
                                 title=f"with the target-{target} noise: accuracy {effect.accuracy:.1%}, "
                               f"{effect.fooled:.1%} read as {target}")
        files[str(target)] = {"noise": str(noise_png), "samples": str(samples_png), "confusion": str(confusion_png)}
    if len(targets) > 1:
        grid = out_dir / f"universal_noise_all{tag}.png"
        fig, axes = figures.subplots(2, 5, figsize=(10, 4.6), squeeze=False)
        shown = None
        for ax, target, noise, effect in zip(axes.flat, targets, result.noise, result.effects):
            shown = ax.imshow(noise, cmap="seismic", vmin=-noise_limit, vmax=noise_limit, interpolation="nearest")
            ax.set_title(f"-> {target}: acc {effect.accuracy:.1%}", fontsize=9)
            ax.axis("off")
        for ax in list(axes.flat)[len(targets):]:
            ax.axis("off")
        fig.colorbar(shown, ax=axes.ravel().tolist(), shrink=0.8, label="noise")
        fig.suptitle(f"one universal noise per target class (clean accuracy {result.clean_accuracy:.1%})")
        figures.save_figure(fig, grid)
        files["all"] = str(grid)
    return files
