"""Response assessment: pure functions from arrays, spacing and numbers to measurements and verdicts.

Modules: :mod:`.enhancement` (relative enhancement, enhancing mask, rim removal, residual and
new-nodule volumes), :mod:`.dce` (Parker AIF, Tofts model, signal to concentration,
curve descriptors), :mod:`.dce_fit` (vectorised Tofts fit), :mod:`.height` (vertebral heights,
height loss, Genant grade),
:mod:`.classify` (per-lesion verdict) and :mod:`.cohort` (study table, agreement).

Nothing here reads or writes files, imports pydicom, prefect, ``pipeline.ingest`` or
``pipeline.outputs``.
"""

from pipeline.response.classify import Verdict, VisitSummary, classify_lesion
from pipeline.response.cohort import agreement, cohort_markdown, cohort_table
from pipeline.response.dce import (
    CurveDescriptors,
    curve_descriptors,
    parker_aif,
    signal_to_concentration,
    tofts,
)
from pipeline.response.dce_fit import FitResult, fit_tofts
from pipeline.response.enhancement import (
    EnhancementMaps,
    enhancing_mask,
    new_nodules,
    relative_enhancement,
    remove_rim,
    residual_volume_ml,
)
from pipeline.response.height import Heights, genant_grade, height_loss_pct, vertebral_heights

__all__ = [
    "CurveDescriptors",
    "EnhancementMaps",
    "FitResult",
    "Heights",
    "Verdict",
    "VisitSummary",
    "agreement",
    "classify_lesion",
    "cohort_markdown",
    "cohort_table",
    "curve_descriptors",
    "enhancing_mask",
    "fit_tofts",
    "genant_grade",
    "height_loss_pct",
    "new_nodules",
    "parker_aif",
    "relative_enhancement",
    "remove_rim",
    "residual_volume_ml",
    "signal_to_concentration",
    "tofts",
    "vertebral_heights",
]
