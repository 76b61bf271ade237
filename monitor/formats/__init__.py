"""Weight-file formats and the canonical model view.

Fingerprints read weights only through `ModelView` (``monitor.formats.canonical``): it finds the
weight files of a `FileSet`, parses their headers with range reads (safetensors, GGUF, PyTorch zip,
GPTQ/AWQ/bitsandbytes), and serves rows and columns of canonical tensors as float32 while reading
only the bytes they occupy. See ``docs/formats.md`` for formats, limits and what is not supported.
"""

from monitor.formats.base import ArchInfo, CanonicalTensor, TensorInfo, WeightFile
from monitor.formats.canonical import ModelView
from monitor.formats.gguf import GGUFFile, open_gguf
from monitor.formats.safetensors import SafetensorsFile, open_safetensors
from monitor.formats.torchzip import TorchZipFile, open_torch

__all__ = [
    "ArchInfo",
    "CanonicalTensor",
    "GGUFFile",
    "ModelView",
    "SafetensorsFile",
    "TensorInfo",
    "TorchZipFile",
    "WeightFile",
    "open_gguf",
    "open_safetensors",
    "open_torch",
]
