#!/usr/bin/env python
"""Print the final COCO AP and score–IoU harmony of training runs side by side, from their metrics.json (a row per
test set when a run was evaluated on several, as the bench's runs on val and test).

    python tools/compare_runs.py output/quickstart_retinanet_mnv2_shapes output/shapes/retinanet_MNV2_lsq_hqod_w4a4
"""
import argparse
import json
import pathlib
import sys

COLUMNS = ["bbox/AP", "bbox/AP50", "bbox/AP75", "harmony/pearson", "harmony/spearman", "harmony/num_tp"]


def final_metrics(output_dir: pathlib.Path) -> dict:
    """The last evaluation a run wrote into its metrics.json (Detectron2's EvalHook stores it there), per test set:
    ``{"": metrics}`` for one test set, ``{test set: metrics}`` when Detectron2 keyed them ``<test set>/bbox/AP``."""
    path = output_dir / "metrics.json"
    if not path.is_file():
        raise SystemExit(f"error: {path} not found; train that run first (train_net.py --config-file ...)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    evaluations = [row for row in rows if any(k == "bbox/AP" or k.endswith("/bbox/AP") for k in row)]
    if not evaluations:
        raise SystemExit(f"error: {path} has no evaluation; run it with an evaluation (TEST.EVAL_PERIOD / end of run)")
    last = evaluations[-1]
    sets = sorted(k[:-len("/bbox/AP")] for k in last if k.endswith("/bbox/AP")) or [""]
    return {name: {k[len(name) + 1:] if name else k: v for k, v in last.items()
                   if not name or k.startswith(f"{name}/")} for name in sets}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dirs", nargs="+", type=pathlib.Path)
    args = parser.parse_args(argv)
    rows = [(f"{d.name} {name}".strip(), metrics) for d in args.output_dirs
            for name, metrics in final_metrics(d).items()]
    width = max(len(name) for name, _ in rows)
    print(f"{'run':<{width}}  " + "  ".join(f"{c.split('/')[1]:>9}" for c in COLUMNS))
    for name, metrics in rows:
        print(f"{name:<{width}}  " + "  ".join(f"{metrics.get(c, float('nan')):>9.3f}" for c in COLUMNS))


if __name__ == "__main__":
    sys.exit(main())
