"""A KV cache that grows in place: transformers' `DynamicCache` concatenates every layer's keys and values
at every step, copying the whole cache each time. With 16 rows of ~500 tokens that copy was half of a
decode step on this CPU (measured with torch.profiler: `aten::cat` 53%, the matmuls 34%).

`preallocate(cache, extra)` swaps each layer for one backed by a buffer with `extra` free slots: a step
writes its tokens into the buffer and attention reads a view of the filled part. Values are the same
tensors as with concatenation, so decoding is unchanged; only the copies go. When the slack runs out the
buffer doubles (one copy), so an estimate that is too small costs time, never correctness.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """A `DynamicLayer` whose keys and values are views into a larger buffer (batch, heads, capacity, dim)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, extra: int) -> None:
        super().__init__()
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True
        self._length = keys.shape[-2]
        self._key_buffer = self._with_room(keys, extra)
        self._value_buffer = self._with_room(values, extra)
        self._expose()

    @staticmethod
    def _with_room(states: torch.Tensor, extra: int) -> torch.Tensor:
        batch, heads, length, dim = states.shape
        buffer = states.new_empty(batch, heads, length + max(extra, 1), dim)
        buffer[:, :, :length] = states
        return buffer

    def _expose(self) -> None:
        self.keys = self._key_buffer[:, :, : self._length]
        self.values = self._value_buffer[:, :, : self._length]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        new = key_states.shape[-2]
        if self._length + new > self._key_buffer.shape[-2]:  # out of room: double once, then go on in place
            grow = max(self._key_buffer.shape[-2], new)
            self._key_buffer = self._with_room(self.keys, grow)
            self._value_buffer = self._with_room(self.values, grow)
        self._key_buffer[:, :, self._length : self._length + new] = key_states
        self._value_buffer[:, :, self._length : self._length + new] = value_states
        self._length += new
        self._expose()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self._length

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative count of tokens to remove")
        self._length -= abs(tokens_to_remove)
        self._expose()

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._key_buffer = self._key_buffer.repeat_interleave(repeats, dim=0)
        self._value_buffer = self._value_buffer.repeat_interleave(repeats, dim=0)
        self._expose()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._key_buffer = self._key_buffer[indices]
        self._value_buffer = self._value_buffer[indices]
        self._expose()


def preallocate(cache: DynamicCache, extra: int) -> DynamicCache:
    """Give every (filled) layer of `cache` room for `extra` more tokens, in place; returns the cache."""
    for i, layer in enumerate(cache.layers):
        if type(layer) is DynamicLayer and layer.is_initialized and layer.keys.numel():
            cache.layers[i] = PreallocatedLayer(layer.keys, layer.values, extra)
    return cache
