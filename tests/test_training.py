"""The shared training loop and MLflow tracking, on a tiny planted-signal feature store."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from aladin.training.losses import positive_mask, triplet_loss
from aladin.evaluation.metrics import retrieval_metrics
from aladin.models.factory import build_model
from aladin.retrieval.store_scores import score_store
from aladin.store import FeatureStore, StoreWriter
from aladin.params import TrackingParams
from aladin.tracking import mlflow_run
from aladin.training.loop import OptimConfig, fit

torch.set_num_threads(1)
D_IMG, D_TXT, R, L, CPI = 16, 12, 4, 4, 2
# Planted token vectors carry no [CLS] / [SEP]: every token is a word.
MODEL_CFG = {"d": 16, "layers": 1, "heads": 2, "ff": 32, "dropout": 0.1, "words": "all"}


def planted_store(path: Path, n_img: int, seed: int, w: np.ndarray) -> FeatureStore:
    """Each caption's words are noisy linear images (w) of some of its image's regions."""
    rng = np.random.default_rng(seed)
    n_cap = n_img * CPI
    with StoreWriter(path, n_img, R, D_IMG, n_cap, L, D_TXT) as wr:
        regions = rng.normal(size=(n_img, R, D_IMG)).astype(np.float32)
        counts = rng.integers(3, R + 1, size=n_img)
        regions[np.arange(R)[None, :] >= counts[:, None]] = 0
        boxes = rng.uniform(size=(n_img, R, 6)).astype(np.float32)
        wr.write_images(0, regions, boxes, counts)
        tokens = np.zeros((n_cap, L, D_TXT), np.float32)
        tcounts = rng.integers(2, L + 1, size=n_cap)
        for j in range(n_cap):
            picks = rng.integers(0, counts[j // CPI], size=tcounts[j])
            tokens[j, :tcounts[j]] = regions[j // CPI, picks] @ w + 0.3 * rng.normal(size=(tcounts[j], D_TXT))
        wr.write_captions(0, tokens, tcounts)
        wr.finish([str(i) for i in range(n_img)], [f"{i}.png" for i in range(n_img)],
                  [f"caption {j}" for j in range(n_cap)], np.repeat(np.arange(n_img), CPI), {"test": True})
    return FeatureStore(path)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    w = np.random.default_rng(99).normal(size=(D_IMG, D_TXT)) / np.sqrt(D_IMG)
    return planted_store(root / "train", 48, 1, w), planted_store(root / "val", 20, 2, w)


def make_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("alignment", MODEL_CFG, D_IMG, D_TXT)


def loss_fn(model, batch):
    return triplet_loss(model(batch), positive_mask(batch)), {}


def validator(val):
    return lambda m: retrieval_metrics(score_store(m, val, "cpu", progress=False), val.caption_image)


def train(stores, ckpt_dir, epochs=3, lr=3e-3, **kw):
    train_store, val = stores
    model = make_model()
    result = fit(model, loss_fn, train_store, validator(val), OptimConfig(lr_decay_epochs=[], epochs=epochs, batch_size=16, lr=lr),
                 seed=0, device="cpu", checkpoint_dir=ckpt_dir, **kw)
    return model, result


def test_training_lowers_loss_and_beats_chance(stores, tmp_path):
    model, result = train(stores, tmp_path, epochs=6)
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < 0.7 * losses[0]
    # Chance on 20 images x 2 captions: rsum ~ (10 + 42 + 70) i2t + (5 + 25 + 50) t2i = 202.
    assert result.best_metrics["rsum"] > 300
    assert result.best_epoch == int(np.argmax([row["val_rsum"] for row in result.history]))
    # The model comes back holding the best epoch's weights.
    assert validator(stores[1])(model)["rsum"] == pytest.approx(result.best_metrics["rsum"])


def test_resume_after_interruption_matches_uninterrupted_run(stores, tmp_path):
    full, full_result = train(stores, tmp_path / "a")

    def interrupt(epoch, row):
        if epoch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(stores, tmp_path / "b", on_epoch_end=interrupt)
    seen = []
    resumed, resumed_result = train(stores, tmp_path / "b", on_epoch_end=lambda e, r: seen.append(e))
    assert seen == [1, 2]                                        # epoch 0 came from the checkpoint
    assert resumed_result.history == full_result.history
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_resume_matches_uninterrupted_with_teacher_neighbour_batches(stores, tmp_path):
    from aladin.training.batching import neighbour_order

    train_store = stores[0]
    neighbours = (np.asarray(train_store.caption_image)[:, None] + np.arange(1, 4)[None]) % train_store.n_images
    seen_orders = []

    def order(rng):
        out = neighbour_order(train_store.caption_image, neighbours, 4, rng)
        seen_orders.append(out)
        return out

    full, full_result = train(stores, tmp_path / "a", pair_order=order)
    assert not np.array_equal(seen_orders[0], seen_orders[1])          # a new order every epoch

    def interrupt(epoch, row):
        if epoch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(stores, tmp_path / "b", pair_order=order, on_epoch_end=interrupt)
    resumed, resumed_result = train(stores, tmp_path / "b", pair_order=order)
    assert resumed_result.history == full_result.history
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_stale_checkpoint_of_other_params_is_not_resumed(stores, tmp_path):
    train(stores, tmp_path, epochs=1)
    seen = []
    _, result = train(stores, tmp_path, epochs=2, lr=1e-3, on_epoch_end=lambda e, r: seen.append(e))
    assert seen == [0, 1] and len(result.history) == 2


def test_mlflow_run_records_params_metrics_and_artifacts(stores, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("DVC_ROOT", str(tmp_path))              # the store lands at $DVC_ROOT/mlflow.db
    monkeypatch.setenv("DVC_EXP_NAME", "exp-test")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    artifact = tmp_path / "out.json"
    artifact.write_text("{}")
    params = {"seed": 0, "teacher": {"optim": {"lr": 3e-3}, "margin": 0.2}}
    with mlflow_run("teacher", params, TrackingParams(enabled=True, experiment="t")) as run:
        _, result = train(stores, None, epochs=2, run=run)
        run.log_artifact(artifact)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    data = client.get_run(run.run_id).data
    assert data.params == {"seed": "0", "teacher.optim.lr": "0.003", "teacher.margin": "0.2"}
    assert data.tags["stage"] == "teacher" and data.tags["dvc_exp_name"] == "exp-test"
    history = client.get_metric_history(run.run_id, "val_rsum")
    assert [(m.step, m.value) for m in history] == [(r["epoch"], r["val_rsum"]) for r in result.history]
    assert [a.path for a in client.list_artifacts(run.run_id)] == ["out.json"]
    assert client.get_run(run.run_id).info.status == "FINISHED"


def test_tracking_failure_does_not_raise(tmp_path):
    with mlflow_run("teacher", {"a": 1}, TrackingParams(enabled=True, experiment="aladin"), tracking_uri="bogus://nowhere") as run:
        run.log_metrics({"x": 1.0}, step=0)
        run.log_artifact(tmp_path)
    assert not run.active
    with mlflow_run("teacher", {"a": 1}, TrackingParams(enabled=False, experiment="x")) as off:
        off.log_metrics({"x": 1.0})
    assert not off.active


def test_finished_checkpoints_are_removed_and_live_ones_kept(tmp_path):
    """A run DVC restored from its run cache after an interruption leaves checkpoints/<name>/
    behind: it goes once models/<name>.pt is newer; a checkpoint still to resume stays."""
    import os

    from aladin.training.loop import remove_finished_checkpoints

    ckpt, models = tmp_path / "checkpoints", tmp_path / "models"
    for name in ("teacher", "student"):
        (ckpt / name).mkdir(parents=True)
        (ckpt / name / "last.pt").write_bytes(b"x")
    models.mkdir()
    (models / "teacher.pt").write_bytes(b"m")
    os.utime(ckpt / "teacher" / "last.pt", (1, 1))                  # the checkpoint is older
    assert remove_finished_checkpoints(ckpt, models) == [ckpt / "teacher"]
    assert (ckpt / "student" / "last.pt").is_file() and not (ckpt / "teacher").exists()


def test_resumed_run_relogs_history_and_names_the_run_it_resumed(stores, tmp_path):
    class Tracker:
        def __init__(self, run_id):
            self.run_id, self.metrics, self.tags = run_id, [], {}

        def log_metrics(self, metrics, step=None):
            self.metrics.append((step, metrics["val_rsum"]))

        def set_tags(self, tags):
            self.tags.update(tags)

    def interrupt(epoch, row):
        if epoch == 0:
            raise KeyboardInterrupt

    first = Tracker("run-1")
    with pytest.raises(KeyboardInterrupt):
        train(stores, tmp_path, epochs=2, run=first, on_epoch_end=interrupt)
    second = Tracker("run-2")
    _, result = train(stores, tmp_path, epochs=2, run=second)
    assert second.tags == {"resumed_from_run": "run-1", "resumed_after_epoch": 0}
    assert [s for s, _ in second.metrics] == [0, 1] and second.metrics[0] == first.metrics[0]


def test_pipeline_key_separates_reused_experiment_names(tmp_path, monkeypatch):
    from aladin.tracking import pipeline_key

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_EXP_NAME", "t005")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "a" * 40)
    (tmp_path / "params.yaml").write_text("distill: {temperature: 0.05}\n")
    first = pipeline_key()
    assert first[1] == "t005" and pipeline_key() == first          # every stage of one execution
    (tmp_path / "params.yaml").write_text("distill: {temperature: 0.07}\n")
    assert pipeline_key()[0] != first[0] and pipeline_key()[1] == "t005"
    (tmp_path / "params.yaml").write_text("distill: {temperature: 0.05}\n")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "b" * 40)
    assert pipeline_key()[0] != first[0]


def test_parent_run_carries_the_whole_params_yaml(tmp_path, monkeypatch):
    """A data ablation's parent compares on `data.family_size` though no tracked stage reads it."""
    from mlflow.tracking import MlflowClient

    from aladin.params import TrackingParams
    from aladin.tracking import mlflow_run
    from tests._params import write_params

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_EXP_NAME", "fam1")
    write_params(tmp_path, {"data": {"family_size": 1}, "distill": {"temperature": 1}})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with mlflow_run("distill", {"distill": {"temperature": 1.0}}, TrackingParams(enabled=True, experiment="t"),
                    tracking_uri=uri) as run:
        assert run.active
    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(run.parent_id).data.params
    assert parent["data.family_size"] == "1" and parent["teacher.optim.lr"] == "0.001"
    assert parent["distill.temperature"] == "1"                  # as written, not the stage's 1.0
    assert client.get_run(run.run_id).data.params["distill.temperature"] == "1.0"
