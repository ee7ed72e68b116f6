"""Regimes: config errors, the ViT and its data, a tiny resumable end-to-end run, the verdict."""

import json

import pytest

from muonscope.errors import ConfigError
from muonscope.experiments.dynamics import regimes as rg
from muonscope.experiments.dynamics.vit import ViT, have_sklearn, load_images

needs_sklearn = pytest.mark.skipif(not have_sklearn(), reason="scikit-learn (optional extra 'vision') missing")


@pytest.mark.parametrize("kw, msg", [({"muon_lrs": ()}, "empty"), ({"adamw_lrs": ()}, "empty"),
                                     ({"muon_lrs": (0.0,)}, "positive"), ({"tasks": ("rnn",)}, "unknown task"),
                                     ({"dataset": "cifar10"}, "unknown image data set"),
                                     ({"corpus": "/nonexistent/corpus"}, "neither")])
def test_bad_config(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        rg.RegimesConfig(**kw)


@needs_sklearn
def test_digits_split_and_vit_shapes():
    d = load_images("digits", upsample=2)
    assert d.y_train.numel() + d.y_val.numel() == 1797 and d.image_size == 16
    assert set(d.y_val.tolist()) == set(range(10))
    assert d.x_train.mean().abs() < 1e-4  # standardized with train statistics
    m = ViT(d_model=32, n_layer=2, n_head=2, image_size=16, patch=4, channels=1, classes=10)
    assert m(d.x_val[:5]).shape == (5, 10)
    assert len(m.hidden_matrices()) == 12


def _fake(task, opt, lr, seed, loss):
    traj = {"steps": [0, 2], "val_loss": [3.0, loss], "stable_rank": [2.0, 3.0], "entropy": [0.5, 0.6]}
    return {"spec": {"task": task, "optimizer": opt, "lr": lr, "seed": seed}, "diverged": False,
            "trajectory": traj, "final_val_loss": loss, "cpu_seconds": 1.0}


def test_summary_finds_best_lr_and_the_reversal():
    cfg = rg.RegimesConfig(tasks=("gpt", "vit"), muon_lrs=(0.01, 0.02), adamw_lrs=(0.001,), seeds=(0, 1, 2),
                           steps=2, snapshots=1)
    res = []
    for s in cfg.seeds:
        e = 0.01 * s
        res += [_fake("gpt", "muon", 0.01, s, 2.0 + e), _fake("gpt", "muon", 0.02, s, 2.5 + e),
                _fake("gpt", "adamw", 0.001, s, 2.2 + 1.5 * e),
                _fake("vit", "muon", 0.01, s, 1.0 + e), _fake("vit", "muon", 0.02, s, 1.01 + e),
                _fake("vit", "adamw", 0.001, s, 0.8 + 1.5 * e)]
    s = rg.summarize(cfg, res)
    g = s["tasks"]["gpt"]["optimizers"]["muon"]
    assert g["best_lr"] == 0.01 and g["plateau_lrs"] == [0.01]
    assert s["tasks"]["vit"]["optimizers"]["muon"]["plateau_lrs"] == [0.01, 0.02]
    assert s["tasks"]["gpt"]["winner"] == "muon" and s["tasks"]["vit"]["winner"] == "adamw"
    assert s["verdict"].endswith("reversal reproduced")
    res = [dict(r, final_val_loss=r["final_val_loss"] - (0.5 if r["spec"]["optimizer"] == "muon" else 0))
           for r in res]
    assert "no reversal: muon on both" in rg.summarize(cfg, res)["verdict"]


@needs_sklearn
def test_tiny_run_end_to_end_and_resumes(tmp_path):
    cfg = rg.RegimesConfig(muon_lrs=(0.02,), adamw_lrs=(0.002,), seeds=(0,), steps=4, snapshots=2,
                           corpus_bytes=200_000, eval_batches=1, gpt_batch=2, vit_batch=8)
    s = rg.experiment(cfg, tmp_path)
    assert s["runs"] == 4 and set(s["tasks"]) == {"gpt", "vit"}
    r = json.loads((tmp_path / "runs" / "gpt" / "muon-lr0.02-seed0" / "result.json").read_text())
    assert r["trajectory"]["steps"] == [0, 2, 4] and len(r["trajectory"]["stable_rank"]) == 3
    assert r["trajectory"]["stable_rank"][0] != r["trajectory"]["stable_rank"][-1]
    assert (tmp_path / "regimes.png").stat().st_size > 10_000
    done = tmp_path / "runs" / "vit" / "adamw-lr0.002-seed0" / "result.json"
    stamp = done.stat().st_mtime_ns
    partial = tmp_path / "runs" / "gpt" / "adamw-lr0.002-seed0"
    (partial / "result.json").unlink()  # as if interrupted before the end
    again = rg.experiment(cfg, tmp_path)
    assert done.stat().st_mtime_ns == stamp and (partial / "result.json").is_file()
    assert again["tasks"]["gpt"]["optimizers"]["adamw"]["rows"][0]["val_loss"] == \
        s["tasks"]["gpt"]["optimizers"]["adamw"]["rows"][0]["val_loss"]
