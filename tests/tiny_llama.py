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
