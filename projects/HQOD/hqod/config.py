"""All config keys this project adds to Detectron2's defaults, each with a comment. Call ``add_hqod_config(cfg)``."""
from detectron2.config import CfgNode as CN

from .modeling.detectors import DENSE_DETECTORS


def add_hqod_config(cfg):
    """Add the HQOD project's keys (data, backbone, FCOS, ATSS, quantization, HQOD losses, schedules) to ``cfg``."""
    _add_data_config(cfg)
    _add_backbone_config(cfg)
    _add_fcos_config(cfg)
    _add_atss_config(cfg)
    _add_quant_config(cfg)
    _add_hqod_loss_config(cfg)
    _add_schedule_config(cfg)


def _add_data_config(cfg):
    # --- data (hqod.data) ---
    # COCO-format data sets to register without code, each "name:json_file:image_root" (two colons, none inside
    # the paths; relative paths from the working directory), e.g. ["trees_train:data/train.json:data/images"].
    # hqod.data.register_coco_format_datasets(cfg) registers them after the config is merged, so that
    # DATASETS.TRAIN / DATASETS.TEST can name them; their json and images are checked before training.
    cfg.DATASETS.COCO_FORMAT = []


def _add_backbone_config(cfg):
    # --- backbone (hqod.modeling.backbone) ---
    # MobileNetV2 body (build_mobilenetv2_backbone / build_mobilenetv2_fpn_backbone); torchvision's layer layout.
    # MODEL.BACKBONE.FREEZE_AT applies too: k >= 1 freezes the stem and stage1..stagek (stagek ends at stride 2**k),
    # so 2 freezes everything at stride <= 4, as for ResNet; 0 trains every layer.
    cfg.MODEL.MOBILENETV2 = CN()
    # Norm after every body conv, a detectron2.layers.get_norm name: "FrozenBN", "BN", "SyncBN" ("GN" does not fit
    # MobileNetV2's channel counts). The ImageNet weights (hqod://imagenet/mobilenet_v2.pth) need a BN kind.
    cfg.MODEL.MOBILENETV2.NORM = "FrozenBN"
    # Channel width multiplier (channels rounded to multiples of 8, as torchvision does); ImageNet weights: 1.0 only.
    cfg.MODEL.MOBILENETV2.WIDTH_MULT = 1.0
    # Body outputs, named after their stage: "stage2".."stage5" at strides 4..32 (stage5 ends at 1280 channels).
    cfg.MODEL.MOBILENETV2.OUT_FEATURES = ["stage3", "stage4", "stage5"]
    # Input of P6/P7 in the P3-P7 FPN of build_mobilenetv2_fpn_backbone / build_resnet_p3p7_fpn_backbone: "p5"
    # (the last FPN level, as FCOS and Detectron2's FCOS LazyConfig) or a body feature such as "res5" / "stage5"
    # (C5, as RetinaNet and Detectron2's build_retinanet_resnet_fpn_backbone).
    cfg.MODEL.FPN.TOP_BLOCK_IN_FEATURE = "p5"


def _add_fcos_config(cfg):
    # --- FCOS from yacs (hqod.modeling.fcos); defaults = Detectron2's LazyConfig fcos_R_50_FPN_1x ---
    # FCOS anchors need no keys: one point per location of each IN_FEATURES level, sized by its stride.
    cfg.MODEL.FCOS = CN()
    # Number of foreground classes.
    cfg.MODEL.FCOS.NUM_CLASSES = 80
    # Backbone (FPN) levels the head runs on, from high to low resolution.
    cfg.MODEL.FCOS.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    # 3x3 convs (of the FPN's width) in each of the classification and box towers; at least 1.
    cfg.MODEL.FCOS.NUM_CONVS = 4
    # Norm after each tower conv (hqod.modeling.head_norm): "GN" (32 groups); "BN" / "SyncBN" (Detectron2's
    # CycleBatchNormList: per-level statistics, one shared affine); "LevelBN" / "LevelSyncBN" (AQD's multi-level BN:
    # one BatchNorm per FPN level, its own statistics and affine, after each conv still shared by all levels; train
    # the full-precision model with it, as AQD did, and start QAT from that; FOLD_BN leaves it unfolded); "" (none).
    # Detectron2's MODEL.RETINANET.NORM takes the same values; its "LevelBN"/"LevelSyncBN" need HQODRetinaNet.
    cfg.MODEL.FCOS.HEAD_NORM = "GN"
    # Initial foreground probability of the classification logits (sets their bias).
    cfg.MODEL.FCOS.PRIOR_PROB = 0.01
    # Focal loss of the classification branch.
    cfg.MODEL.FCOS.FOCAL_LOSS_ALPHA = 0.25
    cfg.MODEL.FCOS.FOCAL_LOSS_GAMMA = 2.0
    # A location is positive only within this many strides of a box centre (FCOS center sampling).
    cfg.MODEL.FCOS.CENTER_SAMPLING_RADIUS = 1.5
    # Inference: minimum score sqrt(class probability * centerness), candidates kept per level before NMS, NMS IoU.
    # Detections per image: TEST.DETECTIONS_PER_IMAGE.
    cfg.MODEL.FCOS.SCORE_THRESH_TEST = 0.2
    cfg.MODEL.FCOS.TOPK_CANDIDATES_TEST = 1000
    cfg.MODEL.FCOS.NMS_THRESH_TEST = 0.6


