"""transformers ``generate`` on CPU or one GPU: small runs, demos and tests."""

from __future__ import annotations

import torch

from native_megatron.alignment.backends.base import Generation, Messages, RewriterBackend, check_model_dir
from native_megatron.alignment.config import RewriteConfig, SamplingConfig
from native_megatron.utils.config import ConfigError


class HFBackend(RewriterBackend):
    kind = "hf"

    def __init__(self, config: RewriteConfig) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        check_model_dir(config.model)
        self.model = config.model
        self.batch_size = config.hf.batch_size
        device = config.hf.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = config.hf.dtype
        if dtype == "auto":
            dtype = "bfloat16" if device.startswith("cuda") else "float32"
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(config.tokenizer or config.model)
        if self.tokenizer.chat_template is None:
            raise ConfigError(f"rewrite.model {config.model}: its tokenizer has no chat template")
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.net = AutoModelForCausalLM.from_pretrained(config.model, dtype=getattr(torch, dtype)).to(self.device)
        self.net.eval()

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(self, requests: list[Messages], sampling: SamplingConfig) -> list[Generation]:
        out: list[Generation] = []
        for start in range(0, len(requests), self.batch_size):
            out.extend(self._batch(requests[start:start + self.batch_size], sampling))
        return out

    @torch.no_grad()
    def _batch(self, requests: list[Messages], sampling: SamplingConfig) -> list[Generation]:
        prompts = [self.tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
                   for m in requests]
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        do_sample = sampling.temperature > 0
        kwargs = dict(do_sample=do_sample, max_new_tokens=sampling.max_new_tokens,
                      pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id)
        if do_sample:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p)
        ids = self.net.generate(**enc, **kwargs)
        prompt_len = enc["input_ids"].shape[1]
        results = []
        for row, mask in zip(ids, enc["attention_mask"]):
            new = row[prompt_len:]
            eos = (new == self.tokenizer.eos_token_id).nonzero()
            finished = len(eos) > 0
            new = new[: eos[0].item()] if finished else new
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            results.append(Generation(text, "stop" if finished else "length", int(mask.sum()), len(new)))
        return results
