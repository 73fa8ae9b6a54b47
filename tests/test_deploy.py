"""ONNX export (QuantizeLinear / DequantizeLinear) of tiny QAT and FP detectors, their agreement with PyTorch in
onnxruntime, the integer kernels of the W8A8 folded-BN recipe, the onnxruntime detector and the deploy tools."""
import json
import math

import hqod  # noqa: F401  (before any detectron2 import)
import onnx
import pytest
import torch
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.modeling import build_model

from hqod.deploy import OnnxDetector, export_onnx, integer_nodes
from hqod.deploy.export import default_input_size
from hqod.deploy.inputs import FixedSizeInput
from hqod.engine.checkpoint import HQODCheckpointer
from hqod.errors import HQODInputError
from hqod.quantization import calibrate, convert_to_qat, quantizers

SIZE = 128
TINY = ["MODEL.WEIGHTS", "", "MODEL.FPN.OUT_CHANNELS", 32, "MODEL.RETINANET.NUM_CONVS", 1, "MODEL.FCOS.NUM_CONVS", 1,
        "INPUT.MIN_SIZE_TEST", SIZE, "INPUT.MAX_SIZE_TEST", SIZE]
QAT = "shapes/retinanet_MNV2_lsq_w4a4.yaml"
RECIPES = {  # name: (config, overrides)
    "w4a4": (QAT, []),
    "w2a2": (QAT, ["MODEL.QUANT.WEIGHT_BITS", 2, "MODEL.QUANT.ACT_BITS", 2, "MODEL.QUANT.PER_CHANNEL", True]),
    "w8a8_pc": ("shapes/retinanet_MNV2_lsq_w8a8_pc.yaml", []),
    "w8a8_pc_foldbn": ("shapes/retinanet_MNV2_lsq_w8a8_pc_foldbn.yaml", []),
    "fp32": ("quickstart_retinanet_mnv2_shapes.yaml", []),
    "fcos_fp32": ("quickstart_fcos_mnv2_shapes.yaml", ["MODEL.FPN.OUT_CHANNELS", 64]),  # GN groups of 2 on 1x1 P7
    "tqt_w4a4": ("shapes/retinanet_MNV2_tqt_w4a4.yaml", []),
    "dsq_w4a4": (QAT, ["MODEL.QUANT.ALGORITHM", "DSQ"]),
}


_BUILT = {}


@pytest.fixture
def exported(get_config, tmp_path_factory, lively, random_images):
    """``exported(recipe)``: (cfg, eval-mode model, export folder, record) of a tiny calibrated MobileNetV2
    RetinaNet exported at 128², with the agreement measured on a random image (built once per recipe)."""

    def build(recipe):
        if recipe not in _BUILT:
            config, opts = RECIPES[recipe]
            cfg = get_config(config, *TINY, *opts)
            model = lively(build_model(cfg))
            if cfg.MODEL.QUANT.ENABLED:
                convert_to_qat(model, cfg)
                calibrate(model, [[x] for x in random_images(2, 0, SIZE)], 2)
            model.eval()
            sample = FixedSizeInput(model, SIZE, SIZE)(random_images(1, 1, SIZE)).tensor
            folder = tmp_path_factory.mktemp(recipe)
            _BUILT[recipe] = cfg, model, folder, export_onnx(cfg, model, folder, SIZE, SIZE, sample)
        return _BUILT[recipe]

    return build


def graph(folder):
    return onnx.load(str(folder / "model.onnx"))


