"""analysis.curvature on saved parameters: against a dense Hessian in float64, and against a run's curvature.csv."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from analysis import curvature as cli_curvature
from scalelab.data import load_dataset
from scalelab.losses import softmax_cross_entropy
from scalelab.models import make_model
from tests.conftest import write_idx_folder


def test_cli_eigenvalues_and_trace_match_the_dense_hessian(idx_folder, tmp_path, capsys):
    model = make_model((6,), 10, "relu", "glorot-uniform")
    params = model.init(jax.random.PRNGKey(3), jnp.zeros((1, 64)))
    npz = tmp_path / "p.npz"
    np.savez(npz, **{f"{layer}/{k}": np.asarray(v) for layer, d in params["params"].items() for k, v in d.items()})
    out = tmp_path / "c.json"
    argv = ["--params", npz, "--inputs", "/255", "--examples", "0:100", "--top-k", "3", "--trace",
            "--trace-probes", "200", "--x64", "--data", "idx", "--data-dir", idx_folder, "--json", out]  # fmt: skip
    assert cli_curvature.main([str(a) for a in argv]) == 0
    result = json.loads(out.read_text())

    with jax.enable_x64(True):
        data = load_dataset("idx", idx_folder)
        x = jnp.asarray(data.train_images[:100].reshape(100, -1), jnp.float64) / 255.0
        y = jnp.asarray(data.train_labels[:100])
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        flat, unravel = ravel_pytree(p64)
        loss = lambda f: jnp.mean(softmax_cross_entropy(model.apply(unravel(f), x), y))  # noqa: E731
        eigs = np.linalg.eigvalsh(np.asarray(jax.hessian(loss)(flat)))[::-1]
        # The transform constants are stored in float32 (1/255 rounded), hence 1e-6 and not 1e-12.
        np.testing.assert_allclose(result["loss"], float(loss(flat)), rtol=1e-6)
    np.testing.assert_allclose(result["top_eigenvalues"], eigs[:3], rtol=1e-6)
    assert abs(result["trace"] - eigs.sum()) <= 3 * result["trace_stderr"]
    assert max(result["residuals"]) < 1e-6


def test_bad_npz_and_examples_are_one_line_errors(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, weights=np.zeros(3))
    assert cli_curvature.main(["--params", str(bad)]) == 1
    assert "unexpected array 'weights'" in capsys.readouterr().err
    assert cli_curvature.main(["--params", str(bad), "--examples", "5:2"]) == 2
    assert "START:STOP" in capsys.readouterr().err


def test_run_directory_and_epoch_form_matches_the_params_form(idx_folder, tmp_path, capsys):
    """--run DIR --epoch E analyses each model with its own transform, like --params on its npz."""
    from experiments import scale_grid

    run = tmp_path / "run"
    flags = ["--data", "idx", "--data-dir", idx_folder, "--epochs", "1", "--seeds", "1", "--hidden", "6",
             "--batch-size", "32", "--inputs", "/1,zscore", "--no-curvature", "--no-report",
             "--no-progress"]  # fmt: skip
    assert scale_grid.main([*map(str, flags), "--out", str(run)]) == 0
    common = ["--examples", "0:64", "--top-k", "2", "--x64", "--data", "idx", "--data-dir", str(idx_folder)]
    assert cli_curvature.main(["--run", str(run), "--epoch", "1", *common, "--json", str(tmp_path / "run.json")]) == 0
    by_run = json.loads((tmp_path / "run.json").read_text())
    assert [m["model"] for m in by_run["models"]] == [0, 1]
    assert [m["inputs"] for m in by_run["models"]] == ["/1", "zscore"]

    with np.load(run / "params" / "epoch_001.npz") as npz:
        np.savez(tmp_path / "m1.npz", **{k.split("/", 1)[1]: npz[k] for k in npz.files if k.startswith("model_1/")})
    argv = ["--params", str(tmp_path / "m1.npz"), "--inputs", "zscore", "--loss", "keras-ce", *common,
            "--json", str(tmp_path / "one.json")]  # fmt: skip
    assert cli_curvature.main(argv) == 0
    alone = json.loads((tmp_path / "one.json").read_text())
    np.testing.assert_allclose(by_run["models"][1]["top_eigenvalues"], alone["top_eigenvalues"], rtol=1e-12)
    np.testing.assert_allclose(by_run["models"][1]["loss"], alone["loss"], rtol=1e-12)
    capsys.readouterr()
    assert cli_curvature.main(["--run", str(run), *common]) == 2
    assert "--epoch" in capsys.readouterr().err
    assert cli_curvature.main(["--run", str(run), "--epoch", "7", *common]) == 1
    assert "epochs [0, 1]" in capsys.readouterr().err


# float32, as the run measured. The loss and gradient norm are the run's own computation (train.batch_loss,
# train.global_norm): bit-identical on these runs (on Fashion-MNIST, 128 hidden: 1 ulp of grad_norm), so
# 1e-6 is float32 rounding with room. The top eigenvalue comes from another Lanczos run (64 steps from
# --seed's start vector; the run's 16 from its own): 3.6e-7 (/1, 680), 1.1e-7 (/255, 2.2) and 4.4e-7
# (zscore, 1.9) relative, at most 7.2e-7 over 16..128 steps of ours, hence 2e-6.
SAME_RTOL, SAME_ATOL = 1e-6, 1e-6
EIG_RTOL, EIG_ATOL = 2e-6, 1e-6


def _train(idx_folder, out, *flags):
    from experiments import scale_grid

    common = ["--data", "idx", "--data-dir", idx_folder, "--epochs", "1", "--seeds", "1",
              "--no-report", "--no-progress"]  # fmt: skip
    assert scale_grid.main([*map(str, common), *map(str, flags), "--out", str(out)]) == 0
    return out


def _curvature_row(run, model: int, epoch: float) -> dict:
    from scalelab.results import RunDir

    rows = [r for r in RunDir.open(run).curvature() if r["model"] == model and r["epoch"] == epoch]
    assert len(rows) == 1
    return rows[0]


def _assert_reproduces(result: dict, row: dict) -> None:
    np.testing.assert_allclose(result["loss"], row["loss"], rtol=SAME_RTOL, atol=SAME_ATOL)
    np.testing.assert_allclose(result["grad_norm"], row["grad_norm"], rtol=SAME_RTOL, atol=SAME_ATOL)
    np.testing.assert_allclose(result["top_eigenvalues"][0], row["top_eig_1"], rtol=EIG_RTOL, atol=EIG_ATOL)
    # Both are Ritz values within their residuals of the top eigenvalue (Bauer-Fike).
    assert abs(result["top_eigenvalues"][0] - row["top_eig_1"]) <= result["residuals"][0] + row["top_res_1"]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """(run directory, its IDX folder): 2 models (/1, /255), 6 hidden units, 1 epoch, curvature on 64 examples."""
    base = tmp_path_factory.mktemp("curvature_run")
    idx = write_idx_folder(base / "idx")
    return _train(idx, base / "run", "--hidden", "6", "--inputs", "/1,/255", "--curvature-examples", "64"), idx


def test_run_form_reproduces_the_runs_curvature_csv(small_run, tmp_path, capsys):
    """--run DIR --epoch E --model M measures what the run did (keras-ce, its examples) and gets its numbers."""
    run, _ = small_run
    for model, inputs in ((0, "/1"), (1, "/255")):
        out = tmp_path / f"m{model}.json"
        assert cli_curvature.main(["--run", str(run), "--epoch", "1", "--model", str(model), "--json", str(out)]) == 0
        (result,) = json.loads(out.read_text())["models"]
        assert (result["model"], result["inputs"], result["loss_name"], result["examples"], result["x64"]) == (
            model, inputs, "keras-ce", "0:64", False,
        )  # fmt: skip
        _assert_reproduces(result, _curvature_row(run, model, 1.0))

    # Flags override the run's settings, and the result says so.
    out = tmp_path / "ce.json"
    argv = ["--run", str(run), "--epoch", "1", "--model", "1", "--loss", "ce", "--examples", "0:32", "--json", str(out)]
    assert cli_curvature.main(argv) == 0
    (result,) = json.loads(out.read_text())["models"]
    assert (result["loss_name"], result["examples"]) == ("ce", "0:32")


def test_run_form_uses_the_runs_limited_training_split(idx_folder, tmp_path, capsys):
    """--train-limit 100 with --curvature-examples 300: the run measured (and fitted zscore on) 100 examples."""
    # Its top eigenvalues lie close together (1.91, 1.81, 1.76): 16 Lanczos steps leave the run's top one
    # 1.9e-5 low, within its Ritz residual 3.3e-3 but not float32 rounding; 64 steps converge it.
    run = _train(idx_folder, tmp_path / "run", "--hidden", "4", "--inputs", "zscore", "--train-limit", "100",
                 "--curvature-examples", "300", "--lanczos-steps", "64")  # fmt: skip
    out = tmp_path / "c.json"
    assert cli_curvature.main(["--run", str(run), "--epoch", "1", "--json", str(out)]) == 0
    (result,) = json.loads(out.read_text())["models"]
    assert (result["inputs"], result["examples"]) == ("zscore", "0:100")
    _assert_reproduces(result, _curvature_row(run, 0, 1.0))


def test_params_form_reads_a_runs_multi_model_file(small_run, tmp_path, capsys):
    """params/epoch_EEE.npz holds every model: --model M picks one; without it, a one-line usage error."""
    run, idx_folder = small_run
    npz = run / "params" / "epoch_001.npz"
    data = ["--data", "idx", "--data-dir", str(idx_folder)]
    explicit = ["--inputs", "/255", "--loss", "keras-ce", "--examples", "0:64", "--activation", "relu"]
    out = tmp_path / "p.json"
    assert cli_curvature.main(["--params", str(npz), "--model", "1", *explicit, *data, "--json", str(out)]) == 0
    by_params = json.loads(out.read_text())
    assert (by_params["model"], by_params["loss_name"], by_params["examples"]) == (1, "keras-ce", "0:64")
    assert cli_curvature.main(["--run", str(run), "--epoch", "1", "--model", "1", "--json", str(out)]) == 0
    (by_run,) = json.loads(out.read_text())["models"]
    for key in ("loss", "grad_norm", "top_eigenvalues", "residuals"):
        assert by_params[key] == by_run[key], key  # the same computation on the same arrays
    _assert_reproduces(by_params, _curvature_row(run, 1, 1.0))

    capsys.readouterr()
    assert cli_curvature.main(["--params", str(npz), *explicit, *data]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "holds models 0, 1" in err and "--model" in err
    assert cli_curvature.main(["--params", str(npz), "--model", "5", *explicit, *data]) == 2
    assert "holds models 0, 1" in capsys.readouterr().err


def test_params_form_defaults_are_named_in_the_result(idx_folder, tmp_path, capsys):
    """A one-model npz without flags: /255, exact cross-entropy (ce), relu, examples 0:512."""
    model = make_model((3,), 10, "relu", "glorot-uniform")
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64)))
    npz = tmp_path / "p.npz"
    np.savez(npz, **{f"{layer}/{k}": np.asarray(v) for layer, d in params["params"].items() for k, v in d.items()})
    data = ["--data", "idx", "--data-dir", str(idx_folder)]
    assert cli_curvature.main(["--params", str(npz), *data]) == 2  # the fixture has 256 training examples
    assert "--examples 0:512: the training split has 256 examples" in capsys.readouterr().err
    out = tmp_path / "c.json"
    assert (
        cli_curvature.main(["--params", str(npz), "--examples", "0:256", "--top-k", "1", *data, "--json", str(out)])
        == 0
    )
    result = json.loads(out.read_text())
    assert (result["inputs"], result["loss_name"], result["activation"], result["examples"]) == (
        "/255", "ce", "relu", "0:256",
    )  # fmt: skip
    assert "model" not in result
    assert cli_curvature.main(["--params", str(npz), "--model", "0", *data]) == 2
    assert "holds one model's arrays" in capsys.readouterr().err
