"""The detector to export: built from the validated config, converted when it is a QAT config, weights loaded through
the project's checkpointer (safe reading, checkpoint-config checks), every detector tensor required to be set."""
from ..engine import HQODTrainer
from ..engine.checkpoint import StrictHQODCheckpointer, check_weights_file
from ..errors import HQODInputError
from ..quantization import is_calibrated, is_quantized


def load_trained_model(cfg):
    """The eval-mode detector of ``cfg`` (built as for training, QAT-converted with MODEL.QUANT.ENABLED) with
    MODEL.WEIGHTS loaded; one-line errors for no weights, a QAT checkpoint with a full-precision config (and other
    mismatches), and full-precision weights with a QAT config."""
    weights = cfg.MODEL.WEIGHTS
    if not weights:
        raise HQODInputError("no weights to export: pass MODEL.WEIGHTS path/to/model_final.pth in --opts")
    check_weights_file(cfg)
    model = HQODTrainer.build_model(cfg)
    StrictHQODCheckpointer(model, cfg=cfg).load(weights)
    if is_quantized(model) and not is_calibrated(model):
        raise HQODInputError(f"MODEL.WEIGHTS {weights!r} has no trained quantizers (a full-precision checkpoint?): "
                             "export the model_final.pth of the QAT run, or use the full-precision config")
    return model.eval()
