"""Running a model fast on this machine, in three layers that import downward only (checked by
tests/runtime/test_layers.py):

- probe: what the machine is and can do (``hardware``, ``sysparse``, ``threads``, ``roofline``);
- backends: passes that run the model differently (``precision``, ``compile``, ``opaque``, ``ort`` on the
  ``onnx_graph`` tracing that export/onnx shares, ``openvino``, ``external``) and the decode loop (``decode``,
  ``kvcache``, ``sampling``, ``act_sparsity``);
- search: measure backend candidates and keep the fastest (``dense_search``, ``fast_dense``).
"""
LAYERS = {
    "probe": ("hardware", "sysparse", "threads", "roofline"),
    "backends": ("precision", "compile", "opaque", "onnx_graph", "ort", "openvino", "external", "decode", "kvcache", "sampling",
                 "act_sparsity"),
    "search": ("dense_search", "fast_dense"),
}
