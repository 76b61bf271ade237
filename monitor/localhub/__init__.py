"""A local Hugging Face hub: serves a folder of model repos over the real HTTP API, on loopback.

It answers the requests huggingface_hub 2.4.0 sends (listings with cursor pages, model info with file
digests, trees, ``/resolve`` with ranges and signed CDN redirects, typed errors, 429s), so the offline
demo, every integration test and air-gapped dry runs use the real client against it. Faults and rate
limits can be injected; virtual files serve 7B/70B-sized checkpoints (safetensors, GGUF, GPTQ) from a
few KB of spec.

    from monitor.localhub import LocalHub, FaultAction, FaultRule, RateLimitPolicy

    with LocalHub(root, token="hf_test") as hub:
        hub.faults.add(FaultRule("GET", r"/resolve/", FaultAction.status(503), times=1))
        HfApi(endpoint=hub.endpoint, token="hf_test").list_models(sort="created_at", limit=10)

See ``docs/localhub.md``.
"""

from monitor.localhub.faults import FaultAction, FaultDecision, FaultRule, FaultSet
from monitor.localhub.log import RequestLog, RequestRecord
from monitor.localhub.populate import copy_into_repo, write_repo
from monitor.localhub.ratelimit import RateLimitPolicy
from monitor.localhub.server import LocalHub
from monitor.localhub.virtual import VirtualFile, VirtualFileSource, materialize, open_virtual
from monitor.localhub.virtual_gguf import VirtualGGUF, write_virtual_gguf
from monitor.localhub.virtual_gptq import VirtualGPTQ, write_virtual_gptq
from monitor.localhub.virtual_llama import LLAMA_7B, LLAMA_70B, LlamaShape, LlamaWeights, write_virtual_llama
from monitor.localhub.virtual_safetensors import VirtualSafetensors
from monitor.localhub.virtual_vocab import llama_vocab

__all__ = [
    "LLAMA_7B",
    "LLAMA_70B",
    "FaultAction",
    "FaultDecision",
    "FaultRule",
    "FaultSet",
    "LlamaShape",
    "LlamaWeights",
    "LocalHub",
    "RateLimitPolicy",
    "RequestLog",
    "RequestRecord",
    "VirtualFile",
    "VirtualFileSource",
    "VirtualGGUF",
    "VirtualGPTQ",
    "VirtualSafetensors",
    "copy_into_repo",
    "llama_vocab",
    "materialize",
    "open_virtual",
    "write_repo",
    "write_virtual_gguf",
    "write_virtual_gptq",
    "write_virtual_llama",
]
