"""Convert torchvision's MobileNetV2 ImageNet weights into a Detectron2 checkpoint for HQOD's MobileNetV2 backbone.

Usage: python tools/convert_torchvision_mobilenet.py ~/.cache/torch/hub/checkpoints/mobilenet_v2-b0353104.pth OUT.pth
then set ``MODEL.WEIGHTS OUT.pth``. (``MODEL.WEIGHTS hqod://imagenet/mobilenet_v2.pth`` does the same by itself.)
"""
import argparse
import sys

import hqod  # noqa: F401  (before any detectron2 import)
from hqod.errors import HQODInputError
from hqod.modeling.backbone.torchvision_mobilenetv2 import convert_file


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", help="torchvision MobileNetV2 state dict (.pth), e.g. mobilenet_v2-b0353104.pth")
    parser.add_argument("output", help="Detectron2 checkpoint to write (.pth), for MODEL.WEIGHTS")
    args = parser.parse_args(argv)
    try:
        convert_file(args.input, args.output)
    except HQODInputError as e:
        sys.exit(f"error: {e}")
    print(f"wrote {args.output}; use it with MODEL.WEIGHTS {args.output}")


if __name__ == "__main__":
    main()
