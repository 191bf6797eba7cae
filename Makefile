# CRAV follow-up pipeline: `make demo`, `make test`, `make lint`.
# The virtual environment lives in .venv; `pip install -e '.[dev]'` reruns only when
# pyproject.toml changes (stamp file .venv/.installed).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SAMPLE := sample_dicom
DEMO   := out/demo

.PHONY: demo test lint venv clean-demo

venv: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

# The sample cohort is committed; regenerate it only when it is missing.
$(SAMPLE)/treatments.csv: | $(STAMP)
	$(BIN)/crav phantom --sample --out $(SAMPLE)

# `crav run` exits 1 when the run finished with problems to look at (the sample holds
# deliberately broken files): still show where the results are; fail on anything worse.
demo: $(STAMP) $(SAMPLE)/treatments.csv
	@status=0; $(BIN)/crav run --input $(SAMPLE) --output $(DEMO) --quiet-period 0 || status=$$?; \
	if [ $$status -gt 1 ]; then exit $$status; fi; \
	echo ""; \
	echo "Results in $(DEMO)/:"; \
	echo "  per lesion:      $(DEMO)/lesions.csv"; \
	echo "  per visit:       $(DEMO)/measurements.csv"; \
	echo "  cohort table:    $(DEMO)/cohort_summary.md"; \
	echo "  per patient:     $(DEMO)/patients/<patient_id>/report.html (verdicts, plots, overlays, provenance)"; \
	echo "  per visit:       $(DEMO)/patients/<patient_id>/<lesion_id>/<visit>/ (NIfTI masks, overlay, seg.dcm, sr.dcm)"; \
	echo "  QA review page:  $(BIN)/crav qa --output $(DEMO)   (then open http://127.0.0.1:8765/)"; \
	echo "  every input file: $(DEMO)/files.csv (used, ignored or quarantined, with the reason)"; \
	if [ $$status -eq 1 ]; then echo "The run finished with problems: see the reasons in the files above."; fi

# pytest exit code 5 (no tests collected) is a failure like any other non-zero code.
test: $(STAMP)
	@status=0; $(BIN)/python -m pytest -q || status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; \
	exit $$status

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

clean-demo:
	rm -rf $(DEMO)
