# Set-up, tests, quickstart and benchmarks. Every target uses the virtual environment in .venv/.
PY := .venv/bin/python
STAMP := .venv/.hqod-setup-done
export OMP_NUM_THREADS ?= 2

.PHONY: setup test test-d2main test-slow quickstart quickstart-qat bench bench-hqod bench-quick bench-ablation clean-cache

setup: $(STAMP)

# Re-run only when the requirements or setup.py change; each step is idempotent.
$(STAMP): requirements.txt setup.py tools/install_detectron2.py
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade "pip<26"
	$(PY) -m pip install -q -r requirements.txt
	$(PY) tools/install_detectron2.py
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The fast suite (under 10 minutes on 2 cores).
test: setup
	$(PY) -m pytest -q -m "not slow" tests

# Current official Detectron2: its Python sources lie in shared/ beside the repository. They are unpacked into
# .cache/ once per tarball (the stamp is named after it, so a new tarball is unpacked afresh).
D2MAIN_SRC := ../shared/detectron2-main
D2MAIN := .cache/detectron2-main
D2MAIN_TARBALL := $(firstword $(wildcard $(D2MAIN_SRC)/detectron2-*.tar.gz))
D2MAIN_STAMP := $(D2MAIN)/.unpacked-$(notdir $(D2MAIN_TARBALL))

$(D2MAIN_STAMP): $(D2MAIN_TARBALL)
	@test -n "$(D2MAIN_TARBALL)" -a -f $(D2MAIN_SRC)/unpack.sh || { echo "error: no detectron2-*.tar.gz and\
	 unpack.sh in $(D2MAIN_SRC); put the shared/ folder beside this repository" >&2; exit 1; }
	rm -rf $(D2MAIN)
	bash $(D2MAIN_SRC)/unpack.sh $(D2MAIN) >/dev/null
	touch $@

# The fast suite under current Detectron2, first on PYTHONPATH (the suite stops at once if another one is imported).
test-d2main: $(D2MAIN_STAMP) setup
	PYTHONPATH="$(CURDIR)/$(D2MAIN)$${PYTHONPATH:+:$$PYTHONPATH}" \
	$(PY) -m pytest -q -m "not slow" --detectron2-from $(D2MAIN)/detectron2 tests

# End-to-end runs of train_net.py (FP -> QAT -> eval, 2 CPU workers, kill-and-resume).
test-slow: setup
	$(PY) -m pytest -q -m slow tests

QUICKSTART := configs/quickstart_retinanet_mnv2_shapes.yaml
QUICKSTART_OUT := output/quickstart_retinanet_mnv2_shapes
QUICKSTART_QAT := configs/shapes/retinanet_MNV2_lsq_hqod_w4a4.yaml

# Full-precision MobileNetV2-FPN RetinaNet on the built-in shapes set; prints COCO AP at the end.
quickstart: setup
	$(PY) train_net.py --config-file $(QUICKSTART)

# FP (reused when already trained) -> LSQ + HQOD W4A4 QAT from it; FP and 4-bit AP and harmony side by side.
quickstart-qat: setup
	test -f $(QUICKSTART_OUT)/model_final.pth || $(PY) train_net.py --config-file $(QUICKSTART)
	$(PY) train_net.py --config-file $(QUICKSTART_QAT)
	$(PY) tools/compare_runs.py $(QUICKSTART_OUT) output/shapes/retinanet_MNV2_lsq_hqod_w4a4

# Does HQOD help, with QAT that has converged? FP vs LSQ vs LSQ + HQOD at W4A4 and W2A2 with the recipe chosen on
# val (tools/bench/plan.py CONVERGED: as long as FP, per-channel, depthwise convs at 8 bits), RetinaNet and FCOS on
# shapes, 3 seeds, every run evaluated on val and test (about 2 hours of wall time on 2 cores, 3.6 hours of summed
# run time); results (test; val kept in the JSON), plots and report in benchmarks/, runs in output/bench/. Resumable.
bench: setup
	$(PY) tools/benchmark_hqod.py --mode full --jobs 2

# The whole HQOD measurement: the converged recipe on shapes and deepforest, RetinaNet and FCOS, LSQ W4A4 / W2A2 and
# TQT W4A4 each with and without HQOD, 5 seeds (about 20 hours on 2 cores, estimated from per-run times; resumable,
# reuses `bench`'s runs, and with --reuse-records the runs recorded in benchmarks/ when output/ is gone, so it can be
# spread over several sessions).
bench-hqod: setup
	$(PY) tools/benchmark_hqod.py --mode hqod --jobs 2 --reuse-records

# MODEL.HQOD.NORMALIZER "detector" vs "num_pos" for LSQ + HQOD W4A4 on shapes, every dense detector, 3 seeds, short
# QAT; the "detector" runs of RetinaNet seeds 1 and 2 are those of `bench-quick`.
bench-ablation: setup
	$(PY) tools/benchmark_hqod.py --mode ablation

# The smoke bench: the first, short QAT (150 iterations, per-tensor), RetinaNet on shapes, LSQ only, 2 seeds
# (11 runs), about 12 minutes on 2 cores.
bench-quick: setup
	$(PY) tools/benchmark_hqod.py --mode quick
