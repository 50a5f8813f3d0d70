"""Training throughput: our tensorpack trainer against the same CNN trained with Keras ``model.fit``.

Usage::

    python benchmarks/train_throughput.py                      # 3 epochs on 60,000 images, one pair
    python benchmarks/train_throughput.py --repeat 3 --json bench-train.json
    python benchmarks/train_throughput.py --limit 2000 --epochs 2   # quick check
    python benchmarks/train_throughput.py --bf16                    # also both in bfloat16

What is timed
-------------
*ours*: :func:`advmnist.model.training.train` with ``TrainSettings(epochs=E, batch_size=B)`` and
``steps_per_epoch`` unset (so one epoch is ``N // B`` full batches, the DataFlow drops the
partial batch) into a temporary run folder. The per-epoch time is the one tensorpack itself
logs to ``RUN_DIR/log.log``: ``Epoch N (global_step S) finished, time:T seconds.``

    tensorpack/train/base.py, ``Trainer.main_loop``:
        self._callbacks.before_epoch()
        start_time = time.time()
        for local_step in range(steps_per_epoch): run_step(); callbacks.trigger_step()
        self._callbacks.after_epoch()
        logger.info("Epoch ... finished, time:...")     # <- the logged time ends here
        self._callbacks.trigger_epoch()                # "trigger epoch outside the timing region"

``InferenceRunner`` (the validation on the test split that ``train()`` always runs),
``ModelSaver`` and ``ScheduledHyperParamSetter`` do their work in ``_trigger`` /
``_trigger_epoch``, i.e. in ``trigger_epoch()``, after the time is taken: the logged epoch
time contains **no validation and no checkpointing**. It does contain what runs with every
step: the ``QueueInput`` feeding thread, the moving-average summaries, tensorpack's
progress bar, and the summary merge on the last step of the epoch -- that is part of our
trainer's cost. ``humanize_time_delta`` prints 3 significant digits (whole seconds past one
minute), so the worker also records the unrounded value passed to it (a wrapper around that
function in the worker process only) and checks it against the parsed log line.

*keras*: ``tf_keras`` (``TF_USE_LEGACY_KERAS=1``), eager TF2, the same architecture: conv 32
3x3 ReLU valid, conv 64 3x3 ReLU valid, max-pool 2, dropout 0.25, flatten, dense 128 ReLU,
dropout 0.5, dense 10 logits; Adam 1e-3; sparse categorical cross-entropy from logits;
``accuracy`` as a metric (ours computes training accuracy every step too); ``model.fit`` on
the same images, batch B, ``shuffle=True``, ``verbose=0``, no validation data. A callback
times ``on_epoch_begin`` -> ``on_epoch_end`` (``perf_counter``). ``fit`` also runs the final
partial batch, so its epoch holds all N images.

Both sides: the first epoch is skipped as warm-up (graph building / ``tf.function`` tracing,
oneDNN kernel selection) when ``--epochs >= 2``; images/s = images per epoch / mean seconds
per timed epoch. Thread settings are TensorFlow's defaults on both sides (all cores):
:func:`advmnist.tfcompat.session_config` sets ``intra_op/inter_op_parallelism_threads = 0``
and the Keras worker does not touch ``tf.config.threading``.

Our package switches TensorFlow to graph mode (``disable_v2_behavior``) while ``fit`` wants
eager TF2, so each side runs in its own subprocess: this script re-invokes itself with
``--worker ours|keras`` and reads one JSON line from the worker's stdout. With ``--repeat R``
the pair is run R times in alternating order (ours first, then keras first, ...) and the
median of each side is reported: the machine may be shared, the load average before and
after each worker is recorded in the JSON (and shown before each run in the table).

Known asymmetries, both small: tensorpack's ``QueueInput`` thread keeps filling its
50-batch queue while validation runs between epochs, so a timed epoch can start with
batches already gathered and enqueued (a numpy fancy-index of 128 images, well under a
millisecond each, against tens of milliseconds per training step); Keras builds its epoch
iterator (shuffle + prefetch) before ``on_epoch_begin`` as well. Ours drops the final
partial batch (``N // B`` steps), Keras trains on it; images/s counts the images actually
trained on by each side.

The last lines are ``ratio ours/keras = X.XXx``: our images/s divided by Keras' images/s
(higher is better for us), and with ``--bf16`` our training with ``--precision bf16``
(oneDNN's bfloat16 mixed precision) against Keras in float32 and against Keras with its
``mixed_bfloat16`` policy (logits layer in float32).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from advmnist.report.figures import format_table

RESULT_MARK = "ADVMNIST_BENCH_RESULT "
SIDES = ("ours", "keras")
BF16_SIDES = ("ours-bf16", "keras-bf16")
EPOCH_LINE = re.compile(r"Epoch (\d+) \(global_step (\d+)\) finished, time:(.+?)\.\s*$")
UNIT_SECONDS = {"day": 86400.0, "hour": 3600.0, "minute": 60.0, "second": 1.0}


# ---------------------------------------------------------------------------- helpers

def parse_humanized(text: str) -> float:
    """Seconds from tensorpack's ``humanize_time_delta`` text, e.g. '1 minute 5 seconds', '19.5 seconds'."""
    text = text.strip()
    if text == "0 second":
        return 0.0
    parts = re.findall(r"([0-9.eE+-]+) (day|hour|minute|second)s?", text)
    if not parts:
        raise ValueError(f"cannot parse tensorpack time {text!r}")
    return sum(float(value) * UNIT_SECONDS[unit] for value, unit in parts)


