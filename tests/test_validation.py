"""One validation pass: validate_config rejects each bad value with one line, and building and training from a
validated config runs none of its checks again."""
import pathlib
import sys

import hqod  # noqa: F401
import pytest

import hqod.engine.validation as validation
from hqod.engine import HQODTrainer, setup_cfg
from hqod.errors import HQODInputError

ROOT = pathlib.Path(__file__).resolve().parents[1]
QAT = str(ROOT / "configs" / "shapes" / "retinanet_MNV2_lsq_hqod_w4a4.yaml")


@pytest.fixture
def qat_cfg(get_config):
    return lambda *opts: get_config("shapes/retinanet_MNV2_lsq_hqod_w4a4.yaml", "MODEL.WEIGHTS", "", *opts)


@pytest.mark.parametrize("opts, match", [
    (["MODEL.QUANT.WEIGHT_BITS", 9], "MODEL.QUANT.WEIGHT_BITS must be an integer from 2 to 8, got 9"),
    (["MODEL.QUANT.FIRST_LAST_BITS", 1], "FIRST_LAST_BITS"),
    (["MODEL.QUANT.ALGORITHM", "PACT"], "unknown MODEL.QUANT.ALGORITHM 'PACT'"),
    (["MODEL.QUANT.ACT_OBSERVER", "KL"], "unknown MODEL.QUANT.ACT_OBSERVER 'KL'"),
    (["MODEL.QUANT.OVERRIDES", ["head.*:4"]], r"OVERRIDES entry 'head.\*:4' is not"),
    (["MODEL.QUANT.OVERRIDES", ["head.*:4:16"]], "bits in MODEL.QUANT.OVERRIDES"),
    (["MODEL.QUANT.CALIB_IMAGES", 0], "CALIB_IMAGES"),
    (["MODEL.QUANT.DSQ_ALPHA", 0.7], "MODEL.QUANT.DSQ_ALPHA must be in"),
    (["MODEL.QUANT.SCHEDULE.BITS", ["0:8"]], "SCHEDULE.BITS entry '0:8' is not"),
    (["MODEL.QUANT.SCHEDULE.BITS", ["0:9:9", "10:4:4"]], "bits in MODEL.QUANT.SCHEDULE.BITS entry '0:9:9'"),
    (["MODEL.QUANT.SCHEDULE.BITS", ["-1:8:8", "10:4:4"]], "iteration must be >= 0"),
    (["MODEL.QUANT.SCHEDULE.BITS", ["0:8:8", "10:6:6"]], "ends at 6/6 bits"),
    (["MODEL.QUANT.SCHEDULE.DSQ_ALPHA.TYPE", "linear"], "DSQ_ALPHA: need 0 <= START_ITER < END_ITER"),
    (["MODEL.QUANT.SCHEDULE.DSQ_ALPHA.END_VALUE", 0.0], "END_VALUE"),
    (["MODEL.HQOD.TCORR_WEIGHT", -1.0], "MODEL.HQOD.TCORR_WEIGHT"),
    (["MODEL.HQOD.WEIGHT_SCHEDULE.TYPE", "step"], "MODEL.HQOD.WEIGHT_SCHEDULE.TYPE is 'step'"),
    (["MODEL.META_ARCHITECTURE", "RetinaNet", "MODEL.HQOD.HIOU_WEIGHT", 2.0], "set but MODEL.META_ARCHITECTURE"),
    (["MODEL.WEIGHTS", "/no/such/model.pth"], "MODEL.WEIGHTS file '/no/such/model.pth' does not exist"),
    (["MODEL.HQOD.NORMALIZER", "ema"], "MODEL.HQOD.NORMALIZER is 'ema'; use one of detector, num_pos"),
    (["MODEL.META_ARCHITECTURE", "RetinaNet", "MODEL.HQOD.NORMALIZER", "num_pos"],
     "MODEL.HQOD.NORMALIZER=num_pos set but MODEL.META_ARCHITECTURE=RetinaNet has no HQOD losses; use one of "
     "HQODRetinaNet, HQODFCOS, HQODATSS"),
    (["MODEL.ATSS.TOPK", 0], "MODEL.ATSS.TOPK must be an integer >= 1, got 0"),
    (["MODEL.ATSS.NUM_CONVS", -1], "MODEL.ATSS.NUM_CONVS must be an integer >= 1"),
    (["MODEL.ATSS.ANCHOR_SCALE", 0.0], "MODEL.ATSS.ANCHOR_SCALE must be a finite number > 0"),
    (["MODEL.ATSS.BOX_LOSS_WEIGHT", -2.0], "MODEL.ATSS.BOX_LOSS_WEIGHT must be a finite number >= 0"),
    (["MODEL.ATSS.NMS_THRESH_TEST", 0.0], "MODEL.ATSS.NMS_THRESH_TEST must be in"),
    (["MODEL.ATSS.BBOX_REG_WEIGHTS", (10.0, 10.0, 5.0)], "MODEL.ATSS.BBOX_REG_WEIGHTS must be 4 finite numbers"),
    (["MODEL.ATSS.HEAD_NORM", "LN"], "MODEL.ATSS.HEAD_NORM is 'LN'"),
    (["MODEL.QUANT.DEPTHWISE_BITS", 1], r"MODEL.QUANT.DEPTHWISE_BITS \(0: off\) must be an integer from 2 to 8"),
    (["MODEL.META_ARCHITECTURE", "RetinaNet", "MODEL.HQOD.TCORR_WEIGHT", 1.0, "MODEL.RETINANET.NORM", "LevelBN"],
     "MODEL.RETINANET.NORM 'LevelBN' is built by the project's RetinaNet only"),
])
def test_each_bad_value_is_one_line(qat_cfg, opts, match):
    cfg = qat_cfg(*opts)
    with pytest.raises(HQODInputError, match=match) as error:
        validation.validate_config(cfg)
    assert "\n" not in str(error.value)


