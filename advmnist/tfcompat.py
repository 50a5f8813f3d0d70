"""One door to TensorFlow: quiet, graph mode, legacy Keras.

Every module that needs TensorFlow calls :func:`tf1` instead of importing it, so
the environment is set up exactly once, before TensorFlow's first import.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys

_verbose = False
_tf = None
_tensorpack = None


def set_verbose(verbose: bool) -> None:
    """Show TensorFlow's and tensorpack's start-up logs (call before :func:`tf1`)."""
    global _verbose
    _verbose = verbose


@contextlib.contextmanager
def _quiet_stderr():
    """Silence C++ log lines written to fd 2 before absl's logging is set up.

    TF_CPP_MIN_LOG_LEVEL no longer covers the messages TensorFlow 2.21 prints while
    loading its shared libraries, so the file descriptor itself is redirected.
    """
    if _verbose:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def verbose() -> bool:
    """Whether ``--verbose`` asked for TensorFlow's and tensorpack's own logs."""
    return _verbose


def tf1():
    """Return ``tf.compat.v1`` with v2 behaviour disabled (graph mode), for the whole process.

    The first call sets ``TF_USE_LEGACY_KERAS=1`` (tensorpack 0.11 builds its layers on
    the legacy ``tf.keras``) before TensorFlow is imported.
    """
    global _tf
    if _tf is not None:
        return _tf
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    if not _verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with _quiet_stderr():
        import tensorflow as tf
    tf.get_logger().setLevel(logging.INFO if _verbose else logging.ERROR)
    tf.compat.v1.disable_v2_behavior()  # after the level: it logs a deprecation warning
    _tf = tf.compat.v1
    return _tf


def load_tensorpack():
    """Import tensorpack after :func:`tf1`, quietly, with its logs on stderr; return the module.

    Only training and the live network need it; attacks on a frozen graph skip its
    import (about 0.2 s).
    """
    global _tensorpack
    if _tensorpack is None:
        tf1()
        with _quiet_stderr():
            import tensorpack
        from tensorpack.utils import logger

        # tensorpack logs to stdout; stdout is reserved for ``--json`` output
        for handler in logger._logger.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
                handler.setStream(sys.stderr)
        _tensorpack = tensorpack
        tensorpack_logs(_verbose)
    return _tensorpack


def tensorpack_logs(show: bool) -> None:
    """tensorpack's INFO lines on the terminal: only with ``--verbose`` (training prints its own line per
    epoch); a run folder's ``log.log`` gets them all."""
    logger = load_tensorpack().utils.logger._logger
    logger.setLevel(logging.INFO)
    if not any(isinstance(f, _FailedStep) for f in logger.filters):
        logger.addFilter(_FailedStep())
    for handler in logger.handlers:
        if not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.INFO if show else logging.WARNING)
            if not show and not any(isinstance(f, _GPUAdvice) for f in handler.filters):
                handler.addFilter(_GPUAdvice())


class _FailedStep(logging.Filter):
    """tensorpack 0.11 logs ``logger.error("Training failed at global_step=", step)`` with no placeholder for the
    step, so logging prints its own traceback ("--- Logging error ---") over the error we report in one line:
    give the message its placeholder; on the terminal it stays below the warning level unless --verbose."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == "Training failed at global_step=" and len(record.args or ()) == 1:
            record.msg, record.levelno, record.levelname = "Training failed at global_step=%s", logging.INFO, "INFO"
        return True


class _GPUAdvice(logging.Filter):
    """tensorpack warns, whenever a session gets a config, that GPU options may come too late; it is about
    GPUs initialized earlier, not a problem here (on a machine without a GPU, not even a subject)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not (message.startswith("User-provided custom session config")
                    or message.startswith("To workaround this issue"))


#: ``auto`` picks ``bf16`` where the CPU computes bfloat16 natively, ``fp32`` elsewhere.
PRECISIONS = ("auto", "fp32", "bf16")
#: /proc/cpuinfo flags of a native bfloat16 dot product: AVX-512 BF16 (Cooper Lake, Sapphire Rapids, AMD Zen 4)
#: or AMX (Sapphire Rapids and later).
BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is not readable, e.g. on macOS)."""
    try:
        with open(path) as info:
            for line in info:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def resolve_precision(precision: str, *, flags: set[str] | None = None, gpus: int | None = None) -> tuple[str, str]:
    """``(fp32 or bf16, why)`` for a requested precision; ``auto`` becomes bf16 only on a CPU-only machine
    whose CPU has native bfloat16 (oneDNN's bf16 rewrite is slower than float32 elsewhere)."""
    if precision not in PRECISIONS:
        raise ValueError(f"expected a precision in {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision, "asked for"
    if gpus is None:
        gpus = len(tf1().config.list_physical_devices("GPU"))
    if gpus:
        return "fp32", "auto: a GPU is present (the bfloat16 rewrite is oneDNN's, for CPUs)"
    flags = cpu_flags() if flags is None else flags
    native = sorted(set(BFLOAT16_FLAGS) & flags)
    if native:
        return "bf16", f"auto: this CPU has native bfloat16 ({', '.join(native)})"
    return "fp32", "auto: this CPU has no native bfloat16 (no avx512_bf16 or amx_bf16 in /proc/cpuinfo)"


def session_config(tf=None, *, bfloat16: bool = False):
    """A session config that uses every core.

    tensorpack's ``get_default_sess_config`` pins ``intra_op_parallelism_threads=1``,
    a GPU-era default that costs about 12 % on a 2-core CPU. ``bfloat16`` turns on
    oneDNN's automatic mixed precision: a graph rewrite that runs convolutions and
    matrix products in bfloat16 (variables and their updates stay float32), fast on CPUs
    with AVX-512 BF16 or AMX.
    """
    tf = tf or tf1()
    config = tf.ConfigProto()
    if bfloat16:
        from tensorflow.core.protobuf.rewriter_config_pb2 import RewriterConfig

        config.graph_options.rewrite_options.auto_mixed_precision_onednn_bfloat16 = RewriterConfig.ON
    config.allow_soft_placement = True
    config.gpu_options.allow_growth = True
    config.intra_op_parallelism_threads = 0
    config.inter_op_parallelism_threads = 0
    return config