def _add_atss_config(cfg):
    # --- ATSS (hqod.modeling.atss); defaults = the ATSS paper's recipe as in its reference implementation ---
    cfg.MODEL.ATSS = CN()
    # Number of foreground classes.
    cfg.MODEL.ATSS.NUM_CLASSES = 80
    # Backbone (FPN) levels the head runs on, from high to low resolution.
    cfg.MODEL.ATSS.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    # 3x3 convs (of the FPN's width) in each of the classification and box towers; at least 1.
    cfg.MODEL.ATSS.NUM_CONVS = 4
    # Norm after each tower conv, as MODEL.FCOS.HEAD_NORM: "GN", "BN", "SyncBN", "LevelBN", "LevelSyncBN" or "".
    cfg.MODEL.ATSS.HEAD_NORM = "GN"
    # Initial foreground probability of the classification logits (sets their bias).
    cfg.MODEL.ATSS.PRIOR_PROB = 0.01
    # One square anchor per location, its side this many times the level's stride (octave base scale); > 0.
    cfg.MODEL.ATSS.ANCHOR_SCALE = 8.0
    # Assignment: per ground-truth box and level, this many anchors with the closest centres are candidates; >= 1.
    cfg.MODEL.ATSS.TOPK = 9
    # Focal loss of the classification branch (over all anchors, divided by the number of positives).
    cfg.MODEL.ATSS.FOCAL_LOSS_ALPHA = 0.25
    cfg.MODEL.ATSS.FOCAL_LOSS_GAMMA = 2.0
    # Weights (wx, wy, ww, wh) of the box-delta encoding: 10, 10, 5, 5 = the reference's stds 0.1, 0.1, 0.2, 0.2.
    cfg.MODEL.ATSS.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
    # Weight of the GIoU box loss (per positive weighted by its centerness target, divided by their sum); >= 0.
    cfg.MODEL.ATSS.BOX_LOSS_WEIGHT = 2.0
    # Inference: minimum class probability, candidates kept per level before NMS, NMS IoU; a detection's score is
    # class probability x centerness. Detections per image: TEST.DETECTIONS_PER_IMAGE.
    cfg.MODEL.ATSS.SCORE_THRESH_TEST = 0.05
    cfg.MODEL.ATSS.TOPK_CANDIDATES_TEST = 1000
    cfg.MODEL.ATSS.NMS_THRESH_TEST = 0.6