def test_w4a4_export_is_qdq_and_agrees_with_pytorch(exported):
    cfg, model, folder, record = exported("w4a4")
    model_proto = graph(folder)
    onnx.checker.check_model(model_proto, full_check=True)
    ops = [node.op_type for node in model_proto.graph.node]
    assert "hqod" not in {node.domain for node in model_proto.graph.node} and record["opset"] == 21
    assert [o["name"] for o in record["outputs"]] == [f"{g}_p{k}" for g in ("cls_logits", "bbox_deltas")
                                                     for k in range(3, 8)]
    assert record["input"]["shape"] == ["batch", 3, SIZE, SIZE]
    specs = {q["name"]: q for q in record["quantization"]["quantizers"]}
    assert set(specs) == {name for name, _ in quantizers(model)}
    stem, tower = specs["backbone.bottom_up.stem.input_quant"], specs["head.cls_subnet.0.input_quant.2"]
    assert (stem["bits"], stem["signed"], stem["onnx_type"], stem["clip"]) == (8, True, "INT8", False)
    assert (tower["bits"], tower["onnx_type"], tower["clip"]) == (4, "UINT8" if not tower["signed"] else "INT8", True)
    weight = specs["head.cls_subnet.0.weight_quant"]
    assert (weight["role"], weight["onnx_type"], weight["axis"], weight["qmin"], weight["qmax"]) == \
        ("weight", "INT4", None, -8, 7)
    stored = {init.name: init for init in model_proto.graph.initializer}
    assert stored["head.cls_subnet.0.weight_quant.quantized"].data_type == onnx.TensorProto.INT4
    inputs = sum(1 for _, q in quantizers(model) if q.role == "input")  # each runs once (per-level ones too)
    assert ops.count("QuantizeLinear") == inputs and ops.count("Clip") >= inputs - 2  # all but the 8-bit ones
    assert ops.count("DequantizeLinear") > ops.count("QuantizeLinear")
    for row in record["agreement"]:  # 4-bit convs keep float biases: onnxruntime reproduces PyTorch closely
        assert row["max_diff_in_tolerances"] <= 1.0, row
    floats = record["quantization"]["float_ops"]  # read in float: 10 residual adds and 2 FPN top-down sums, the
    # upsampling, every backbone BN, the head towers' ReLU (2 towers x 5 levels) and P7's
    assert (floats["Add"], floats["Resize"], floats["BatchNormalization"], floats["Relu"]) == (12, 2, 52, 11)
    assert "/head/cls_subnet/cls_subnet.0/Conv" in record["quantization"]["float_biases"]
    saved = json.loads((folder / "export.json").read_text())
    assert saved["quantization"]["quantizers"][0]["scale"] == record["quantization"]["quantizers"][0]["scale"]


def test_w2a2_weights_are_int2_at_opset_25(exported):
    _, _, folder, record = exported("w2a2")
    assert record["opset"] == 25
    weight = next(q for q in record["quantization"]["quantizers"] if q["name"] == "head.cls_subnet.0.weight_quant")
    assert (weight["onnx_type"], weight["axis"], len(weight["scale"])) == ("INT2", 0, 32)
    stored = {init.name: init for init in graph(folder).graph.initializer}
    assert stored["head.cls_subnet.0.weight_quant.quantized"].data_type == onnx.TensorProto.INT2
    for row in record["agreement"]:
        assert row["max_diff_in_tolerances"] <= 1.0, row


@pytest.mark.parametrize("recipe", ["tqt_w4a4", "dsq_w4a4"])
def test_tqt_and_dsq_export_the_steps_they_train_with(exported, recipe):
    _, model, _, record = exported(recipe)
    for row in record["agreement"]:
        assert row["max_diff_in_tolerances"] <= 1.0, row
    steps = {q["name"]: q["scale"] for q in record["quantization"]["quantizers"]}
    stem = model.backbone.bottom_up.stem.input_quant
    assert steps["backbone.bottom_up.stem.input_quant"] == stem.step_size.reshape(-1).tolist()
    if recipe == "tqt_w4a4":  # TQT's steps are powers of two
        assert all(math.log2(step).is_integer() for scale in steps.values() for step in scale)


def test_folded_bn_w8a8_runs_integer_convs(exported):
    _, _, folded_dir, folded = exported("w8a8_pc_foldbn")
    _, _, plain_dir, _ = exported("w8a8_pc")
    folded_nodes, plain_nodes = integer_nodes(folded_dir / "model.onnx"), integer_nodes(plain_dir / "model.onnx")
    backbone = [n for n in folded_nodes["integer"] if "bottom_up" in n]
    assert folded_nodes["op_counts"].get("QLinearConv", 0) >= 40 and len(backbone) >= 30
    assert not [n for n in plain_nodes["integer"] if "bottom_up" in n]  # BN between conv and quantizer: float
    ops = {node.op_type for node in graph(folded_dir).graph.node}
    assert "BatchNormalization" not in ops
    assert not folded["quantization"]["float_biases"]  # 8-bit convs: int32 biases, as the integer kernel needs
    for row in folded["agreement"]:  # 8-bit flips compound; onnxruntime stays within the model's own float noise
        assert row["max_diff_in_tolerances"] <= 3.0 and row["fraction_over_tolerance"] <= 0.05, row


def test_fp32_export_matches_pytorch(exported):
    _, _, folder, record = exported("fp32")
    assert record["quantization"] is None and record["opset"] == 21
    assert not {"QuantizeLinear", "DequantizeLinear"} & {node.op_type for node in graph(folder).graph.node}
    for row in record["agreement"]:
        assert row["max_diff_in_tolerances"] <= 1.0, row


