"""Greedy batched decoding under the decision grammar with jump-forward: the grammar's fixed text (the
keys, quotes and separators) costs no forward pass of its own, and the model still picks every token.

The grammar forces long stretches of text (`", "confidence": `). After each token, xgrammar names that
string (`find_jump_forward_string`); its tokens become a *draft* that rides along in the next forward
pass, and the logits at every draft position *verify* it, as in speculative decoding with the grammar
as the drafter:
- at each position the grammar's mask is applied and the model's greedy pick is compared with the draft;
- the draft is accepted up to the first token the model would not have written;
- there the model's own pick is taken instead (it is also the next token to feed), and the rejected
  draft tokens are masked out of the attention from then on, so later positions never see them.

Every token written is therefore the masked argmax given exactly the tokens before it: the completion is
plain greedy decoding's, with one forward per free choice instead of one per token. Only floating-point
summation order differs (a chunk of tokens in one matmul instead of one at a time), which can flip a
near-tie of the logits; `bench_llm.py` counts such flips and `tests/llm/test_decoding.py` bounds them.
(Retokenizing the forced text and feeding it unverified, the first version of this, changed 2 of 8 real
decisions: its tokens are not always the ones the model picks, and what the model reads next differs.)

A row whose grammar is complete ends without asking the model for its end token; finished rows leave the
batch (their KV-cache rows are dropped). Rows of one batch feed different numbers of tokens per step:
each row's chunk is left-padded, the padding is masked out and position ids follow the mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class DecodedRow:
    tokens: list[int]
    forward_steps: int = 0
    drafted: int = 0  # draft tokens fed
    accepted: int = 0  # of which the model agreed with
    feed: list[int] = field(default_factory=list)  # tokens already accepted, to feed in the next forward
    draft: list[int] = field(default_factory=list)  # forced text to verify in the next forward


def _positions(mask: torch.Tensor, width: int) -> torch.Tensor:
    """Position ids of the last `width` columns: the count of real tokens before each one."""
    pos = mask.long().cumsum(-1) - 1
    return pos[:, -width:].clamp(min=0)


def _draft(tokenizer: Any, matcher: Any) -> list[int]:
    forced = matcher.find_jump_forward_string()
    return tokenizer.encode(forced, add_special_tokens=False) if forced else []


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
    bitmask = xgr.allocate_token_bitmask(1, vocab)
    rows = [DecodedRow([]) for _ in range(batch)]
    for matcher, row in zip(matchers, rows, strict=True):
        row.draft = _draft(tokenizer, matcher)  # the opening '{"action": "' rides with the prompt
    live = list(range(batch))  # original row index of each row still in the batch
    opening, opening_mask = left_padded([rows[r].draft for r in live], pad_id, device)
    chunk = torch.cat([input_ids, opening], dim=1)
    mask = torch.cat([attention_mask, opening_mask], dim=1)
    cache = past_key_values
    while live:
        keep_logits = max(len(rows[r].draft) for r in live) + 1
        out = model(
            input_ids=chunk,
            attention_mask=mask,
            position_ids=_positions(mask, chunk.shape[1]),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=keep_logits,
        )
        cache = out.past_key_values
        logits = out.logits.float().cpu()  # xgrammar masks on the CPU
        keep: list[int] = []
        for i, r in enumerate(live):
            row, matcher = rows[r], matchers[r]
            row.forward_steps += 1
            draft, row.draft = row.draft, []
            row.drafted += len(draft)
            # Column j of the kept logits predicts the token after draft[:j]; the last draft token sits
            # in the last column, so draft[j] is at offset len(draft) - j from the end.
            row.feed = []
            picked = None
            for j in range(len(draft) + 1):
                scores = logits[i, keep_logits - 1 - len(draft) + j].unsqueeze(0)
                matcher.fill_next_token_bitmask(bitmask, 0)
                xgr.apply_token_bitmask_inplace(scores, bitmask, vocab_size=scores.shape[-1])
                token = int(scores.argmax(-1))
                if j < len(draft) and token == draft[j]:
                    matcher.accept_token(token)
                    row.tokens.append(token)
                    row.accepted += 1
                    continue
                picked = token
                rejected = len(draft) - j
                if rejected:  # what the model would not have written is hidden from every later step
                    mask[i, mask.shape[1] - rejected :] = 0
                break
            assert picked is not None
            row.tokens.append(picked)
            if (
                not matcher.accept_token(picked)
                or matcher.is_terminated()
                or len(row.tokens) >= max_new_tokens
            ):
                continue  # an end token (or the budget): the row is done
            if matcher.is_completed():
                row.tokens.append(eos_id)  # only the end token is left: no forward pass for it
                continue
            row.feed = [picked]
            row.draft = _draft(tokenizer, matcher)[: max(0, max_new_tokens - len(row.tokens) - 1)]
            keep.append(i)
        if not keep:
            break
        if len(keep) < len(live):
            index = torch.tensor(keep, dtype=torch.long, device=device)
            cache.batch_select_indices(index)
            mask = mask[index]
            live = [live[i] for i in keep]
        chunk, chunk_mask = left_padded([rows[r].feed + rows[r].draft for r in live], pad_id, device)
        mask = torch.cat([mask, chunk_mask], dim=1)
    return rows


def left_padded(feeds: list[list[int]], pad_id: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(token ids, attention mask) of rows of different lengths, right-aligned: padding on the left."""
    width = max(len(f) for f in feeds)
    ids = torch.tensor([[pad_id] * (width - len(f)) + f for f in feeds], dtype=torch.long, device=device)
    mask = torch.tensor(
        [[0] * (width - len(f)) + [1] * len(f) for f in feeds], dtype=torch.long, device=device
    )
    return ids, mask
