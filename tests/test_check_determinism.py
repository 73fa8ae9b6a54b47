"""tools/check_determinism.py: two seeded runs agree bit for bit, unseeded runs are caught, bad input fails early."""
import pytest

TINY = ["--config-file", "configs/quickstart_retinanet_mnv2_shapes.yaml", "--iters", "3"]
TINY_OPTS = ["SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "INPUT.MIN_SIZE_TRAIN", "(128,)"]


@pytest.fixture(scope="module")
def tool(tool_module):
    return tool_module("check_determinism")


def test_seeded_runs_agree_bit_for_bit(run_python, root):
    result = run_python(root / "tools" / "check_determinism.py", *TINY, *TINY_OPTS, "SEED", "0")
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "total_loss bitwise equal at every iteration 0-2" in result.stdout  # all 3 iterations compared
    assert "weights after 3 iterations: equal" in result.stdout


def test_unseeded_runs_are_caught(run_python, root):
    """SEED -1 seeds each run at random: its data order and initial head differ, so the very first loss does."""
    result = run_python(root / "tools" / "check_determinism.py", *TINY, *TINY_OPTS, "SEED", "-1")
    assert result.returncode == 1, result.stdout + result.stderr[-3000:]
    assert "total_loss first differs at iteration 0" in result.stdout
    assert "weights after 3 iterations: differ" in result.stdout
    assert "NOT deterministic" in result.stdout


def test_compare_losses_finds_the_first_difference(tool):
    assert tool.compare_losses([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]).first_iter is None
    divergence = tool.compare_losses([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0 + 3e-7, 5.0])
    assert divergence.first_iter == 2
    assert divergence.relative == pytest.approx(1e-7)
    assert divergence.last_relative == pytest.approx(0.2)
    with pytest.raises(ValueError, match="same length"):
        tool.compare_losses([1.0], [1.0, 2.0])


@pytest.mark.parametrize("options, opts, message", [
    (["--env-b", "ATEN_CPU_CAPABILITY"], [], "is not KEY=VALUE"),
    (["--iters", "5000"], [], "beyond the schedule's SOLVER.MAX_ITER 1000"),
    ([], ["SOLVER.NO_SUCH_KEY", "1"], "command-line override"),
])
def test_bad_input_fails_before_training(run_python, root, options, opts, message):
    result = run_python(root / "tools" / "check_determinism.py", *TINY, *options, *TINY_OPTS, *opts)
    assert result.returncode != 0
    assert message in result.stderr
    assert "run a:" not in result.stdout  # nothing was trained
