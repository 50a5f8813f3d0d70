"""``advmnist evaluate``: test accuracy and confusion matrix of a frozen model."""
from __future__ import annotations

import click

from advmnist.cli.options import (Output, data_dir_option, json_option, load_model, model_option, out_option,
                                  translate_errors)


@click.command(short_help="Test accuracy and confusion matrix of a model.")
@model_option
@out_option("Folder for confusion_matrix.png.")
@data_dir_option
@json_option
@translate_errors
def evaluate(model_path, no_verify, out, data_dir, json_mode) -> None:
    """Test accuracy and confusion matrix of a frozen model on the 10,000 test images."""
    from advmnist.report import figures
    from advmnist.data.mnist import load_split
    from advmnist.fileio import display_path
    from advmnist.model.frozen import confusion_matrix

    output = Output(json_mode)
    model = load_model(model_path, no_verify, output)
    test = load_split("test", data_dir, log=output.say)
    predictions = model.predict_proba(test.images).argmax(1)
    accuracy = float((predictions == test.labels).mean())
    matrix = confusion_matrix(test.labels, predictions)
    figure = out / "confusion_matrix.png"
    figures.confusion_figure(matrix, figure, title=f"{display_path(model.path)}: test accuracy {accuracy:.2%}")
    output.say(f"model {model.path}: test accuracy {accuracy:.2%} ({int((predictions == test.labels).sum())}"
               f"/{len(test)})")
    output.say(figures.format_confusion(matrix))
    output.say(f"confusion matrix figure: {figure}")
    output.result({"model": display_path(model.path), "test_accuracy": accuracy, "confusion_matrix": matrix,
                   "figure": display_path(figure)})
