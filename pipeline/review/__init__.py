"""QA review of the results: verdicts stored in the catalog, and the review page (``crav qa``).

:mod:`pipeline.review.store` (no web dependency; the run imports it) keeps the verdicts and
corrections and writes ``measurements.csv``'s ``qa_status``; :mod:`pipeline.review.server` serves
the page (Starlette, Jinja2, uvicorn), with its data assembled by :mod:`pipeline.review.pages`.
"""

from pipeline.review.store import (
    Corrections,
    Review,
    ReviewStore,
    apply_reviews,
    lesion_result_key,
)

__all__ = ["Corrections", "Review", "ReviewStore", "apply_reviews", "lesion_result_key"]
