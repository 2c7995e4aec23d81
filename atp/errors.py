"""One error family for everything atp reports to users.

Each message says what was wrong and what to do; the CLI prints it on one line
(exit code 2) without a traceback unless ``--verbose`` is given.
"""


class AtpError(Exception):
    """Base class of every error atp raises on purpose."""


class ConfigError(AtpError, ValueError):
    """A configuration value is out of range (bad K, ratio, opset, ...)."""


class CheckpointError(AtpError):
    """A checkpoint is missing, unreadable or of an unsupported architecture."""


class BundleError(AtpError):
    """A bundle is missing, corrupt, tampered with or of an unknown format version."""


class InputError(AtpError):
    """A run-time input (image, prompt, keep count) cannot be used."""


class MissingDependencyError(AtpError, ImportError):
    """An optional dependency is not installed; the message names the extra."""


def require(module: str, extra: str):
    """Import an optional dependency or raise a clear error naming the extra.

    Args:
        module: Module to import, e.g. ``"onnxruntime"``.
        extra: The ``atp-edge`` extra that provides it, e.g. ``"trt"``.

    Returns:
        The imported module.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module} is not installed ({exc}); install it with: pip install 'atp-edge[{extra}]'"
        ) from exc


class CalibrationError(AtpError):
    """A calibration artifact is missing, corrupt, of an unknown version or made for another model."""
