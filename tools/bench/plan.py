"""The benchmark plan: per mode, which train_net.py runs with which ``KEY VALUE`` overrides. Per data set and
detector: one FP run; per QAT recipe, one calibration run per quantizer and bit width (train_net.py with one
iteration at LR 0, no evaluation: the FP checkpoint with calibrated quantizers); then every QAT setting x seed from
it, so that a baseline and its HQOD variant start from the very same calibrated model.

Detectors are those of hqod's table (``hqod.modeling.detectors.DENSE_DETECTORS``), their configs found by name:
``configs/quickstart_<det>_mnv2_shapes.yaml`` / ``configs/deepforest/<det>_MNV2_FPN_fp32.yaml`` (FP) and
``configs/<data>/<det>_MNV2_<setting>.yaml`` (QAT). A setting may end in a variant (``lsq_hqod_w4a4_numpos``): the
setting's config with the variant's overrides, compared with the setting itself."""
import dataclasses
import functools
import pathlib
from dataclasses import dataclass, field

from detectron2.config import get_cfg
from hqod.config import add_hqod_config
from hqod.modeling.detectors import DENSE_DETECTORS

REPO = pathlib.Path(__file__).resolve().parents[2]

QAT_SETTINGS = ("lsq_w4a4", "lsq_hqod_w4a4", "lsq_w2a2", "lsq_hqod_w2a2")
TQT_SETTINGS = ("tqt_w4a4", "tqt_hqod_w4a4")
FP_SETTING = "fp32"
# The FP model trained on for as many iterations as a converged W4A4 QAT run, at its learning rate and without
# quantizers: the control that tells what the extra training alone gives (converged recipes only).
FP_LONGER_SETTING = "fp32_longer"
VARIANTS = {"numpos": ("MODEL.HQOD.NORMALIZER", "num_pos")}  # variant suffix -> its KEY VALUE overrides
NORMALIZER_SETTINGS = ("lsq_hqod_w4a4", "lsq_hqod_w4a4_numpos")  # the normaliser ablation

