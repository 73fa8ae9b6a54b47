"""The project's exceptions: each message is one line naming the problem and what to do about it.

Entry points (``train_net.py``, ``demo.py``, tools) print any ``HQODError`` as a single ``error:`` line."""


class HQODError(Exception):
    """A failure the user can act on, reported as one line instead of a traceback."""


class HQODInputError(HQODError, ValueError):
    """Bad config, data, weights or CLI input, detected before any long work starts."""


class CheckpointSaveError(HQODError):
    """A checkpoint could not be written (disk full, no permission); the last good one is left as it was."""


class TrainingDivergedError(HQODError):
    """The loss became NaN or infinite; training stopped without writing the diverged model."""
