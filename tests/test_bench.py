"""The benchmark harness (tools/bench): the plan pairs every baseline with its HQOD variant on the same calibrated
checkpoint and evaluates every run on val and test, the quick runs are runs of the full bench, results are
summarised per seed and split (the report shows the report split), resumed runs are recognised, failures are
reported, and the data it writes is what it says."""
import json
import math
import os
import pathlib
import sys
import time
import types

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from hqod.evaluation import ground_truth_by_image

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from bench import plots, report, runs, stats, store  # noqa: E402
from bench.data import write_eval_subset, write_train_crops  # noqa: E402
from bench.plan import (DATA, FP_LONGER_SETTING, MODES, NORMALIZER_SETTINGS, QAT_SETTINGS, TQT_SETTINGS,  # noqa: E402
                        Run, baseline_of, build_plan, pairs, select)
from hqod.modeling.detectors import DENSE_DETECTORS  # noqa: E402
from bench.summary import groups, paired, summarize  # noqa: E402

FAKE_SETS = {"shapes": {"entries": ["bench_v:/v.json:/img", "bench_s:/s.json:/simg"], "val": "bench_v",
                        "test": "bench_s", "train": None},
             "deepforest": {"entries": ["bench_d:/d.json:/img", "bench_e:/e.json:/eimg", "bench_t:/t.json:/timg"],
                            "val": "bench_d", "test": "bench_e", "train": "bench_t"}}
SPLITS = (("val", "bench_v"), ("test", "bench_s"))


def _opts(run) -> dict:
    return dict(zip(run.opts[::2], run.opts[1::2]))


EVERY_DETECTOR = select(MODES["hqod"], detectors=list(DENSE_DETECTORS))


def test_every_qat_run_starts_from_its_calibration_of_the_fp_checkpoint():
    for mode in (EVERY_DETECTOR, select(MODES["quick"], detectors=list(DENSE_DETECTORS))):
        plan = build_plan(mode, "out", "cpu", FAKE_SETS, tqt=True)
        _check_starts(plan, mode.recipe.name)
    assert {run.detector for run in plan} == set(DENSE_DETECTORS) == {"retinanet", "fcos", "atss"}
    qat = [run for run in build_plan(EVERY_DETECTOR, "out", "cpu", FAKE_SETS)
           if run.setting in QAT_SETTINGS + TQT_SETTINGS]
    assert len(qat) == 2 * 3 * 5 * 6  # data sets x detectors x seeds x settings (hqod mode: TQT included)


def _check_starts(plan, recipe):
    by_dir = {run.output_dir: (i, run) for i, run in enumerate(plan)}
    for i, run in enumerate(plan):
        if run.setting not in QAT_SETTINGS + TQT_SETTINGS:
            continue
        calib_index, calib = by_dir[run.weights.rsplit("/", 1)[0]]
        assert calib.setting == f"calib_{baseline_of(run.setting)}" and calib_index < i
        assert f"/{recipe}/" in run.output_dir and f"/{recipe}/" in calib.output_dir
        assert (calib.dataset, calib.detector) == (run.dataset, run.detector) and not calib.evaluates
        fp_index, fp = by_dir[calib.weights.rsplit("/", 1)[0]]
        assert fp.is_fp and fp_index < calib_index and (fp.dataset, fp.detector) == (run.dataset, run.detector)
        assert os.path.isfile(ROOT / run.config), run.config
        assert os.path.isfile(ROOT / fp.config), fp.config


def test_hqod_run_differs_from_its_baseline_only_in_config_and_output():
    plan = build_plan(EVERY_DETECTOR, "out", "cpu", FAKE_SETS)
    index = {(r.dataset, r.detector, r.setting, r.seed): r for r in plan}
    checked = 0
    for (dataset, detector, setting, seed), hqod in index.items():
        if "hqod" not in setting:
            continue
        base = index[dataset, detector, baseline_of(setting), seed]
        a, b = _opts(base), _opts(hqod)
        assert a.pop("OUTPUT_DIR") != b.pop("OUTPUT_DIR")
        assert a == b and base.max_iter == hqod.max_iter
        algorithm = setting.split("_")[0]
        assert hqod.config == base.config.replace(f"_{algorithm}_", f"_{algorithm}_hqod_")
        checked += 1
    assert checked == 2 * 3 * 5 * 3
    assert pairs(QAT_SETTINGS + TQT_SETTINGS) == [("lsq_w4a4", "lsq_hqod_w4a4"), ("lsq_w2a2", "lsq_hqod_w2a2"),
                                                  ("tqt_w4a4", "tqt_hqod_w4a4")]


def test_normaliser_ablation_changes_only_the_normaliser_from_the_same_calibrated_start():
    plan = build_plan(MODES["ablation"], "out", "cpu", {"shapes": FAKE_SETS["shapes"]})
    short = select(MODES["quick"], detectors=list(DENSE_DETECTORS), seeds=3)
    full = {run.key: run for run in build_plan(short, "out", "cpu", FAKE_SETS)}
    index = {(r.detector, r.setting, r.seed): r for r in plan}
    for detector in DENSE_DETECTORS:
        for seed in MODES["ablation"].seeds:
            base, numpos = index[detector, "lsq_hqod_w4a4", seed], index[detector, "lsq_hqod_w4a4_numpos", seed]
            assert full[base.key] == base  # the detector-normaliser arm is the short recipe's LSQ + HQOD run
            a, b = _opts(base), _opts(numpos)
            assert a.pop("OUTPUT_DIR") != b.pop("OUTPUT_DIR")
            assert b.pop("MODEL.HQOD.NORMALIZER") == "num_pos" and a == b and base.config == numpos.config
            assert a["MODEL.WEIGHTS"].endswith(f"/shapes/{detector}/short/calib_lsq_w4a4/model_final.pth")
    assert pairs(NORMALIZER_SETTINGS) == [("lsq_hqod_w4a4", "lsq_hqod_w4a4_numpos")]


def test_a_selection_is_a_subset_of_the_mode():
    atss = select(MODES["full"], detectors=["atss"], settings=["lsq_w4a4", "lsq_hqod_w4a4"])
    full = {run.key: run for run in build_plan(EVERY_DETECTOR, "out", "cpu", FAKE_SETS)}
    plan = build_plan(atss, "out", "cpu", FAKE_SETS)
    assert {r.detector for r in plan} == {"atss"} and all(full[r.key] == r for r in plan)
    assert {r.setting for r in plan} == {"fp32", "fp32_longer", "calib_lsq_w4a4", "lsq_w4a4", "lsq_hqod_w4a4"}
    with pytest.raises(ValueError, match="unknown detector yolo: use retinanet, fcos, atss"):
        select(MODES["full"], detectors=["yolo"])


def test_every_evaluating_run_is_evaluated_on_val_and_test_and_seeds_are_1_to_n():
    plan = build_plan(select(MODES["full"], seeds=5), "out", "cpu", FAKE_SETS, tqt=True)
    for run in plan:
        opts = _opts(run)
        assert opts["DATASETS.COCO_FORMAT"] == repr(FAKE_SETS[run.dataset]["entries"])
        if run.evaluates:
            sets = FAKE_SETS[run.dataset]
            assert opts["DATASETS.TEST"] == repr((sets["val"], sets["test"]))
            assert run.splits == (("val", sets["val"]), ("test", sets["test"]))
        else:
            assert run.setting.startswith("calib_") and opts["DATASETS.TEST"] == "()"
    qat = [r for r in plan if r.setting in QAT_SETTINGS + TQT_SETTINGS]
    assert {r.seed for r in qat} == {1, 2, 3, 4, 5} and len(qat) == 2 * 5 * 6  # detectors x seeds x settings
    assert select(MODES["quick"]).seeds == (1, 2)
    with pytest.raises(ValueError, match="--seeds 0: give 1 or more seeds"):
        select(MODES["quick"], seeds=0)


