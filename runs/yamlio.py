"""Bounded, strict YAML for suite files and ``--set`` values.

``yaml.safe_load`` never runs code (``!!python/...`` tags are refused), but it accepts inputs that
cost without bound and keys that silently vanish. This loader adds, before any value is built:

- a **file-size** budget (:data:`MAX_FILE_BYTES`), and UTF-8 decoding with the byte offset of a bad byte;
- a **depth** budget (:data:`MAX_DEPTH` nested collections) checked while composing, so 10,000-deep
  nesting is one message instead of a ``RecursionError``;
- an **expanded-size** budget (:data:`MAX_NODES`): aliases are counted as the full size of what they
  stand for (an "alias bomb" of 654 bytes expands to ~10⁹ nodes), computed with memoisation in time
  linear in the *composed* graph, so the check itself is cheap;
- **recursive aliases** (``d: &d {x: *d}``, a value containing itself) are refused while sizing, in
  milliseconds (PyYAML would build the cyclic object; validating it ran into a ``MemoryError``);
- **duplicate keys** are an error naming both lines (PyYAML keeps the last one silently).

Errors are :class:`YAMLBudgetError` (a ``ValueError``) with a one-line message; callers prefix the
file name. Values are never echoed in full: :func:`short` cuts any repr to one line.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_FILE_BYTES = 1_000_000  # a suite file is a few KB; 1 MB is far above any real one
MAX_DEPTH = 32  # nested mappings/lists; real suites use < 8
MAX_NODES = 100_000  # scalars + collections after alias expansion; real suites use < 2,000
MAX_ECHO = 60  # characters of a value shown in an error message


class YAMLBudgetError(ValueError):
    """The YAML is malformed or exceeds a budget; the message is one line without the file name."""


def short(value: Any) -> str:
    """``repr(value)`` cut to :data:`MAX_ECHO` characters on one line (never the expanded value)."""
    text = repr(value).replace("\n", "\\n")
    return text if len(text) <= MAX_ECHO else text[: MAX_ECHO - 1] + "…"


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader with a depth budget while composing and duplicate-key detection."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:  # type: ignore[override]
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise YAMLBudgetError(f"nesting deeper than {MAX_DEPTH} levels (line {mark.line + 1})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:  # type: ignore[override]
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)  # type: ignore[no-untyped-call]
            line = key_node.start_mark.line + 1
            if key in seen:
                raise YAMLBudgetError(f"duplicate key {short(key)} (lines {seen[key]} and {line})")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _expanded_size(root: Node) -> int:
    """Nodes after alias expansion (memoised by node identity: aliases share node objects)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # expanded, children not finished: a DFS ancestor of what is popped next
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        if not children_done and key in open_nodes:  # reached again below itself: `x: &a {y: *a}`
            line = node.start_mark.line + 1
            raise YAMLBudgetError(f"recursive alias (line {line}): a value that contains itself")
        if isinstance(node, ScalarNode):
            sizes[key] = 1
            continue
        children: list[Node] = []
        if isinstance(node, SequenceNode):
            children = list(node.value)
        elif isinstance(node, MappingNode):
            children = [n for pair in node.value for n in pair]
        if children_done:
            total = 1 + sum(sizes.get(id(c), 0) for c in children)
            sizes[key] = min(total, MAX_NODES + 1)  # cap: the sum cannot overflow into slowness
            open_nodes.discard(key)
            continue
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(root)]


def loads(text: str) -> Any:
    """Parse ``text`` (one YAML document) within the budgets; raise :class:`YAMLBudgetError`."""
    loader = _BoundedLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise YAMLBudgetError(f"nesting deeper than {MAX_DEPTH} levels") from None
        if node is None:
            return None
        if _expanded_size(node) > MAX_NODES:
            raise YAMLBudgetError(f"more than {MAX_NODES:,} values after expanding aliases (an alias bomb?)")
        return loader.construct_document(node)
    except yaml.YAMLError as error:
        raise YAMLBudgetError(_one_line(error)) from None
    finally:
        loader.dispose()


def load_bytes(data: bytes) -> Any:
    """Decode UTF-8 (naming the offset of a bad byte) and parse within the budgets."""
    if len(data) > MAX_FILE_BYTES:
        raise YAMLBudgetError(f"{len(data):,} bytes; a suite file may have at most {MAX_FILE_BYTES:,}")
    if b"\x00" in data:
        raise YAMLBudgetError("binary file (NUL bytes), not a YAML suite")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise YAMLBudgetError(f"not UTF-8 text (bad byte at offset {error.start})") from None
    return loads(text)


def _one_line(error: yaml.YAMLError) -> str:
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    mark = getattr(error, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"not valid YAML: {problem}{where}"
