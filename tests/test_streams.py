"""Streams: class orders, split sizes, label correctness, MTIL assembly, missing-data errors.

Offline: real images come from ../shared/data (TinyImageNet, EuroSAT, Caltech-101 subsets); the
other datasets are tiny copies in their official formats written here.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from fixtures_streams import (
    SHARED_DATA,
    fake_mtil_loader,
    write_fake_cifar100,
    write_fake_dtd,
    write_fake_imagenet_r,
    write_fake_mnist,
)

import benchmarks  # noqa: F401  (installs the torchvision shim first)
from benchmarks import STREAMS, DatasetMissingError, StreamContext
from benchmarks import mtil as mtil_mod
from benchmarks.cifar100 import CIFAR100_ORDER_1993, SplitCIFAR100Config, build_split_cifar100
from benchmarks.common import resolve_class_order, step_sizes
from benchmarks.data_check import check_stream
from benchmarks.imagenet_r import SPLIT_FILES, SplitImageNetRConfig, build_split_imagenet_r, read_classes
from benchmarks.mtil import ORDER_I, ORDER_II, MTILConfig, build_mtil, select_shots
from benchmarks.templates import CLASS_INCREMENTAL_RICH
from benchmarks.templates import MTIL as MTIL_TEMPLATES
from benchmarks.tinyimagenet import (
    TINY_ORDER_1993,
    SplitTinyImageNetConfig,
    build_split_tinyimagenet,
    first_synonym,
    read_tiny_classes,
    tiny_val_files,
)

needs_shared = pytest.mark.skipif(not (SHARED_DATA / "tiny-imagenet-200").is_dir(),
                                  reason=f"real image subsets not found at {SHARED_DATA}")


def _ctx(root, download: bool = False) -> StreamContext:
    from torchvision import transforms as T  # after `benchmarks` installed the torchvision shim

    tf = T.Compose([T.Resize(32), T.CenterCrop(32), T.ToTensor()])
    return StreamContext(data_root=str(root), train_transform=tf, eval_transform=tf, image_size=32,
                         download=download)


def _exp_sizes(stream) -> list[int]:
    return [len(e.dataset) for e in stream]


def _assert_partition(bench, n_classes: int) -> None:
    """Experiences' classes are disjoint and cover every class once."""
    flat = [c for classes in bench.experience_classes for c in classes]
    assert len(flat) == len(set(flat)) == n_classes
    assert sorted(flat) == list(range(n_classes))


# ---------------------------------------------------------------- class orders and steps


def test_registered_streams():
    for name in ("split_cifar100", "split_tinyimagenet", "split_imagenet_r", "mtil"):
        assert name in STREAMS


def test_published_order_prefixes():
    assert CIFAR100_ORDER_1993[:10] == [87, 0, 52, 58, 44, 91, 68, 97, 51, 15]
    assert TINY_ORDER_1993[:5] == [131, 181, 22, 172, 144]
    assert sorted(CIFAR100_ORDER_1993) == list(range(100))
    assert sorted(TINY_ORDER_1993) == list(range(200))


def test_published_orders_are_not_numpy_seed_1993():
    # The "seed 1993" name is historical: numpy's seed-1993 permutation is a different order.
    assert np.random.RandomState(1993).permutation(100).tolist()[:3] != CIFAR100_ORDER_1993[:3]
    assert np.random.RandomState(1993).permutation(200).tolist()[:3] != TINY_ORDER_1993[:3]


def test_resolve_class_order_forms_and_errors():
    assert resolve_class_order("identity", 5, None, "s") == [0, 1, 2, 3, 4]
    assert resolve_class_order(3, 10, None, "s") == np.random.RandomState(3).permutation(10).tolist()
    assert resolve_class_order([2, 0, 1], 3, None, "s") == [2, 0, 1]
    with pytest.raises(ValueError, match="permutation"):
        resolve_class_order([0, 0, 1], 3, None, "s")
    with pytest.raises(ValueError, match="published"):
        resolve_class_order("seed1993", 3, None, "s")