def test_dry_run_prints_commands_on_both_splits_for_n_seeds(tmp_path, monkeypatch, capsys):
    import benchmark_hqod
    monkeypatch.setattr(benchmark_hqod.signal, "signal", lambda *args: None)  # the test process keeps its handlers
    monkeypatch.chdir(tmp_path)  # main() changes into the repository
    monkeypatch.setattr(sys, "argv", ["benchmark_hqod.py", "--mode", "quick", "--seeds", "5", "--settings",
                                      "lsq_w4a4", "--runs-dir", str(tmp_path), "--dry-run"])
    benchmark_hqod.main()
    commands = capsys.readouterr().out.splitlines()
    qat = [c for c in commands if "retinanet_MNV2_lsq_w4a4.yaml" in c and "calib_" not in c.split("OUTPUT_DIR")[1]]
    assert [c.rsplit("/seed", 1)[1] for c in qat] == ["1", "2", "3", "4", "5"]
    for command in [commands[0]] + qat:
        assert "DATASETS.TEST '('\"'\"'bench_hqod_shapes_val'\"'\"', '\"'\"'bench_hqod_shapes_test'\"'\"')'" in command
    test_json = json.loads((tmp_path / "data" / "bench_hqod_shapes_test.json").read_text())
    assert len(test_json["images"]) == DATA["shapes"].test_images == 200


def test_full_runs_are_runs_of_the_hqod_bench_and_every_recipe_shares_the_fp_runs():
    hqod = {run.key: run for run in build_plan(MODES["hqod"], "out", "cpu", FAKE_SETS)}
    full = build_plan(MODES["full"], "out", "cpu", FAKE_SETS)
    assert full and all(hqod[run.key] == run for run in full)
    assert len(MODES["full"].seeds) >= 3 and len(MODES["hqod"].seeds) >= 5
    assert set(TQT_SETTINGS) <= set(MODES["hqod"].settings) and set(MODES["hqod"].datasets) == set(DATA)
    quick = build_plan(MODES["quick"], "out", "cpu", {"shapes": FAKE_SETS["shapes"]})
    assert [r for r in quick if r.is_fp] == [r for r in full if r.is_fp and r.detector == "retinanet"]
    assert not {r.output_dir for r in quick if not r.is_fp} & {r.output_dir for r in full}
    deepforest_train = [r for r in hqod.values() if r.dataset == "deepforest" and r.evaluates]
    assert all(_opts(r)["DATASETS.TRAIN"] == "('bench_t',)" for r in deepforest_train)
    assert all(_opts(r)["SOLVER.MAX_ITER"] == str(DATA["deepforest"].fp_iters) for r in deepforest_train
               if r.is_fp or "w4a4" in r.setting)
    assert all(_opts(r)["SOLVER.MAX_ITER"] == str(DATA["shapes"].short_qat_iters) for r in quick if r.evaluates
               and not r.is_fp)


def test_converged_recipe_trains_as_long_as_fp_at_its_learning_rates_with_its_quantizer_keys():
    plan = build_plan(MODES["hqod"], "out", "cpu", FAKE_SETS)
    recipe_keys = {"MODEL.QUANT.PER_CHANNEL": "True", "MODEL.QUANT.DEPTHWISE_BITS": "8",
                   "MODEL.QUANT.FREEZE_FROZEN_QUANTIZERS": "True"}
    fp_lr = {("shapes", "retinanet"): 0.005, ("shapes", "fcos"): 0.01,  # the FP configs' learning rates
             ("deepforest", "retinanet"): DATA["deepforest"].fp_lr, ("deepforest", "fcos"): DATA["deepforest"].fp_lr}
    checked, longer = 0, []
    for run in plan:
        opts = _opts(run)
        if run.is_fp:
            assert not set(recipe_keys) & set(opts)
            continue
        if run.setting == FP_LONGER_SETTING:  # the control: FP trained on like a W4A4 QAT run, no quantizers
            longer.append(run)
            fp_dir = f"out/{run.dataset}/{run.detector}/fp32"
            own = [r for r in plan if (r.dataset, r.detector) == (run.dataset, run.detector)]
            assert not set(recipe_keys) & set(opts) and run.config == own[0].config and own[0].is_fp
            assert own[-1] == run  # last of its detector's runs: the QAT comparisons come first
            assert opts["MODEL.WEIGHTS"] == f"{fp_dir}/model_final.pth" and run.evaluates
            assert opts["SOLVER.MAX_ITER"] == str(DATA[run.dataset].fp_iters)
            assert float(opts["SOLVER.BASE_LR"]) == pytest.approx(0.8 * fp_lr[run.dataset, run.detector])
            continue
        assert {k: opts[k] for k in recipe_keys} == recipe_keys  # calibration runs too: the quantizers' shape
        if not run.evaluates:
            assert opts["SOLVER.BASE_LR"] == "0.0" and "MODEL.QUANT.SCHEDULE.BITS" not in opts
            continue
        two_bit = run.setting.endswith("w2a2")
        iters = DATA[run.dataset].fp_iters
        assert opts["SOLVER.MAX_ITER"] == str(iters) and run.max_iter == iters
        assert opts["SOLVER.STEPS"] == str((int(iters * 0.75), int(iters * 0.9)))
        lr = 0.008 if two_bit else 0.8 * fp_lr[run.dataset, run.detector]  # W2A2: one rate for every detector
        assert float(opts["SOLVER.BASE_LR"]) == pytest.approx(lr)
        if two_bit:
            assert opts["MODEL.QUANT.SCHEDULE.BITS"] == repr(["0:4:4", f"{iters // 4}:3:3", f"{iters // 2}:2:2"])
        else:
            assert "MODEL.QUANT.SCHEDULE.BITS" not in opts
        checked += 1
    assert checked == 2 * 2 * 5 * 6 and len(longer) == 2 * 2
    short = [r for r in build_plan(MODES["quick"], "out", "cpu", FAKE_SETS) if not r.is_fp]
    assert short and FP_LONGER_SETTING not in {r.setting for r in short}
    assert short and not any(set(recipe_keys) & set(_opts(r)) or "MODEL.QUANT.SCHEDULE.BITS" in _opts(r)
                             for r in short)
    assert all(_opts(r)["SOLVER.BASE_LR"] == "0.0" for r in short if not r.evaluates)
    assert not any("SOLVER.BASE_LR" in _opts(r) for r in short if r.evaluates)  # the QAT configs' own


def _record(setting, seed, ap, status="ok", dataset="shapes", detector="retinanet"):
    """A run record with test AP ``ap`` and val AP ``ap / 2`` (so val differences are half the test ones)."""
    metrics = {split: {"bbox/AP": a, "bbox/AP50": a + 20, "bbox/AP75": a - 5, "harmony/pearson": a / 100}
               for split, a in (("val", (ap or 0) / 2), ("test", ap))} if ap else {}
    return {"key": f"{dataset}/{detector}/{setting}/seed{seed}", "dataset": dataset, "detector": detector,
            "setting": setting, "seed": seed, "status": status, "metrics": metrics,
            "splits": {"val": "bench_v", "test": "bench_s"}, "wall_s": 10.0 + seed,
            **({"error": "boom"} if status != "ok" else {})}


def _records():
    return ([_record("fp32", 0, 70.0)] + [_record("lsq_w4a4", s, ap) for s, ap in ((1, 50.0), (2, 52.0), (3, 54.0))]
            + [_record("lsq_hqod_w4a4", s, ap) for s, ap in ((1, 51.0), (2, 51.0), (3, 58.0))]
            + [_record("lsq_hqod_w4a4", 4, None, status="failed"), _record("lsq_w4a4", 4, 49.0)])


