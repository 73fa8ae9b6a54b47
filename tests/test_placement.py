"""MODEL.QUANT.PLACEMENT "tensor": the dataflow found in the dry run (shared input quantizers, output quantizers on
convs read by other ops, none on predictors), one quantization per tensor and forward, the unchanged default,
checkpoints, and the ONNX export that lets onnxruntime run more convs as integer kernels."""

import hqod  # noqa: F401  (before any detectron2 import)
import onnx
import pytest
import torch
from detectron2.modeling import build_model
from torch import nn

from hqod.deploy import export_onnx, integer_nodes
from hqod.deploy.inputs import FixedSizeInput
from hqod.engine.checkpoint import HQODCheckpointer
from hqod.errors import HQODInputError
from hqod.quantization import QuantConvMixin, calibrate, convert_to_qat, quantizers

SIZE = 128
TINY = ["MODEL.WEIGHTS", "", "MODEL.FPN.OUT_CHANNELS", 32, "MODEL.RETINANET.NUM_CONVS", 1, "MODEL.FCOS.NUM_CONVS", 1,
        "INPUT.MIN_SIZE_TEST", SIZE, "INPUT.MAX_SIZE_TEST", SIZE]
RETINANET = "shapes/retinanet_MNV2_lsq_w8a8_pc_foldbn.yaml"
FCOS = "shapes/fcos_MNV2_lsq_w8a8_pc_foldbn.yaml"
TENSOR = ["MODEL.QUANT.PLACEMENT", "tensor"]


@pytest.fixture
def quantized(lively, random_images):
    """``quantized(cfg, calibrated=True)``: the randomised detector of ``cfg``, converted (and calibrated) in eval
    mode."""

    def build(cfg, calibrated=True):
        model = convert_to_qat(lively(build_model(cfg)), cfg)
        if calibrated:
            calibrate(model, [[x] for x in random_images(2, 0, SIZE)], 2)
        return model.eval()

    return build


def convs(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantConvMixin)}


@pytest.fixture
def tiny(get_config, quantized):
    """``tiny(config, *opts)``: a converted, calibrated tiny detector in eval mode and its config."""

    def build(config, *opts):
        cfg = get_config(config, *TINY, *opts)
        return cfg, quantized(cfg)

    return build


def test_retinanet_dataflow_places_shared_and_output_quantizers(tiny):
    _, model = tiny(RETINANET, *TENSOR)
    found = convs(model)
    head = model.head
    for level in range(5):  # both towers read each FPN level: one quantizer, level to level
        assert head.cls_subnet[0].input_quant[level] is head.bbox_subnet[0].input_quant[level]
    assert len({id(q) for q in head.cls_subnet[0].input_quant}) == 5
    top = model.backbone.top_block
    assert top.p6.input_quant is head.cls_subnet[0].input_quant[2]  # P5: the head's third level and P6
    assert head.cls_subnet[0].input_quant[3] is top.p6.output_quant  # P6 is also read by P7's ReLU
    blocks = [m for m in model.backbone.bottom_up.modules() if hasattr(m, "use_residual")]
    names = {id(m): n for n, m in model.named_modules()}
    feeds_add = {names[id(b.project)] for b in blocks if b.use_residual}  # the residual add reads it
    feeds_add |= {names[id(b.project)] for b, nxt in zip(blocks, blocks[1:]) if nxt.use_residual}  # the next add
    laterals = {n for n in found if "fpn_lateral" in n}  # read by the top-down sums and their upsampling
    assert {n for n, c in found.items() if c.role_quantizers("output")} == feeds_add | laterals | {
        "backbone.top_block.p6"}
    assert not head.cls_subnet[0].role_quantizers("output")  # ReLU -> quantized convs only
    assert not head.cls_score.role_quantizers("output") and not head.bbox_pred.role_quantizers("output")
    reader = next(n for n in found if n.endswith(".expand") and found[n].input_quant.role == "output")
    assert found[reader].input_quant.qualified_name.endswith(".project.output_quant")


def test_fcos_group_norm_towers_quantize_their_outputs(tiny):
    _, model = tiny(FCOS, *TENSOR, "MODEL.FPN.OUT_CHANNELS", 64)  # GN groups of 2 on the 1x1 P7
    head = model.head
    assert isinstance(head.cls_subnet[1], nn.GroupNorm)
    assert len(head.cls_subnet[0].role_quantizers("output")) == 5  # GroupNorm reads them, one per level
    assert head.bbox_pred.input_quant[1] is head.ctrness.input_quant[1]  # both predictors read the box tower
    for predictor in (head.cls_score, head.bbox_pred, head.ctrness):
        assert not predictor.role_quantizers("output")