@pytest.mark.parametrize("initial,increment,expected", [
    (100, 10, [100] + [10] * 10), (100, 20, [100] + [20] * 5), (100, 5, [100] + [5] * 20),
    (20, 20, [20] * 10)])
def test_step_sizes_tile(initial, increment, expected):
    assert step_sizes(200, initial, increment, "s") == expected


def test_step_sizes_reject_non_tiling():
    with pytest.raises(ValueError, match="tile"):
        step_sizes(200, 100, 30, "s")


# ---------------------------------------------------------------- Split CIFAR-100 (fake copy)


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_fake_cifar100(root, train_per_class=2, test_per_class=1)
    return root


@pytest.mark.parametrize("steps", [10, 20, 50])
def test_split_cifar100_sizes_and_order(cifar_root, steps):
    bench = build_split_cifar100(SplitCIFAR100Config(steps=steps), _ctx(cifar_root))
    per = 100 // steps
    assert bench.n_experiences == steps and bench.protocol == "seen"
    assert bench.experience_classes[0] == sorted(CIFAR100_ORDER_1993[:per])
    assert bench.experience_classes[1] == sorted(CIFAR100_ORDER_1993[per:2 * per])
    assert _exp_sizes(bench.scenario.train_stream) == [2 * per] * steps
    assert _exp_sizes(bench.scenario.test_stream) == [per] * steps
    _assert_partition(bench, 100)


def test_split_cifar100_names_prompts_and_batches(cifar_root):
    bench = build_split_cifar100(SplitCIFAR100Config(steps=10), _ctx(cifar_root))
    assert bench.class_names[0] == "aquarium fish"
    # MoZO's code: one template in training and evaluation (the default of both options)
    assert bench.class_prompts[0] == bench.train_prompts[0] == ["a bad photo of a aquarium fish."]
    rich = build_split_cifar100(SplitCIFAR100Config(steps=10, eval_templates="rich"), _ctx(cifar_root))
    assert rich.train_prompts[0] == ["a bad photo of a aquarium fish."]
    assert rich.class_prompts[0] == [t.format("aquarium fish") for t in CLASS_INCREMENTAL_RICH]
    with pytest.raises(ValueError, match=r"split_cifar100: train_templates: unknown preset 'all'; use 'default'"):
        build_split_cifar100(SplitCIFAR100Config(steps=10, train_templates="all"), _ctx(cifar_root))
    with pytest.raises(ValueError, match=r"eval_templates: template 'a photo' has no '\{\}'"):
        build_split_cifar100(SplitCIFAR100Config(steps=10, eval_templates=["a photo"]), _ctx(cifar_root))
    exp = bench.scenario.train_stream[0]
    x, y, t = exp.dataset[0]
    assert isinstance(x, torch.Tensor) and x.shape == (3, 32, 32)
    assert isinstance(y, int) and y in exp.classes_in_this_experience and t == 0


@pytest.mark.parametrize("stream", ["synthetic", "split_cifar100", "split_tinyimagenet", "split_imagenet_r", "mtil"])
def test_template_options_are_checked_without_data(stream):
    spec = STREAMS[stream]
    spec.check(spec.config())  # defaults are valid
    for field in ("train_templates", "eval_templates"):
        with pytest.raises(ValueError, match=f"{stream}: {field}"):
            spec.check(spec.config(**{field: "bogus"}))


def test_split_cifar100_rejects_bad_steps(cifar_root):
    with pytest.raises(ValueError, match="divisor"):
        build_split_cifar100(SplitCIFAR100Config(steps=7), _ctx(cifar_root))


def test_split_cifar100_missing_names_files(tmp_path):
    with pytest.raises(DatasetMissingError) as info:
        build_split_cifar100(SplitCIFAR100Config(), _ctx(tmp_path, download=False))
    msg = str(info.value)
    assert str(tmp_path / "cifar-100-python") in msg and "{train,test,meta}" in msg
    assert "Traceback" not in msg and "\n" not in msg


# ---------------------------------------------------------------- Split TinyImageNet (real files)


