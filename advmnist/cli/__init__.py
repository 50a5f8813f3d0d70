"""The ``advmnist`` command line: one module per command, a thin layer over the library.

Each command validates its input at the boundary (bad values exit with status 2),
calls the library, has :mod:`advmnist.experiments.results` and :mod:`advmnist.report.figures` write its
files (atomically), and prints human text to stdout (to stderr with ``--json``, which
prints exactly one JSON object on stdout, an error object if the command fails).
"""
from __future__ import annotations

import os
import sys

import click

from advmnist import tfcompat
from advmnist.cli import (attack, data, evaluate, export, immunize, import_model, matrix, merge, minimal,
                          reproduce, robustness, tradeoff, train, transfer, universal)
from advmnist.cli.options import CONTEXT_SETTINGS, json_error


VERBOSE_FLAGS = ("--verbose", "-v")


class AdvmnistGroup(click.Group):
    """With ``--json``, an error also prints ``{"error": ..., "exit_code": N}`` on stdout.

    Scripts that read stdout then always get one JSON object, also when the
    command line is wrong (exit 2), a file is bad (exit 2), the command fails (exit 1)
    or is interrupted (exit 130); the human message still goes to stderr.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["advmnist.json"] = "--json" in args
        # `advmnist attack --verbose` means what `advmnist --verbose attack` does
        end = args.index("--") if "--" in args else len(args)
        verbose = [a for a in args[:end] if a in VERBOSE_FLAGS]
        args = verbose[:1] + [a for a in args[:end] if a not in VERBOSE_FLAGS] + args[end:]
        # `advmnist --json attack` means what `advmnist attack --json` does
        before = 0
        while before < len(args) and args[before].startswith("-") and args[before] != "--":
            before += 1
        if "--json" in args[:before] and before < len(args):
            args = [a for a in args[:before] if a != "--json"] + [args[before], "--json"] + args[before + 1:]
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context):
        if not ctx.meta.get("advmnist.json"):
            return super().invoke(ctx)
        try:
            return super().invoke(ctx)
        except click.exceptions.Exit:
            raise
        except click.ClickException as err:
            json_error(err.format_message(), err.exit_code)
            raise
        except click.Abort:
            json_error("aborted", 1)
            raise
        except SystemExit as stop:
            if stop.code not in (0, None):
                json_error("interrupted" if stop.code == 130 else f"exit status {stop.code}",
                           stop.code if isinstance(stop.code, int) else 1)
            raise
        except Exception as err:
            json_error(f"{type(err).__name__}: {err}", 1)
            raise


@click.group(cls=AdvmnistGroup, context_settings=CONTEXT_SETTINGS)
@click.option("--verbose", "-v", is_flag=True,
              help="Show TensorFlow's and tensorpack's own log messages (also accepted after the command).")
@click.version_option(package_name="advmnist")
def main(verbose: bool) -> None:
    """Adversarial examples on MNIST: train a small CNN, fool it, defend it.

    \b
    Start with:
      advmnist train --epochs 12     # ~5 min on 2 CPU cores; writes runs/cnn/model.pb
      advmnist import MODEL.keras    # or a SavedModel / ONNX classifier trained elsewhere, into runs/MODEL
      advmnist evaluate              # test accuracy and confusion matrix
      advmnist attack --reg l1       # per-image targeted noise, grids in assets/
      advmnist matrix                # every digit into every other: success and cost
      advmnist tradeoff              # noise size against success, over regularization weights
      advmnist minimal --norm l2     # the smallest change per image that fools the network
      advmnist robustness            # robust accuracy against eps (AutoAttack; --attack pgd), 1000 images
      advmnist transfer --model runs/cnn --evaluate-on OTHER_RUN  # do examples made on one network fool another?
      advmnist universal --target 3  # one noise that makes the network read every digit as 3
      advmnist immunize universal --target 3  # adversarial training against that noise
      advmnist immunize pgd --eps 0.3         # ... against per-image PGD: a network robust within eps
      advmnist reproduce --model runs/cnn  # both reference experiments into report/index.html

    Run `advmnist COMMAND --help` for the options of each command.
    """
    tfcompat.set_verbose(verbose)


for _module in (data, train, export, evaluate, attack, matrix, tradeoff, minimal, robustness, transfer, universal,
                immunize, merge, reproduce):
    main.add_command(getattr(_module, _module.__name__.rsplit(".", 1)[1]))
main.add_command(reproduce.report)
main.add_command(import_model.import_model, name="import")


def entry() -> None:
    """The ``advmnist`` console script: run the command, then exit without interpreter teardown.

    Once TensorFlow is imported, Python's normal shutdown spends about half a second
    tearing it down. Every file a command writes is complete before the command
    returns: ours are written to a temporary name and renamed, and tensorpack closes
    its checkpoint and event writers when training ends; its text log is flushed by
    ``logging.shutdown`` here. So after flushing the streams the process can end at
    once with the command's exit status.
    """
    import logging

    try:
        main()
        status = 0
    except SystemExit as stop:
        status = stop.code
    if status is None:
        status = 0
    elif not isinstance(status, int):
        print(status, file=sys.stderr)
        status = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):  # a reader that went away (`advmnist ... | head`)
            pass
    os._exit(status)


if __name__ == "__main__":
    entry()
