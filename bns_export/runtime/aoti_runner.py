"""AOTInductor packages (.pt2): torch tensors (or numpy) in, same kind out."""

from __future__ import annotations

from ..errors import BNSError
from .base import Runner


class AotiRunner(Runner):
    def __init__(self, folder, manifest: dict, device: str | None = None) -> None:
        super().__init__(folder, manifest)
        import torch

        self.device = device or manifest.get("device", "cpu")
        if self.device != manifest.get("device", "cpu"):
            raise BNSError(f"this package was compiled for {manifest.get('device')}, not {self.device}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise BNSError("this AOTInductor package needs a CUDA GPU", 3)
        try:
            self.model = torch._inductor.aoti_load_package(str(self.folder / manifest["model_file"]))
        except Exception as e:
            raise BNSError(f"cannot load AOTInductor package: {e}") from None

    def run(self, noise, labels):
        import numpy as np
        import torch

        as_numpy = isinstance(noise, np.ndarray)
        x = torch.as_tensor(noise, dtype=torch.float32, device=self.device)
        args = [x]
        if self.conditional:
            args.append(torch.as_tensor(labels, dtype=torch.long, device=self.device))
        with self._lock, torch.no_grad():
            out = self.model(*args)
        out = out[0] if isinstance(out, (list, tuple)) else out
        return out.cpu().numpy() if as_numpy else out
