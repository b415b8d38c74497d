"""TensorRT engines (TensorRT 10.x / 11.x API): CUDA torch tensors (or numpy) in, same kind out."""

from __future__ import annotations

from ..errors import EXIT_MISSING_BACKEND, BNSError
from .base import Runner


def import_tensorrt():
    """tensorrt and a CUDA device, or one clear error with exit code 3."""
    try:
        import tensorrt as trt
    except ImportError:
        raise BNSError(
            "TensorRT is not installed (pip install tensorrt, on a machine with a CUDA GPU)", EXIT_MISSING_BACKEND
        ) from None
    import torch

    if not torch.cuda.is_available():
        raise BNSError("TensorRT needs a CUDA GPU and none is available", EXIT_MISSING_BACKEND)
    return trt


class TensorRTRunner(Runner):
    """Deserialises the plan once; one execution context, serialised by a lock."""

    def __init__(self, folder, manifest: dict) -> None:
        super().__init__(folder, manifest)
        trt = import_tensorrt()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        plan = (self.folder / manifest["model_file"]).read_bytes()
        self.engine = self._runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise BNSError(
                "TensorRT cannot load this engine: it was built for another GPU or TensorRT version; "
                "rebuild it with `bns-export compile --format tensorrt`"
            )
        self.context = self.engine.create_execution_context()

    def run(self, noise, labels):
        import numpy as np
        import torch

        as_numpy = isinstance(noise, np.ndarray)
        x = torch.as_tensor(noise, dtype=torch.float32).cuda().contiguous()
        out = torch.empty_like(x)
        with self._lock:
            self.context.set_input_shape("noise", tuple(x.shape))
            self.context.set_tensor_address("noise", x.data_ptr())
            if self.conditional:
                lab = torch.as_tensor(labels, dtype=torch.long).cuda().contiguous()
                self.context.set_input_shape("labels", tuple(lab.shape))
                self.context.set_tensor_address("labels", lab.data_ptr())
            self.context.set_tensor_address("sample", out.data_ptr())
            stream = torch.cuda.current_stream()
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise BNSError("TensorRT execution failed")
            stream.synchronize()
        return out.cpu().numpy() if as_numpy else out
