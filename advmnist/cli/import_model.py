"""``advmnist import``: a Keras, SavedModel or ONNX MNIST classifier as a run folder every command takes."""
from __future__ import annotations

from pathlib import Path

import click

from advmnist.cli.options import (Output, data_dir_option, finite, json_option, renamed_option, take_renamed,
                                  translate_errors,
                                  writable_folder)
from advmnist.interop.convert import PIXEL_SCALES
from advmnist.interop.importing import MNIST_MEAN, MNIST_STD, OUTPUT_CHOICES

#: below this test accuracy the input convention is probably not the model's
PLAUSIBLE_ACCURACY = 0.5


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise click.BadParameter(f"expected a new or empty folder for the imported model, {out} "
                                 f"{'is a file' if not out.is_dir() else 'is not empty'}", param_hint="--run-dir")


@click.command("import", short_help="Import a Keras, SavedModel or ONNX classifier as a run folder.")
@click.argument("source", metavar="MODEL", type=click.Path(path_type=Path))
@click.option("--run-dir", "out", type=click.Path(file_okay=True, path_type=Path), default=None,
              callback=writable_folder, help="New folder for model.pb + model.json.  [default: runs/<MODEL's name>]")
@renamed_option("--out", "--run-dir", "old_out", type=click.Path(file_okay=True, path_type=Path),
                callback=writable_folder)
@click.option("--input-range", type=click.Choice(PIXEL_SCALES), default="0-1", show_default=True,
              help="The pixel values the model was trained on: 0-1, 0-255, or mean-std: (pixel/255 - mean) "
                   "/ std, as torchvision's Normalize((mean,), (std,)) after ToTensor.")
@click.option("--mean", type=float, callback=finite, default=None,
              help=f"With --input-range mean-std: the mean, on the 0-1 scale.  [default: {MNIST_MEAN}]")
@click.option("--std", type=click.FloatRange(min=0, min_open=True), callback=finite, default=None,
              help=f"With --input-range mean-std: the standard deviation, on the 0-1 scale.  "
                   f"[default: {MNIST_STD}]")
@click.option("--output", type=click.Choice(OUTPUT_CHOICES), default="auto", show_default=True,
              help="What the model outputs. auto: a final softmax is skipped (its input is taken as the "
                   "logits), outputs that sum to 1 are probabilities, anything else logits. probabilities: "
                   "their log is taken as the logits (gradients can then be weaker).")
@data_dir_option
@json_option
@translate_errors
def import_model(source, out, old_out, input_range, mean, std, output, data_dir, json_mode) -> None:
    """Import an MNIST classifier trained elsewhere, so every command takes it with --model.

    MODEL is a Keras file (.keras or .h5, Keras 3 or tf-keras), a TensorFlow
    SavedModel folder, or an ONNX file (with `pip install 'advmnist[onnx]'`). It must
    take 28x28 grayscale images, as (N, 28, 28), (N, 28, 28, 1), (N, 1, 28, 28) or
    (N, 784), and give 10 outputs. The conversion runs in a separate process (eager
    TensorFlow, Keras 3) and writes the same model.pb + model.json as `train`: the
    input is (N, 28, 28) pixels in [0, 1] whatever the model expects (--input-range
    and the layout are built into the graph), and the logits are the model's
    outputs, or what goes into its final softmax. The graph is checked against the
    model itself on 32 check images, then its test accuracy is measured on the
    10,000 MNIST test images.

    \b
    Example:
      advmnist import my_mnist.keras --run-dir runs/mine
      advmnist robustness --model runs/mine --model runs/cnn
    """
    from advmnist.data.mnist import load_split
    from advmnist.model.freezing import TENSOR_NAMES
    from advmnist.fileio import check_writable_dir, display_path
    from advmnist.model.frozen import MODEL_FILE, FrozenModel
    from advmnist.interop import importing
    from advmnist.model.runs import write_frozen

    out = take_renamed(out, old_out, "import", "--out", "--run-dir", "the run folder it makes, as in train")
    if input_range != "mean-std" and (mean is not None or std is not None):
        raise click.BadParameter("--mean and --std only apply to --input-range mean-std",
                                 param_hint="--mean" if mean is not None else "--std")
    if out is None:
        out = Path("runs") / source.stem
        check_writable_dir(out, "--run-dir")
    _check_out(out)
    settings = importing.ImportSettings(input_range, MNIST_MEAN if mean is None else mean,
                                        MNIST_STD if std is None else std, output)
    say = Output(json_mode).say
    say(f"converting {source} in a separate process ...")
    imported = importing.import_model(source, settings)
    test = load_split("test", data_dir, log=say)
    predictions = FrozenModel(imported.graph_def, TENSOR_NAMES, out / MODEL_FILE).predict_proba(test.images)
    accuracy = float((predictions.argmax(1) == test.labels).mean())
    meta = {**imported.meta, "source": {**imported.meta["source"], "path": display_path(source)}}
    write_frozen(imported.graph_def, out, None, test_accuracy=accuracy, **meta)
    source_meta, convention = meta["source"], meta["input_convention"]
    say(f"read with {source_meta['reader']}; input {convention['layout']} in {input_range}; logits: "
        f"{meta['logits_from']}; agrees with the model on {meta['checked_on']}")
    say(f"imported {source} into {out / MODEL_FILE}: test accuracy {accuracy:.2%}")
    if accuracy < PLAUSIBLE_ACCURACY:
        say(f"warning: a test accuracy of {accuracy:.2%} suggests another input convention: check --input-range "
            "(and --mean / --std)")
    Output(json_mode).result({"model": display_path(out / MODEL_FILE), "test_accuracy": accuracy, **meta})
