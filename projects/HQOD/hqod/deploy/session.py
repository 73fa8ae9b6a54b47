"""onnxruntime CPU sessions with all graph optimisations, the way this project runs every exported model."""
import onnxruntime as ort

from ..errors import HQODInputError


def create_session(model, threads: int = 0, optimized_model_path=None, profile_prefix=None) -> ort.InferenceSession:
    """A CPU session for ``model`` (a path or serialized bytes) with all graph optimisations (QDQ fusion included);
    ``threads`` intra-op threads (0: onnxruntime's default); ``optimized_model_path``: also save the optimised graph;
    ``profile_prefix``: profile every run (``session.end_profiling()`` writes the file and returns its path)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if optimized_model_path:
        options.optimized_model_filepath = str(optimized_model_path)
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for unreadable or invalid models
        what = "the exported graph" if isinstance(model, bytes) else model
        raise HQODInputError(f"onnxruntime cannot load {what} ({' '.join(str(e).split())[:300]}); export it again")
