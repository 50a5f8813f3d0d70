"""The Square attack (no gradient, 5000 queries) against PGD (40 gradient steps), and what one query costs.

Usage::

    python benchmarks/square.py --model runs/cnn
    python benchmarks/square.py --model runs/cnn --count 200 --queries 5000 --json bench-square.json

Strength and time: for each budget (L-infinity 0.1 and 0.3, L2 1.5 by default), on test
images ``0 .. count-1``, ``PGD(norm, eps, steps=40)`` and ``Square(norm, eps,
queries=5000)`` (seed 0 both), one after the other in this process, each timed with
``perf_counter`` around the call (graph, session, attack, final predictions). Robust
accuracy: the share of images the network still classifies correctly after the attack.
``square only`` / ``pgd only``: images one attack fools and the other does not.
``queries (median)``: over the images Square fooled that the network classified correctly.

Cost of a query (``--batch`` images, ``--calls`` calls of ``check_every`` queries each):
Square's session call (``SquareLoop.run``: the queries in a ``tf.while_loop``, each a
candidate per image and one forward pass) against the bare forward pass of the same
images (``sess.run(logits)`` in a Python loop, same session config), per image. 1.00x
would mean the search itself is free. A short warm-up of both runs first, and the two
alternate ``--repeat`` times (medians).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from advmnist.attacks import PGD
from advmnist.attacks.square import DRAW_KEY, Batch, Square, SquareSession
from advmnist.attacks.square_proposals import first_directions, query_draws, square_sides
from advmnist.data.mnist import load_split
from advmnist.model.frozen import FrozenModel
from advmnist.report.figures import format_table
from advmnist.tfcompat import session_config, tf1

BUDGETS = (("linf", 0.1), ("linf", 0.3), ("l2", 1.5))


def timed(call):
    start = time.perf_counter()
    out = call()
    return out, time.perf_counter() - start


def strength(model, images, labels, norm: str, eps: float, queries: int, steps: int) -> dict:
    clean = model.predict_proba(images).argmax(1) == labels
    pgd, pgd_seconds = timed(lambda: PGD(norm, eps, steps=steps)(model.logits, images, labels, seed=0))
    square, square_seconds = timed(lambda: Square(norm, eps, queries=queries)(model.logits, images, labels, seed=0))
    fooled = square.success & clean
    return {"norm": norm, "eps": eps, "count": len(images), "clean_accuracy": float(clean.mean()),
            "pgd_robust_accuracy": float(1 - pgd.success.mean()), "pgd_seconds": pgd_seconds,
            "square_robust_accuracy": float(1 - square.success.mean()), "square_seconds": square_seconds,
            "square_only": int((square.success & ~pgd.success).sum()),
            "pgd_only": int((pgd.success & ~square.success).sum()),
            "square_median_queries": float(np.median(square.info["broken_at"][fooled])) if fooled.any() else None,
            "square_queries_total": int(square.info["steps_run"].sum())}


def query_cost(model, norm: str, eps: float, batch_size: int, calls: int, repeat: int, check_every: int) -> dict:
    """Seconds per image-query of Square's loop against seconds per image of a bare forward pass."""
    tf = tf1()
    data = load_split("test", rows=slice(0, batch_size))
    batch = Batch.of(np.arange(batch_size), data.images, data.labels, np.full(batch_size, eps, np.float32))
    square = Square(norm, eps, check_every=check_every)
    graph = tf.Graph()
    with graph.as_default():
        image = tf.placeholder(tf.float32, (None, 28, 28))
        logits = model.logits(image)
    with SquareSession(model.logits, norm) as session, tf.Session(graph=graph, config=session_config(tf)) as bare:
        rngs = [np.random.default_rng([0, DRAW_KEY, index]) for index in range(batch_size)]
        delta, margin, _ = session.loop.start(session.sess, batch, first_directions(norm, rngs))
        sides = square.sides(np.arange(100, 100 + check_every))
        draws = [query_draws(norm, rngs, sides) for _ in range(calls)]

        def run_square():
            for drawn in draws:  # the state stays: every call does the same work
                session.loop.run(session.sess, batch, delta, margin, sides, drawn)

        def run_bare():
            for _ in range(calls * check_every):
                bare.run(logits, {image: batch.images})

        run_square(), run_bare()  # warm-up
        square_times, bare_times = [], []
        for _ in range(repeat):
            square_times.append(timed(run_square)[1])
            bare_times.append(timed(run_bare)[1])
    per = batch_size * calls * check_every
    square_ms, bare_ms = 1e3 * statistics.median(square_times) / per, 1e3 * statistics.median(bare_times) / per
    return {"norm": norm, "batch": batch_size, "square_ms_per_image_query": square_ms,
            "forward_ms_per_image": bare_ms, "ratio": square_ms / bare_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/cnn", help="run folder or model.pb")
    parser.add_argument("--count", type=int, default=200, help="test images 0 .. count-1")
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--steps", type=int, default=40, help="PGD steps")
    parser.add_argument("--batch", type=int, default=64, help="images in the query-cost measurement")
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-strength", action="store_true", help="only the cost of a query")
    parser.add_argument("--json", type=Path, help="also write the tables here")
    args = parser.parse_args()
    model = FrozenModel.load(args.model)
    costs = [query_cost(model, norm, eps, args.batch, args.calls, args.repeat, Square().check_every)
             for norm, eps in (("linf", 0.1), ("l2", 1.5))]
    print(format_table(["norm", "images", "Square ms/image-query", "forward ms/image", "ratio"],
                       [[c["norm"], c["batch"], c["square_ms_per_image_query"], c["forward_ms_per_image"],
                         f"{c['ratio']:.2f}x"] for c in costs]), flush=True)
    rows = []
    if not args.skip_strength:
        data = load_split("test", rows=slice(0, args.count))
        for norm, eps in BUDGETS:
            rows.append(strength(model, data.images, data.labels, norm, eps, args.queries, args.steps))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        print(format_table(["norm", "eps", "images", "PGD robust", "PGD s", "Square robust", "Square s",
                            "square only", "pgd only", "queries (median)"],
                           [[r["norm"], r["eps"], r["count"], r["pgd_robust_accuracy"], r["pgd_seconds"],
                             r["square_robust_accuracy"], r["square_seconds"], r["square_only"], r["pgd_only"],
                             r["square_median_queries"]] for r in rows]))
    if args.json:
        args.json.write_text(json.dumps({"query_cost": costs, "strength": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