def parse_epoch_log(log_text: str) -> list[dict]:
    """``[{"epoch", "global_step", "seconds"}]`` from the 'Epoch N ... finished' lines of log.log."""
    epochs = []
    for line in log_text.splitlines():
        match = EPOCH_LINE.search(line)
        if match:
            epochs.append({"epoch": int(match.group(1)), "global_step": int(match.group(2)),
                           "seconds": parse_humanized(match.group(3)), "text": match.group(3)})
    return epochs


def timed_epochs(seconds: list[float]) -> list[float]:
    """Skip epoch 1 as warm-up when there is more than one epoch."""
    return seconds[1:] if len(seconds) >= 2 else seconds


def emit(payload: dict) -> None:
    print(RESULT_MARK + json.dumps(payload), flush=True)


def limited(split, limit: int | None):
    from advmnist.data.mnist import Split

    if limit is None:
        return split
    return Split(split.images[:limit], split.labels[:limit])


# ---------------------------------------------------------------------------- workers

def worker_ours(args) -> None:
    from advmnist.data.mnist import load_split
    from advmnist.model.training import TrainSettings, train

    train_split = limited(load_split("train"), args.limit)
    # The test split only feeds the (untimed) validation and the final freeze check;
    # with --limit it is cut as well so quick checks stay quick.
    test_split = limited(load_split("test"), min(args.limit, 10000) if args.limit else None)

    from advmnist.tfcompat import load_tensorpack

    load_tensorpack()  # import TensorFlow + tensorpack the package's way before patching
    import tensorpack.train.base as tp_base

    exact: list[float] = []
    humanize = tp_base.humanize_time_delta

    def recording(sec):  # main_loop's only use of this name is the epoch time
        exact.append(float(sec))
        return humanize(sec)

    tp_base.humanize_time_delta = recording
    with tempfile.TemporaryDirectory(prefix="advmnist-bench-train-") as tmp:
        run_dir = Path(tmp) / "run"
        started = time.perf_counter()
        settings = TrainSettings(epochs=args.epochs, batch_size=args.batch_size,
                                 precision="bf16" if args.worker == "ours-bf16" else "fp32")
        result = train(train_split, test_split, run_dir, settings)
        wall = time.perf_counter() - started
        logged = parse_epoch_log((run_dir / "log.log").read_text())
    if len(logged) != args.epochs:
        raise RuntimeError(f"expected {args.epochs} 'Epoch N finished' lines in log.log, found {len(logged)}")
    if len(exact) != len(logged):
        raise RuntimeError(f"recorded {len(exact)} epoch times but log.log has {len(logged)} lines")
    for entry, value in zip(logged, exact):
        # 3 significant digits below a minute, whole seconds above
        tolerance = 1.0 if value >= 60 else max(0.006 * value, 1e-6)
        if abs(entry["seconds"] - value) > tolerance:
            raise RuntimeError(f"log.log says {entry['text']!r} for epoch {entry['epoch']}, recorded {value:.3f} s")
    steps = [b["global_step"] - a for a, b in zip([0] + [e["global_step"] for e in logged], logged)]
    emit({"side": args.worker, "precision": settings.precision, "epoch_seconds": exact,
          "epoch_seconds_log": [e["seconds"] for e in logged],
          "epoch_log_text": [e["text"] for e in logged], "steps_per_epoch": steps,
          "images_per_epoch": [s * args.batch_size for s in steps], "train_images": len(train_split),
          "test_accuracy": result.test_accuracy, "process_wall_seconds_train_call": round(wall, 2),
          "threads": {"intra_op": 0, "inter_op": 0, "source": "advmnist.tfcompat.session_config"}})