def test_paired_difference_is_taken_seed_by_seed_over_seeds_where_both_succeeded():
    (entry,) = paired(_records(), ("lsq_w4a4", "lsq_hqod_w4a4"), "test")
    assert entry["seeds"] == [1, 2, 3]
    ap = entry["bbox/AP"]
    assert ap["per_seed"] == [1.0, -1.0, 4.0] and ap["positive"] == 2 and ap["n"] == 3
    assert ap["mean"] == pytest.approx(4 / 3) and ap["std"] == pytest.approx(np.std([1, -1, 4], ddof=1))
    assert entry["harmony/pearson"]["per_seed"] == pytest.approx([0.01, -0.01, 0.04])
    # 4/3 ± t(0.975, 2) * s / sqrt(3), t(0.975, 2) = 4.3027, s = 2.5166
    assert ap["inference"]["t_ci95"] == pytest.approx([-4.9183, 7.5849], abs=1e-3)
    assert ap["inference"]["sign_test"] == {"positive": 2, "negative": 1, "ties": 0, "p": 1.0}
    (val,) = paired(_records(), ("lsq_w4a4", "lsq_hqod_w4a4"), "val")
    assert val["bbox/AP"]["per_seed"] == [0.5, -0.5, 2.0]


def test_summary_pools_every_data_set_and_detector_of_a_comparison_per_split():
    records = _records() + [_record(s, seed, ap, detector="fcos") for s, seed, ap in (
        ("lsq_w4a4", 1, 60.0), ("lsq_hqod_w4a4", 1, 62.0), ("lsq_w4a4", 2, 61.0), ("lsq_hqod_w4a4", 2, 64.0))]
    summary = summarize(records, ("lsq_w4a4", "lsq_hqod_w4a4"))
    assert set(summary) == {"val", "test"}
    (pooled,) = summary["test"]["pooled"]
    assert pooled["combos"] == ["shapes/fcos", "shapes/retinanet"]
    assert pooled["bbox/AP"]["inference"]["n"] == 5 and pooled["bbox/AP"]["mean"] == pytest.approx(9 / 5)
    assert pooled["bbox/AP"]["inference"]["sign_test"]["positive"] == 4
    assert summary["val"]["pooled"][0]["bbox/AP"]["mean"] == pytest.approx(9 / 10)
    assert summary["test"]["groups"]["shapes/fcos/lsq_w4a4"]["bbox/AP"]["mean"] == 60.5


def test_groups_report_spread_over_successful_seeds_and_the_failures():
    summary = groups(_records(), "test")
    hqod = summary["shapes/retinanet/lsq_hqod_w4a4"]
    assert hqod["seeds"] == [1, 2, 3] and hqod["failed"] == {"shapes/retinanet/lsq_hqod_w4a4/seed4": "boom"}
    assert hqod["bbox/AP"]["mean"] == pytest.approx(160 / 3) and hqod["bbox/AP"]["min"] == 51.0
    assert summary["shapes/retinanet/fp32"]["bbox/AP"] == {"n": 1, "mean": 70.0, "std": 0.0, "min": 70.0,
                                                          "max": 70.0}
    assert hqod["timing"]["wall_s"]["n"] == 4  # failed runs took time too
    assert groups(_records(), "val")["shapes/retinanet/lsq_hqod_w4a4"]["bbox/AP"]["mean"] == pytest.approx(80 / 3)


def _results(records, report_split="test"):
    return {"mode": "quick", "command": "python tools/benchmark_hqod.py", "started": "now", "wall_s": 60.0,
            "runs_wall_s": 60.0, "json": "benchmarks/results_quick.json", "report_split": report_split,
            "host": {"cpus": 2, "torch": "x", "device": "cpu", "load_before": [0], "load_after": [0]},
            "runs": {r["key"]: r for r in records}, "summary": summarize(records, ("lsq_w4a4", "lsq_hqod_w4a4"))}


def test_report_shows_the_test_split_with_val_beside_it_paired_statistics_and_failed_runs():
    text = report.render(_results(_records()), ["quick_ap_vs_bits.png"])
    assert "**the tables and figures show the test split**" in text
    assert "| shapes / retinanet | LSQ+HQOD W4A4 | 3 (1 failed) | 53.3 ± 4.0 |" in text
    assert text.count("| 26.7 ± 2.0 |") == 1  # its val AP, in the last column
    assert "| shapes / retinanet | LSQ+HQOD W4A4 − LSQ W4A4 | 1.0, -1.0, 4.0 | 1.3 ± 2.5 |" in text
    assert "| 2 / 3 | 0.7 ± 1.3 |" in text  # seeds with ΔAP > 0 on test, then ΔAP on val
    assert ("| shapes / retinanet | LSQ+HQOD W4A4 − LSQ W4A4 | 3 | +1.33 | [-4.92, +7.58] | [-1.00, +4.00] | "
            "2 / 1 / 0, p = 1 |") in text
    assert "| pooled (1 data set / detector) | LSQ+HQOD W4A4 − LSQ W4A4 | 3 | +1.33 |" in text
    val = report.render(_results(_records(), report_split="val"), [])
    assert "| shapes / retinanet | LSQ+HQOD W4A4 | 3 (1 failed) | 26.7 ± 2.0 |" in val and "AP (test)" in val
    assert "- `shapes/retinanet/lsq_hqod_w4a4/seed4`: boom" in text
    assert "![quick_ap_vs_bits.png](quick_ap_vs_bits.png)" in text
    assert plots.label("calib_tqt_hqod_w4a4") == "calibration TQT+HQOD W4A4"
    assert plots.label("lsq_hqod_w4a4_numpos") == "LSQ+HQOD W4A4 numpos"


def test_results_name_the_cpu_and_its_aten_capability_and_the_report_shows_them():
    import benchmark_hqod
    host = benchmark_hqod.host_info("cpu")  # deepforest FP training differs between CPUs: records say which made them
    assert host["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    names = [line.split(":", 1)[1].strip() for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("model name")] if os.path.exists("/proc/cpuinfo") else []
    assert host["cpu"] and (not names or host["cpu"].startswith(names[0] + " (family "))
    results = _results(_records())
    results["host"].update(cpu=host["cpu"], cpu_capability=host["cpu_capability"])
    assert f"2 CPU(s) ({host['cpu']}, ATen {host['cpu_capability']}), torch x" in report.render(results, [])
    assert "2 CPU(s), torch x" in report.render(_results(_records()), [])  # older results name no CPU


def test_results_json_is_strict_and_written_whole(tmp_path):
    path = tmp_path / "sub" / "results.json"
    store.save(path, {"a": float("nan"), "b": [1.5, float("inf")], "c": {"d": (2, -math.inf)}})
    assert json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict {c}")) == {
        "a": None, "b": [1.5, None], "c": {"d": [2, None]}}
    assert os.listdir(path.parent) == ["results.json"]
    assert store.load(tmp_path / "missing.json") == {}


def _finished_run(tmp_path, max_iter=20, splits=SPLITS):
    """A finished QAT run evaluated on ``splits`` (as Detectron2 stores several test sets: ``<set>/bbox/AP``)."""
    run = Run("shapes", "retinanet", "lsq_w4a4", 1, "configs/shapes/retinanet_MNV2_lsq_w4a4.yaml",
              ("MODEL.WEIGHTS", str(tmp_path / "calib.pth"), "OUTPUT_DIR", str(tmp_path / "run")),
              str(tmp_path / "run"), max_iter, SPLITS)
    (tmp_path / "calib.pth").write_text("weights")
    out = pathlib.Path(run.output_dir)
    out.mkdir()
    rows = [{"iteration": i, "time": 0.5 + i / 100, "total_loss": 1.0} for i in range(max_iter)]
    final = {"iteration": max_iter - 1}
    for offset, (_, name) in enumerate(splits):
        final.update({f"{name}/bbox/AP": 42.0 + offset, f"{name}/bbox/AP50": 60.0, f"{name}/harmony/pearson": 0.8})
    rows.append(final)
    (out / "metrics.json").write_text("\n".join(map(json.dumps, rows)) + "\n")
    (out / runs.COMMAND_FILE).write_text(json.dumps(runs.command(run)[1:]))
    return run


