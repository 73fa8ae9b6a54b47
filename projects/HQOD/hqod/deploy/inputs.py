"""``FixedSizeInput``: Detectron2 model inputs (test-time resized images) as the exported graph takes them."""
import numpy as np
import torch
import torch.nn.functional as F
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.data import transforms as T
from detectron2.structures import ImageList

from ..data import check_datasets_exist
from ..errors import HQODInputError


class FixedSizeInput:
    """Normalises images with ``detector``'s pixel mean and std (its own ``preprocess_image``) and pads them with
    zeros at the bottom and right to ``height`` x ``width``; an image that the test-time resize made larger is first
    shrunk to fit, keeping its aspect ratio (``shrunk`` counts them). Image sizes before padding are kept."""

    def __init__(self, detector, height: int, width: int):
        self.detector = detector
        self.height, self.width = height, width
        self.shrunk = 0

    def __call__(self, batched_inputs) -> ImageList:
        images = self.detector.preprocess_image([self._fit(x) for x in batched_inputs])
        h, w = images.tensor.shape[-2:]
        tensor = F.pad(images.tensor, (0, self.width - w, 0, self.height - h))
        return ImageList(tensor, images.image_sizes)

    def _fit(self, inputs):
        image = inputs["image"]
        h, w = image.shape[-2:]
        if h <= self.height and w <= self.width:
            return inputs
        scale = min(self.height / h, self.width / w)
        size = (min(self.height, int(h * scale + 0.5)), min(self.width, int(w * scale + 0.5)))
        resized = T.ResizeTransform(h, w, *size).apply_image(image.permute(1, 2, 0).numpy())
        self.shrunk += 1
        return dict(inputs, image=torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1))))


def first_test_image(cfg):
    """The first image of DATASETS.TEST[0] as the test loader gives it (resized for testing), or None when the
    config names no test set or its files are not on this machine (e.g. COCO without $DETECTRON2_DATASETS)."""
    if not cfg.DATASETS.TEST:
        return None
    try:
        check_datasets_exist(cfg.DATASETS.TEST[:1])
        record = DatasetCatalog.get(cfg.DATASETS.TEST[0])[0]
        return DatasetMapper(cfg, is_train=False)(record)
    except (HQODInputError, OSError, AssertionError, IndexError):
        return None
