"""Metric formulas against matrices computed by hand (numbers in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from runs.metrics import (
    average_forgetting,
    average_incremental_accuracy,
    bwt,
    last_accuracy,
    mtil_avg,
    mtil_last,
    summarize,
    transfer,
)

NAN = math.nan
# Class-incremental: rows = after step i, columns = experience j; unseen entries are NaN.
CIL = [[0.9, NAN, NAN],
       [0.6, 0.8, NAN],
       [0.5, 0.7, 0.9]]
CIL_SIZES = [100, 50, 50]

# MTIL: every entry evaluated (task-aware label space per dataset).
MTIL = [[80.0, 40.0, 30.0],
        [70.0, 90.0, 35.0],
        [60.0, 85.0, 95.0]]


def test_average_incremental_accuracy_sample_weighted():
    # step 0: 0.9; step 1: (0.6*100 + 0.8*50)/150 = 100/150 = 0.666...; step 2: (50 + 35 + 45)/200 = 0.65
    expected = (0.9 + 100 / 150 + 0.65) / 3  # = 0.738888...
    assert average_incremental_accuracy(CIL, CIL_SIZES) == pytest.approx(expected)
    # equal sizes: step means 0.9, 0.7, 0.7 -> 0.766...
    assert average_incremental_accuracy(CIL) == pytest.approx((0.9 + 0.7 + 0.7) / 3)


def test_last_accuracy():
    assert last_accuracy(CIL, CIL_SIZES) == pytest.approx(0.65)  # (50 + 35 + 45) / 200
    assert last_accuracy(CIL) == pytest.approx(0.7)  # (0.5 + 0.7 + 0.9) / 3


def test_forgetting_and_bwt():
    # forgetting: j=0: max(0.9, 0.6) - 0.5 = 0.4; j=1: 0.8 - 0.7 = 0.1 -> 0.25
    assert average_forgetting(CIL) == pytest.approx(0.25)
    # bwt: j=0: 0.5 - 0.9 = -0.4; j=1: 0.7 - 0.8 = -0.1 -> -0.25
    assert bwt(CIL) == pytest.approx(-0.25)


def test_forgetting_uses_the_best_earlier_accuracy_not_the_diagonal():
    a = [[0.5, NAN, NAN],
         [0.7, 0.8, NAN],
         [0.4, 0.6, 0.9]]
    # forgetting: j=0: max(0.5, 0.7) - 0.4 = 0.3; j=1: 0.8 - 0.6 = 0.2 -> 0.25
    assert average_forgetting(a) == pytest.approx(0.25)
    # bwt: j=0: 0.4 - 0.5 = -0.1; j=1: 0.6 - 0.8 = -0.2 -> -0.15 (so forgetting != -bwt here)
    assert bwt(a) == pytest.approx(-0.15)


def test_single_step_has_no_forgetting():
    assert average_forgetting([[0.7]]) == 0.0 and bwt([[0.7]]) == 0.0


def test_mtil_transfer_avg_last():
    # transfer: i=1: A[0,1] = 40; i=2: (A[0,2] + A[1,2]) / 2 = (30 + 35) / 2 = 32.5 -> (40 + 32.5) / 2 = 36.25
    assert transfer(MTIL) == pytest.approx(36.25)
    assert mtil_avg(MTIL) == pytest.approx(585 / 9)  # 80+40+30+70+90+35+60+85+95 = 585 -> 65.0
    assert mtil_last(MTIL) == pytest.approx(80.0)  # (60 + 85 + 95) / 3


def test_transfer_excludes_first_dataset_and_the_learned_entries():
    changed = np.array(MTIL)
    changed[:, 0] = [0.0, 1.0, 2.0]  # column of the first dataset
    changed[1, 1] = changed[2, 1] = changed[2, 2] = 0.0  # diagonal and below (after learning)
    assert transfer(changed) == pytest.approx(36.25)
    changed[0, 2] = 40.0  # an entry above the diagonal does count: (40 + (40 + 35) / 2) / 2
    assert transfer(changed) == pytest.approx((40 + 37.5) / 2)


def test_zero_shot_only_model():
    # A model that never changes: every row is the zero-shot row z = [50, 60, 70].
    z = [50.0, 60.0, 70.0]
    out = summarize([z, z, z], protocol="task", zero_shot_row=z)
    # transfer: i=1: 60; i=2: 70 -> 65 (> avg: the first dataset is excluded, like ZSCL's 69.4 vs 65.3)
    assert out["transfer"] == pytest.approx(65.0)
    assert out["avg"] == pytest.approx(60.0) and out["last"] == pytest.approx(60.0)
    assert out["forgetting"] == 0.0 and out["bwt"] == 0.0 and out["zero_shot"] == pytest.approx(60.0)


def test_summarize_keys_per_protocol():
    seen = summarize(CIL, CIL_SIZES, "seen")
    assert set(seen) == {"avg", "last", "forgetting", "bwt"}
    assert seen["avg"] == pytest.approx((0.9 + 100 / 150 + 0.65) / 3) and seen["last"] == pytest.approx(0.65)
    task = summarize(MTIL, [10, 10, 10], "task")
    assert set(task) == {"transfer", "avg", "last", "forgetting", "bwt"}
    assert task["forgetting"] == pytest.approx(12.5)  # (max(80,70) - 60 + 90 - 85) / 2
    assert task["bwt"] == pytest.approx(-12.5)  # ((60 - 80) + (85 - 90)) / 2
    # seen-protocol zero-shot accuracy is sample weighted: (0.3*100 + 0.6*50 + 0.9*50) / 200 = 0.525
    zs = summarize(CIL, CIL_SIZES, "seen", zero_shot_row=[0.3, 0.6, 0.9])["zero_shot"]
    assert zs == pytest.approx(0.525)


@pytest.mark.parametrize("matrix,sizes,match", [([[1.0, 2.0]], None, "square"), (MTIL, [1, 2], "sizes"),
                                                (MTIL, [1, 0, 1], "sizes")])
def test_invalid_inputs(matrix, sizes, match):
    with pytest.raises(ValueError, match=match):
        summarize(matrix, sizes, "task")


def test_unknown_protocol():
    with pytest.raises(ValueError, match="protocol"):
        summarize(MTIL, None, "domain")