def test_a_run_is_reused_only_when_finished_by_the_same_command_after_its_weights(tmp_path):
    run = _finished_run(tmp_path)
    assert runs.is_complete(run)
    changed = Run(*[getattr(run, f) for f in ("dataset", "detector", "setting", "seed", "config")],
                  run.opts + ("SEED", "7"), run.output_dir, run.max_iter)
    assert not runs.is_complete(changed)
    longer = Run(*[getattr(run, f) for f in ("dataset", "detector", "setting", "seed", "config", "opts",
                                             "output_dir")], run.max_iter + 5)
    assert not runs.is_complete(longer)  # its last evaluation is not after the final iteration
    done = pathlib.Path(run.output_dir) / runs.COMMAND_FILE
    os.utime(tmp_path / "calib.pth", (done.stat().st_mtime + 10,) * 2)
    assert not runs.is_complete(run)  # the calibration it started from was redone


@pytest.mark.parametrize("earlier_config, earlier_ap, kept", [({}, 42.0, True), ({"max_iter": 1200}, 42.0, False),
                                                             ({}, 41.0, False)])
def test_a_reused_run_keeps_the_wall_time_recorded_for_the_run_that_made_its_folder_only(
        tmp_path, earlier_config, earlier_ap, kept):
    import benchmark_hqod
    run = _finished_run(tmp_path)  # no config.yaml: its record's settings are {}; test AP 43, val AP 42
    # as recorded when it ran; when a run with other settings (a shorter FP schedule) had its folder; or when the
    # same command made another model (on another machine)
    made = runs.describe(run)
    earlier = dict(made, wall_s=300.0, config=earlier_config,
                   metrics=dict(made["metrics"], val=dict(made["metrics"]["val"], **{"bbox/AP": earlier_ap})))
    results = {"runs": [{run.key: earlier}], "report_split": "test"}
    benchmark_hqod.run_all([run], results, tmp_path / "r.json", 600, jobs=1)
    assert results["runs"][run.key]["reused"] and results["runs"][run.key].get("wall_s") == (300.0 if kept else None)
    # the maker's record is found beside a later file's record of another model made by the same command
    results = {"runs": [{run.key: dict(made, wall_s=300.0)}, {run.key: dict(earlier, wall_s=500.0)}],
               "report_split": "test"}
    benchmark_hqod.run_all([run], results, tmp_path / "r.json", 600, jobs=1)
    assert results["runs"][run.key]["wall_s"] == (500.0 if kept else 300.0)


def test_a_run_recorded_as_failed_for_no_detections_keeps_its_wall_time_when_scored_ap_zero(tmp_path):
    """Records from before the AP-0 rule hold NaN for that run: they are scored by today's rule to find its maker."""
    import benchmark_hqod
    run = _finished_run(tmp_path)
    _final_evaluation(run, bbox_AP=float("nan"), harmony_num_detections=0.0)
    made = runs.describe(run)
    nan = {"test": dict(made["metrics"]["test"], **{"bbox/AP": float("nan")})}
    then = dict(made, metrics=dict(made["metrics"], **nan), status="failed", error="no detections", wall_s=624.0)
    results = {"runs": [{run.key: then}], "report_split": "test"}
    benchmark_hqod.run_all([run], results, tmp_path / "r.json", 600, jobs=1)
    record = results["runs"][run.key]
    assert record["status"] == "ok" and record["metrics"]["test"]["bbox/AP"] == 0.0 and record["wall_s"] == 624.0
    flat = {"key": run.key, "status": "ok", "metrics": {"bbox/AP": 40.0}}  # a record from before the test split
    assert runs.scored(flat) == flat


def test_a_run_evaluated_on_val_only_is_run_again(tmp_path):
    run = _finished_run(tmp_path, splits=SPLITS[:1])  # as the bench evaluated before the test split
    assert runs.final_evaluation(run) is None and not runs.is_complete(run)


def test_describe_reads_final_metrics_and_timings(tmp_path):
    run = _finished_run(tmp_path)
    with open(pathlib.Path(run.output_dir) / "metrics.json", "a") as f:  # as QuantCalibration's scalars land there
        f.write(json.dumps({"iteration": 0, "quant/calib_images": 16.0, "quant/calib_seconds": 6.5}) + "\n")
    pathlib.Path(run.output_dir, "log.txt").write_text(
        "[11/27 10:00:00] d2.engine.train_loop INFO: Starting training from iteration 0\n"
        "[11/27 10:00:07] hqod.quantization.calibrate INFO: Calibrated 40 quantizers on 16 images\n"
        "[11/27 10:01:07] d2.evaluation.evaluator INFO: Start inference on 100 batches\n"
        "[11/27 10:01:30] d2.evaluation.evaluator INFO: Total inference time\n")
    record = runs.describe(run)
    assert record["status"] == "ok" and record["metrics"] == {
        "val": {"bbox/AP": 42.0, "bbox/AP50": 60.0, "harmony/pearson": 0.8},
        "test": {"bbox/AP": 43.0, "bbox/AP50": 60.0, "harmony/pearson": 0.8}}
    assert record["splits"] == {"val": "bench_v", "test": "bench_s"}
    assert record["s_per_iter"] == pytest.approx(0.5 + 9.5 / 100)
    assert (record["calib_s"], record["train_s"], record["eval_s"]) == (6.5, 60.5, 23.0)


def test_a_run_without_calibration_takes_no_calibration_time(tmp_path):
    run = _finished_run(tmp_path)
    pathlib.Path(run.output_dir, "log.txt").write_text(
        "[11/27 10:00:00] d2.engine.train_loop INFO: Starting training from iteration 0\n"
        "[11/27 10:01:07] d2.evaluation.evaluator INFO: Start inference on 100 batches\n"
        "[11/27 10:01:30] d2.evaluation.evaluator INFO: Total inference time\n")
    record = runs.describe(run)
    assert (record["calib_s"], record["train_s"], record["eval_s"]) == (0.0, 67.0, 23.0)


def _final_evaluation(run, **test_metrics):
    """Append a final evaluation with val AP 3 and the given test metrics (``harmony_num_detections=0``)."""
    with open(pathlib.Path(run.output_dir) / "metrics.json", "a") as f:
        f.write(json.dumps({"iteration": run.max_iter - 1, "bench_v/bbox/AP": 3.0, "bench_v/harmony/pearson": 0.1,
                            **{f"bench_s/{k.replace('_', '/', 1)}": v for k, v in test_metrics.items()}}) + "\n")


def test_a_run_without_detections_scores_ap_zero_there_and_stays_in_the_comparison(tmp_path):
    run = _finished_run(tmp_path)  # a collapse (no box above the score threshold) is a result, not a failed run
    _final_evaluation(run, bbox_AP=float("nan"), bbox_AP50=float("nan"), harmony_pearson=float("nan"),
                      harmony_num_detections=0.0)
    record = runs.describe(run)
    assert record["status"] == "ok" and record["no_detections"] == ["test"]
    assert record["metrics"]["test"]["bbox/AP"] == record["metrics"]["test"]["bbox/AP50"] == 0.0
    assert math.isnan(record["metrics"]["test"]["harmony/pearson"])  # undefined, left out of ΔPearson
    assert record["metrics"]["val"]["bbox/AP"] == 3.0  # val had detections: untouched


def test_a_nan_ap_with_detections_is_a_failure(tmp_path):
    run = _finished_run(tmp_path)
    _final_evaluation(run, bbox_AP=float("nan"), harmony_num_detections=12.0)
    record = runs.describe(run)
    assert record["status"] == "failed" and record["error"] == "AP is NaN on test although the model detected boxes"


