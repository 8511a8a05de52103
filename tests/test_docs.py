"""The documentation: docs/ builds with Sphinx with warnings as errors, and the architecture page names
every module of the three packages (docs/development.md#documentation)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PACKAGES = ("runs", "strategies", "benchmarks")


def modules(package: str) -> list[str]:
    """Dotted names of a package and every module and sub-package under it (``__init__`` as the package)."""
    names = []
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def named_on(page: str, module: str) -> bool:
    """``module`` is written on the page as a dotted path of its own (not only as a prefix of another)."""
    return re.search(rf"(?<![\w.]){re.escape(module)}(?![\w]|\.\w)", page) is not None


def test_architecture_page_names_every_module():
    page = (DOCS / "architecture.md").read_text(encoding="utf-8")
    missing = [name for package in PACKAGES for name in modules(package) if not named_on(page, name)]
    assert not missing, f"docs/architecture.md does not name these modules (one line each, as dotted paths): {missing}"


def test_module_names_are_found_only_as_themselves():
    assert named_on("| `runs.config` | schema |", "runs.config")
    assert not named_on("`runs.executors.job`", "runs.executors")
    assert not named_on("`runs.configs`", "runs.config")
    assert "runs.__main__" in modules("runs") and "strategies.clip" in modules("strategies")


def test_readme_is_a_landing_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode("utf-8")) <= 12_000
    for target in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / target).is_file(), f"README links to {target}, which does not exist"


@pytest.mark.skipif(importlib.util.find_spec("sphinx") is None or importlib.util.find_spec("myst_parser") is None,
                    reason="sphinx and myst-parser are not installed (pip install -e '.[dev]')")
def test_docs_build_with_warnings_as_errors(tmp_path: Path):
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
               "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, f"sphinx-build failed:\n{result.stderr[-6000:]}"
    assert (tmp_path / "html" / "index.html").is_file()


def _cites_own_readme(line: str) -> bool:
    """A citation of the project's own README ("(README)", "the README, Speed"), not a third-party one
    named before it ("prateeky2806/ties-merging README", "the TIES README")."""
    for match in re.finditer(r"\bREADME\b", line):
        before = re.search(r"([\w./-]+)\s+$", line[: match.start()])
        if before is None or before.group(1).lower() in {"the", "our", "see", "in", "this"}:
            return True
    return False


def test_code_cites_docs_pages_not_readme_paragraphs():
    offenders = []
    for package in (*PACKAGES, "tests", "examples"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name == "test_docs.py":
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if _cites_own_readme(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "cite docs/<page>.md or a paper section, not the README:\n" + "\n".join(offenders)


def test_readme_citation_finder():
    assert _cites_own_readme('Two settings (README "Mixed precision"):')
    assert _cites_own_readme("see the README, Speed")
    assert _cites_own_readme("(README)")
    assert not _cites_own_readme("k = 20 (top 20% kept; prateeky2806/ties-merging README")
    assert not _cites_own_readme("searches λ; the TIES README searches")
    assert not _cites_own_readme("docs/speed.md, 'Mixed precision'")
