"""Response assessment: pure functions from arrays, spacing and numbers to measurements and verdicts.

Modules: :mod:`.enhancement` (relative enhancement, enhancing mask, rim removal, residual and
new-nodule volumes), :mod:`.dce` (Parker AIF, Tofts model, signal to concentration,
curve descriptors), :mod:`.dce_fit` (vectorised Tofts fit), :mod:`.dce_region` (Ktrans of a region from its DCE
signal), :mod:`.height` (vertebral heights, height loss, Genant grade), :mod:`.sins` (the imaging
components of SINS), :mod:`.classify` (per-lesion verdict) and :mod:`.cohort` (study table,
agreement with a reference read, Cohen's kappa).

Nothing here reads or writes files, imports pydicom, prefect, ``pipeline.ingest`` or
``pipeline.outputs``.
"""

from pipeline.response.classify import Verdict, VisitSummary, classify_lesion
from pipeline.response.cohort import agreement, cohens_kappa, cohort_markdown, cohort_table
from pipeline.response.dce import (
    CurveDescriptors,
    curve_descriptors,
    parker_aif,
    signal_to_concentration,
    tofts,
)
from pipeline.response.dce_fit import FitResult, fit_tofts
from pipeline.response.dce_region import RegionTofts, region_tofts
from pipeline.response.enhancement import (
    EnhancementMaps,
    enhancing_mask,
    half_maximum_boundary,
    new_nodules,
    relative_enhancement,
    remove_rim,
    residual_mask,
    residual_volume_ml,
)
from pipeline.response.height import Heights, genant_grade, height_loss_pct, vertebral_heights
from pipeline.response.sins import PartialSins, partial_sins

__all__ = [
    "CurveDescriptors",
    "EnhancementMaps",
    "FitResult",
    "Heights",
    "PartialSins",
    "RegionTofts",
    "Verdict",
    "VisitSummary",
    "agreement",
    "classify_lesion",
    "cohens_kappa",
    "cohort_markdown",
    "cohort_table",
    "curve_descriptors",
    "enhancing_mask",
    "fit_tofts",
    "genant_grade",
    "half_maximum_boundary",
    "height_loss_pct",
    "new_nodules",
    "parker_aif",
    "partial_sins",
    "region_tofts",
    "relative_enhancement",
    "remove_rim",
    "residual_mask",
    "residual_volume_ml",
    "signal_to_concentration",
    "tofts",
    "vertebral_heights",
]
