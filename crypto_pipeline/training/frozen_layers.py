"""LoRA on the top layers of a causal LM, with the frozen lower layers computed once and reused.

With LoRA on the last `k` of `L` decoder layers, nothing trained touches the first `L - k` layers, so their
output is a fixed function of the tokens. `LayerSplit` computes it once per example (and once for the
system prompt, which opens every example: causal attention means its states never depend on what follows),
keeps it (in bfloat16 where the CPU has it in hardware), and every later pass runs the top `k` layers only:
- each training epoch (forward and backward through `k` layers instead of `L`),
- each point of the learning curve (the validation sample scored between steps),
- the base and the tuned model alike when they are scored (the adapter switched off and on).

The LoRA is injected by peft into the full model (`layers_to_transform`), so the adapter saved at the end is
an ordinary peft adapter of the full model: `LocalLLM` loads and merges it as it would any other. Scoring
the action needs no generation: the model's distribution over the action's first token right after the
response's fixed opening `{"action": "` (see `ActionScores`), one forward pass per example.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crypto_pipeline.config import get_settings
from crypto_pipeline.llm.action_slot import ACTION_PREFIX, ACTIONS, action_prefix_ids, action_token_ids
from crypto_pipeline.llm.local import LocalLLM, resolve_dtype
from crypto_pipeline.llm.prompts import SYSTEM_PROMPT
from crypto_pipeline.training.dataset import dataset_fingerprint
from crypto_pipeline.training.finetune import (
    FinetuneResult,
    _prepare_output,
    balanced_subsample,
    load_base,
    lora_config,
    resolve_base_model,
    save_adapter,
    training_rows,
)


@dataclass
class Encoded:
    """Examples as the top layers see them: the lower layers' output of each example's tokens after the
    system prompt (one tensor per example, in `_store()`'s dtype), and what the loss or the score reads."""

    states: list[Any]  # torch tensors (tokens, hidden)
    targets: list[Any] | None = None  # per example: next-token ids (tokens,), -100 where no loss
    weights: list[Any] | None = None  # per example: loss weight per position (tokens,)
    score_at: list[int] = field(
        default_factory=list
    )  # per example: the position whose logits pick the action

    def __len__(self) -> int:
        return len(self.states)


class LayerSplit:
    """A peft-wrapped causal LM (LoRA on the top `top_layers` layers only) seen as two stacks sharing its
    modules: `lower` (frozen, run once per example) and `top` (trained)."""

    def __init__(self, peft_model: Any, tokenizer: Any, top_layers: int, system_prompt: str) -> None:
        import torch
        from torch import nn

        self.peft_model, self.tokenizer = peft_model, tokenizer
        causal = peft_model.get_base_model()
        body, self.lm_head = causal.model, causal.lm_head
        total = int(causal.config.num_hidden_layers)
        if not 1 <= top_layers < total:
            raise ValueError(f"top_layers must be in [1, {total - 1}], got {top_layers}")
        self.split = total - top_layers
        self.lower = _view(body, list(body.layers[: self.split]), norm=nn.Identity())
        self.top = _view(body, list(body.layers[self.split :]), norm=body.norm)
        # The prompt exactly as the decision layer renders it (chat template, system prompt first).
        self._chat = LocalLLM.from_objects(
            causal, tokenizer, model_id="split", constrained=False, system_prompt=system_prompt
        )
        self.prefix_ids = self._chat.system_prefix_ids()
        self.action_prefix_ids = action_prefix_ids(tokenizer)
        self.action_token_ids = action_token_ids(tokenizer)
        with torch.inference_mode(), _bf16():
            out = self.lower(input_ids=torch.tensor([self.prefix_ids]), use_cache=True)
        self.prefix_states = out.last_hidden_state[0].to(_store())
        self._prefix_cache = out.past_key_values

    # --- encoding: the lower layers, once ------------------------------------------------------------

    def suffix_ids(self, user_prompt: str) -> list[int]:
        """The chat's tokens after the system prompt, up to the assistant header."""
        row = self._chat.chat_token_ids(user_prompt)
        if row[: len(self.prefix_ids)] != self.prefix_ids:
            raise ValueError("the chat does not open with the system prompt's tokens")
        return row[len(self.prefix_ids) :]

    def lower_states(
        self, rows: Sequence[list[int]], batch_size: int = 16, progress: Callable[[int], None] | None = None
    ) -> list[Any]:
        """The lower layers' output for each row of token ids (which follow the system prompt)."""
        import torch

        out: list[Any] = []
        p = len(self.prefix_ids)
        pad = self.tokenizer.pad_token_id or 0
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            width = max(len(r) for r in batch)
            ids = torch.tensor([r + [pad] * (width - len(r)) for r in batch])
            mask = torch.tensor([[1] * (p + len(r)) + [0] * (width - len(r)) for r in batch])
            cache = copy.deepcopy(self._prefix_cache)
            cache.batch_repeat_interleave(len(batch))
            # Right padding: a real token never attends to a pad, so its state is what it would be alone.
            positions = torch.arange(p, p + width).unsqueeze(0).expand(len(batch), -1)
            with torch.inference_mode(), _bf16():
                hidden = self.lower(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=positions,
                    past_key_values=cache,
                    use_cache=True,
                ).last_hidden_state
            out += [hidden[i, : len(r)].to(_store()).clone() for i, r in enumerate(batch)]
            if progress is not None:
                progress(len(out))
        return out

    def encode_for_training(
        self, prompts: Sequence[str], responses: Sequence[str], action_weight: float, **kwargs: Any
    ) -> Encoded:
        """Prompt + response (+ the end-of-turn token): the loss is on the response's tokens, the action's
        first token weighted `action_weight` times the others."""
        import torch

        end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        end_ids = [end] if isinstance(end, int) and end != self.tokenizer.unk_token_id else []
        rows, targets, weights, score_at = [], [], [], []
        n_prefix = len(self.action_prefix_ids)
        for prompt, response in zip(prompts, responses, strict=True):
            head = self.suffix_ids(prompt)
            answer = list(self.tokenizer(response, add_special_tokens=False)["input_ids"]) + end_ids
            if answer[:n_prefix] != self.action_prefix_ids:
                raise ValueError(f"a response does not open with {ACTION_PREFIX!r}: {response[:40]!r}")
            row = head + answer
            target = torch.full((len(row),), -100, dtype=torch.long)
            # Position t predicts token t + 1; the first answer token is predicted from the last head token.
            target[len(head) - 1 : len(row) - 1] = torch.tensor(answer)
            weight = (target != -100).float()
            action_at = len(head) - 1 + n_prefix
            weight[action_at] = action_weight
            rows.append(row)
            targets.append(target)
            weights.append(weight)
            score_at.append(action_at)
        return Encoded(self.lower_states(rows, **kwargs), targets, weights, score_at)

    def encode_for_scoring(self, prompts: Sequence[str], **kwargs: Any) -> Encoded:
        """Prompt + the response's fixed opening: the last position's logits pick the action."""
        rows = [self.suffix_ids(p) + self.action_prefix_ids for p in prompts]
        return Encoded(self.lower_states(rows, **kwargs), score_at=[len(r) - 1 for r in rows])

    # --- the top layers ----------------------------------------------------------------------------

    def _top_hidden(self, states: Sequence[Any]) -> tuple[Any, int]:
        """The top layers over a batch of examples (right-padded) after the system prompt: the prompt's
        own pass through the top layers runs once per batch (with gradients when training) and its keys
        and values are shared by every row. Returns (the examples' hidden states, 0: their offset)."""
        import torch
        from transformers import DynamicCache

        p = self.prefix_states.shape[0]
        width = max(s.shape[0] for s in states)
        batch = torch.zeros(len(states), width, self.prefix_states.shape[1], dtype=_store())
        mask = torch.zeros(len(states), p + width, dtype=torch.long)
        mask[:, :p] = 1
        for i, s in enumerate(states):
            batch[i, : s.shape[0]] = s
            mask[i, p : p + s.shape[0]] = 1
        positions = torch.arange(p, p + width).unsqueeze(0).expand(len(states), -1)
        with _bf16(), self._top_layer_indices():
            cache = DynamicCache(config=self.top.config)
            self.top(
                inputs_embeds=self.prefix_states[None],
                position_ids=torch.arange(p)[None],
                past_key_values=cache,
                use_cache=True,
            )
            cache.batch_repeat_interleave(len(states))
            hidden = self.top(
                inputs_embeds=batch,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
            ).last_hidden_state
        return hidden, 0

    @contextlib.contextmanager
    def _top_layer_indices(self) -> Any:
        """The top layers numbered from 0 while the top stack runs with its own cache (they are layers
        split.. of the whole model, which keeps its numbering)."""
        layers = list(self.top.layers)
        before = [layer.self_attn.layer_idx for layer in layers]
        try:
            for i, layer in enumerate(layers):
                layer.self_attn.layer_idx = i
            yield
        finally:
            for layer, index in zip(layers, before, strict=True):
                layer.self_attn.layer_idx = index

    def loss(self, encoded: Encoded, index: Sequence[int]) -> Any:
        """Weighted next-token cross-entropy of the examples `index` (logits only where there is a target)."""
        import torch

        hidden, p = self._top_hidden([encoded.states[i] for i in index])
        picked, targets, weights = [], [], []
        for row, i in enumerate(index):
            where = torch.nonzero(encoded.targets[i] != -100).squeeze(1)
            picked.append(hidden[row, p + where])
            targets.append(encoded.targets[i][where])
            weights.append(encoded.weights[i][where])
        with _bf16():
            logits = self.lm_head(torch.cat(picked)).float()
        per_token = torch.nn.functional.cross_entropy(logits, torch.cat(targets), reduction="none")
        w = torch.cat(weights)
        return (per_token * w).sum() / w.sum()

    def action_probabilities(
        self, encoded: Encoded, batch_size: int = 32, adapter: bool = True
    ) -> np.ndarray:
        """(examples, 3) probabilities of BUY, SELL, HOLD (ACTIONS order) at each example's action slot,
        with the adapter on (the tuned model) or off (the base model)."""
        import torch

        rows = []
        ids = torch.tensor(self.action_token_ids)
        context = contextlib.nullcontext() if adapter else self.peft_model.disable_adapter()
        with torch.inference_mode(), context:
            for start in range(0, len(encoded), batch_size):
                index = range(start, min(start + batch_size, len(encoded)))
                hidden, p = self._top_hidden([encoded.states[i] for i in index])
                at = torch.tensor([p + encoded.score_at[i] for i in index])
                last = hidden[torch.arange(len(at)), at]
                with _bf16():
                    logits = self.lm_head(last).float()
                rows.append(torch.softmax(logits[:, ids], dim=-1).numpy())
        return np.concatenate(rows) if rows else np.zeros((0, len(ACTIONS)))


@dataclass
class CurvePoint:
    examples_seen: int
    step: int
    seconds: float
    val_balanced_accuracy: float
    train_loss: float


def train_top_layers(
    split: LayerSplit,
    train: Encoded,
    curve_set: Encoded,
    curve_labels: Sequence[str],
    *,
    epochs: float,
    batch_size: int,
    learning_rate: float,
    warmup_steps: int,
    seed: int,
    curve_every: int,
    max_steps: int | None = None,
    log_line: Callable[[str], None] | None = None,
) -> tuple[list[tuple[int, float]], list[CurvePoint]]:
    """AdamW with a cosine schedule over the LoRA parameters, batches drawn from `train` (seeded shuffles);
    every `curve_every` examples (and at the end) the validation balanced accuracy of `curve_set`.
    Returns (losses per step, the learning curve)."""
    import torch
    from sklearn.metrics import balanced_accuracy_score

    say = log_line or (lambda _line: None)
    params = [p for p in split.peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    total_steps = max(1, math.ceil(len(train) * epochs / batch_size))
    if max_steps is not None:
        total_steps = min(total_steps, max_steps)

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    rng = np.random.default_rng(seed)
    order: list[int] = []
    losses: list[tuple[int, float]] = []
    curve: list[CurvePoint] = []
    started = time.perf_counter()

    def point(step: int, seen: int, loss: float) -> None:
        split.peft_model.eval()
        probs = split.action_probabilities(curve_set)
        predicted = [ACTIONS[i] for i in probs.argmax(axis=1)]
        score = float(balanced_accuracy_score(list(curve_labels), predicted))
        curve.append(CurvePoint(seen, step, time.perf_counter() - started, score, loss))
        say(
            f"step {step}/{total_steps}: {seen} examples seen, loss {loss:.4f}, val balanced accuracy {score:.3f}"
        )
        split.peft_model.train()

    point(0, 0, float("nan"))
    split.peft_model.train()
    seen, next_point, recent = 0, curve_every, []
    for step in range(1, total_steps + 1):
        if len(order) < batch_size:
            order += rng.permutation(len(train)).tolist()
        index, order = order[:batch_size], order[batch_size:]
        loss = split.loss(train, index)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        seen += len(index)
        value = loss.detach().item()
        recent.append(value)
        losses.append((step, value))
        if seen >= next_point or step == total_steps:
            point(step, seen, float(np.mean(recent)))
            recent, next_point = [], seen + curve_every
    split.peft_model.eval()
    return losses, curve


def _view(body: Any, layers: list[Any], *, norm: Any) -> Any:
    """`body` (a decoder stack) restricted to `layers` and ending in `norm`, sharing every module with it."""
    from torch import nn

    view = copy.copy(body)
    view._modules = dict(body._modules)  # its own module table; the modules themselves are shared
    view._modules["layers"] = nn.ModuleList(layers)
    view._modules["norm"] = norm
    view.config = copy.copy(body.config)
    view.config.num_hidden_layers = len(layers)
    return view


@functools.cache
def uses_bfloat16() -> bool:
    """Whether the split computes in bfloat16: the `llm_dtype` setting, whose default `auto` is bfloat16 only
    where the hardware has it (AVX512-BF16/AMX; `llm.local.bf16_native`). Elsewhere (AVX2 only, e.g. the
    AMD EPYC these tests run on) bfloat16 is emulated and several times SLOWER than float32."""

    return resolve_dtype(get_settings().llm_dtype) == "bfloat16"


def _bf16() -> Any:
    """bfloat16 autocast where the CPU has it in hardware; float32 (no autocast) elsewhere."""
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16) if uses_bfloat16() else contextlib.nullcontext()


def _store() -> Any:
    """The dtype the lower layers' output is kept in: bfloat16 halves the memory where it is fast."""
    import torch

    return torch.bfloat16 if uses_bfloat16() else torch.float32


CURVE_EXAMPLES = 150


@dataclass
class TopLayersRun:
    """A fine-tune by `finetune_top_layers`: the result, and the split model with the encoded evaluation
    sample, ready to score the tuned and the base model without another pass through the lower layers."""

    result: Any  # FinetuneResult
    split: LayerSplit
    encoded: dict[str, Encoded]  # split name -> scored examples


def finetune_top_layers(
    frame: Any,
    config: Any,
    output_dir: Path,
    *,
    models_dir: Path,
    scored: dict[str, Any],
    log_line: Callable[[str], None] | None = None,
) -> TopLayersRun:
    """LoRA on the last `config.lora_layers` layers of the float base, trained on the cached lower layers'
    output; `scored` (split name -> rows with prompt and action) is encoded once, its "validation" rows
    give the learning curve. The adapter lands in `output_dir/adapter` like the SFTTrainer path's."""

    import torch
    from peft import get_peft_model
    from transformers import set_seed

    if config.load_in_4bit or config.lora_layers is None:
        raise ValueError("cache_lower_layers needs a float base (load_in_4bit=False) and lora_layers")
    say = log_line or (lambda _line: None)
    rows = training_rows(frame, config)
    base = resolve_base_model(config.base_model, models_dir)
    data_fp = dataset_fingerprint(rows)
    _prepare_output(Path(output_dir), config.fingerprint(data_fp), resume=False)
    set_seed(config.seed)
    model, tokenizer, device = load_base(base, False)
    total = int(model.config.num_hidden_layers)
    top = min(config.lora_layers, total)
    if top >= total:
        raise ValueError(f"lora_layers ({top}) must leave at least one frozen layer of {total}")
    peft_model = get_peft_model(model, lora_config(model, config))
    started = time.perf_counter()
    split = LayerSplit(peft_model, tokenizer, top, SYSTEM_PROMPT)

    def encode(what: str, n: int) -> Callable[[int], None]:
        marks = [max(1, n * k // 4) for k in range(1, 5)]  # a line at each quarter

        def progress(done: int) -> None:
            if marks and done >= marks[0]:
                while marks and done >= marks[0]:
                    marks.pop(0)
                say(f"lower layers, {what}: {done}/{n} examples ({time.perf_counter() - started:.0f} s)")

        return progress

    train = split.encode_for_training(
        rows["prompt"].to_list(),
        rows["response"].to_list(),
        config.action_loss_weight,
        progress=encode("train", rows.height),
    )
    encoded = {
        name: split.encode_for_scoring(r["prompt"].to_list(), progress=encode(name, r.height))
        for name, r in scored.items()
        if name == "validation"
    }
    encode_seconds = time.perf_counter() - started
    say(
        f"lower {total - top} layers computed once for {rows.height} training examples in {encode_seconds:.0f} s"
    )
    # The curve's points score a class-balanced part of the validation sample (at most CURVE_EXAMPLES):
    # between steps only the trend matters; the whole sample is scored once at the end.
    curve_rows = scored["validation"].with_row_index("_i")
    if curve_rows.height > CURVE_EXAMPLES:
        curve_rows = balanced_subsample(curve_rows, CURVE_EXAMPLES, config.seed)
    picked = curve_rows["_i"].to_list()
    curve_set = Encoded(
        [encoded["validation"].states[i] for i in picked],
        score_at=[encoded["validation"].score_at[i] for i in picked],
    )
    planned = rows.height * config.epochs
    if config.max_steps is not None:
        planned = min(planned, config.max_steps * config.batch_size)
    per_point = max(config.batch_size, math.ceil(planned / config.curve_points))
    losses, curve = train_top_layers(
        split,
        train,
        curve_set,
        curve_rows["action"].to_list(),
        epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_steps,
        seed=config.seed,
        curve_every=per_point,
        max_steps=config.max_steps,
        log_line=say,
    )
    seconds = time.perf_counter() - started
    adapter_dir = save_adapter(peft_model, tokenizer, output_dir)
    # The rest of `scored` (the test split) is encoded only now: scored once, after training.
    for name, r in scored.items():
        if name not in encoded:
            encoded[name] = split.encode_for_scoring(r["prompt"].to_list(), progress=encode(name, r.height))
    steps = len(losses)
    seen = curve[-1].examples_seen if curve else 0
    result = FinetuneResult(
        adapter_dir=adapter_dir,
        base_model=base,
        config=config,
        losses=losses,
        steps=steps,
        train_seconds=seconds,
        train_examples=rows.height,
        samples_seen=seen,
        # completion tokens per example on average, times the examples the steps drew
        tokens_seen=round(
            sum(int((t != -100).sum()) for t in train.targets or []) / max(1, len(train)) * seen
        ),
        training_cutoff=rows["label_end"].max(),
        data_fingerprint=data_fp,
        device=device,
        log_history=[vars(p) for p in curve],
        curve=[(p.examples_seen, p.val_balanced_accuracy) for p in curve],
    )
    del torch
    return TopLayersRun(result, split, encoded)
