"""One tiny Llama for the tests: 2 layers, hidden 64, with the SmolLM2 vocabulary (about 3M parameters).

A real transformers model that decides and fine-tunes in seconds where the embedded SmolLM2 takes about a
minute a training step on these cores.
"""

from __future__ import annotations

from typing import Any


def tiny_llama(tokenizer: Any, *, initializer_range: float = 0.02, seed: int = 0) -> Any:
    """A seeded, randomly initialised `LlamaForCausalLM` whose vocabulary and special tokens are `tokenizer`'s."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        initializer_range=initializer_range,
    )
    return LlamaForCausalLM(config)


def always_buy_llama(tokenizer: Any) -> Any:
    """A tiny Llama that answers the decision grammar with BUY, confidence 99, whatever the prompt: a
    real model for the tests that need a registered version to trade (a random tiny Llama mostly
    holds). Its attention and MLP outputs are zero, so the last hidden state is the same for every
    input; the output head then scores tokens by a fixed preference (BUY, high digits, closing quotes),
    and greedy decoding under the grammar picks the preferred token the grammar allows."""
    import torch

    model = tiny_llama(tokenizer)
    model.config.tie_word_embeddings = False
    hidden = model.config.hidden_size
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embeddings = torch.zeros_like(model.model.embed_tokens.weight)
        embeddings[:, 0] = 1.0
        model.model.embed_tokens.weight.copy_(embeddings)
        head = torch.zeros(len(tokenizer), hidden)
        texts = tokenizer.batch_decode([[token_id] for token_id in range(len(tokenizer))])
        for token_id, text in enumerate(t.strip() for t in texts):
            if text and text[0] == "B" and "BUY".startswith(text):
                head[token_id, 0] = 10.0
            elif text.isascii() and text.isdigit():
                head[token_id, 0] = 1.0 + int(text[:3]) / 1000  # the largest number the grammar allows
            elif text in ('"', '",', '"}', "}"):
                head[token_id, 0] = 20.0  # close strings at once: an empty reasoning
        model.lm_head = torch.nn.Linear(hidden, len(tokenizer), bias=False)
        model.lm_head.weight.copy_(head)
    return model
