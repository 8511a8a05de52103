"""``python -m runs data download``: torchvision's downloaders replaced by local fakes (nothing can be
downloaded here); what cannot be fetched gets its source and expected layout printed."""

from __future__ import annotations

from pathlib import Path

import pytest

import benchmarks  # noqa: F401  (installs the torchvision shim first)
from benchmarks import download as dl
from benchmarks.mtil import EUROSAT_FOLDERS
from runs.__main__ import main


def _fake_eurosat_archive(calls: list[dict]):
    """Stands in for torchvision's ``download_and_extract_archive``: 'extracts' a tiny EuroSAT."""
    def fake(url: str, download_root: str, md5: str | None = None, **kwargs) -> None:
        from PIL import Image

        calls.append({"url": url, "root": download_root, "md5": md5})
        for k, cls in enumerate(EUROSAT_FOLDERS):
            folder = Path(download_root) / "2750" / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(2):
                Image.new("RGB", (8, 8), color=(k * 20, i, 0)).save(folder / f"{cls}_{i}.jpg")
    return fake


def test_download_fetches_with_torchvision_and_prints_the_manual_steps(tmp_path, monkeypatch, capsys):
    import torchvision.datasets.eurosat as tv_eurosat

    calls: list[dict] = []
    monkeypatch.setattr(tv_eurosat, "download_and_extract_archive", _fake_eurosat_archive(calls))
    monkeypatch.chdir(tmp_path)
    code = main(["data", "download", "mtil", "--data-root", "data", "--datasets", "SUN397,EuroSAT,StanfordCars"])
    out = capsys.readouterr().out
    assert code == 1  # StanfordCars and SUN397 still need the user
    root = tmp_path / "data"
    assert f"data root: {root}" in out  # relative to the working directory, printed resolved
    assert calls == [{"url": calls[0]["url"], "root": str(root / "eurosat"), "md5": calls[0]["md5"]}]
    assert calls[0]["md5"]  # torchvision's checksum is passed on
    assert len(list((root / "eurosat" / "2750").rglob("*.jpg"))) == 20
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("mtil/")}
    assert list(lines) == ["mtil/EuroSAT", "mtil/StanfordCars", "mtil/SUN397"]  # order I's sequence
    assert lines["mtil/EuroSAT"].split()[1] == "fetched"
    assert lines["mtil/StanfordCars"].split()[1] == "manual"
    assert f"{root}/stanford_cars/" in lines["mtil/StanfordCars"] and "Kaggle" in lines["mtil/StanfordCars"]
    assert "SUN397.tar.gz" in lines["mtil/SUN397"] and f"{root}/SUN397/" in lines["mtil/SUN397"]
    assert main(["data", "download", "mtil", "--data-root", "data", "--datasets", "EuroSAT"]) == 0
    assert len(calls) == 1 and "mtil/EuroSAT  subset" in capsys.readouterr().out  # on disk: left as is


def test_download_failure_prints_the_reason_and_the_manual_route(tmp_path, monkeypatch, capsys):
    import torchvision.datasets.eurosat as tv_eurosat

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(tv_eurosat, "download_and_extract_archive", offline)
    assert main(["data", "download", "mtil", "--data-root", str(tmp_path), "--datasets", "EuroSAT"]) == 1
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("mtil/EuroSAT"))
    assert "failed" in line and "network unreachable" in line and f"{tmp_path}/eurosat/2750/" in line


def test_streams_without_a_torchvision_downloader_print_source_and_layout(tmp_path, capsys):
    for stream, needle, layout in (("split_imagenet_r", "imagenet-r.tar", "imagenet-r/<wnid>/*.jpg"),
                                   ("split_tinyimagenet", "tiny-imagenet-200.zip", "tiny-imagenet-200/")):
        assert main(["data", "download", stream, "--data-root", str(tmp_path)]) == 1
        out = capsys.readouterr().out
        assert "manual" in out and needle in out and f"{tmp_path}/{layout}" in out
    assert not any(tmp_path.iterdir())  # nothing fetched, nothing written
    assert main(["data", "download", "synthetic"]) == 0


def test_every_mtil_dataset_is_fetchable_or_has_manual_steps():
    from benchmarks.mtil import LOADERS

    manual = {"mtil/StanfordCars", "mtil/SUN397"}
    assert {f"mtil/{n}" for n in LOADERS} == {k for k in dl.FETCHERS if k.startswith("mtil/")} | manual
    for name in manual:
        assert "layout" in dl.instructions(name, "/d")


@pytest.mark.parametrize("args", [["data", "download", "no_such_stream"],
                                  ["data", "download", "mtil", "--datasets", "ImageNet"]])
def test_bad_input_exits_2(args):
    assert main(args) == 2