def test_a_run_without_detections_counts_as_ap_zero_in_the_pairs_and_the_report():
    records = _records()
    records[-1] = _record("lsq_w4a4", 4, 49.0)
    records[-2] = dict(_record("lsq_hqod_w4a4", 4, 1.0), no_detections=["test"])
    records[-2]["metrics"]["test"].update({"bbox/AP": 0.0, "harmony/pearson": float("nan")})
    (entry,) = paired(records, ("lsq_w4a4", "lsq_hqod_w4a4"), "test")
    assert entry["seeds"] == [1, 2, 3, 4] and entry["bbox/AP"]["per_seed"][-1] == -49.0
    assert entry["harmony/pearson"]["n"] == 3  # no Pearson without detections
    text = report.render(_results(records), [])
    assert "| shapes / retinanet | LSQ+HQOD W4A4 | 4 (1 without detections: AP 0) | 40.0 ± 26.9 |" in text
    assert "- `shapes/retinanet/lsq_hqod_w4a4/seed4`: test" in text.split("## Runs without detections")[1]


def test_a_failing_train_net_run_is_recorded_with_its_error_line(tmp_path):
    run = Run("shapes", "retinanet", "lsq_w4a4", 1, str(tmp_path / "missing.yaml"),
              ("OUTPUT_DIR", str(tmp_path / "run")), str(tmp_path / "run"), 10)
    record = runs.execute(run, timeout_s=300, threads="1")
    assert record["status"] == "failed" and record["rc"] != 0
    assert "missing.yaml" in record["error"], record["error"]
    assert json.loads((tmp_path / "run" / runs.COMMAND_FILE).read_text()) == runs.command(run)[1:]
    assert not runs.is_complete(run)


def test_eval_subset_keeps_the_first_images_by_id_with_their_boxes(tmp_path):
    entry, name = write_eval_subset("hqod_shapes_test", 5, tmp_path)
    assert name == "bench_hqod_shapes_test"
    registered, json_file, image_root = entry.split(":")
    assert registered == name and image_root == MetadataCatalog.get("hqod_shapes_test").image_root
    full = json.loads(pathlib.Path(MetadataCatalog.get("hqod_shapes_test").json_file).read_text())
    subset = json.loads(pathlib.Path(json_file).read_text())
    first = sorted(img["id"] for img in full["images"])[:5]
    assert sorted(img["id"] for img in subset["images"]) == first
    expected = [a for a in full["annotations"] if a["image_id"] in first]
    assert len(subset["annotations"]) == len(expected) > 0
    gt = ground_truth_by_image(json_file)
    assert sorted(gt) == first and sum(len(boxes) for boxes, _ in gt.values()) == len(expected)
    with pytest.raises(ValueError, match="hqod_shapes_test has 200 images, the bench asks for the first 201"):
        write_eval_subset("hqod_shapes_test", 201, tmp_path)


def test_training_crops_cover_the_image_and_drop_crops_without_boxes(tmp_path):
    image = np.random.default_rng(0).integers(0, 255, (256, 600, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "tile.png"), image)
    name = "test_bench_one_class_train"
    boxes = [[10, 10, 40, 40], [560, 10, 590, 40]]  # in the first and the last crop only
    DatasetCatalog.register(name, lambda: [{"file_name": str(tmp_path / "tile.png"), "image_id": 0, "height": 256,
                                            "width": 600, "annotations": [
                                                {"bbox": b, "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0}
                                                for b in boxes]}])
    MetadataCatalog.get(name).thing_classes = ["tree"]
    try:
        entry, crops = write_train_crops(name, 256, tmp_path / "crops")
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    _, json_file, image_root = entry.split(":")
    coco = json.loads(pathlib.Path(json_file).read_text())
    assert sorted(img["file_name"] for img in coco["images"]) == ["tile_0_0.png", "tile_344_0.png"]
    by_file = {img["file_name"]: img["id"] for img in coco["images"]}
    bbox = {a["image_id"]: a["bbox"] for a in coco["annotations"]}
    assert bbox[by_file["tile_0_0.png"]] == [10, 10, 30, 30]  # COCO xywh
    assert bbox[by_file["tile_344_0.png"]] == [216, 10, 30, 30]
    crop = cv2.imread(os.path.join(image_root, "tile_344_0.png"))
    assert np.array_equal(crop, image[:, 344:600])


def test_op_benchmark_measures_the_memory_each_lsq_implementation_keeps_for_backward():
    from benchmark_quant_speed import op_benchmark
    shape = (2, 8, 16, 16)
    results = op_benchmark(types.SimpleNamespace(device="cpu", bits=4, iters=1, warmup=0), shape)
    x_mb = np.prod(shape) * 4 / 2 ** 20
    assert results["hqod autograd.Function"].saved_mb < 0.01 * x_mb  # recomputes from x and the step in backward
    assert results["plain autograd"].saved_mb >= x_mb  # keeps intermediates of x's size
    assert results["hqod autograd.Function"].grad_x.shape == results["fused kernel"].grad_x.shape


def test_report_lists_the_speed_comparison():
    op = {"s_per_iter": 0.3, "peak_rss_mb": 1300.0, "ratio_to_fp": 2.0, "op_shape": [4, 96, 48, 48],
          "op_ms": {"hqod autograd.Function": 9.5}, "op_saved_mb": {"hqod autograd.Function": 0.0}}
    speed = {"dataset": "shapes", "detector": "retinanet", "iters": 5, "warmup": 2, "models": {
        "fp32": {"batch": 4, "image_hw": [192, 192], "device": "cpu", "threads": 2, "s_per_iter": 0.15,
                 "peak_rss_mb": 1000.0, "ratio_to_fp": 1.0},
        "lsq_w4a4": op, "lsq_hqod_w4a4": {"error": "exit code 1: boom"}}}
    lines = "\n".join(report._speed_lines(speed))
    assert "| FP32 | 0.150 | 1.00× | 1000 | – |" in lines and "| LSQ W4A4 | 0.300 | 2.00× | 1300 | – |" in lines
    assert "| LSQ+HQOD W4A4 | failed: exit code 1: boom |" in lines
    assert "- hqod autograd.Function: 9.50 ms, 0.0 MB" in lines


def test_ap_against_bits_and_paired_differences_are_written_as_whole_pngs(tmp_path):
    records = _records()
    summary = summarize(records, ("lsq_w4a4", "lsq_hqod_w4a4"))["test"]
    path = tmp_path / "figures" / "ap_vs_bits.png"
    plots.ap_vs_bits(path, summary["groups"], [("shapes", "retinanet", records)], "test")
    plots.paired_differences(tmp_path / "figures" / "paired.png", summary, "test")
    assert sorted(os.listdir(path.parent)) == ["ap_vs_bits.png", "paired.png"]
    for name in ("ap_vs_bits.png", "paired.png"):
        image = cv2.imread(str(path.parent / name))
        assert image is not None and 100 < image.shape[0] < 1000 and image.shape[1] < 1000


def test_hexbin_points_are_matched_as_the_harmony_evaluator_matches_them(tmp_path):
    coco = {"images": [{"id": 3, "file_name": "a.png", "height": 100, "width": 100}],
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
            "annotations": [{"id": 1, "image_id": 3, "category_id": 1, "bbox": [0, 0, 50, 50], "area": 2500,
                             "iscrowd": 0},
                            {"id": 2, "image_id": 3, "category_id": 2, "bbox": [50, 50, 50, 50], "area": 2500,
                             "iscrowd": 0}]}
    (tmp_path / "gt.json").write_text(json.dumps(coco))
    detections = [  # COCO results: xywh boxes, the json's category ids
        {"image_id": 3, "category_id": 1, "bbox": [0, 0, 50, 40], "score": 0.9},  # true positive, IoU 0.8
        {"image_id": 3, "category_id": 1, "bbox": [50, 50, 50, 50], "score": 0.6},  # on the class-2 box
        {"image_id": 3, "category_id": 1, "bbox": [0, 0, 50, 50], "score": 0.04},  # under the score threshold
        {"image_id": 3, "category_id": 2, "bbox": [0, 0, 50, 10], "score": 0.5},  # IoU 0.2, other class: neither
    ]
    (tmp_path / "detections.json").write_text(json.dumps(detections))
    tp, miscls = plots.score_iou(tmp_path / "detections.json", ground_truth_by_image(str(tmp_path / "gt.json")))
    assert tp.tolist() == [[0.9, pytest.approx(0.8)]] and miscls.tolist() == [[0.6, 1.0]]


def test_t_quantile_is_students_not_the_normal_one():
    # two-sided 95% critical values of Student's t (any statistics table)
    for df, expected in ((1, 12.7062), (2, 4.3027), (4, 2.7764), (10, 2.2281), (30, 2.0423), (60, 2.0003)):
        assert stats.t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)
    assert stats.t_quantile(0.95, 4) == pytest.approx(2.1318, abs=1e-4)
    assert stats.t_cdf(-2.7764451, 4) == pytest.approx(0.025, abs=1e-7)