def _add_quant_config(cfg):
    # --- quantization (hqod.quantization) ---
    cfg.MODEL.QUANT = CN()
    # Convert the built detector to fake-quantized QAT (hqod.quantization.convert_to_qat).
    cfg.MODEL.QUANT.ENABLED = False
    # Quantizer algorithm for weights and activations: "LSQ", "TQT" or "DSQ".
    cfg.MODEL.QUANT.ALGORITHM = "LSQ"
    # Bits (2..8) of every conv's weight / input, except the first and last layers.
    cfg.MODEL.QUANT.WEIGHT_BITS = 4
    cfg.MODEL.QUANT.ACT_BITS = 4
    # Bits (2..8) of weight and input of the stem conv and of the prediction convs.
    cfg.MODEL.QUANT.FIRST_LAST_BITS = 8
    # fnmatch patterns of the stem conv(s); empty: the first conv run in a dry forward pass.
    cfg.MODEL.QUANT.FIRST_PATTERNS = []
    # fnmatch patterns of the prediction convs; default: those of every dense detector in
    # hqod.modeling.detectors.DENSE_DETECTORS; patterns that match no conv of the model are ignored.
    cfg.MODEL.QUANT.LAST_PATTERNS = list(dict.fromkeys(
        conv for spec in DENSE_DETECTORS.values() for conv in spec.prediction_convs))
    # Bits (2..8) of weight and input of every depthwise conv (groups == in_channels > 1, e.g. MobileNetV2's);
    # 0: off (they take WEIGHT_BITS/ACT_BITS). Pinned like FIRST_LAST_BITS: MODEL.QUANT.SCHEDULE.BITS does not move
    # them. A first or last conv keeps FIRST_LAST_BITS; OVERRIDES win over both.
    cfg.MODEL.QUANT.DEPTHWISE_BITS = 0
    # Per-output-channel weight step sizes (per-tensor when False, as in the authors' setup).
    cfg.MODEL.QUANT.PER_CHANNEL = False
    # Per-module bits, "fnmatch_pattern:weight_bits:act_bits"; later entries win; applied after the defaults.
    cfg.MODEL.QUANT.OVERRIDES = []
    # Total calibration images over all ranks (images x world size, as the authors counted).
    cfg.MODEL.QUANT.CALIB_IMAGES = 256
    # Step-size initialisation: "MINMAX", "EMA_MSE", "LSQ" (2*mean|x|/sqrt(Qp)) or "POT_MODE" (authors' TQT).
    cfg.MODEL.QUANT.WEIGHT_OBSERVER = "MINMAX"
    cfg.MODEL.QUANT.ACT_OBSERVER = "EMA_MSE"
    # Fold BatchNorm (running statistics, frozen) into the backbone convs' weights before quantizing them.
    cfg.MODEL.QUANT.FOLD_BN = False
    # A conv called once per FPN level keeps one weight quantizer for all levels (else one per level).
    cfg.MODEL.QUANT.SHARE_HEAD_WEIGHT_QUANTIZER = True
    # A conv called once per FPN level gets one input quantizer per level (else one for all levels).
    cfg.MODEL.QUANT.PER_LEVEL_ACT_QUANTIZER = True
    # Where activations are quantized: "conv_input" (each conv quantizes its own input) or "tensor" (each tensor that
    # quantized convs read is quantized once, shared by its readers, and a conv whose output other ops read, e.g. a
    # residual add, quantizes its output: the authors' MQBench placement; hqod.quantization.placement).
    cfg.MODEL.QUANT.PLACEMENT = "conv_input"
    # TQT: keep the calibrated power-of-two scales fixed, as the authors' code did (False: train log2 t).
    cfg.MODEL.QUANT.TQT_FREEZE_SCALE = True
    # DSQ: initial alpha in (0, 0.5], and whether it is learned (else set from outside, e.g. by a schedule).
    cfg.MODEL.QUANT.DSQ_ALPHA = 0.4
    cfg.MODEL.QUANT.DSQ_LEARN_ALPHA = True
    # The quantizers of convs whose weights are frozen (e.g. by MODEL.BACKBONE.FREEZE_AT) keep their calibrated step
    # sizes, DSQ alpha and TQT thresholds (not learned, not in the optimizer), so the backward stops at the first
    # trainable layer as in full precision. False: they are learned like every other quantizer.
    cfg.MODEL.QUANT.FREEZE_FROZEN_QUANTIZERS = False


