"""Standard Tofts on the QIBA DCE-MRI digital reference object v6, read in place (issue 5).

Every one of the 30 patches (Ktrans 0.01-0.35 /min x ve 0.01-0.5) and every patch voxel must be
recovered within OSIPI's tolerances (Ktrans 0.005 + 10 %, ve 0.05) from the DRO's own arterial
row, acquisition parameters and the SPGR signal equation. The DRO is noise-free, so anything
short of all of them is a bug in the signal conversion, the AIF handling or the fit.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest


@pytest.fixture(scope="module")
def bench(load_benchmark: Callable[[str], ModuleType]) -> ModuleType:
    """``benchmarks/bench_qiba_dro.py`` as a module."""
    return load_benchmark("bench_qiba_dro")


def test_reference_maps_decode_to_the_published_grid(bench: ModuleType, realdata: Path) -> None:
    dro = bench.load_dro(realdata / "dce-qiba")
    inside = dro.patches > 0
    assert int(dro.patches.max()) == 30 and int(inside.sum()) == 3000
    assert np.allclose(sorted(set(np.round(dro.ktrans_ref[inside], 4))), [0.01, 0.02, 0.05, 0.1, 0.2, 0.35])
    assert np.allclose(sorted(set(np.round(dro.ve_ref[inside], 4))), [0.01, 0.05, 0.1, 0.2, 0.5])
    assert int(dro.aif.sum()) == 500


def test_every_patch_and_voxel_within_osipi_tolerance(bench: ModuleType, realdata: Path) -> None:
    res = bench.run(realdata / "dce-qiba")
    failed = [p for p in res["per_patch"] if not p["ok"]]
    assert res["patches_ok"] == res["patches"] == 30, failed
    assert res["voxels_ok"] == res["voxels"] == 3000