CLIP_OPTS = ("SOLVER.CLIP_GRADIENTS.ENABLED", "True", "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "norm",
             "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "5.0")  # per-parameter norm, as the shapes RetinaNet quickstart

FP_CONFIGS = {"shapes": "configs/quickstart_{}_mnv2_shapes.yaml",  # data set -> FP config of detector {}
              "deepforest": "configs/deepforest/{}_MNV2_FPN_fp32.yaml"}


BATCH = 4  # images per iteration, FP and QAT
CALIB_IMAGES = 16  # training images the calibration run observes


@dataclass(frozen=True)
class DataSpec:
    """A data set as the bench uses it: registered sets, val and test images, input sizes and the schedules. Every
    run is evaluated on both the val and the test subset; settings are chosen on val, the report shows test."""
    train: str
    val: str
    val_images: int  # the first N images of ``val`` (by id) are evaluated
    test: str
    test_images: int  # the first N images of ``test`` (by id) are evaluated
    train_size: int  # shorter = longer side while training (after the crop, if any)
    test_size: int
    crop: int  # train on fixed square crops of this size cut from the training images (bench.data), 0: whole images
    fp_iters: int
    short_qat_iters: int  # QAT iterations of the short recipe (the converged one trains as long as FP)
    fp_lr: float = 0.0  # FP learning rate; 0 keeps the FP config's


DATA = {
    "shapes": DataSpec("hqod_shapes_train", "hqod_shapes_val", val_images=100, test="hqod_shapes_test",
                       test_images=200, train_size=192, test_size=192, crop=0, fp_iters=2400,
                       short_qat_iters=150),
    # 155 crops of the 43 training tiles; val and test: all their tiles (7 and 6)
    "deepforest": DataSpec("deepforest_train", "deepforest_val", val_images=7, test="deepforest_test", test_images=6,
                           train_size=256, test_size=400, crop=256, fp_iters=1000, short_qat_iters=80,
                           fp_lr=0.005),
}
SPLITS = ("val", "test")  # every evaluating run is evaluated on both, in this order (DATASETS.TEST)


@dataclass(frozen=True)
class Recipe:
    """How the QAT runs of a mode train. Warm-up and LR steps are fractions of the run. Per bit width:
    ``base_lr`` is the QAT learning rate, else ``lr_factor`` x the FP run's (no entry: the QAT config's own);
    ``quant`` holds MODEL.QUANT ``KEY VALUE`` pairs (key 0: every width), which the calibration run gets too, as they
    shape the quantizers it calibrates; ``bit_schedule`` a progressive schedule ((fraction of the run, bits), ...)
    ending at that width (MODEL.QUANT.SCHEDULE.BITS of the QAT runs). A recipe's runs have their own folders."""
    name: str
    converged: bool  # as long as the FP schedule (DataSpec.fp_iters) x ``length``, else DataSpec.short_qat_iters
    warmup: float
    steps: tuple
    lr_factor: dict = field(default_factory=dict)
    base_lr: dict = field(default_factory=dict)  # bits -> SOLVER.BASE_LR, whatever the detector's FP rate
    length: dict = field(default_factory=dict)  # bits -> multiple of the FP schedule (converged recipes; default 1)
    quant: dict = field(default_factory=dict)
    bit_schedule: dict = field(default_factory=dict)

    def iters(self, spec: DataSpec, bits: int) -> int:
        return int(spec.fp_iters * self.length.get(bits, 1)) if self.converged else spec.short_qat_iters

    def quant_opts(self, bits: int) -> list:
        return [*self.quant.get(0, ()), *self.quant.get(bits, ())]

    def training_opts(self, spec: DataSpec, bits: int, fp_lr: float) -> list:
        """SOLVER schedule, learning rate (``fp_lr``: the FP run's) and bit schedule of a run at ``bits``."""
        iters = self.iters(spec, bits)
        opts = schedule_opts(iters, self.warmup, self.steps)
        if bits in self.base_lr:
            opts += ["SOLVER.BASE_LR", f"{self.base_lr[bits]:g}"]
        elif bits in self.lr_factor:
            opts += ["SOLVER.BASE_LR", f"{self.lr_factor[bits] * fp_lr:g}"]
        if bits in self.bit_schedule:
            entries = [f"{int(iters * fraction)}:{b}:{b}" for fraction, b in self.bit_schedule[bits]]
            opts += ["MODEL.QUANT.SCHEDULE.BITS", repr(entries)]
        return opts


# The bench's first QAT: short, per-tensor, each QAT config's own learning rate (BENCHMARKS.md, issue #6).
SHORT = Recipe("short", converged=False, warmup=0.15, steps=(2 / 3, 0.9))
# The recipe chosen on shapes val (BENCHMARKS.md, "Closing the gap to FP"): per-channel weight steps, MobileNetV2's
# depthwise convs at 8 bits, frozen convs' quantizers kept as calibrated; W4A4 as long as FP at 0.8 x its LR; W2A2
# as long at LR 0.008 whatever the detector (RetinaNet's 1.6 x, FCOS's 0.8 x FP's: FCOS + HQOD was unstable at 1.6 x),
# with a progressive bit schedule 4 -> 3 -> 2 over the first half. Deepforest takes it over unchanged (not chosen on
# its val).
CONVERGED = Recipe(
    "converged", converged=True, warmup=0.1, steps=(0.75, 0.9), lr_factor={4: 0.8}, base_lr={2: 0.008},
    quant={0: ("MODEL.QUANT.PER_CHANNEL", "True", "MODEL.QUANT.DEPTHWISE_BITS", "8",
               "MODEL.QUANT.FREEZE_FROZEN_QUANTIZERS", "True")},
    bit_schedule={2: ((0.0, 4), (0.25, 3), (0.5, 2))})


@dataclass(frozen=True)
class Mode:
    """One bench size: data sets, detectors, seeds, QAT settings and recipe. A run's settings depend on its recipe,
    not on the mode, so modes of one recipe share their runs (the FP runs are shared by all): ``full``'s runs are
    runs of ``hqod`` and are reused by it."""
    name: str
    datasets: tuple
    detectors: tuple
    seeds: tuple
    settings: tuple
    speed_iters: int
    recipe: Recipe = CONVERGED


MODES = {
    "quick": Mode("quick", datasets=("shapes",), detectors=("retinanet",), seeds=(1, 2), settings=QAT_SETTINGS,
                  speed_iters=5, recipe=SHORT),
    "full": Mode("full", datasets=("shapes",), detectors=("retinanet", "fcos"), seeds=(1, 2, 3),
                 settings=QAT_SETTINGS, speed_iters=10),
    "hqod": Mode("hqod", datasets=tuple(DATA), detectors=("retinanet", "fcos"), seeds=(1, 2, 3, 4, 5),
                 settings=QAT_SETTINGS + TQT_SETTINGS, speed_iters=0),
    "ablation": Mode("ablation", datasets=("shapes",), detectors=tuple(DENSE_DETECTORS), seeds=(1, 2, 3),
                     settings=NORMALIZER_SETTINGS, speed_iters=0, recipe=SHORT),
}


@dataclass(frozen=True)
class Run:
    """One train_net.py invocation."""
    dataset: str
    detector: str
    setting: str
    seed: int
    config: str
    opts: tuple
    output_dir: str
    max_iter: int
    splits: tuple = ()  # ((split, registered test set), ...) it is evaluated on at its end; () for none

    @property
    def evaluates(self) -> bool:
        return bool(self.splits)

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.detector}/{self.setting}/seed{self.seed}"

    @property
    def weights(self) -> str:
        """MODEL.WEIGHTS as overridden on the command line ("" when the config's are used)."""
        return dict(zip(self.opts[::2], self.opts[1::2])).get("MODEL.WEIGHTS", "")

    @property
    def is_fp(self) -> bool:
        return self.setting == FP_SETTING


