"""The CLIP text tower run at the prompts' real token length.

open_clip pads every prompt to the context length (77 for ViT-B/16) although class prompts are
about 10 tokens. In a *causal* tower with *end-of-text pooling* (``argmax``: the EOT token has the
largest id; ``eos``: the first ``eos_id``), token ``i`` attends to tokens ``≤ i`` only and the
feature is read at the EOT position ``e``. So the tokens after ``L = max_p e_p + 1`` (the longest
prompt's EOT) change nothing, and cutting the sequence to ``L`` — the positional embedding to its
first ``L`` rows and the causal mask to ``[:L, :L]`` with it — gives the same features up to float
rounding (different matmul shapes), and the same gradients (the cut positions get exactly zero
gradient in the full-length run too).

Any other tower keeps the full length: no causal mask (bi-directional attention sees every pad),
pooling at the first/last token or over all tokens, an appended class token (CoCa: pooled at the
last position), a padding mask, or a non-open_clip text tower (e.g. Hugging Face).

The residual blocks are run through the tower's own ``transformer`` module, so units injected into
the blocks (``strategies/clip/units.py``) apply unchanged; a MoE unit's router reads token 0, which
the cut keeps. In training mode, dropout inside units draws masks of the cut shape, so a seeded
training forward differs from the full-length one (same distribution, not the same draws).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_EOT_POOLS = ("argmax", "eos")


def _tower(clip: Any) -> Any:
    """The module holding the text tower's parts: ``clip`` itself (CLIP) or ``clip.text`` (CustomTextCLIP)."""
    return clip.text if hasattr(clip, "text") else clip


def _pooling(clip: Any) -> tuple[str | None, int | None]:
    """``(pool_type, eos_id)`` of the tower; ``(None, None)`` when it is not an open_clip text transformer."""
    if hasattr(clip, "text"):
        return getattr(clip.text, "pool_type", None), getattr(clip.text, "eos_id", None)
    return getattr(clip, "text_pool_type", None), getattr(clip, "text_eos_id", None)


def can_cut(clip: Any) -> bool:
    """Whether cutting tokens after the longest prompt's EOT leaves the features unchanged.

    True for an open_clip text transformer with a causal mask and ``argmax``/``eos`` pooling, and
    neither an appended class token nor a padding mask.
    """
    tower = _tower(clip)
    parts = ("token_embedding", "positional_embedding", "transformer", "ln_final")
    if not all(hasattr(tower, name) for name in parts):
        return False
    mask = getattr(tower, "attn_mask", None)
    pool, eos_id = _pooling(clip)
    return (
        isinstance(mask, torch.Tensor)
        and pool in _EOT_POOLS
        and (pool != "eos" or eos_id is not None)
        and getattr(tower, "cls_emb", None) is None
        and not getattr(tower, "use_pad_mask", False)
    )


def prompt_length(clip: Any, tokens: torch.Tensor) -> int:
    """Token length the tower must run at: ``max_p e_p + 1`` if it can be cut, else ``tokens.shape[1]``.

    ``e_p`` is prompt ``p``'s pooling position (``argmax`` of its ids, or its first ``eos_id``).
    Reads ``tokens``' values, so pass them while still on the host (a CUDA tensor costs a sync).
    """
    if not can_cut(clip) or tokens.shape[0] == 0:
        return int(tokens.shape[1])
    return int(_ends(clip, tokens).max()) + 1


def _ends(clip: Any, tokens: torch.Tensor) -> torch.Tensor:
    """Pooling position per prompt, (P,): the first ``eos_id`` (``eos``) or the first maximal id
    (``argmax``: the EOT token), exactly as open_clip's ``text_global_pool`` picks it."""
    pool, eos_id = _pooling(clip)
    if pool == "eos":
        return tokens.eq(int(eos_id or 0)).int().argmax(dim=-1)
    return tokens.argmax(dim=-1)


def _project(tower: Any, pooled: torch.Tensor) -> torch.Tensor:
    projection = tower.text_projection
    if projection is None:
        return pooled
    if isinstance(projection, nn.Linear):
        return projection(pooled)
    return pooled @ projection


def _pool(clip: Any, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Features at each prompt's EOT position, (P, W), as open_clip's ``text_global_pool``."""
    return x[torch.arange(x.shape[0], device=x.device), _ends(clip, tokens)]


def _encode_cut(clip: Any, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's causal text forward on ``tokens`` (P, L), L ≤ context length; (P, D)."""
    tower = _tower(clip)
    length = tokens.shape[1]
    cast_dtype = tower.transformer.get_cast_dtype()
    x = tower.token_embedding(tokens).to(cast_dtype)  # (P, L, W)
    x = x + tower.positional_embedding[:length].to(cast_dtype)
    x = tower.transformer(x, attn_mask=tower.attn_mask[:length, :length])  # (P, L, W)
    x = tower.ln_final(x)
    return _project(tower, _pool(clip, x, tokens))


def encode_text(clip: Any, tokens: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """Text features (not normalised) of ``tokens`` (P, context length), as ``clip.encode_text``, (P, D).

    Runs at :func:`prompt_length` when the tower allows it (see the module docstring), else calls
    ``clip.encode_text`` at full length. ``tokens`` are cut before being moved to ``device``
    (default: their own device), so host tokens cost no device sync.
    """
    target = tokens.device if device is None else torch.device(device)
    if not can_cut(clip):
        return clip.encode_text(tokens.to(target))
    return _encode_cut(clip, tokens[:, :prompt_length(clip, tokens)].to(target))

