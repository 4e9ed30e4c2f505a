"""analysis.curvature on saved parameters, checked against a dense Hessian in float64."""

import json

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from analysis import curvature as cli_curvature
from scalelab.data import load_dataset
from scalelab.losses import softmax_cross_entropy
from scalelab.models import make_model


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
    argv = ["--params", str(tmp_path / "m1.npz"), "--inputs", "zscore", *common, "--json", str(tmp_path / "one.json")]
    assert cli_curvature.main(argv) == 0
    alone = json.loads((tmp_path / "one.json").read_text())
    np.testing.assert_allclose(by_run["models"][1]["top_eigenvalues"], alone["top_eigenvalues"], rtol=1e-12)
    np.testing.assert_allclose(by_run["models"][1]["loss"], alone["loss"], rtol=1e-12)
    capsys.readouterr()
    assert cli_curvature.main(["--run", str(run), *common]) == 2
    assert "--epoch" in capsys.readouterr().err
    assert cli_curvature.main(["--run", str(run), "--epoch", "7", *common]) == 1
    assert "epochs [0, 1]" in capsys.readouterr().err