def test_split_tinyimagenet_missing_names_files(tmp_path):
    with pytest.raises(DatasetMissingError) as info:
        build_split_tinyimagenet(SplitTinyImageNetConfig(), _ctx(tmp_path, download=False))
    msg = str(info.value)
    for part in (str(tmp_path / "tiny-imagenet-200"), "wnids.txt", "words.txt", "val_annotations.txt",
                 "train/<wnid>/images"):
        assert part in msg
    assert "\n" not in msg


def test_first_synonym():
    assert first_synonym("goldfish, Carassius auratus") == "goldfish"
    assert first_synonym("Egyptian cat") == "Egyptian cat"


@pytest.fixture(scope="module")
def tiny_bench():
    if not (SHARED_DATA / "tiny-imagenet-200").is_dir():
        pytest.skip(f"real TinyImageNet subset not found at {SHARED_DATA}")
    return build_split_tinyimagenet(SplitTinyImageNetConfig(initial=100, increment=10), _ctx(SHARED_DATA))


@needs_shared
def test_tinyimagenet_real_split(tiny_bench):
    bench = tiny_bench
    assert bench.n_classes == 200 and bench.n_experiences == 11
    assert [len(c) for c in bench.experience_classes] == [100] + [10] * 10
    assert bench.experience_classes[0] == sorted(TINY_ORDER_1993[:100])
    assert bench.experience_classes[1] == sorted(TINY_ORDER_1993[100:110])
    _assert_partition(bench, 200)
    test_sizes = _exp_sizes(bench.scenario.test_stream)
    assert sum(test_sizes) == 10_000 and test_sizes == [5000] + [500] * 10  # 50 val images per class
    assert _exp_sizes(bench.scenario.train_stream) == [8000] + [800] * 10  # the subset: 80 per class
    assert bench.class_names[:3] == ["Egyptian cat", "reel", "volleyball"]


@needs_shared
def test_tinyimagenet_val_labels_match_annotations():
    folder = SHARED_DATA / "tiny-imagenet-200"
    wnids, _ = read_tiny_classes(str(folder))
    val = tiny_val_files(str(folder), wnids)
    lines = (folder / "val" / "val_annotations.txt").read_text().splitlines()
    assert len(val) == len(lines) == 10_000
    for k in random.Random(0).sample(range(len(lines)), 200):
        file, wnid = lines[k].split("\t")[:2]
        assert val.paths[k].endswith(file) and wnids[val.targets[k]] == wnid
    assert np.bincount(val.targets, minlength=200).tolist() == [50] * 200


@needs_shared
def test_tinyimagenet_decodes_two_samples(tiny_bench):
    test_exp = tiny_bench.scenario.test_stream[3]
    for idx in (0, len(test_exp.dataset) - 1):
        x, y, _ = test_exp.dataset[idx]
        assert x.shape == (3, 32, 32) and y in test_exp.classes_in_this_experience


# ---------------------------------------------------------------- Split ImageNet-R (fake copy)


def test_imagenet_r_class_table():
    wnids, names = read_classes()
    assert len(wnids) == len(set(wnids)) == 200 and wnids == sorted(wnids)
    assert wnids[0] == "n01443537" and names[0] == "goldfish"


@pytest.mark.skipif(not SPLIT_FILES["coda"].is_file(), reason="shipped ImageNet-R split list absent")
def test_imagenet_r_split_from_shipped_list(tmp_path):
    from benchmarks.imagenet_r import read_test_list

    wnids, _ = read_classes()
    test_list = read_test_list("coda")
    assert len(test_list) == len(set(test_list))
    assert {rel.split("/")[0] for rel in test_list} <= set(wnids)
    n_train, n_test = write_fake_imagenet_r(tmp_path, wnids, test_list)
    bench = build_split_imagenet_r(SplitImageNetRConfig(steps=10), _ctx(tmp_path))
    assert bench.n_experiences == 10 and [len(c) for c in bench.experience_classes] == [20] * 10
    _assert_partition(bench, 200)
    assert sum(_exp_sizes(bench.scenario.train_stream)) == n_train
    assert sum(_exp_sizes(bench.scenario.test_stream)) == n_test
    x, y, _ = bench.scenario.test_stream[0].dataset[0]
    assert x.shape == (3, 32, 32)