def test_each_tensor_is_quantized_once_per_forward(tiny, random_images):
    _, model = tiny(RETINANET, *TENSOR)
    calls = {}
    activation = [q for _, q in quantizers(model) if q.role != "weight"]
    handles = [q.register_forward_hook(lambda m, i, o: calls.__setitem__(m, calls.get(m, 0) + 1))
               for q in activation]
    with torch.no_grad():
        model(random_images(1, 2, SIZE))
    for handle in handles:
        handle.remove()
    assert set(calls) == set(activation) and set(calls.values()) == {1}
    memo = model.head.cls_subnet[0].activation_memo
    assert memo is model.backbone.bottom_up.stem.activation_memo and not memo._entries  # released after forward


def test_default_placement_keeps_one_input_quantizer_per_conv(tiny):
    cfg, model = tiny(RETINANET)
    assert cfg.MODEL.QUANT.PLACEMENT == "conv_input"
    keys = [k for k in model.state_dict() if ".weight_quant." in k or ".input_quant." in k or "_quant." in k]
    assert not [k for k in keys if ".output_quant." in k]
    found = convs(model)
    slots = sum(len(c.role_quantizers("input")) + len(c.role_quantizers("weight")) for c in found.values())
    assert len(list(quantizers(model))) == slots  # nothing shared
    assert all(c.activation_memo is None for c in found.values())


def test_checkpoint_round_trip_keeps_shared_and_output_quantizers(tiny, quantized, get_config, random_images,
                                                                  tmp_path):
    cfg, model = tiny(RETINANET, *TENSOR)
    HQODCheckpointer(model, str(tmp_path), cfg=cfg).save("model")
    state = model.state_dict()
    assert any(".output_quant." in k for k in state)
    assert torch.equal(state["head.bbox_subnet.0.input_quant.1.scale"], state["head.cls_subnet.0.input_quant.1.scale"])
    fresh = quantized(cfg, calibrated=False)
    HQODCheckpointer(fresh, str(tmp_path), cfg=cfg).load(str(tmp_path / "model.pth"))
    assert fresh.head.cls_subnet[0].input_quant[1] is fresh.head.bbox_subnet[0].input_quant[1]
    batch = random_images(1, 3, SIZE)
    with torch.no_grad():
        expected, found = model(batch)[0]["instances"], fresh(batch)[0]["instances"]
    assert len(expected) > 0 and torch.equal(expected.scores, found.scores)
    plain = get_config(RETINANET, *TINY)
    with pytest.raises(HQODInputError, match="PLACEMENT='tensor' in the checkpoint"):
        HQODCheckpointer(quantized(plain, calibrated=False), str(tmp_path), cfg=plain).load(str(tmp_path / "model.pth"))


def export(cfg, model, folder, image):
    sample = FixedSizeInput(model, SIZE, SIZE)(image).tensor
    return export_onnx(cfg, model, folder, SIZE, SIZE, sample)


def test_tensor_placement_exports_and_runs_more_integer_convs(tiny, random_images, deploy_tool, tmp_path):
    cfg, model = tiny(RETINANET, *TENSOR)
    image = random_images(1, 1, SIZE)
    record = export(cfg, model, tmp_path / "tensor", image)
    plain_cfg, plain = tiny(RETINANET)
    export(plain_cfg, plain, tmp_path / "plain", image)
    graph = onnx.load(str(tmp_path / "tensor" / "model.onnx")).graph
    specs = record["quantization"]["quantizers"]
    activations = [q for q in specs if q["role"] != "weight"]
    assert record["quantization"]["placement"] == "tensor" and any(q["role"] == "output" for q in activations)
    assert [n.op_type for n in graph.node].count("QuantizeLinear") == len(activations)  # one per tensor
    pair = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[1] ==
            "head.cls_subnet.0.input_quant.0.scale"]
    readers = [n.name for n in graph.node if pair and pair[0].output[0] in n.input]
    assert len(pair) == 1 and len(readers) == 2  # one QuantizeLinear / DequantizeLinear pair read by both towers
    for row in record["agreement"]:
        assert row["max_diff_in_tolerances"] <= 3.0 and row["fraction_over_tolerance"] <= 0.05, row
    tensor_nodes, plain_nodes = (integer_nodes(tmp_path / d / "model.onnx") for d in ("tensor", "plain"))
    assert len(tensor_nodes["integer"]) > len(plain_nodes["integer"])
    projection = "/backbone/bottom_up/stage2/stage2.0/project/Conv"  # its output feeds the next block's residual add
    assert projection in plain_nodes["float_convs"] and projection not in tensor_nodes["float_convs"]
    assert any(name.startswith(projection) for name in tensor_nodes["integer"])
    float_convs = [n for n in tensor_nodes["float_convs"] if "cls_score" not in n and "bbox_pred" not in n]
    assert not float_convs  # only the predictors stay float
    times = deploy_tool("benchmark_onnx").profile(str(tmp_path / "tensor"), 1, 2, 1)  # benchmark_onnx.py --profile
    assert times["QLinearConv"] > 0 and "Conv" in times and list(times.values()) == sorted(times.values())[::-1]
