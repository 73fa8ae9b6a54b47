"""train_net.py end to end on CPU: a few iterations, evaluation, 2 gloo workers, and bad input."""
import json

QUICK = [  # a few iterations of the quickstart recipe with a cheap evaluation
    "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1",
    "SOLVER.CHECKPOINT_PERIOD", "1000", "DATALOADER.NUM_WORKERS", "0",
    "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MIN_SIZE_TEST", "128",
    "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0", "MODEL.RETINANET.TOPK_CANDIDATES_TEST", "50",
]


def quick_args(tiny_shapes_val, output_dir, num_gpus=1):
    return ["--config-file", "configs/quickstart_retinanet_mnv2_shapes.yaml", "--num-gpus", str(num_gpus),
            *QUICK, "DATASETS.COCO_FORMAT", f"('{tiny_shapes_val}',)", "DATASETS.TEST", "('tiny_shapes_val',)",
            "OUTPUT_DIR", str(output_dir)]


def test_trains_and_evaluates(run_train_net, tiny_shapes_val, tmp_path):
    result = run_train_net(*quick_args(tiny_shapes_val, tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "model_final.pth").is_file()
    metrics = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    assert any("loss_cls" in m for m in metrics)
    assert "tiny_shapes_val: AP" in result.stdout  # COCO AP printed at the end
    assert (tmp_path / "inference" / "tiny_shapes_val" / "harmony_hexbin.png").is_file()


def test_two_cpu_workers_over_gloo(run_train_net, tiny_shapes_val, tmp_path):
    result = run_train_net(*quick_args(tiny_shapes_val, tmp_path, num_gpus=2))
    assert result.returncode == 0, result.stderr[-3000:]
    log = (tmp_path / "log.txt").read_text()
    assert "World size: 2" in log
    assert (tmp_path / "model_final.pth").is_file()


def test_eval_only_reads_the_trained_weights(run_train_net, tiny_shapes_val, tmp_path):
    trained = run_train_net(*quick_args(tiny_shapes_val, tmp_path / "train"))
    assert trained.returncode == 0, trained.stderr[-3000:]
    result = run_train_net("--eval-only", *quick_args(tiny_shapes_val, tmp_path / "eval"),
                           "MODEL.WEIGHTS", str(tmp_path / "train" / "model_final.pth"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tiny_shapes_val: AP" in result.stdout


def _one_line_error(result):
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0
    assert lines[-1].startswith("error: "), result.stderr[-2000:]
    return lines[-1]


def test_missing_config_file(run_train_net):
    assert "does not exist" in _one_line_error(run_train_net("--config-file", "configs/nope.yaml"))


def test_malformed_config_file(run_train_net, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("MODEL: [unclosed\n")
    assert "not valid YAML" in _one_line_error(run_train_net("--config-file", str(bad)))


def test_unknown_key_and_unknown_dataset(run_train_net):
    line = _one_line_error(run_train_net("--config-file", "configs/quickstart_retinanet_mnv2_shapes.yaml",
                                         "MODEL.NOT_A_KEY", "1"))
    assert "NOT_A_KEY" in line
    line = _one_line_error(run_train_net("--config-file", "configs/quickstart_retinanet_mnv2_shapes.yaml",
                                         "DATASETS.TRAIN", "('no_such_set',)"))
    assert "no_such_set" in line


def test_missing_weights_file(run_train_net, tiny_shapes_val, tmp_path):
    line = _one_line_error(run_train_net(*quick_args(tiny_shapes_val, tmp_path), "MODEL.WEIGHTS", "/no/such.pth"))
    assert "/no/such.pth" in line