@pytest.mark.parametrize("recipe", ["w4a4", "fcos_fp32"])
def test_onnx_detector_gives_the_pytorch_detections(exported, tiny_shapes_val, recipe):
    cfg, model, folder, record = exported(recipe)
    if recipe == "fcos_fp32":
        assert [o["name"] for o in record["outputs"]][-5:] == [f"centerness_p{k}" for k in range(3, 8)]
    cfg = cfg.clone()
    for head in (cfg.MODEL.RETINANET, cfg.MODEL.FCOS):
        head.SCORE_THRESH_TEST, head.TOPK_CANDIDATES_TEST = 0.0, 50
    model.test_score_thresh, model.test_topk_candidates = 0.0, 50
    inputs = [DatasetMapper(cfg, is_train=False)(DatasetCatalog.get("hqod_shapes_val")[0])]
    assert inputs[0]["image"].shape[-2:] == (SIZE, SIZE) and (inputs[0]["height"], inputs[0]["width"]) == (256, 256)
    found = OnnxDetector(cfg, folder)(inputs)[0]["instances"]
    with torch.no_grad():
        expected = model(inputs)[0]["instances"]
    assert len(found) == len(expected) > 0
    assert torch.allclose(found.scores, expected.scores, atol=1e-3)
    assert torch.allclose(found.pred_boxes.tensor, expected.pred_boxes.tensor, atol=0.5)
    assert torch.equal(found.pred_classes, expected.pred_classes)


def test_fixed_size_input_pads_and_shrinks(exported):
    cfg, model, _, _ = exported("fp32")
    fit = FixedSizeInput(model, 64, 96)
    small = {"image": torch.full((3, 32, 64), 255, dtype=torch.uint8), "height": 32, "width": 64}
    large = {"image": torch.zeros((3, 128, 128), dtype=torch.uint8), "height": 128, "width": 128}
    batch = fit([small, large])
    assert batch.tensor.shape == (2, 3, 64, 96) and batch.image_sizes == [(32, 64), (64, 64)]
    assert fit.shrunk == 1 and float(batch.tensor[0, :, 40:, :].abs().max()) == 0.0
    assert default_input_size(cfg, 32) == (128, 128)


def test_export_refuses_an_uncalibrated_qat_model(get_config, tmp_path):
    cfg = get_config(QAT, *TINY)
    model = convert_to_qat(build_model(cfg), cfg).eval()
    with pytest.raises(HQODInputError, match="not initialised"):
        export_onnx(cfg, model, tmp_path, SIZE, SIZE)
    with pytest.raises(HQODInputError, match="multiple of"):
        export_onnx(cfg, model, tmp_path, SIZE + 16, SIZE)


@pytest.fixture(scope="module")
def qat_checkpoint(tmp_path_factory, get_config, lively, random_images):
    """A calibrated tiny W4A4 checkpoint and the yaml it was trained with."""
    folder = tmp_path_factory.mktemp("deploy_ckpt")
    cfg = get_config(QAT, *TINY)
    model = convert_to_qat(lively(build_model(cfg)), cfg)
    calibrate(model, [[x] for x in random_images(1, 0, SIZE)], 1)
    HQODCheckpointer(model, str(folder), cfg=cfg).save("qat")
    (folder / "qat.yaml").write_text(cfg.dump())
    return folder


def test_export_and_evaluate_tools(deploy_tool, qat_checkpoint, tiny_shapes_val, capsys):
    config, out = str(qat_checkpoint / "qat.yaml"), qat_checkpoint / "onnx"
    export = deploy_tool("export_onnx")
    export.main(export.parse_args(
        ["--config-file", config, "--output", str(out), "--opts", "MODEL.WEIGHTS", str(qat_checkpoint / "qat.pth")]))
    printed = capsys.readouterr().out
    assert "model.onnx" in printed and "quantizers" in printed and "onnxruntime vs PyTorch" in printed
    evaluate = deploy_tool("evaluate_onnx")
    results = evaluate.main(evaluate.parse_args(["--config-file", config, "--model", str(out), "--dataset",
                                                 "tiny_shapes_val", "--opts", "DATASETS.COCO_FORMAT",
                                                 f"('{tiny_shapes_val}',)"]))
    assert "bbox" in results and "harmony" in results and "tiny_shapes_val: AP" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["fp_config_qat_weights", "missing_weights", "unwritable_output"])
def test_export_tool_bad_input_is_one_error_line(root, run_python, qat_checkpoint, tmp_path, case):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    config, weights, output = str(qat_checkpoint / "qat.yaml"), str(qat_checkpoint / "qat.pth"), str(tmp_path / "o")
    if case == "fp_config_qat_weights":
        config = "configs/quickstart_retinanet_mnv2_shapes.yaml"
    elif case == "missing_weights":
        weights = str(tmp_path / "nope.pth")
    else:
        output = str(blocker / "out")
    result = run_python(root / "tools" / "deploy" / "export_onnx.py", "--config-file", config, "--output", output,
                        "--opts", "MODEL.WEIGHTS", weights)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert {"fp_config_qat_weights": "full-precision", "missing_weights": "does not exist",
            "unwritable_output": "output folder"}[case] in lines[0]
