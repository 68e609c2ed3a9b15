"""Greedy batched decoding under the decision grammar with jump-forward: the grammar's fixed text (the
keys, quotes and separators) is appended without a forward pass per token.

After each sampled token, xgrammar names the string the grammar forces next (`find_jump_forward_string`);
its tokens go into the next forward together with the sampled one, so one forward pass covers a key
that would cost five or six decode steps. The last token of a forced string is left to the model: the
forced text often ends mid-token (`": "` before a number), and letting the model pick that boundary keeps
its tokenization close to what plain greedy decoding writes. A row whose grammar is complete ends without
asking the model for its end token, and finished rows leave the batch (their KV cache rows are dropped).

Rows of one batch feed different numbers of tokens per step: each row's chunk is left-padded, the
padding is masked out and position ids follow the mask, as for the prompt.

Opt-in (`LocalLLM(jump_forward=True)`): it saves forward passes, not FLOPs (the forced tokens still enter
the KV cache), and a batch pays for its widest chunk in every row, so on a compute-bound CPU batch it can
cost more than it saves; one measurement on the loaded 2-core machine found it slower at batch 16.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class DecodedRow:
    tokens: list[int]
    forward_steps: int = 0


def _positions(mask: torch.Tensor, width: int) -> torch.Tensor:
    """Position ids of the last `width` columns: the count of real tokens before each one."""
    pos = mask.long().cumsum(-1) - 1
    return pos[:, -width:].clamp(min=0)


@torch.inference_mode()
def decode_jump_forward(
    model: Any,
    tokenizer: Any,
    compiled_grammar: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    past_key_values: Any,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
) -> list[DecodedRow]:
    """Greedy completions of a left-padded batch; `attention_mask` covers the cached prefix too."""
    import xgrammar as xgr

    batch, device = input_ids.shape[0], input_ids.device
    vocab = model.config.vocab_size
    matchers = [xgr.GrammarMatcher(compiled_grammar) for _ in range(batch)]
    bitmask = xgr.allocate_token_bitmask(batch, vocab)
    rows = [DecodedRow([]) for _ in range(batch)]
    live = list(range(batch))  # original row index of each row still in the batch
    # The grammar's opening ('{"action": "') is forced for every row: it joins the prompt's forward.
    opening = tokenizer.encode(matchers[0].find_jump_forward_string(), add_special_tokens=False)[:-1]
    for state, row in zip(matchers, rows, strict=True):
        for token in opening:
            if not state.accept_token(token):
                raise RuntimeError("the grammar refused its own forced opening")  # a tokenizer mismatch
        row.tokens.extend(opening)
    chunk = torch.cat([input_ids, torch.tensor([opening] * batch, dtype=torch.long, device=device)], dim=1)
    mask = torch.cat(
        [attention_mask, torch.ones(batch, len(opening), dtype=attention_mask.dtype, device=device)], dim=1
    )
    cache = past_key_values
    while live:
        out = model(
            input_ids=chunk,
            attention_mask=mask,
            position_ids=_positions(mask, chunk.shape[1]),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        cache = out.past_key_values
        logits = out.logits[:, -1, :].float().cpu()  # xgrammar masks on the CPU
        bm = bitmask[: len(live)]
        for i, row in enumerate(live):
            matchers[row].fill_next_token_bitmask(bm, i)
        xgr.apply_token_bitmask_inplace(logits, bm, vocab_size=logits.shape[-1])
        picked = logits.argmax(-1).tolist()
        feeds: list[list[int]] = []
        keep: list[int] = []
        for i, row in enumerate(live):
            state, tokens = matchers[row], rows[row].tokens
            rows[row].forward_steps += 1
            token = picked[i]
            tokens.append(token)
            if not state.accept_token(token) or state.is_terminated() or len(tokens) >= max_new_tokens:
                continue  # an end token (or the budget): the row is done
            feed = [token]
            forced = state.find_jump_forward_string()
            if forced:
                forced_ids = tokenizer.encode(forced, add_special_tokens=False)[:-1]
                for fid in forced_ids:
                    if len(tokens) >= max_new_tokens - 1 or not state.accept_token(fid):
                        break
                    tokens.append(fid)
                    feed.append(fid)
            if state.is_completed():
                # Only the end token is left: write it without a forward pass.
                tokens.append(eos_id)
                continue
            feeds.append(feed)
            keep.append(i)
        if not keep:
            break
        if len(keep) < len(live):
            index = torch.tensor(keep, dtype=torch.long, device=device)
            cache.batch_select_indices(index)
            mask = mask[index]
            live = [live[i] for i in keep]
        width = max(len(f) for f in feeds)
        chunk = torch.tensor(
            [[pad_id] * (width - len(f)) + f for f in feeds], dtype=torch.long, device=device
        )
        new_mask = torch.tensor(
            [[0] * (width - len(f)) + [1] * len(f) for f in feeds], dtype=mask.dtype, device=device
        )
        mask = torch.cat([mask, new_mask], dim=1)
    return rows