def split_variant(setting: str):
    """``(setting without its variant, variant or None)``: ``lsq_hqod_w4a4_numpos`` -> ``("lsq_hqod_w4a4",
    "numpos")``."""
    plain, _, last = setting.rpartition("_")
    return (plain, last) if last in VARIANTS else (setting, None)


def bits_of(setting: str) -> int:
    """32 for FP, else the weight/activation bits in the setting's name (``..._w4a4`` -> 4)."""
    return 32 if setting in (FP_SETTING, FP_LONGER_SETTING) else int(setting.rsplit("_w", 1)[1][0])


def baseline_of(setting: str) -> str:
    """The setting without HQOD or variant (whose calibration it starts from): ``lsq_hqod_w4a4`` -> ``lsq_w4a4``."""
    return split_variant(setting)[0].replace("_hqod", "")


def pairs(settings):
    """``(reference, compared)`` setting pairs among ``settings``: each baseline with its HQOD setting, e.g.
    ``("lsq_w4a4", "lsq_hqod_w4a4")``, and each setting with its variants, e.g. ``("lsq_hqod_w4a4",
    "lsq_hqod_w4a4_numpos")``."""
    result = []
    for setting in settings:
        plain, variant = split_variant(setting)
        if variant is not None:
            if plain in settings:
                result.append((plain, setting))
            continue
        algo, bits = setting.split("_", 1)
        hqod = f"{algo}_hqod_{bits}"
        if "hqod" not in setting and hqod in settings:
            result.append((setting, hqod))
    return result


def select(mode: Mode, detectors=None, datasets=None, settings=None, seeds=None) -> Mode:
    """``mode`` restricted to some of its detectors and data sets, or with other QAT settings, or with seeds 1 to
    ``seeds`` (None: the mode's)."""
    if seeds is not None and seeds < 1:
        raise ValueError(f"--seeds {seeds}: give 1 or more seeds")
    for name, chosen, known in (("detector", detectors, DENSE_DETECTORS), ("data set", datasets, DATA)):
        unknown = [c for c in chosen or () if c not in known]
        if unknown:
            raise ValueError(f"unknown {name} {', '.join(unknown)}: use {', '.join(known)}")
    return dataclasses.replace(mode, datasets=tuple(datasets or mode.datasets),
                               detectors=tuple(detectors or mode.detectors),
                               seeds=tuple(range(1, seeds + 1)) if seeds else mode.seeds,
                               settings=tuple(settings or mode.settings))


def schedule_opts(iters: int, warmup_fraction: float, steps: tuple) -> list:
    """SOLVER overrides for ``iters`` iterations, warm-up and LR steps as fractions of the run."""
    step_iters = tuple(int(iters * s) for s in steps)
    return ["SOLVER.MAX_ITER", str(iters), "SOLVER.WARMUP_ITERS", str(max(1, int(iters * warmup_fraction))),
            "SOLVER.STEPS", str(step_iters), "SOLVER.CHECKPOINT_PERIOD", str(iters)]


def data_opts(spec: DataSpec, sets: dict) -> list:
    """Input sizes and the bench's own data sets (``sets``: COCO_FORMAT ``entries``, ``train`` or None, and the
    registered name of each of ``SPLITS``)."""
    opts = ["INPUT.MIN_SIZE_TRAIN", f"({spec.train_size},)", "INPUT.MAX_SIZE_TRAIN", str(spec.train_size),
            "INPUT.MIN_SIZE_TEST", str(spec.test_size), "INPUT.MAX_SIZE_TEST", str(spec.test_size),
            "DATASETS.COCO_FORMAT", repr(sets["entries"]), "DATASETS.TEST", repr(tuple(sets[s] for s in SPLITS))]
    if sets["train"]:
        opts += ["DATASETS.TRAIN", repr((sets["train"],))]
    return opts


