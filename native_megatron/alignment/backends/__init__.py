"""Rewriter backends behind one interface: ``vllm`` (offline engine), ``openai`` (HTTP servers), ``hf`` (transformers)."""

from native_megatron.alignment.backends.base import (BackendUnavailable, Generation, RewriterBackend, build_backend,
                                                     check_backend)

__all__ = ["BackendUnavailable", "Generation", "RewriterBackend", "build_backend", "check_backend"]
