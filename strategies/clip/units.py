"""Trainable units injected into every residual block of both CLIP towers.

Each unit is addressed as ``(branch, layer)``: branch ``"vision"`` or ``"language"``, layer the
0-based index of the block in its tower's ``resblocks``. Strategies choose per unit how it is
optimised (MoZO: first- or zeroth-order; ConDU: which parameters form the task delta) through this
index only, never through string matching on parameter names.

Placement. open_clip 3.x runs attention through ``nn.MultiheadAttention`` (wrapping ``out_proj`` has
no effect), so units sit on the MLP side of each block. Adapter units run parallel to the MLP and
read the un-normalised residual stream, as in MoE-Adapters4CL / AdaptFormer::

    x = x + attn(ln_1(x));   x = x + mlp(ln_2(x)) + unit(x)

This is done by moving ``ln_2`` into a wrapper around the MLP (``block.ln_2`` becomes the identity).
LoRA units wrap ``mlp.c_fc`` and ``mlp.c_proj``. Every unit starts as the identity (zero-initialised
up-projection / LoRA ``B``), so an injected model gives exactly the logits of the plain model.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..options import COUNT, FRACTION, POSITIVE, option

BRANCHES = ("vision", "language")
UNIT_KINDS = ("adapter", "moe", "lora", "full", "none")
UnitKey = tuple[str, int]


@dataclass
class UnitsConfig:
    kind: str = option("adapter", "adapter | moe | lora | full (whole tower trainable) | none (frozen CLIP)")
    branches: list[str] = option(default_factory=lambda: ["vision", "language"], help="towers that get units")
    bottleneck: int = option(64, "adapter / expert hidden width (d -> bottleneck -> d)", range=COUNT)
    scale: float = option(0.1, "adapter output multiplier")
    dropout: float = option(0.1, "dropout inside adapters / experts", range=FRACTION)
    experts: int = option(2, "moe: experts per unit", range=COUNT)
    top_k: int = option(2, "moe: experts mixed per sample (softmax over the top-k router logits)", range=COUNT)
    noisy_gating: bool = option(True, "moe: router noise std = softplus(x W_noise) + 1e-2, training only")
    lora_rank: int = option(64, "lora: rank r", range=COUNT)
    lora_scale: float | None = option(None, "lora: output scale; None = 1/sqrt(rank) (ConDU's code)", range=POSITIVE)


class NoiseRecorder(Protocol):
    """What a unit asks before it draws random numbers (dropout masks, router noise) and tells after.

    Units that draw noise (:func:`noise_units`) hold a ``noise_recorder`` (None by default: plain
    draws). A training method that evaluates one minibatch many times under the same randomness sets
    one (:func:`set_noise_recorder`) to record the draws of one forward and hand them back to later
    forwards (MoZO's :class:`~strategies.mozo.noise.NoiseTape`). ``kind`` names the draw within the
    unit (``"dropout"``, ``"router"``)."""

    def replay(self, unit: nn.Module, kind: str, like: torch.Tensor) -> torch.Tensor | None:
        """The noise to use instead of drawing (shaped like ``like``), or None to draw."""
        ...

    def record(self, unit: nn.Module, kind: str, noise: torch.Tensor) -> None:
        """``unit`` drew ``noise``."""
        ...


class Adapter(nn.Module):
    """Bottleneck adapter ``scale * up(dropout(relu(down(x))))``; ``up`` zero-initialised."""

    def __init__(self, width: int, bottleneck: int, scale: float, dropout: float) -> None:
        super().__init__()
        self.noise_recorder: NoiseRecorder | None = None  # records / replays the dropout mask (NoiseRecorder)
        self.down = nn.Linear(width, bottleneck)
        self.up = nn.Linear(bottleneck, width)
        self.dropout = nn.Dropout(dropout)
        self.scale = scale
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.up(self._dropout(F.relu(self.down(x))))

    def _dropout(self, h: torch.Tensor) -> torch.Tensor:
        """``nn.Dropout`` (same draws: ``torch.native_dropout``), its mask recorded / replayed by the
        :class:`NoiseRecorder` if one is set."""
        p = self.dropout.p
        if not self.training or p == 0.0:
            return h
        recorder = self.noise_recorder
        mask = recorder.replay(self, "dropout", h) if recorder is not None else None
        if mask is not None:
            return h * mask * (1.0 / (1.0 - p))
        out, mask = torch.native_dropout(h, p, True)
        if recorder is not None:
            recorder.record(self, "dropout", mask)
        return out


class MoEAdapter(nn.Module):
    """Mixture of adapters with a router on token 0 (MoE-Adapters4CL, the base of MoZO).

    ``g = softmax(topk(x_0 W_gate + ε · (softplus(x_0 W_noise) + 1e-2)))``, ε ~ N(0, 1) in training
    only; output ``Σ_e g_e A_e(x)``. Router weights start at zero, so ``g`` is uniform and, with
    zero up-projections, the unit outputs zero.

    MoE-Adapters' MTIL machinery (docs/methods/moe_adapters.md), all off by default: a router bank
    (:meth:`add_routers`; router 0 is ``w_gate`` / ``w_noise``, routers 1.. are ``gate_bank`` /
    ``noise_bank``) with ``route`` choosing the router in use, or None to switch the unit off
    (output 0: frozen CLIP); ``counts`` (an (E,) int64 tensor) adds up, while training, the experts
    each sample's gates chose; ``sparse`` runs each expert only on the samples that chose it.
    """

    def __init__(self, width: int, cfg: UnitsConfig) -> None:
        super().__init__()
        if not 1 <= cfg.top_k <= cfg.experts:
            raise ValueError(f"units.top_k={cfg.top_k} must be in 1..units.experts={cfg.experts}")
        self.experts = nn.ModuleList(
            Adapter(width, cfg.bottleneck, cfg.scale, cfg.dropout) for _ in range(cfg.experts)
        )
        self.w_gate = nn.Parameter(torch.zeros(width, cfg.experts))
        self.w_noise = nn.Parameter(torch.zeros(width, cfg.experts))
        self.top_k = cfg.top_k
        self.noisy_gating = cfg.noisy_gating
        self.noise_recorder: NoiseRecorder | None = None  # records / replays the router noise (NoiseRecorder)
        self.gate_bank = nn.ParameterList()  # routers 1.. of a router bank (add_routers); no keys when empty
        self.noise_bank = nn.ParameterList()
        self.route: int | None = 0  # router in use; None: the unit is off (outputs 0)
        self.counts: torch.Tensor | None = None  # (E,) int64: experts chosen per sample while training
        self.sparse = False  # each expert runs on the samples whose gates chose it (else on all, gate 0)

    @property
    def n_routers(self) -> int:
        return 1 + len(self.gate_bank)

    def add_routers(self, total: int) -> None:
        """Grow the router bank to ``total`` routers, each a zero (D, E) gate and noise matrix."""
        while self.n_routers < total:
            self.gate_bank.append(nn.Parameter(torch.zeros_like(self.w_gate)))
            self.noise_bank.append(nn.Parameter(torch.zeros_like(self.w_noise)))

    def router(self, index: int) -> tuple[nn.Parameter, nn.Parameter]:
        """(gate, noise) matrices of router ``index`` (0: ``w_gate`` / ``w_noise``)."""
        if not 0 <= index < self.n_routers:
            raise IndexError(f"router {index} of a bank of {self.n_routers}")
        if index == 0:
            return self.w_gate, self.w_noise
        return self.gate_bank[index - 1], self.noise_bank[index - 1]

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """Mixing weights per sample, (B, E), from token 0 of ``x`` (B, T, D), by router ``route``."""
        w_gate, w_noise = self.router(self.route or 0)
        token0 = x[:, 0]  # (B, D)
        logits = token0 @ w_gate  # (B, E)
        if self.noisy_gating and self.training:
            noise_std = F.softplus(token0 @ w_noise) + 1e-2
            recorder = self.noise_recorder
            eps = recorder.replay(self, "router", logits) if recorder is not None else None
            if eps is None:
                eps = torch.randn_like(logits)
                if recorder is not None:
                    recorder.record(self, "router", eps)
            logits = logits + eps * noise_std
        top_val, top_idx = logits.topk(self.top_k, dim=-1)  # (B, k)
        if self.counts is not None and self.training:
            flat = top_idx.flatten()  # (B·k,) the chosen experts; index_add_ keeps it on the device
            self.counts.index_add_(0, flat.to(self.counts.device), torch.ones_like(flat, device=self.counts.device,
                                                                                   dtype=self.counts.dtype))
        # CUDA autocast runs softmax in float32 while the router logits are bf16/fp16: one dtype to scatter
        return torch.zeros_like(logits).scatter(-1, top_idx, top_val.softmax(dim=-1).to(logits.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.route is None:
            return torch.zeros_like(x)  # unit off: the block is frozen CLIP's (x + mlp(ln_2(x)) + 0)
        gates = self.gates(x).to(x.dtype)  # (B, E); the residual stream keeps its dtype under autocast
        if self.sparse:
            return self._sparse_mix(x, gates)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            out = out + gates[:, e, None, None] * expert(x)  # (B, T, D)
        return out

    def _sparse_mix(self, x: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """``Σ_e g_e A_e(x)`` with expert e run on the rows where ``g_e ≠ 0`` only (MoE-Adapters'
        ``SparseDispatcher``): an expert no sample chose is not run and gets no gradient."""
        chosen = gates != 0  # (B, E)
        sizes = chosen.sum(0).tolist()  # samples per expert (one host read)
        rows_by_expert = chosen.t().nonzero()[:, 1].split(sizes)  # per expert: its rows, ascending
        out = torch.zeros_like(x)
        for e, (expert, rows) in enumerate(zip(self.experts, rows_by_expert, strict=True)):
            if rows.numel():
                out = out.index_add(0, rows, gates[rows, e, None, None] * expert(x[rows]))  # (B, T, D)
        return out


class ParallelUnitMLP(nn.Module):
    """The block's MLP with a unit in parallel: ``ffn(norm(x)) + unit(x)``.

    Installed as ``block.mlp`` with ``block.ln_2`` set to the identity, so the block computes
    ``x + ls_2(ffn(ln_2(x)) + unit(x))``; ``ls_2`` is the identity in CLIP.
    """

    def __init__(self, norm: nn.Module, ffn: Any, unit: nn.Module) -> None:
        super().__init__()
        self.norm = norm
        self.ffn: Any = ffn  # open_clip's MLP (nn.Sequential with c_fc, gelu, c_proj)
        self.unit = unit

    @property
    def c_fc(self) -> Any:  # open_clip reads block.mlp.c_fc.weight.dtype
        return self.ffn.c_fc

    @property
    def c_proj(self) -> Any:
        return self.ffn.c_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn(self.norm(x)) + self.unit(x)


class LoRA(nn.Module):
    """Low-rank update ``scale · x Aᵀ Bᵀ`` with ``B`` zero-initialised."""

    def __init__(self, in_features: int, out_features: int, rank: int, scale: float) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * (x @ self.A.t()) @ self.B.t()


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a LoRA update: ``base(x) + lora(x)``."""

    def __init__(self, base: nn.Linear, rank: int, scale: float) -> None:
        super().__init__()
        self.base = base
        self.lora = LoRA(base.in_features, base.out_features, rank, scale)

    @property
    def weight(self) -> torch.Tensor:  # open_clip reads c_fc.weight.dtype
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.lora(x)


def noise_units(model: nn.Module) -> list[Adapter | MoEAdapter]:
    """The modules of ``model`` that draw random numbers through a :class:`NoiseRecorder` (adapters, MoE
    units: dropout masks, router noise), in module order."""
    return [m for m in model.modules() if isinstance(m, (Adapter, MoEAdapter))]


def set_noise_recorder(model: nn.Module, recorder: NoiseRecorder | None) -> None:
    """Give every unit of ``model`` that draws noise ``recorder`` (None: plain draws again)."""
    for unit in noise_units(model):
        unit.noise_recorder = recorder


def tower_blocks(clip: Any) -> dict[str, nn.ModuleList]:
    """The ``resblocks`` of each tower of an open_clip model, keyed by branch."""
    towers: dict[str, nn.ModuleList] = {}
    visual = getattr(clip, "visual", None)
    if visual is not None and hasattr(getattr(visual, "transformer", None), "resblocks"):
        towers["vision"] = visual.transformer.resblocks
    text = clip.text if hasattr(clip, "text") else clip
    if hasattr(getattr(text, "transformer", None), "resblocks"):
        towers["language"] = text.transformer.resblocks
    return towers


def tower_modules(clip: Any) -> dict[str, list[nn.Module]]:
    """Every module holding a tower's parameters (blocks, embeddings, norms, projections)."""
    if hasattr(clip, "text"):
        return {"vision": [clip.visual], "language": [clip.text]}
    return {"vision": [clip.visual], "language": [clip.transformer, clip.token_embedding, clip.ln_final]}


def _build_unit(block: Any, cfg: UnitsConfig) -> nn.Module:
    width = block.ln_2.normalized_shape[0]
    if cfg.kind == "adapter":
        unit: nn.Module = Adapter(width, cfg.bottleneck, cfg.scale, cfg.dropout)
    else:
        unit = MoEAdapter(width, cfg)
    block.mlp = ParallelUnitMLP(block.ln_2, block.mlp, unit)
    block.ln_2 = nn.Identity()
    return unit


def _build_lora(block: Any, cfg: UnitsConfig) -> nn.Module:
    scale = cfg.lora_scale if cfg.lora_scale is not None else 1.0 / math.sqrt(cfg.lora_rank)
    for name in ("c_fc", "c_proj"):
        setattr(block.mlp, name, LoRALinear(getattr(block.mlp, name), cfg.lora_rank, scale))
    # Not registered a second time in the model: a view grouping this block's two LoRA updates.
    return nn.ModuleDict({"c_fc": block.mlp.c_fc.lora, "c_proj": block.mlp.c_proj.lora})


def check_units_config(cfg: UnitsConfig) -> None:
    """Reject a bad units config before the model is touched."""
    if cfg.kind not in UNIT_KINDS:
        raise ValueError(f"units.kind={cfg.kind!r}: expected one of {', '.join(UNIT_KINDS)}")
    for branch in cfg.branches:
        if branch not in BRANCHES:
            raise ValueError(f"units.branches: {branch!r} is not one of {', '.join(BRANCHES)}")
    if cfg.kind == "moe" and not 1 <= cfg.top_k <= cfg.experts:
        raise ValueError(f"units.top_k={cfg.top_k} must be in 1..units.experts={cfg.experts}")


def inject_units(clip: Any, cfg: UnitsConfig) -> dict[UnitKey, nn.Module]:
    """Add units to every block of the configured towers; return the index ``{(branch, layer): unit}``.

    Freezes every parameter of ``clip`` first, then makes the units trainable. ``kind="full"`` adds
    nothing: the index maps each block to itself and the whole tower (embeddings, norms,
    projections too; not ``logit_scale``) becomes trainable. All checks run before any change.
    """
    check_units_config(cfg)
    towers = tower_blocks(clip)
    missing = [b for b in cfg.branches if b not in towers]
    if missing:
        raise ValueError(f"units.branches: model has no transformer tower for {missing}; "
                         f"towers found: {sorted(towers)}")
    for p in clip.parameters():
        p.requires_grad_(False)
    index: dict[UnitKey, nn.Module] = {}
    if cfg.kind == "none":
        return index
    for branch in cfg.branches:
        for layer, block in enumerate(towers[branch]):
            if cfg.kind == "full":
                index[(branch, layer)] = block
            elif cfg.kind == "lora":
                index[(branch, layer)] = _build_lora(block, cfg)
            else:
                index[(branch, layer)] = _build_unit(block, cfg)
    if cfg.kind == "full":
        for branch in cfg.branches:
            for module in tower_modules(clip)[branch]:
                module.requires_grad_(True)
        if hasattr(clip, "text_projection") and "language" in cfg.branches:
            clip.text_projection.requires_grad_(True)
        if hasattr(clip, "positional_embedding") and "language" in cfg.branches:
            clip.positional_embedding.requires_grad_(True)
    for unit in index.values():
        unit.requires_grad_(True)
    return index


def unit_parameters(index: dict[UnitKey, nn.Module], keys: set[UnitKey] | None = None) -> Iterator[nn.Parameter]:
    """Parameters of the selected units (all units when ``keys`` is None), in index order."""
    for key, unit in index.items():
        if keys is None or key in keys:
            yield from unit.parameters()
