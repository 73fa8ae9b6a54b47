"""Training hooks: quantizer calibration before the first iteration, the quantizer schedule, HQOD weight ramps.

Each schedule hook writes its current values into the event storage every iteration, so they appear in
``metrics.json`` and TensorBoard.
"""
import logging
import time

from detectron2.engine import HookBase
from torch import nn

from ..quantization import DSQQuantizer, calibrate, is_calibrated, is_quantized, quantizers, set_quant_state
from .schedules import parse_bit_schedule, ramp

logger = logging.getLogger(__name__)


def unwrap(model):
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class QuantCalibration(HookBase):
    """Calibrates a converted model once, before the first iteration; a resumed calibrated checkpoint skips it.

    Its wall time (data loader included) and the images it saw go into the event storage as
    ``quant/calib_seconds`` and ``quant/calib_images``, at the first iteration, so they land in ``metrics.json``.
    """

    def __init__(self, build_loader, num_images: int):
        self._build_loader = build_loader
        self._num_images = num_images

    def before_train(self):
        model = unwrap(self.trainer.model)
        if not is_quantized(model):
            return
        if is_calibrated(model):
            logger.info("Quantizers already initialised (QAT checkpoint): calibration skipped.")
            return
        start = time.perf_counter()
        seen = calibrate(model, self._build_loader(), self._num_images)
        storage = self.trainer.storage
        storage.put_scalar("quant/calib_seconds", time.perf_counter() - start, smoothing_hint=False)
        storage.put_scalar("quant/calib_images", float(seen), smoothing_hint=False)


class QuantScheduler(HookBase):
    """Applies MODEL.QUANT.SCHEDULE each iteration: fake-quant start, observer and BN freezing, DSQ alpha, bits."""

    def __init__(self, cfg):
        qcfg = cfg.MODEL.QUANT
        self._sched = qcfg.SCHEDULE
        self._dsq_start = qcfg.DSQ_ALPHA
        self._bits = parse_bit_schedule(qcfg.SCHEDULE.BITS)
        self._base_bits = (qcfg.WEIGHT_BITS, qcfg.ACT_BITS)
        self._scheduled = None  # the quantizers a bit schedule moves (not first/last/overrides)

    def before_train(self):
        """Collect once what the schedule touches: the model's structure does not change while training."""
        model = unwrap(self.trainer.model)
        self._quantizers = [q for _, q in quantizers(model)]
        self._scheduled = [q for q in self._quantizers if q.follows_schedule]
        self._dsq = [q for q in self._quantizers if isinstance(q, DSQQuantizer)]
        self._bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self._quant_state = None  # (observe, fake_quant) last applied

    def before_step(self):
        if not self._quantizers:
            return
        it, sched, storage = self.trainer.iter, self._sched, self.trainer.storage
        state = (it < sched.OBSERVER_FREEZE_ITER, it >= sched.FAKE_QUANT_START_ITER)
        if state != self._quant_state:
            set_quant_state(unwrap(self.trainer.model), observe=state[0], fake_quant=state[1])
            self._quant_state = state
        storage.put_scalar("quant/observing", float(state[0]), smoothing_hint=False)
        storage.put_scalar("quant/fake_quant", float(state[1]), smoothing_hint=False)
        bn_frozen = 0 <= sched.BN_FREEZE_ITER <= it
        if bn_frozen:  # every step: evaluation switches the model back to train mode
            for bn in self._bns:
                bn.eval()
        storage.put_scalar("quant/bn_frozen", float(bn_frozen), smoothing_hint=False)
        if self._dsq and sched.DSQ_ALPHA.TYPE != "constant":
            alpha = ramp(sched.DSQ_ALPHA.TYPE, it, sched.DSQ_ALPHA.START_ITER, sched.DSQ_ALPHA.END_ITER,
                         self._dsq_start, sched.DSQ_ALPHA.END_VALUE)
            for q in self._dsq:
                q.set_alpha(alpha)
        if self._dsq:
            storage.put_scalar("quant/dsq_alpha", self._dsq[0].alpha.item(), smoothing_hint=False)
        wbits, abits = self._current_bits(it)
        for q in self._scheduled:
            bits = wbits if q.role == "weight" else abits
            if q.bits != bits:
                q.set_bits(bits)
        storage.put_scalar("quant/weight_bits", float(wbits), smoothing_hint=False)
        storage.put_scalar("quant/act_bits", float(abits), smoothing_hint=False)

    def after_step(self):
        if self.trainer.iter < self._sched.OBSERVER_FREEZE_ITER:
            for q in self._quantizers:
                q.finish_calibration()

    def _current_bits(self, it):
        """Bits of the last entry started by ``it`` (the first entry's before it starts)."""
        if not self._bits:
            return self._base_bits
        current = self._bits[0][1:]
        for start, wbits, abits in self._bits:
            if it >= start:
                current = (wbits, abits)
        return current


class HQODLossWeightScheduler(HookBase):
    """Ramps the HQOD loss weights (model.tcorr_weight / model.hiou_weight) by MODEL.HQOD.WEIGHT_SCHEDULE."""

    def __init__(self, cfg):
        self._weights = {"tcorr_weight": cfg.MODEL.HQOD.TCORR_WEIGHT, "hiou_weight": cfg.MODEL.HQOD.HIOU_WEIGHT}
        self._sched = cfg.MODEL.HQOD.WEIGHT_SCHEDULE

    def before_step(self):
        model = unwrap(self.trainer.model)
        if not hasattr(model, "tcorr_weight"):
            return
        s = self._sched
        factor = ramp(s.TYPE, self.trainer.iter, s.START_ITER, s.END_ITER, s.START_FACTOR, 1.0)
        for name, weight in self._weights.items():
            setattr(model, name, weight * factor)
            self.trainer.storage.put_scalar(f"hqod/{name}", weight * factor, smoothing_hint=False)