def worker_keras(args) -> None:
    os.environ["TF_USE_LEGACY_KERAS"] = "1"  # the same legacy Keras as advmnist's tensorpack layers
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras

    from advmnist.data.mnist import load_split

    train_split = limited(load_split("train"), args.limit)
    x = np.ascontiguousarray(train_split.images, np.float32)
    y = train_split.labels.astype(np.int32)
    tf.random.set_seed(0)
    if args.worker == "keras-bf16":  # Keras's own mixed precision: bfloat16 compute, float32 variables
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    layers = keras.layers
    model = keras.Sequential([
        keras.Input((28, 28)),
        layers.Reshape((28, 28, 1)),  # ours: tf.expand_dims inside the graph
        layers.Conv2D(32, 3, padding="valid", activation="relu"),
        layers.Conv2D(64, 3, padding="valid", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Dropout(0.25),
        layers.Flatten(),
        layers.Dense(128, activation="relu"),
        layers.Dropout(0.5),
        layers.Dense(10, dtype="float32"),  # logits in float32 (the mixed-precision guide's advice)
    ])
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []
            self._start = 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._start)

    timer = EpochTimer()
    started = time.perf_counter()
    history = model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, shuffle=True, verbose=0,
                        callbacks=[timer])
    wall = time.perf_counter() - started
    steps = -(-len(x) // args.batch_size)
    emit({"side": args.worker, "epoch_seconds": timer.seconds, "steps_per_epoch": [steps] * args.epochs,
          "images_per_epoch": [len(x)] * args.epochs, "train_images": len(x),
          "train_accuracy_last_epoch": float(history.history["accuracy"][-1]),
          "process_wall_seconds_fit_call": round(wall, 2), "keras": keras.__version__,
          "tensorflow": tf.__version__, "executing_eagerly": tf.executing_eagerly(),
          "threads": {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                      "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
                      "source": "TensorFlow defaults (0 = all cores)"}})


# ---------------------------------------------------------------------------- driver

def run_worker(side: str, args) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--worker", side, "--epochs", str(args.epochs),
               "--batch-size", str(args.batch_size)]
    if args.limit:
        command += ["--limit", str(args.limit)]
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1",
           "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3")}
    load_before = os.getloadavg()
    started = time.perf_counter()
    proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=None if args.verbose else subprocess.PIPE,
                          text=True, env=env)
    wall = time.perf_counter() - started
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stderr or "").splitlines()[-30:])
        raise SystemExit(f"{side} worker failed (exit {proc.returncode}):\n{tail}")
    record = json.loads(lines[-1][len(RESULT_MARK):])
    timed = timed_epochs(record["epoch_seconds"])
    images = timed_epochs(record["images_per_epoch"])
    record.update({
        "timed_epochs": len(timed), "seconds_per_epoch": statistics.fmean(timed),
        "images_per_second": sum(images) / sum(timed),
        "process_wall_seconds": round(wall, 2), "loadavg_before": load_before, "loadavg_after": os.getloadavg()})
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Images per second of advmnist's tensorpack training vs the same CNN with tf_keras model.fit "
                    "(per-epoch wall time, epoch 1 skipped as warm-up, no validation in the timed part).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per training run (>= 2 to skip a warm-up epoch)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the ours/keras pair this many times, alternating which goes first; report medians")
    parser.add_argument("--limit", type=int, default=None,
                        help="train on only the first N training images (quick checks; also cuts the untimed test "
                             "split)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write all numbers to this JSON file")
    parser.add_argument("--verbose", action="store_true", help="show the workers' stderr (TF/tensorpack logs)")
    parser.add_argument("--bf16", action="store_true",
                        help="also time ours with --precision bf16 (oneDNN bfloat16 mixed precision) and Keras with "
                             "its mixed_bfloat16 policy, in the same run")
    parser.add_argument("--worker", choices=SIDES + BF16_SIDES, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.repeat < 1:
        parser.error("expected --epochs, --batch-size and --repeat >= 1")
    if args.limit is not None and not args.batch_size <= args.limit <= 60000:
        parser.error(f"expected --batch-size <= --limit <= 60000, got {args.limit}")

    if args.worker in ("ours", "ours-bf16"):
        worker_ours(args)
        return 0
    if args.worker in ("keras", "keras-bf16"):
        worker_keras(args)
        return 0

    images = args.limit or 60000
    print(f"training throughput: {images:,} images, batch {args.batch_size}, {args.epochs} epoch(s) per run, "
          f"{args.repeat} pair(s); {os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.2f}")
    if args.epochs < 2:
        print("warning: --epochs 1 leaves no warm-up epoch to skip; epoch 1 is timed", file=sys.stderr)
    sides = SIDES + (BF16_SIDES if args.bf16 else ())
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for r in range(args.repeat):
        order = sides if r % 2 == 0 else tuple(reversed(sides))
        for side in order:
            print(f"  pair {r + 1}/{args.repeat}: running {side} ...", file=sys.stderr, flush=True)
            record = run_worker(side, args)
            record["pair"], record["position"] = r + 1, order.index(side) + 1
            runs[side].append(record)
            print(f"  pair {r + 1}/{args.repeat}: {side} {record['images_per_second']:,.0f} images/s "
                  f"({record['seconds_per_epoch']:.2f} s/epoch)", file=sys.stderr, flush=True)

    rows = []
    for side in sides:
        for record in runs[side]:
            rows.append([side, f"{record['pair']}/{record['position']}",
                         " ".join(f"{s:.2f}" for s in record["epoch_seconds"]), record["timed_epochs"],
                         f"{record['images_per_epoch'][-1]:,}", f"{record['seconds_per_epoch']:.2f}",
                         f"{record['images_per_second']:,.0f}", f"{record['loadavg_before'][0]:.1f}"])
    print()
    print(format_table(["side", "pair/pos", "s per epoch (all)", "timed", "img/epoch", "s/epoch", "images/s",
                        "load avg"], rows))
    summary = {side: {"seconds_per_epoch": statistics.median(r["seconds_per_epoch"] for r in runs[side]),
                      "images_per_second": statistics.median(r["images_per_second"] for r in runs[side])}
               for side in sides}
    ratio = summary["ours"]["images_per_second"] / summary["keras"]["images_per_second"]
    print()
    print(format_table(["side", "median s/epoch", "median images/s"],
                       [[side, f"{summary[side]['seconds_per_epoch']:.2f}",
                         f"{summary[side]['images_per_second']:,.0f}"] for side in sides]))
    print("(timed: epochs 2..E, training steps only; ours = tensorpack's logged epoch time, "
          "keras = on_epoch_begin..on_epoch_end)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "benchmark": "train_throughput", "settings": {"epochs": args.epochs, "batch_size": args.batch_size,
                                                          "repeat": args.repeat, "limit": args.limit,
                                                          "images": images},
            "cpu_count": os.cpu_count(), "runs": runs, "median": summary, "ratio_ours_over_keras": ratio,
            "ratio_ours_bf16_over_keras": (summary["ours-bf16"]["images_per_second"]
                                           / summary["keras"]["images_per_second"]) if args.bf16 else None,
            "ratio_ours_bf16_over_keras_bf16": (summary["ours-bf16"]["images_per_second"]
                                                / summary["keras-bf16"]["images_per_second"]) if args.bf16 else None,
        }, indent=2))
        print(f"numbers written to {args.json}")
    from advmnist.tfcompat import resolve_precision

    chosen, why = resolve_precision("auto")
    print(f"ratio ours/keras = {ratio:.2f}x (ours with the defaults: --precision auto is {chosen} here, {why}; "
          "target >= 2x tf-keras float32, which needs bfloat16)")
    if args.bf16:
        ours_bf16 = summary["ours-bf16"]["images_per_second"]
        print(f"ratio ours-bf16/keras = {ours_bf16 / summary['keras']['images_per_second']:.2f}x "
              "(bfloat16 mixed precision; keras in float32)")
        print(f"ratio ours-bf16/keras-bf16 = {ours_bf16 / summary['keras-bf16']['images_per_second']:.2f}x "
              "(both in bfloat16 mixed precision)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
