"""Build a generated data set's folder once and publish it atomically, so a half-written cache is never used.

The folder is filled under a temporary name beside it, gets a marker file written last, and is then renamed
into place. Only a folder holding the marker is trusted: a folder without it (copied in part, or left by an
older layout) is deleted and rebuilt, and a temporary folder left by a killed run is never read.
"""
import os
import pathlib
import shutil
import tempfile

COMPLETE_MARKER = ".complete"


def is_complete(folder) -> bool:
    """Whether ``folder`` is a finished build (its marker exists)."""
    return (pathlib.Path(folder) / COMPLETE_MARKER).is_file()


def build_once(folder, build) -> pathlib.Path:
    """Return ``folder``, first calling ``build(tmp_folder)`` to create it when it is not a finished build.

    Several processes may build at once (one per training worker); the first rename wins and the others
    discard their copy.
    """
    folder = pathlib.Path(folder)
    if is_complete(folder):
        return folder
    if folder.exists():
        shutil.rmtree(folder)  # unfinished: never trusted
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        build(tmp)
        (tmp / COMPLETE_MARKER).write_text("ok\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.rename(tmp, folder)
    except OSError:
        shutil.rmtree(tmp)
        if not is_complete(folder):  # else another process published the same build first
            raise
    return folder
