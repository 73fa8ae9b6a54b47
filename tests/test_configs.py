"""Every shipped yaml merges into the project's config, and the QAT/HQOD configs say what their names say."""
import pathlib
import re

import hqod  # noqa: F401
import pytest

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(str(path.relative_to(CONFIG_DIR)) for path in CONFIG_DIR.rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS)
def test_config_merges_and_matches_its_name(get_config, path):
    cfg = get_config(path)
    name = pathlib.Path(path).stem
    bits = re.search(r"w(\d)a(\d)|(\d)bit", name)
    if bits:
        wbits = int(bits.group(1) or bits.group(3))
        assert cfg.MODEL.QUANT.ENABLED
        assert (cfg.MODEL.QUANT.WEIGHT_BITS, cfg.MODEL.QUANT.ACT_BITS) == (wbits, wbits)
        assert cfg.MODEL.QUANT.ALGORITHM == ("TQT" if "tqt" in name else "LSQ")
        assert cfg.MODEL.QUANT.PER_CHANNEL == name.endswith(("_pc", "_pc_foldbn", "_pc_foldbn_tensor"))
        assert cfg.MODEL.QUANT.FOLD_BN == name.endswith(("_foldbn", "_foldbn_tensor"))
        assert cfg.MODEL.QUANT.PLACEMENT == ("tensor" if name.endswith("_tensor") else "conv_input")
    else:
        assert not cfg.MODEL.QUANT.ENABLED, "a full-precision config"
    assert cfg.MODEL.META_ARCHITECTURE.startswith("HQOD") == ("hqod" in name)


def test_user_entry_points_exist(get_config):
    for name in ("hqod_retinanet_4bit", "hqod_retinanet_2bit", "hqod_fcos_4bit", "hqod_fcos_2bit"):
        cfg = get_config(f"{name}.yaml")
        assert cfg.DATASETS.TRAIN == ("coco_2017_train",)
        assert cfg.SOLVER.BASE_LR == (0.001 if "4bit" in name else 0.01)  # the authors' W4A4 / W2A2 rates