def build_plan(mode: Mode, root: str, device: str, data_sets: dict, tqt: bool = False) -> list:
    """The runs of ``mode`` in execution order: per data set and detector FP, the calibrations, seed by seed every
    QAT setting (so an interrupted bench has whole seeds), then the FP-trained-on control. ``data_sets``: data set
    -> ``data_opts``' sets. FP runs go to ``<root>/<data set>/<detector>/fp32``, the recipe's runs under
    ``.../<recipe name>/``."""
    settings = mode.settings + (TQT_SETTINGS if tqt and not set(TQT_SETTINGS) <= set(mode.settings) else ())
    recipe = mode.recipe
    runs = []
    for dataset in mode.datasets:
        spec = DATA[dataset]
        splits = tuple((s, data_sets[dataset][s]) for s in SPLITS)
        common = ["MODEL.DEVICE", device, "DATALOADER.NUM_WORKERS", "0", "TEST.EVAL_PERIOD", "0",
                  "SOLVER.IMS_PER_BATCH", str(BATCH), *CLIP_OPTS] + data_opts(spec, data_sets[dataset])
        for detector in mode.detectors:
            base_dir = f"{root}/{dataset}/{detector}"
            recipe_dir = f"{base_dir}/{recipe.name}"
            fp_dir = f"{base_dir}/{FP_SETTING}"
            fp_lr = ["SOLVER.BASE_LR", str(spec.fp_lr)] if spec.fp_lr else []
            runs.append(Run(dataset, detector, FP_SETTING, 0, FP_CONFIGS[dataset].format(detector),
                            tuple(common + schedule_opts(spec.fp_iters, 0.1, (0.75, 0.9)) + fp_lr
                                  + ["SEED", "0", "OUTPUT_DIR", fp_dir]), fp_dir, spec.fp_iters, splits))
            fp_rate = fp_learning_rate(dataset, detector) if recipe.lr_factor else None
            calibrated = {}
            for base in dict.fromkeys(baseline_of(s) for s in settings):
                out = f"{recipe_dir}/calib_{base}"
                calibrated[base] = f"{out}/model_final.pth"
                runs.append(Run(dataset, detector, f"calib_{base}", 0, qat_config(dataset, detector, base),
                                tuple(common + recipe.quant_opts(bits_of(base))
                                      + ["SOLVER.MAX_ITER", "1", "SOLVER.BASE_LR", "0.0",
                                         "SOLVER.CHECKPOINT_PERIOD", "1", "DATASETS.TEST", "()",
                                         "MODEL.WEIGHTS", f"{fp_dir}/model_final.pth",
                                         "MODEL.QUANT.CALIB_IMAGES", str(CALIB_IMAGES), "SEED", "0",
                                         "OUTPUT_DIR", out]), out, 1))
            for seed in mode.seeds:
                for setting in settings:
                    out = f"{recipe_dir}/{setting}/seed{seed}"
                    plain, variant = split_variant(setting)
                    bits = bits_of(setting)
                    opts = (common + recipe.quant_opts(bits) + recipe.training_opts(spec, bits, fp_rate)
                            + ["MODEL.WEIGHTS", calibrated[baseline_of(setting)],
                               "MODEL.QUANT.CALIB_IMAGES", str(CALIB_IMAGES), "SEED", str(seed), "OUTPUT_DIR", out])
                    opts += list(VARIANTS[variant]) if variant else []
                    runs.append(Run(dataset, detector, setting, seed, qat_config(dataset, detector, plain),
                                    tuple(opts), out, recipe.iters(spec, bits), splits))
            if recipe.converged:  # trained on as a W4A4 run is; last: a control
                out = f"{recipe_dir}/{FP_LONGER_SETTING}/seed1"
                runs.append(Run(dataset, detector, FP_LONGER_SETTING, 1, FP_CONFIGS[dataset].format(detector),
                                tuple(common + recipe.training_opts(spec, 4, fp_rate)
                                      + ["MODEL.WEIGHTS", f"{fp_dir}/model_final.pth", "SEED", "1",
                                         "OUTPUT_DIR", out]), out, recipe.iters(spec, 4), splits))
    return runs


@functools.lru_cache(maxsize=None)
def fp_learning_rate(dataset: str, detector: str) -> float:
    """SOLVER.BASE_LR of the bench's FP run: the data set's ``fp_lr``, else its FP config's."""
    if DATA[dataset].fp_lr:
        return DATA[dataset].fp_lr
    return merged_config(str(REPO / FP_CONFIGS[dataset].format(detector))).SOLVER.BASE_LR


def merged_config(config_file: str, opts=()):
    """The Detectron2 config of ``config_file`` with hqod's keys and the ``KEY VALUE`` overrides ``opts``, unvalidated
    (the bench reads settings from it; train_net.py validates when it runs)."""
    cfg = get_cfg()
    add_hqod_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    return cfg


def qat_config(dataset: str, detector: str, setting: str) -> str:
    return f"configs/{dataset}/{detector}_MNV2_{setting}.yaml"
