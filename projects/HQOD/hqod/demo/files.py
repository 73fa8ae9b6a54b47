"""The demo's image files: inputs from paths, globs, folders or a data set, reading, and atomic writing."""
import glob
import os

from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image
from PIL import Image

from ..errors import HQODInputError
from ..evaluation.harmony import ground_truth_by_image
from ..utils.io import atomic_path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def expand_inputs(patterns, max_images=None) -> list:
    """The image files named by ``patterns`` (files, globs or folders of images), in order, each once."""
    found = {}
    for pattern in patterns:
        pattern = os.path.expanduser(pattern)
        paths = [pattern] if os.path.exists(pattern) else sorted(glob.glob(pattern, recursive=True))
        files = []
        for path in paths:
            if os.path.isdir(path):
                files += sorted(os.path.join(path, name) for name in os.listdir(path)
                                if name.lower().endswith(IMAGE_EXTENSIONS))
            else:
                files.append(path)
        if not files:
            raise HQODInputError(f"--input {pattern!r} matches no image file; pass image files, a folder of images "
                                 "or a quoted glob such as 'images/*.jpg'")
        found.update(dict.fromkeys(files))
    return list(found)[:max_images]


def dataset_inputs(dataset_name, max_images=None) -> dict:
    """``image path -> (ground-truth Boxes, classes)`` for the first ``max_images`` images of a registered data set."""
    gt = ground_truth_by_image(dataset_name)
    records = DatasetCatalog.get(dataset_name)[:max_images]
    return {record["file_name"]: gt[record["image_id"]] for record in records}


def output_paths(inputs, output) -> list:
    """Where each input's drawing goes: ``output`` itself when it is a file name (it has an extension), else a file of
    the input's name in the folder ``output``."""
    writable = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE}
    as_file = bool(os.path.splitext(output)[1]) and not output.endswith(os.sep) and not os.path.isdir(output)
    if as_file and len(inputs) > 1:
        raise HQODInputError(f"--output {output!r} is one file but there are {len(inputs)} input images; "
                             "pass a folder")
    paths = [output] if as_file else [os.path.join(output, os.path.basename(path)) for path in inputs]
    sources = {}
    for path, source in zip(paths, inputs):
        if os.path.splitext(path)[1].lower() not in writable:
            raise HQODInputError(f"cannot write {path!r}: not an image file name; end --output in .png or .jpg, "
                                 "or pass a folder")
        if path in sources:
            raise HQODInputError(f"{sources[path]!r} and {source!r} would both be written to {path!r}; "
                                 "give images with the same file name separate runs")
        sources[path] = source
    return paths


def read_rgb(path):
    """The image at ``path`` as an HxWx3 uint8 RGB array (EXIF orientation applied)."""
    try:
        return read_image(path, format="RGB")
    except (OSError, ValueError) as e:
        reason = " ".join(str(e).split())
        raise HQODInputError(f"cannot read image {path!r} ({reason}); pass a readable JPEG or PNG file") from None


def write_image(path, image_rgb) -> None:
    """Write an RGB array to ``path`` whole or not at all, in the format its extension names."""
    image_format = Image.registered_extensions()[os.path.splitext(path)[1].lower()]
    with atomic_path(path) as tmp:
        Image.fromarray(image_rgb).save(tmp, format=image_format)
