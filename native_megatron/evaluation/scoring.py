"""Log-likelihood of continuations: the score behind every multiple-choice task.

For a request (context, continuation) the model reads ``start + context +
continuation`` and we sum the log-probabilities of the continuation's tokens.
``start`` is what the model's HF tokenizer adds in front by default (BOS for
Llama, nothing for Qwen), as lm-evaluation-harness and lighteval do. How the
continuation is tokenized depends on the protocol that made the request:

- ``joint`` (lm-evaluation-harness, ``lm_eval/api/model.py`` ``_encode_pair``):
  trailing spaces of the context move to the continuation, and the
  continuation's tokens are cut from the encoding of the whole text, so a word
  merged across the boundary is scored as the model would see it;
- ``pairwise`` (lighteval, ``LightevalModel.tok_encode_pair(pairwise=True)``):
  the same space rule, then context and continuation are encoded apart;
- ``next_token`` (ArabicMMLU, ``util_compute.py``): the context is encoded as it
  is, trailing space included, and the continuation is the single token
  ``encode(letter)[-1]``, i.e. the letter's logit after the prompt.

Requests are sorted by length and batched with right padding; a sequence
longer than the model's window is cut from the left, never inside the
continuation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from native_megatron.data.tokenizer import Tokenizer

MODES = ("joint", "pairwise", "next_token")


@dataclass(frozen=True)
class Request:
    context: str
    continuation: str
    mode: str = "joint"  # how the continuation is tokenized (see the module docstring)
    add_start: bool = True  # False: the context already begins with the start tokens (a chat template wrote them)


@dataclass(frozen=True)
class Score:
    logprob: float  # sum over the continuation's tokens
    tokens: int
    greedy: bool  # every continuation token is the model's argmax


def encode_pair(tok: Tokenizer, start: list[int], req: Request) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids). Trailing whitespace of the context belongs to the continuation."""
    context, continuation = req.context, req.continuation
    start = list(start) if req.add_start else []
    if req.mode == "next_token":
        return list(start) + tok.encode(context), [(list(start) + tok.encode(continuation))[-1]]
    stripped = context.rstrip()  # all trailing whitespace, as lm-evaluation-harness and lighteval move it
    continuation = context[len(stripped):] + continuation
    context = stripped
    ctx = tok.encode(context) if context else []
    if req.mode == "pairwise":
        cont = tok.encode(continuation)
        if not cont:
            raise ValueError(f"empty continuation for {req.continuation!r}")
        ctx = list(start) + ctx
        if ctx and ctx[-1] == tok.eod_id:  # lighteval drops it: after an EOS a model ignores what came before
            ctx = ctx[:-1]
        return ctx, cont
    whole = tok.encode(context + continuation)
    if len(whole) > len(ctx):
        cont = whole[len(ctx):]  # as lm-evaluation-harness cuts it, even if a token merged across the boundary
    else:
        cont = tok.encode(continuation)
    if not cont:
        raise ValueError(f"empty continuation for {req.continuation!r}")
    return list(start) + ctx, cont


def loglikelihoods(model: torch.nn.Module, tok: Tokenizer, requests: list[Request], start: list[int],
                   batch_size: int = 8, max_length: int | None = None, device: torch.device | str = "cpu",
                   progress=None) -> list[Score]:
    """Scores in the order of ``requests``."""
    encoded = [encode_pair(tok, start, r) for r in requests]
    max_length = max_length or int(getattr(model.config, "max_position_embeddings", 4096))
    order = sorted(range(len(encoded)), key=lambda i: -(len(encoded[i][0]) + len(encoded[i][1])))
    out: list[Score | None] = [None] * len(encoded)
    for first in range(0, len(order), batch_size):
        batch = order[first:first + batch_size]
        rows, spans = [], []
        for i in batch:
            ctx, cont = encoded[i]
            ids = (ctx + cont)[-(max_length + 1):]  # +1: the last token is only a target
            if len(cont) >= len(ids):
                raise ValueError(f"a continuation of {len(cont)} tokens does not fit the window of {max_length}")
            rows.append(ids[:-1])
            spans.append((len(ids) - 1 - len(cont), ids[-len(cont):]))
        width = max(len(r) for r in rows)
        input_ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for j, r in enumerate(rows):
            input_ids[j, :len(r)] = torch.tensor(r)
            mask[j, :len(r)] = 1
        with torch.inference_mode():
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
        for j, i in enumerate(batch):
            begin, target = spans[j]
            lp = logprobs[j, begin:begin + len(target)]
            t = torch.tensor(target)
            picked = lp.gather(-1, t.unsqueeze(-1)).squeeze(-1)
            out[i] = Score(float(picked.sum()), len(target), bool((lp.argmax(-1) == t).all()))
        if progress is not None:
            progress.update(len(batch))
    return out  # type: ignore[return-value]
