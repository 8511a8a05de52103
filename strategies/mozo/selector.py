"""Which training units MoZO trains with zeroth-order estimates (MoZO §4, branch- and layer-wise ZO).

Units are keyed ``(tower, layer)`` with tower in {"vision", "language"} and ``layer`` the 0-based
block index in that tower's ``resblocks``. Everything not selected is trained first-order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

TOWERS: tuple[str, ...] = ("vision", "language")
BRANCHES: tuple[str, ...] = ("dual", "vision", "language", "none")
_LAYERS_HELP = "expected one of all, hop-odd, hop-even, prefix-K, suffix-K or a list of layer numbers"


def parse_layers(layers: str | Sequence[int]) -> tuple[str, int] | list[int]:
    """Parse a layer spec without knowing the depth.

    Returns ``(kind, K)`` for "all" / "hop-odd" / "hop-even" (K = 0) and "prefix-K" / "suffix-K",
    or the explicit list of layer numbers (also accepted as a comma-separated string "2,4,6").
    """
    if isinstance(layers, str):
        spec = layers.strip().lower()
        if spec in ("all", "hop-odd", "hop-even"):
            return spec, 0
        kind, _, k = spec.partition("-")
        if kind in ("prefix", "suffix") and k.isdigit():
            return kind, int(k)
        parts = [s.strip() for s in spec.split(",")]
        if all(p.lstrip("-").isdigit() for p in parts):
            return [int(p) for p in parts]
        raise ValueError(f"layers={layers!r}: {_LAYERS_HELP}")
    if isinstance(layers, Sequence) and layers and all(_is_int(n) for n in layers):
        return [int(n) for n in layers]
    raise ValueError(f"layers={layers!r}: {_LAYERS_HELP}")


def _is_int(n: object) -> bool:
    return isinstance(n, int) and not isinstance(n, bool)


def _tower_depths(unit_keys: Iterable[tuple[str, int]]) -> tuple[list[tuple[str, int]], dict[str, int]]:
    """Validate keys; depth of each tower = its largest layer index + 1."""
    keys = list(unit_keys)
    depths: dict[str, int] = {}
    for key in keys:
        if not (isinstance(key, tuple) and len(key) == 2 and key[0] in TOWERS and _is_int(key[1])):
            raise ValueError(f"unit key {key!r}: expected (tower, layer), tower in {TOWERS}, int layer")
        if key[1] < 0:
            raise ValueError(f"unit key {key!r}: layer index must be >= 0")
        depths[key[0]] = max(depths.get(key[0], 0), key[1] + 1)
    return keys, depths


def _layer_indices(
    parsed: tuple[str, int] | list[int], depth: int, one_based: bool, spec: object
) -> set[int]:
    """0-based block indices of one tower with ``depth`` blocks selected by a parsed spec."""
    base = 1 if one_based else 0
    if isinstance(parsed, list):
        missing = [n for n in parsed if not 0 <= n - base < depth]
        if missing:
            raise ValueError(
                f"layers={spec!r}: layer numbers {missing} do not exist; expected {base}..{depth - 1 + base}"
            )
        return {n - base for n in parsed}
    kind, k = parsed
    if kind == "all":
        return set(range(depth))
    if kind in ("hop-odd", "hop-even"):
        parity = 1 if kind == "hop-odd" else 0  # parity of the layer *number*
        return {i for i in range(depth) if (i + base) % 2 == parity}
    if not 1 <= k <= depth:
        raise ValueError(f"layers={spec!r}: K={k} must be in 1..{depth} (the tower's depth)")
    return set(range(k)) if kind == "prefix" else set(range(depth - k, depth))


def select_zo_units(
    unit_keys: Iterable[tuple[str, int]],
    branch: str,
    layers: str | Sequence[int],
    *,
    one_based: bool = True,
) -> set[tuple[str, int]]:
    """Units trained with ZO (MoZO §4): the ``layers`` of each tower in ``branch``.

    branch: "dual" (both towers), "vision", "language" or "none" (pure first-order, empty set).
    layers: "all"; "hop-odd" / "hop-even" (interleaved, by layer *number*: with ``one_based`` layer
    numbers start at 1, so hop-odd = indices 0, 2, 4, …); "prefix-K" / "suffix-K" (first / last K
    blocks of each selected tower); or explicit layer numbers in the same base. Depths are per tower.
    """
    if branch not in BRANCHES:
        raise ValueError(f"branch={branch!r}: expected one of {', '.join(BRANCHES)}")
    parsed = parse_layers(layers)
    keys, depths = _tower_depths(unit_keys)
    towers = TOWERS if branch == "dual" else () if branch == "none" else (branch,)
    selected: set[tuple[str, int]] = set()
    for tower in towers:
        if tower not in depths:
            raise ValueError(f"branch={branch!r}: the model has no units in the {tower} tower")
        indices = _layer_indices(parsed, depths[tower], one_based, layers)
        selected |= {key for key in keys if key[0] == tower and key[1] in indices}
    return selected