def test_t_interval_of_the_sleep_data_matches_the_textbook():
    # Student's sleep data (Cushny and Peebles): the paired differences of the two drugs; R's t.test gives
    # mean 1.58, 95% CI [0.7001142, 2.4598858]; z instead of t or std instead of std / sqrt(n) miss it
    differences = [1.2, 2.4, 1.3, 1.3, 0.0, 1.0, 1.8, 0.8, 4.6, 1.4]
    assert stats.t_interval(differences) == pytest.approx([0.7001142, 2.4598858], abs=1e-6)
    assert stats.t_interval([2.0]) is None
    result = stats.inference(differences)
    assert result["n"] == 10 and result["mean"] == pytest.approx(1.58)
    assert result["sign_test"] == {"positive": 9, "negative": 0, "ties": 1, "p": pytest.approx(2 / 2 ** 9)}


def test_sign_test_is_exact_two_sided_with_ties_dropped():
    assert stats.sign_test([1.0] * 7 + [-0.5])["p"] == pytest.approx(0.0703125)  # 2 * (1 + 8) / 256
    assert stats.sign_test([-1.0] * 7 + [0.5, 0.0, 0.0]) == {"positive": 1, "negative": 7, "ties": 2,
                                                             "p": pytest.approx(0.0703125)}
    assert stats.sign_test([1.0, 1.0, -1.0])["p"] == 1.0
    assert stats.sign_test([0.0, 0.0])["p"] == 1.0


def test_bootstrap_interval_is_of_the_mean_and_reproducible():
    values = [float(v) for v in np.linspace(-1.0, 3.0, 400)]
    low, high = stats.bootstrap_interval(values)
    sem = np.std(values, ddof=1) / np.sqrt(len(values))
    assert (high - low) / 2 == pytest.approx(1.96 * sem, rel=0.1)  # of the mean, not of the values
    assert low < np.mean(values) < high
    assert stats.bootstrap_interval(values) == [low, high]  # fixed RNG seed
    assert stats.bootstrap_interval([1.0, -1.0, 4.0]) == [-1.0, 4.0]  # each extreme has probability 1/27 > 2.5%
    assert stats.bootstrap_interval([0.5] * 5) == [0.5, 0.5]


def test_compare_runs_prints_a_row_per_test_set_of_a_bench_run_and_one_for_a_single_set_run(tmp_path, capsys):
    import compare_runs
    bench, single = tmp_path / "bench", tmp_path / "single"
    bench.mkdir(), single.mkdir()
    rows = [{"iteration": 9, "total_loss": 1.0},
            {"iteration": 9, "bench_v/bbox/AP": 61.0, "bench_v/harmony/pearson": 0.5,
             "bench_s/bbox/AP": 52.0, "bench_s/harmony/pearson": 0.4}]
    (bench / "metrics.json").write_text("\n".join(json.dumps(r) for r in rows))
    (single / "metrics.json").write_text(json.dumps({"iteration": 9, "bbox/AP": 70.5, "harmony/pearson": 0.9}))
    compare_runs.main([str(bench), str(single)])
    lines = capsys.readouterr().out.splitlines()[1:]
    assert [line.split()[:3] for line in lines] == [["bench", "bench_s", "52.000"], ["bench", "bench_v", "61.000"],
                                                   ["single", "70.500", "nan"]]
    assert lines[0].split()[5] == "0.400" and lines[2].split()[4] == "0.900"


def test_parallel_runs_start_only_after_the_run_making_their_weights_and_a_failure_reaches_its_dependents(
        tmp_path, monkeypatch):
    """With --jobs 2 two independent runs overlap, no run starts before its calibration finished, a failed
    calibration fails its QAT runs without running them, and every run is recorded once."""
    import threading
    import benchmark_hqod
    plan = build_plan(select(MODES["full"], settings=["lsq_w4a4"], seeds=2), str(tmp_path), "cpu", FAKE_SETS)
    lock, active, log = threading.Lock(), set(), []

    def fake_execute(run, timeout_s, threads):
        with lock:
            active.add(run.key)
            log.append(("start", run.key, frozenset(active), threads))
        time.sleep(0.05)
        with lock:
            active.discard(run.key)
            log.append(("end", run.key))
        failed = run.setting == "calib_lsq_w4a4" and run.detector == "fcos"
        return {"key": run.key, "dataset": run.dataset, "detector": run.detector, "setting": run.setting,
                "seed": run.seed, "status": "failed" if failed else "ok", "metrics": {}}

    monkeypatch.setattr(benchmark_hqod, "execute", fake_execute)
    monkeypatch.setattr(benchmark_hqod, "is_complete", lambda run: False)
    monkeypatch.setenv("OMP_NUM_THREADS", "4")  # the cores the bench may use, shared by the jobs
    results = {"runs": {}, "report_split": "test"}
    benchmark_hqod.run_all(plan, results, tmp_path / "r.json", 60, jobs=2)
    assert set(results["runs"]) == {run.key for run in plan}
    by_key = {run.key: run for run in plan}
    ended = []
    for event in log:
        if event[0] == "end":
            ended.append(event[1])
            continue
        run = by_key[event[1]]
        maker = next((r for r in plan if f"{r.output_dir}/model_final.pth" == run.weights), None)
        assert maker is None or maker.key in ended, f"{run.key} started before {maker.key} ended"
        assert event[3] == "2"  # 4 threads / 2 jobs
    assert max(len(event[2]) for event in log if event[0] == "start") == 2
    fcos_qat = [r for r in plan if r.detector == "fcos" and r.setting == "lsq_w4a4"]
    assert all(results["runs"][r.key]["status"] == "failed" and "was not made" in results["runs"][r.key]["error"]
               for r in fcos_qat)
    assert not {r.key for r in fcos_qat} & {event[1] for event in log}
    assert json.loads((tmp_path / "r.json").read_text())["runs"].keys() == results["runs"].keys()


def test_progress_line_shows_val_metrics_and_never_test():
    """While runs go only the split settings are chosen on is printed; test waits for the report."""
    import benchmark_hqod
    record = {"key": "shapes/fcos/lsq_w4a4/seed1", "status": "ok", "wall_s": 612.4,
              "metrics": {"val": {"bbox/AP": 81.26, "harmony/pearson": 0.9412},
                          "test": {"bbox/AP": 79.75, "harmony/pearson": 0.9387}}}
    line = benchmark_hqod.progress_line(record)
    assert line == "shapes/fcos/lsq_w4a4/seed1: ok, val AP 81.3, val pearson 0.941, 612 s"
    assert "79.8" not in line and "test" not in line
    failed = {"key": "k", "status": "failed", "error": "boom"}
    assert benchmark_hqod.progress_line(failed) == "k: failed, boom"
    empty = dict(record, no_detections=["val", "test"], metrics={"val": {"bbox/AP": 0.0}, "test": {"bbox/AP": 0.0}})
    assert benchmark_hqod.progress_line(empty) == "shapes/fcos/lsq_w4a4/seed1: ok, val AP 0.0, 612 s, no detections " \
                                                  "on val: AP 0"