def test_imagenet_r_missing(tmp_path):
    if not SPLIT_FILES["coda"].is_file():
        pytest.skip("shipped ImageNet-R split list absent")
    with pytest.raises(DatasetMissingError, match="imagenet-r"):
        build_split_imagenet_r(SplitImageNetRConfig(), _ctx(tmp_path, download=False))


# ---------------------------------------------------------------- MTIL


@needs_shared
def test_mtil_real_eurosat_caltech():
    bench = build_mtil(MTILConfig(order=["EuroSAT", "Caltech101"]), _ctx(SHARED_DATA))
    assert bench.protocol == "task" and bench.experience_names == ["EuroSAT", "Caltech101"]
    assert bench.experience_classes == [list(range(10)), list(range(10, 111))]
    assert bench.class_names[0] == "annual crop land" and bench.class_names[10] == "off-center face"
    train, test = bench.scenario.train_stream, bench.scenario.test_stream
    assert [e.task_label for e in train] == [0, 1] and [e.task_label for e in test] == [0, 1]
    assert _exp_sizes(train) == [800, 101 * 6] and _exp_sizes(test) == [200, 101 * 2]  # 100 and 8 per class
    x, y, t = test[1].dataset[0]
    assert x.shape == (3, 32, 32) and 10 <= y < 111 and t == 1


def test_mtil_fake_official_formats(tmp_path):
    write_fake_mnist(tmp_path, per_class=2)
    write_fake_dtd(tmp_path)
    write_fake_cifar100(tmp_path, train_per_class=1, test_per_class=1)
    bench = build_mtil(MTILConfig(order=["MNIST", "DTD", "CIFAR100"]), _ctx(tmp_path))
    assert bench.experience_classes == [list(range(10)), list(range(10, 13)), list(range(13, 113))]
    assert bench.class_names[:3] == ["0", "1", "2"] and bench.class_names[10] == "banded"
    assert bench.class_prompts[0][0] == 'a photo of the number: "0".'
    # the official split: train with the dataset's first template, evaluate with all of them
    assert bench.train_prompts[10] == ["a photo of a banded texture."]
    assert bench.class_prompts[10] == [t.format("banded") for t in MTIL_TEMPLATES["DTD"]]
    assert len(bench.class_prompts[10]) == 8 and len(bench.train_prompts) == len(bench.class_prompts) == 113
    assert _exp_sizes(bench.scenario.train_stream) == [20, 6, 100]  # DTD: 2 train images per class
    assert _exp_sizes(bench.scenario.test_stream) == [20, 3, 100]
    x, y, t = bench.scenario.train_stream[0].dataset[0]  # grayscale MNIST -> 3 channels
    assert x.shape == (3, 32, 32) and 0 <= y < 10 and t == 0


@pytest.mark.parametrize("order", ["I", "II"])
def test_mtil_assembly_offsets_tasks_names(monkeypatch, order):
    sizes = {name: 2 + i for i, name in enumerate(ORDER_I)}
    for name, n in sizes.items():
        monkeypatch.setitem(mtil_mod.LOADERS, name, fake_mtil_loader(n))
    names = ORDER_I if order == "I" else ORDER_II
    bench = build_mtil(MTILConfig(order=order, eval_templates="first"), _ctx("/nonexistent"))
    assert bench.experience_names == names and bench.protocol == "task"
    offset = 0
    for k, (name, exp) in enumerate(zip(names, bench.scenario.train_stream, strict=True)):
        assert exp.task_label == k and exp.current_experience == k
        assert bench.experience_classes[k] == list(range(offset, offset + sizes[name]))
        assert sorted(exp.classes_in_this_experience) == bench.experience_classes[k]
        assert bench.class_prompts[offset] == [MTIL_TEMPLATES[name][0].format("c0")]
        assert bench.train_prompts[offset] == [MTIL_TEMPLATES[name][0].format("c0")]  # default: first
        assert len(exp.dataset) == 3 * sizes[name]
        offset += sizes[name]
    assert bench.n_classes == offset == sum(sizes.values())
    assert [e.task_label for e in bench.scenario.test_stream] == list(range(11))


