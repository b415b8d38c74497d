"""The artifact contract, torch-free: the graph's signature (`Signature` of `TensorSpec`s, the condition a named
record whose `ConditionKind` is decided once) and the manifest as a frozen record (`Manifest`).  Compile writes
them; the runtime, validation, Triton, the server and refit read their attributes."""

from .manifest import Manifest, TableEntry, traced_guidance
from .signature import (
    DTYPES,
    GUIDANCE_INPUT,
    NULL_LABEL,
    OUTPUTS,
    TABLE_INITIALIZERS,
    TABLE_INPUT,
    ConditionKind,
    Signature,
    TensorSpec,
)

__all__ = [
    "DTYPES",
    "GUIDANCE_INPUT",
    "NULL_LABEL",
    "OUTPUTS",
    "TABLE_INITIALIZERS",
    "TABLE_INPUT",
    "ConditionKind",
    "Manifest",
    "Signature",
    "TableEntry",
    "TensorSpec",
    "traced_guidance",
]
