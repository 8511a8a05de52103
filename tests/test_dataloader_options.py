"""train.num_workers reaches Avalanche's train and eval DataLoaders (it was dropped before)."""

from __future__ import annotations

from avalanche.training.templates import SupervisedTemplate

from runs.config import load_suite
from runs.runner import RunSession

SUITE = """name: loaders
output_dir: outputs
defaults:
  model: {arch: clip-tiny, pretrained: none, units: {kind: adapter, bottleneck: 8, dropout: 0.0}}
  stream: {name: synthetic, n_classes: 4, n_experiences: 2, train_per_class: 8, test_per_class: 4}
  train: {epochs: 1, batch_size: 8, lr: 0.01, warmup: 1, device: cpu, num_workers: 1}
  eval: {zero_shot_row: false}
  data_root: .
runs:
  - method: naive
"""


def test_num_workers_reaches_the_train_and_eval_loaders(tmp_path, monkeypatch):
    seen: list[tuple[str, int, bool]] = []
    for phase in ("train", "eval"):
        real = getattr(SupervisedTemplate, f"make_{phase}_dataloader")

        def spy(self, *a, _real=real, _phase=phase, **kw):
            seen.append((_phase, kw.get("num_workers", 0), kw.get("persistent_workers", False)))
            return _real(self, *a, **kw)

        monkeypatch.setattr(SupervisedTemplate, f"make_{phase}_dataloader", spy)
    (tmp_path / "suite.yaml").write_text(SUITE)
    suite = load_suite(tmp_path / "suite.yaml")
    suite.output_dir = str(tmp_path / "outputs")
    result = RunSession(suite, suite.runs[0], 0).execute()
    assert result["matrix"] is not None
    assert {phase for phase, _, _ in seen} == {"train", "eval"}
    assert all(workers == 1 and persistent for _, workers, persistent in seen), seen