def test_runs_start_in_plan_order_once_the_recorded_runs_they_start_from_are_taken(tmp_path, monkeypatch):
    """FP and calibration complete on disk (a resumed bench): the QAT runs, planned before the FP-trained-on
    control, start first, not the control, which was ready a pass earlier (it starts from the FP run)."""
    import benchmark_hqod
    plan = build_plan(select(MODES["full"], detectors=["retinanet"], settings=["lsq_w4a4"], seeds=2),
                      str(tmp_path), "cpu", FAKE_SETS)
    started = []

    def fake_execute(run, timeout_s, threads):
        started.append(run.key)
        return {"key": run.key, "setting": run.setting, "seed": run.seed, "status": "ok", "metrics": {}}

    monkeypatch.setattr(benchmark_hqod, "execute", fake_execute)
    monkeypatch.setattr(benchmark_hqod, "is_complete", lambda run: run.key in {plan[0].key, plan[1].key})
    monkeypatch.setattr(benchmark_hqod, "describe", lambda run: dict(_record(run.setting, run.seed, 50.0), config={}))
    benchmark_hqod.run_all(plan, {"runs": [], "report_split": "test"}, tmp_path / "r.json", 60, jobs=2)
    qat = [r.key for r in plan if r.setting == "lsq_w4a4"]
    assert set(started[:2]) == set(qat) and started[2] == "shapes/retinanet/fp32_longer/seed1"


def test_a_record_names_the_recipe_settings_its_run_used(tmp_path):
    from detectron2.config import get_cfg
    from hqod.config import add_hqod_config
    cfg = get_cfg()
    add_hqod_config(cfg)
    cfg.merge_from_file(str(ROOT / "configs/shapes/fcos_MNV2_lsq_w2a2.yaml"))
    cfg.merge_from_list(["MODEL.QUANT.PER_CHANNEL", "True", "MODEL.QUANT.DEPTHWISE_BITS", "8",
                         "MODEL.QUANT.FREEZE_FROZEN_QUANTIZERS", "True", "SOLVER.BASE_LR", "0.016",
                         "MODEL.QUANT.SCHEDULE.BITS", "['0:4:4', '600:2:2']"])
    (tmp_path / "config.yaml").write_text(cfg.dump())
    config = runs.effective_config(tmp_path / "config.yaml")
    assert (config["weight_bits"], config["act_bits"], config["depthwise_bits"], config["per_channel"]) == (2, 2, 8, True)
    assert config["freeze_frozen_quantizers"] is True and config["base_lr"] == 0.016
    assert config["bit_schedule"] == ["0:4:4", "600:2:2"]


def test_report_settings_name_each_runs_quantizer_recipe():
    common = {"train_sets": ["t"], "test_sets": ["v", "s"], "min_size_train": [192], "min_size_test": 192,
              "ims_per_batch": 4, "max_iter": 2400, "base_lr": 0.008, "warmup_iters": 240, "warmup_factor": 0.0001,
              "steps": [1800, 2160], "momentum": 0.9, "weight_decay": 0.0001, "clip_gradients": 5.0}
    two_bit = dict(common, weight_bits=2, calib_images=16, per_channel=True, depthwise_bits=8,
                   freeze_frozen_quantizers=True, bit_schedule=["0:4:4", "600:3:3", "1200:2:2"])
    records = [dict(_record("fp32", 0, 70.0), config=common), dict(_record("lsq_w2a2", 1, 40.0), config=two_bit),
               dict(_record("fp32_longer", 1, 72.0), config=common)]
    text = report.render(_results(records), [])
    assert "| shapes / retinanet | fp32_longer |" in text and "| shapes / retinanet | FP32 trained on | 1 | 72.0" in text
    assert ("| 16 | per-channel, depthwise 8 bits, frozen convs' kept, bits 0:4:4 → 600:3:3 → 1200:2:2 |"
            in text)
    assert "| – | – |" in text  # the FP run: no calibration, no quantizers


