"""Reading checkpoint files without running code from them.

A pickle can name any Python callable to be called while it loads; a checkpoint from the internet must not be able
to. Torch files (``.pth``) are read with ``torch.load(..., weights_only=True)``; Detectron2 model-zoo pickles
(``.pkl``) with an unpickler that builds only plain containers, numbers, strings and numpy arrays. Numpy arrays are
allowed in both, as Detectron2 and fvcore checkpoints may hold them. Anything else, and a truncated or corrupt file,
is one ``HQODInputError`` line naming the file.
"""
import pickle
import re

import numpy as np
import torch

from ..errors import HQODInputError

# (module, name) of every global a model-zoo pickle may name: numpy's array, scalar and dtype rebuilders (under
# numpy 1 and numpy 2 module names), ordered dicts, and the codec Python uses for bytes in protocol-2 pickles.
PICKLE_ALLOWED_GLOBALS = frozenset({
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    *((f"numpy.{core}.multiarray", name) for core in ("core", "_core") for name in ("_reconstruct", "scalar")),
    *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")),
})
# The same numpy rebuilders, as objects, for torch's weights-only unpickler (taken from what numpy pickles with,
# so that the numpy 1 and numpy 2 locations both work).
# Numeric dtypes only (bool, integers, floats, complex): no object arrays.
TORCH_EXTRA_SAFE_GLOBALS = [np.dtype, np.ndarray, np.zeros(0).__reduce__()[0], np.float32(0).__reduce__()[0],
                            *(type(np.dtype(code)) for code in "?bhilqBHILQefdgFDG")]


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in PICKLE_ALLOWED_GLOBALS:
            raise _CodeInFile(f"{module}.{name}")
        return super().find_class(module, name)


class _CodeInFile(pickle.UnpicklingError):
    """The file names a callable outside the allow-list (``args[0]`` is its name)."""


def load_pickle(path):
    """The object in the pickle file ``path`` (latin-1 strings, as Detectron2 reads Python 2 pickles), built only
    from ``PICKLE_ALLOWED_GLOBALS``."""
    return _read(path, lambda f: _ArraysOnlyUnpickler(f, encoding="latin1").load())


def load_torch(path):
    """The object in the torch file ``path``, on the CPU, read with ``weights_only=True`` (numpy arrays allowed)."""
    def load(f):
        with torch.serialization.safe_globals(TORCH_EXTRA_SAFE_GLOBALS):
            return torch.load(f, map_location="cpu", weights_only=True)

    return _read(path, load)


def _read(path, load):
    try:
        with open(path, "rb") as f:
            return load(f)
    except OSError as e:
        raise HQODInputError(f"cannot open checkpoint {path} ({e.strerror or e}); check the path and its "
                             "permissions") from None
    except _CodeInFile as e:
        raise _refused(path, e.args[0]) from None
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise _unreadable(path, e) from None
        found = re.search(r"(?:GLOBAL |but got <class ')([\w.]+)", str(e))
        raise _refused(path, found.group(1) if found else "an object outside the allowed types") from None
    except Exception as e:  # neither reader runs code from the file, so any other failure means a damaged file
        raise _unreadable(path, e) from None


def _refused(path, what) -> HQODInputError:
    return HQODInputError(
        f"checkpoint {path} refused: loading it would call {what}, which can run code; only weights, numbers, "
        "strings and numpy arrays are read. Re-save its state dict from a trusted copy (torch.save(model.state_dict()))"
    )


def _unreadable(path, error) -> HQODInputError:
    message = " ".join(str(error).split()).split(". ")[0][:160]
    reason = f"{type(error).__name__}: {message}" if message else type(error).__name__
    return HQODInputError(
        f"cannot read checkpoint {path}: it is truncated or corrupt ({reason}); pass a whole checkpoint, or delete "
        "it (and its last_checkpoint entry) to resume from an earlier one"
    )