def test_quant_keys_are_not_checked_when_quantization_is_off(qat_cfg):
    validation.validate_config(qat_cfg("MODEL.QUANT.ENABLED", False, "MODEL.QUANT.WEIGHT_BITS", 9))


def test_training_from_a_validated_config_checks_nothing_again(tmp_path):
    """setup_cfg validates once; trainer, model, QAT conversion, calibration and schedule hooks trust the config.
    Calls are counted by code object, so a check reached through any import or alias is seen. (Quantizer modules
    keep their own argument checks, as torch modules do: those are not config checks.)"""
    checks = {f.__code__: name for name, f in vars(validation).items()
              if callable(f) and getattr(f, "__module__", "") == validation.__name__ and "check" in name
              or name == "validate_config"}
    calls = []

    def profile(frame, event, arg):
        if event == "call" and frame.f_code in checks:
            calls.append(checks[frame.f_code])

    sys.setprofile(profile)
    try:
        cfg = setup_cfg(QAT, ["MODEL.WEIGHTS", "", "SOLVER.MAX_ITER", "1", "SOLVER.IMS_PER_BATCH", "1",
                              "MODEL.QUANT.CALIB_IMAGES", "1", "INPUT.MIN_SIZE_TRAIN", "(64,)", "DATASETS.TEST", "()",
                              "DATALOADER.NUM_WORKERS", "0", "MODEL.MOBILENETV2.NORM", "BN", "OUTPUT_DIR",
                              str(tmp_path)], validate_data=False)
        one_pass = list(calls)
        HQODTrainer(cfg).train()
    finally:
        sys.setprofile(None)
    assert one_pass.count("validate_config") == 1 and one_pass.count("check_ramp") == 2  # HQOD weights, DSQ alpha
    assert "_check_hqod_values" in one_pass and "_check_quant_schedule" in one_pass
    assert calls == one_pass, f"checked again while building or training: {calls[len(one_pass):]}"
