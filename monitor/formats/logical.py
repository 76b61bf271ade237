"""Logical tensors: a weight as the model uses it, whatever way the file stores it.

A *logical* tensor has the name and ``nn.Linear`` shape ``(out, in)`` of an unquantised checkpoint
(``model.layers.0.mlp.down_proj.weight``) and knows how to plan reads of its rows and columns
against the stored tensors. `DenseTensor` is one stored tensor read as is (safetensors, GGUF,
PyTorch zip, and the unquantised parts of quantised checkpoints); `monitor.formats.quantized`
adds GPTQ, AWQ and bitsandbytes. `monitor.formats.canonical` then renames, splits and transposes
logical tensors into canonical keys.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from monitor.formats.rows import Need, ReadPlan, RowFile

__all__ = ["DenseTensor", "LogicalTensor"]


class LogicalTensor(ABC):
    """A weight in ``nn.Linear`` layout with read planning.

    Attributes:
        name (`str`): the unquantised checkpoint name.
        shape (`tuple[int, ...]`): logical shape.
        dtype (`str`): storage type (``F16``, ``Q4_K``, ``gptq-int4``...).
        sources (`tuple[str, ...]`), files (`tuple[str, ...]`): stored tensors and their files.
        nbytes (`int`): stored bytes.
        rows_contiguous (`bool`), cols_contiguous (`bool`): which reads are cheap.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    sources: tuple[str, ...]
    files: tuple[str, ...]
    nbytes: int
    rows_contiguous: bool
    cols_contiguous: bool

    @abstractmethod
    def plan_rows(self, rows: np.ndarray) -> ReadPlan:
        """Rows (validated indices) -> float32 ``(len(rows), *shape[1:])``."""

    @abstractmethod
    def plan_cols(self, cols: np.ndarray) -> ReadPlan:
        """Columns of a 2-D tensor (validated) -> float32 ``(len(cols), shape[0])``."""

    def plan_all(self) -> ReadPlan:
        """The whole tensor as float32 in its logical shape."""
        plan = self.plan_rows(np.arange(self.shape[0] if self.shape else 1, dtype=np.int64))
        finish, shape = plan.finish, self.shape

        def reshape(arrays: list[np.ndarray]) -> np.ndarray | ReadPlan:
            out = finish(arrays)
            return out.reshape(shape) if isinstance(out, np.ndarray) else out

        return ReadPlan(plan.needs, reshape, plan.followup_bytes)


class DenseTensor(LogicalTensor):
    """One stored tensor read as it is stored."""

    def __init__(self, file: RowFile, name: str) -> None:
        info = file.info(name)
        layout = file.layout(name)
        self.file = file
        self.name = name
        self.shape = info.shape
        self.dtype = info.dtype
        self.sources = (name,)
        self.files = (file.path,)
        self.nbytes = info.nbytes
        self.rows_contiguous = not layout.whole
        self.cols_contiguous = len(info.shape) <= 1 and not layout.whole

    def plan_rows(self, rows: np.ndarray) -> ReadPlan:
        return ReadPlan([Need(self.file, self.name, rows)], lambda arrays: arrays[0])

    def plan_cols(self, cols: np.ndarray) -> ReadPlan:
        n = self.shape[0]

        def finish(arrays: list[np.ndarray]) -> np.ndarray:
            return np.ascontiguousarray(arrays[0].reshape(n, -1)[:, cols].T)

        return ReadPlan([Need(self.file, self.name, np.arange(n, dtype=np.int64))], finish)