def test_an_interrupted_parallel_bench_kills_its_running_children(tmp_path, monkeypatch):
    import subprocess
    import benchmark_hqod
    plan = build_plan(select(MODES["full"], settings=["lsq_w4a4"], seeds=1), str(tmp_path), "cpu", FAKE_SETS)
    started = []

    class Recorded(subprocess.Popen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(runs, "command", lambda run: [sys.executable, "-c", "import time; time.sleep(60)"])
    monkeypatch.setattr(runs.subprocess, "Popen", Recorded)
    monkeypatch.setattr(benchmark_hqod, "is_complete", lambda run: False)

    def interrupted(futures, return_when):
        deadline = time.monotonic() + 10
        while len(started) < 2 and time.monotonic() < deadline:  # both FP runs have started
            time.sleep(0.05)
        raise SystemExit(143)

    monkeypatch.setattr(benchmark_hqod.concurrent.futures, "wait", interrupted)
    t0 = time.monotonic()
    with pytest.raises(SystemExit):
        benchmark_hqod.run_all(plan, {"runs": {}, "report_split": "test"}, tmp_path / "r.json", 600, jobs=2)
    assert len(started) == 2 and all(proc.poll() is not None for proc in started)
    assert time.monotonic() - t0 < 30  # not the children's 60 s


def test_earlier_records_keep_the_measured_wall_time_over_a_later_reuse_without_it(tmp_path):
    import benchmark_hqod
    measured = {"key": "k", "output_dir": "o", "wall_s": 300.0, "status": "ok", "config": {}}
    reused = {"key": "k", "output_dir": "o", "status": "ok", "reused": True, "config": {}}
    other_recipe = {"key": "k", "output_dir": "o", "wall_s": 90.0, "status": "ok", "config": {"max_iter": 1200}}
    newer = {"key": "j", "output_dir": "p", "wall_s": 5.0, "status": "ok", "config": {}}
    store.save(tmp_path / "results_lane.json", {"runs": {"k": measured, "j": dict(newer, wall_s=1.0)}})
    store.save(tmp_path / "results_full.json", {"runs": {"k": reused, "j": newer}})
    store.save(tmp_path / "results_short.json", {"runs": {"k": other_recipe}})
    earlier = benchmark_hqod.earlier_records(tmp_path, tmp_path / "results_full.json")
    assert benchmark_hqod.records_of(earlier, "j")[-1] == newer  # this mode's file last
    assert benchmark_hqod.matching_record(benchmark_hqod.records_of(earlier, "k"), "o", {})["wall_s"] == 300.0
    # this mode's file wins otherwise
    assert benchmark_hqod.matching_record(benchmark_hqod.records_of(earlier, "j"), "p", {})["wall_s"] == 5.0
    assert benchmark_hqod.matching_record(benchmark_hqod.records_of(earlier, "k"), "o", {"max_iter": 2400}) is None


@pytest.mark.parametrize("fp_ap_now, flag, from_record", [(50.0, True, True), (50.000000000000014, True, True),
                                                           (50.5, True, False), (50.0001, True, False),
                                                           (50.0, False, False)])
def test_a_qat_run_whose_folder_is_gone_is_taken_from_its_record_only_from_the_recorded_fp_start(
        tmp_path, monkeypatch, fp_ap_now, flag, from_record):
    """With --reuse-records a QAT run recorded ok with the same settings is not run again when its FP run, run
    again, gives the recorded metrics (to the last bits of a float: summation order); the FP and calibration runs
    (other runs start from them) always run, and a record of other settings (another recipe's run of the same key)
    is not taken."""
    import benchmark_hqod
    plan = build_plan(select(MODES["full"], detectors=["retinanet"], settings=["lsq_w4a4"], seeds=2),
                      str(tmp_path), "cpu", FAKE_SETS)
    fp, qat = plan[0], [r for r in plan if r.setting == "lsq_w4a4"]
    executed = []

    def record(run, ap, config=None):
        return {"key": run.key, "dataset": run.dataset, "detector": run.detector, "setting": run.setting,
                "seed": run.seed, "status": "ok", "output_dir": run.output_dir,
                "config": config or runs.planned_config(run),
                "metrics": {"val": {"bbox/AP": ap}, "test": {"bbox/AP": ap}}}

    def fake_execute(run, timeout_s, threads):
        executed.append(run.key)
        return record(run, fp_ap_now if run.is_fp else 1.0)

    # the FP run's record matches too: it runs all the same, as the QAT runs start from it
    earlier = [{fp.key: record(fp, 50.0), qat[0].key: record(qat[0], 70.0),
                qat[1].key: record(qat[1], 71.0, dict(runs.planned_config(qat[1]), max_iter=1200))}]
    monkeypatch.setattr(benchmark_hqod, "execute", fake_execute)
    results = {"runs": earlier, "report_split": "test"}
    benchmark_hqod.run_all(plan, results, tmp_path / "r.json", 60, jobs=1, reuse_records=flag)
    assert fp.key in executed and "shapes/retinanet/calib_lsq_w4a4/seed0" in executed
    assert qat[1].key in executed  # recorded with another schedule
    assert (qat[0].key not in executed) == from_record
    taken = results["runs"][qat[0].key]
    assert (taken["metrics"]["test"]["bbox/AP"] == 70.0 and taken["from_record"]) if from_record \
        else taken["metrics"]["test"]["bbox/AP"] == 1.0


@pytest.mark.parametrize("report_only", [False, True])
def test_a_record_is_reused_only_beside_the_fp_record_of_its_own_results_file(tmp_path, monkeypatch, report_only):
    """A QAT record made from one FP training is not taken once the FP run was trained again with other numbers,
    even when another results file (an interrupted run of this bench) already holds the new FP record: the record
    stands for its run only beside the FP record of its own file. A record made beside the new FP record is taken."""
    import benchmark_hqod
    plan = build_plan(select(MODES["full"], detectors=["retinanet"], settings=["lsq_w4a4"], seeds=2),
                      str(tmp_path), "cpu", FAKE_SETS)
    fp, calib, qat = plan[0], plan[1], [r for r in plan if r.setting == "lsq_w4a4"]
    executed = []

    def record(run, ap):
        return {"key": run.key, "dataset": run.dataset, "detector": run.detector, "setting": run.setting,
                "seed": run.seed, "status": "ok", "output_dir": run.output_dir, "config": runs.planned_config(run),
                "metrics": {"val": {"bbox/AP": ap}, "test": {"bbox/AP": ap}} if run.evaluates else {}}

    def fake_execute(run, timeout_s, threads):
        executed.append(run.key)
        return record(run, 60.0 if run.is_fp else 1.0)

    monkeypatch.setattr(benchmark_hqod, "execute", fake_execute)
    old_session = {fp.key: record(fp, 50.0), calib.key: record(calib, 0), qat[0].key: record(qat[0], 70.0)}
    interrupted = {fp.key: record(fp, 60.0), calib.key: record(calib, 0), qat[1].key: record(qat[1], 72.0)}
    results = {"runs": [old_session, interrupted], "report_split": "test"}
    benchmark_hqod.run_all(plan, results, tmp_path / "r.json", 60, jobs=1, reuse_records=True,
                           report_only=report_only)
    assert results["runs"][fp.key]["metrics"]["test"]["bbox/AP"] == 60.0
    assert results["runs"][qat[1].key]["metrics"]["test"]["bbox/AP"] == 72.0  # made beside the new FP record
    if report_only:
        assert not executed and qat[0].key in results["not_run"] and qat[1].key not in results["not_run"]
    else:
        assert qat[0].key in executed and qat[1].key not in executed
        assert results["runs"][qat[0].key]["metrics"]["test"]["bbox/AP"] == 1.0


def test_report_only_with_reuse_records_reports_every_recorded_run_of_a_fresh_checkout(tmp_path, monkeypatch):
    """--report-only --reuse-records with no run folders (a new checkout): the FP and calibration runs, which a real
    bench runs again, are taken from their records like the QAT runs, so only what no record holds is not run."""
    import benchmark_hqod
    plan = build_plan(select(MODES["full"], detectors=["retinanet"], settings=["lsq_w4a4"], seeds=2),
                      str(tmp_path), "cpu", FAKE_SETS)
    recorded = plan[:3]  # FP, calibration, seed 1

    def never(*args):
        raise AssertionError("--report-only ran a run")

    monkeypatch.setattr(benchmark_hqod, "execute", never)
    earlier = [{run.key: dict(_record(run.setting, run.seed, 50.0), key=run.key, output_dir=run.output_dir,
                              config=runs.planned_config(run)) for run in recorded}]
    results = {"runs": earlier, "report_split": "test"}
    benchmark_hqod.run_all(plan, results, tmp_path / "r.json", 60, jobs=2, reuse_records=True, report_only=True)
    assert set(results["runs"]) == {run.key for run in recorded}
    assert all(record["from_record"] for record in results["runs"].values())
    assert sorted(results["not_run"]) == sorted(r.key for r in plan[3:])


def test_a_record_failed_for_no_detections_before_the_ap_zero_rule_is_reused_with_ap_zero(tmp_path, monkeypatch):
    import benchmark_hqod
    plan = build_plan(select(MODES["full"], detectors=["retinanet"], settings=["lsq_w4a4"], seeds=1),
                      str(tmp_path), "cpu", FAKE_SETS)
    monkeypatch.setattr(benchmark_hqod, "execute", lambda *args: pytest.fail("--report-only ran a run"))
    earlier = {run.key: dict(_record(run.setting, run.seed, 50.0), key=run.key, output_dir=run.output_dir,
                             config=runs.planned_config(run)) for run in plan}
    (key,) = [run.key for run in plan if run.setting == "lsq_w4a4"]
    earlier[key]["metrics"]["test"].update({"bbox/AP": float("nan"), "harmony/num_detections": 0.0})
    earlier[key].update(status="failed", error="no detections on test (AP is NaN)")
    results = {"runs": [earlier], "report_split": "test"}
    benchmark_hqod.run_all(plan, results, tmp_path / "r.json", 60, jobs=1, reuse_records=True, report_only=True)
    record = results["runs"][key]
    assert record["status"] == "ok" and record["metrics"]["test"]["bbox/AP"] == 0.0
    assert record["no_detections"] == ["test"] and not results["not_run"]


def test_report_only_runs_nothing_and_lists_what_the_plan_left_undone(tmp_path, monkeypatch):
    """--report-only of an interrupted bench: the runs done are recorded, the others (and the runs that start from
    them) are listed as not run, nothing is executed and nothing waits for a run that never comes."""
    import benchmark_hqod
    plan = build_plan(select(MODES["full"], detectors=["retinanet"], settings=["lsq_w4a4"], seeds=2),
                      str(tmp_path), "cpu", FAKE_SETS)
    done = {plan[0].key, plan[1].key, plan[2].key}  # FP, calibration, seed 1

    def never(*args):
        raise AssertionError("--report-only ran a run")

    monkeypatch.setattr(benchmark_hqod, "execute", never)
    monkeypatch.setattr(benchmark_hqod, "is_complete", lambda run: run.key in done)
    monkeypatch.setattr(benchmark_hqod, "describe",
                        lambda run: dict(_record(run.setting, run.seed, 50.0), config={}))
    results = {"runs": {}, "report_split": "test"}
    benchmark_hqod.run_all(plan, results, tmp_path / "r.json", 60, jobs=2, report_only=True)
    assert set(results["runs"]) == done and sorted(results["not_run"]) == sorted(r.key for r in plan[3:])
    results.update(_results(list(results["runs"].values())), not_run=results["not_run"])
    text = report.render(results, [])
    assert "**Not run** (2 runs of the plan; the report covers the rest): " in text and f"`{plan[3].key}`" in text
