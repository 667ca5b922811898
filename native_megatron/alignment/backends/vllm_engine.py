"""vLLM's offline engine (``vllm.LLM``): the throughput path on GPUs. Kept thin on purpose."""

from __future__ import annotations

from native_megatron.alignment.backends.base import VLLM_MISSING, Generation, Messages, RewriterBackend
from native_megatron.alignment.config import RewriteConfig, SamplingConfig
from native_megatron.utils.config import ConfigError


class VLLMBackend(RewriterBackend):
    kind = "vllm"

    def __init__(self, config: RewriteConfig) -> None:
        try:
            from vllm import LLM
        except ImportError:
            raise ConfigError(VLLM_MISSING) from None
        v = config.vllm
        self.model = config.model
        # Thousands of documents per llm.chat call: the engine schedules them all with continuous batching,
        # and the guideline prompt that starts every request is computed once (prefix caching).
        self.documents_per_call = v.documents_per_call
        kwargs = dict(model=config.model, tensor_parallel_size=v.tensor_parallel_size,
                      gpu_memory_utilization=v.gpu_memory_utilization, dtype=v.dtype)
        if config.tokenizer:
            kwargs["tokenizer"] = config.tokenizer
        if v.max_model_len:
            kwargs["max_model_len"] = v.max_model_len
        self.llm = LLM(enable_prefix_caching=True, **kwargs)
        self.tokenizer = self.llm.get_tokenizer()

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def generate(self, requests: list[Messages], sampling: SamplingConfig) -> list[Generation]:
        from vllm import SamplingParams

        params = SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p,
                                max_tokens=sampling.max_new_tokens, seed=sampling.seed)
        # One call for the whole batch: vLLM schedules it with continuous batching.
        outputs = self.llm.chat(requests, params, use_tqdm=False)
        return [Generation(o.outputs[0].text, o.outputs[0].finish_reason, len(o.prompt_token_ids),
                           len(o.outputs[0].token_ids)) for o in outputs]