def test_mtil_few_shot(monkeypatch):
    monkeypatch.setitem(mtil_mod.LOADERS, "MNIST", fake_mtil_loader(4))
    bench = build_mtil(MTILConfig(order=["MNIST"], shots=2), _ctx("/nonexistent"))
    assert _exp_sizes(bench.scenario.train_stream) == [8]
    assert select_shots([0, 1, 0, 1, 0], 2, None) == [0, 1, 2, 3]
    seeded = select_shots([0] * 10 + [1] * 10, 3, seed=5)
    assert len(seeded) == 6 and seeded == select_shots([0] * 10 + [1] * 10, 3, seed=5)


def test_mtil_order_validation():
    with pytest.raises(ValueError, match="unknown"):
        build_mtil(MTILConfig(order=["ImageNet"]), _ctx("/nonexistent"))
    with pytest.raises(ValueError, match=r"mtil: train_templates='rich'; allowed: first, all"):
        build_mtil(MTILConfig(order=["MNIST"], train_templates="rich"), _ctx("/nonexistent"))


@pytest.mark.parametrize("name,needle", [("Aircraft", "fgvc-aircraft-2013b"), ("StanfordCars", "Kaggle"),
                                         ("MNIST", "MNIST/raw")])
def test_mtil_missing_dataset_message(tmp_path, name, needle):
    with pytest.raises(DatasetMissingError) as info:
        build_mtil(MTILConfig(order=[name]), _ctx(tmp_path, download=False))
    assert needle in str(info.value) and str(tmp_path) in str(info.value)


# ---------------------------------------------------------------- data check


def test_data_check_missing_and_corrupt(tmp_path):
    rows = check_stream("split_cifar100", str(tmp_path))
    assert [r.status for r in rows] == ["missing"] * 3
    bad = tmp_path / "tiny-imagenet-200" / "val" / "images"
    bad.mkdir(parents=True)
    (bad / "val_0.JPEG").write_bytes(b"not a jpeg")
    statuses = {(r.item, r.status) for r in check_stream("split_tinyimagenet", str(tmp_path))}
    assert (str(bad / "val_0.JPEG"), "corrupt") in statuses


@needs_shared
def test_data_check_real_tinyimagenet():
    rows = check_stream("split_tinyimagenet", str(SHARED_DATA))
    by_item = {r.item: r for r in rows}
    assert by_item["wnids.txt"].status == "present" and by_item["val_annotations.txt"].status == "present"
    assert all(r.status != "missing" for r in rows)
    assert sum(r.detail == "decodes" for r in rows) == 4


def test_data_check_verdicts_of_fake_official_formats(tmp_path):
    from benchmarks.data_check import dataset_verdicts

    write_fake_cifar100(tmp_path)  # the official pickles, 2 + 1 images per class: a subset
    assert dataset_verdicts(check_stream("split_cifar100", str(tmp_path))) == {"CIFAR100": "subset"}
    (tmp_path / "cifar-100-python" / "meta").write_bytes(b"garbage")
    assert dataset_verdicts(check_stream("split_cifar100", str(tmp_path))) == {"CIFAR100": "corrupt"}
    assert dataset_verdicts(check_stream("split_cifar100", str(tmp_path / "none"))) == {"CIFAR100": "missing"}


@pytest.mark.skipif(not (SHARED_DATA / "caltech101").is_dir(), reason=f"no Caltech-101 subset at {SHARED_DATA}")
def test_data_check_shared_caltech_is_a_subset_without_background():
    from benchmarks.data_check import dataset_verdicts

    rows = check_stream("mtil", str(SHARED_DATA), MTILConfig(datasets=["Caltech101"]))
    assert any(r.detail == "808 images (expected 8677)" for r in rows)  # 8 x 101, BACKGROUND_Google left out
    assert dataset_verdicts(rows) == {"mtil/Caltech101": "subset"}
