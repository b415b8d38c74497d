"""ONNX artifacts in ONNX Runtime: numpy in, numpy out; imports no torch."""

from __future__ import annotations

import numpy as np

from ..errors import EXIT_MISSING_BACKEND, BNSError
from .base import Runner

PREFERRED = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


class OnnxRunner(Runner):
    """One InferenceSession (whose run() is thread-safe) over the artifact's model file."""

    def __init__(self, folder, manifest: dict, providers: list[str] | None = None) -> None:
        super().__init__(folder, manifest)
        try:
            import onnxruntime as ort
        except ImportError:
            raise BNSError(
                "onnxruntime is not installed: pip install onnxruntime (or onnxruntime-gpu)", EXIT_MISSING_BACKEND
            ) from None
        available = ort.get_available_providers()
        if providers is None:
            providers = [p for p in PREFERRED if p in available and p != "TensorrtExecutionProvider"]
        missing = [p for p in providers if p not in available]
        if missing:
            raise BNSError(
                f"ONNX Runtime lacks {', '.join(missing)} (available: {', '.join(available)})", EXIT_MISSING_BACKEND
            )
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(self.folder / manifest["model_file"]), opts, providers=providers)
        except Exception as e:  # a corrupt model file that still matched its hash is a build bug, but say so
            raise BNSError(f"ONNX Runtime cannot load {manifest['model_file']}: {e}") from None
        self.providers = self.session.get_providers()

    def run(self, noise, labels):
        feed = {"noise": np.ascontiguousarray(noise, dtype=np.float32)}
        if self.conditional:
            feed["labels"] = np.ascontiguousarray(labels, dtype=np.int64)
        return self.session.run(["sample"], feed)[0]