def _add_hqod_loss_config(cfg):
    # --- HQOD losses (hqod.losses, hqod.modeling.hqod_mixin); used only by the HQOD* meta-architectures ---
    cfg.MODEL.HQOD = CN()
    # Weight of the Task-Correlated loss (loss_tcorr); 0 removes it. Authors' code: 1.0. Schedule hooks may change it.
    cfg.MODEL.HQOD.TCORR_WEIGHT = 1.0
    # Weight of the Harmonious IoU loss (loss_hiou); 0 removes it. Authors' code: 1.0. Schedule hooks may change it.
    cfg.MODEL.HQOD.HIOU_WEIGHT = 1.0
    # HIoU = ALPHA * (1 - IoU) * (1 + IoU) ** GAMMA; ALPHA must be > 0. Authors' code (from HarDet): 1.5, 0.8.
    cfg.MODEL.HQOD.HIOU_ALPHA = 1.5
    cfg.MODEL.HQOD.HIOU_GAMMA = 0.8
    # Divisor of the summed terms: "detector" (the detector's own box-loss normaliser: RetinaNet and FCOS an EMA of
    # the positive count, ATSS the sum of centerness targets, as the authors' ATSS code) or "num_pos" (the exact
    # positive count of the batch, each image counted at least once, per worker, as the authors' RetinaNet code).
    cfg.MODEL.HQOD.NORMALIZER = "detector"


def _add_schedule_config(cfg):
    # --- training schedules (hqod.engine.hooks) ---
    # Ramp of both HQOD loss weights: weight(iter) = W * factor(iter), W = TCORR_WEIGHT / HIOU_WEIGHT above.
    cfg.MODEL.HQOD.WEIGHT_SCHEDULE = CN()
    # "constant" (factor 1 throughout, the authors' setting), "linear" or "cosine".
    cfg.MODEL.HQOD.WEIGHT_SCHEDULE.TYPE = "constant"
    # factor at START_ITER and before; it reaches 1.0 at END_ITER and stays there.
    cfg.MODEL.HQOD.WEIGHT_SCHEDULE.START_FACTOR = 0.0
    cfg.MODEL.HQOD.WEIGHT_SCHEDULE.START_ITER = 0
    cfg.MODEL.HQOD.WEIGHT_SCHEDULE.END_ITER = 0
    # Quantizer schedule (hqod.engine.hooks.QuantScheduler); the defaults are the authors' static QAT.
    cfg.MODEL.QUANT.SCHEDULE = CN()
    # Iteration from which fake quantization is on (before it the calibrated model trains in full precision).
    cfg.MODEL.QUANT.SCHEDULE.FAKE_QUANT_START_ITER = 0
    # Until this iteration observers keep running during training and re-derive every step size each iteration;
    # 0: observers freeze when calibration ends (the authors' setting).
    cfg.MODEL.QUANT.SCHEDULE.OBSERVER_FREEZE_ITER = 0
    # From this iteration BatchNorm running statistics are frozen (BN layers in eval mode); -1: never.
    cfg.MODEL.QUANT.SCHEDULE.BN_FREEZE_ITER = -1
    # DSQ alpha annealing ("constant" keeps MODEL.QUANT.DSQ_ALPHA and lets it be learned if DSQ_LEARN_ALPHA).
    cfg.MODEL.QUANT.SCHEDULE.DSQ_ALPHA = CN()
    cfg.MODEL.QUANT.SCHEDULE.DSQ_ALPHA.TYPE = "constant"      # "constant", "linear" or "cosine"
    cfg.MODEL.QUANT.SCHEDULE.DSQ_ALPHA.START_ITER = 0
    cfg.MODEL.QUANT.SCHEDULE.DSQ_ALPHA.END_ITER = 0
    cfg.MODEL.QUANT.SCHEDULE.DSQ_ALPHA.END_VALUE = 0.05       # alpha at END_ITER (starts at MODEL.QUANT.DSQ_ALPHA)
    # Progressive bit widths: "iteration:weight_bits:act_bits" entries, e.g. ["0:8:8", "2000:6:6", "4000:4:4"]; from
    # each iteration on, every quantizer at the configured WEIGHT_BITS/ACT_BITS (not the 8-bit first/last layers)
    # uses these bits, its step size rescaled to keep its clipping range. Must end at WEIGHT_BITS/ACT_BITS; []: off.
    cfg.MODEL.QUANT.SCHEDULE.BITS = []
    # Optimizer group of the quantizers' own parameters (step sizes, DSQ alpha, TQT thresholds).
    # Learning rate of that group = SOLVER.BASE_LR x this factor.
    cfg.SOLVER.QUANT_LR_FACTOR = 1.0
    # Its weight decay; -1: SOLVER.WEIGHT_DECAY, as in the authors' code (which decays the LSQ scales too).
    cfg.SOLVER.QUANT_WEIGHT_DECAY = -1.0
