"""Multi-process training (DDP over gloo on CPU): sharding, gradient averaging, rank-0-only outputs,
resume, and the `nproc` relaunch of a real stage script.

The 2-process runs go through torch's elastic launcher (the machinery behind torchrun), so the
workers see torchrun's environment exactly as a `torchrun --standalone --nproc_per_node=2` launch.
One launch runs every multi-process scenario and the tests check its results against references
computed here in one process.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from aladin import distributed
from aladin.training.distillation import CachedTeacher, LossConfig, StudentLoss
from aladin.errors import ConfigError
from aladin.training.cross import list_logits
from aladin.training.losses import multi_positive_list_loss, positive_mask, triplet_loss
from aladin.models.factory import build_model
from aladin.store import FeatureStore
from aladin.training.loop import OptimConfig, epoch_batches, epoch_seed, fit

from _stores import random_store
from tests._params import run_stage, write_params

D_IMG, D_TXT, R, L, CPI = 12, 10, 3, 4, 2
TEACHER = {"d": 16, "layers": 1, "heads": 2, "ff": 32, "dropout": 0.1}
STUDENT = {"d_model": 16, "layers": 1, "heads": 2, "ff": 16, "dim": 8}
CROSS = {"fusion": "transformer", "width": 16, "layers": 1, "heads": 2, "ff": 16, "inputs": "features", "residual": False}
STEP = dict(batch_size=8, lr=1e-2, weight_decay=0.5)     # the one-step checks' optimiser
CLIP = 0.05


def teacher_loss(model, batch):
    return triplet_loss(model(batch), positive_mask(batch)), {}


def cross_loss(store: FeatureStore):
    """Listwise cross-encoder loss; each query's negatives are the next items (any wrong ones do)."""
    img, cap = np.arange(store.n_images), np.arange(store.n_captions)
    neg_img = (store.caption_image[:, None] + [[1, 2]]) % store.n_images           # per caption
    neg_cap = (cap[CPI * img][:, None] + [[CPI, CPI + 1]]) % store.n_captions         # per image

    def loss(model, batch):
        caps = batch.caption_index.numpy()
        imgs = store.caption_image[caps]
        t2i_items = np.concatenate([imgs[:, None], neg_img[caps]], 1)
        i2t_items = np.concatenate([caps[:, None], neg_cap[imgs]], 1)
        t2i, i2t = list_logits(model, store, imgs, caps, t2i_items, i2t_items, "cpu")
        first = torch.zeros(t2i.shape, dtype=torch.bool)
        first[:, 0] = True
        return multi_positive_list_loss(t2i, first) + multi_positive_list_loss(i2t, first), {}
    return loss


def model(kind: str, cfg: dict, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(kind, cfg, D_IMG, D_TXT)


def weights(m: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in m.state_dict().items()}


def val_metric(m: torch.nn.Module) -> dict[str, float]:
    # Deterministic in the weights, so selection differs between epochs (not a retrieval metric).
    return {"rsum": float(sum(p.double().sum() for p in m.parameters()))}


def _worker(root: str) -> dict:
    """One rank of the 2-process launch: every scenario, results returned to the test process."""
    torch.set_num_threads(1)
    device = distributed.setup(torch.device("cpu"))
    rank, root = distributed.rank(), Path(root)
    train = FeatureStore(root / "train")
    out: dict = {"rank": rank, "world": distributed.world_size(), "backend": torch.distributed.get_backend()}
    cfg = OptimConfig(lr_decay_epochs=[], epochs=3, batch_size=6, lr=3e-3)

    # Each rank names its own checkpoint folder: only rank 0's may receive last.pt.
    m = model("alignment", TEACHER)
    res = fit(m, teacher_loss, train, val_metric, cfg, 0, device, root / f"full{rank}", config={"t": 1})
    out["full"] = (weights(m), res.history, res.best_epoch, sorted(os.listdir(root / f"full{rank}"))
                   if (root / f"full{rank}").exists() else [])

    def interrupt(epoch, row):
        if epoch == 0:
            raise KeyboardInterrupt

    try:
        fit(model("alignment", TEACHER), teacher_loss, train, val_metric, cfg, 0, device, root / "resume",
            config={"t": 1}, on_epoch_end=interrupt)
    except KeyboardInterrupt:
        pass
    seen: list[int] = []
    m = model("alignment", TEACHER)
    res = fit(m, teacher_loss, train, val_metric, cfg, 0, device, root / "resume", config={"t": 1},
              on_epoch_end=lambda e, r: seen.append(e))
    out["resumed"] = (weights(m), res.history, seen)

    # One global step: 16 pairs = one 8-pair shard per rank, no dropout; unclipped, then clipped.
    for name, clip in (("step", 0.0), ("step_clip", CLIP)):
        m = model("alignment", {**TEACHER, "dropout": 0.0})
        res = fit(m, teacher_loss, FeatureStore(root / "step"), val_metric,
                  OptimConfig(lr_decay_epochs=[], epochs=1, grad_clip=clip, **STEP), 0, device, None)
        out[name] = (weights(m), res.history[0]["train_loss"])

    # The student (distillation from a cached teacher) and the cross-encoder (mined negatives).
    teacher = CachedTeacher(model("alignment", TEACHER, seed=1), train)
    loss = StudentLoss(LossConfig(mode="distill+triplet"), teacher)
    m = model("matching", STUDENT)
    res = fit(m, loss, train, val_metric, cfg, 0, device, None, on_epoch_start=loss.on_epoch_start)
    out["student"] = (weights(m), res.history)
    m = model("cross", CROSS)
    fit(m, cross_loss(train), train, val_metric, OptimConfig(lr_decay_epochs=[], epochs=1, batch_size=8, lr=3e-3), 0, device, None)
    out["cross"] = weights(m)
    distributed.teardown()
    return out


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> tuple[Path, dict[int, dict]]:
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    root = tmp_path_factory.mktemp("ddp")
    random_store(root / "train", 20, CPI, R, L, D_IMG, D_TXT, seed=1)
    random_store(root / "step", 8, CPI, R, L, D_IMG, D_TXT, seed=2)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=2, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0)
    return root, elastic_launch(config, _worker)(str(root))


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_ranks_end_identical_and_only_rank_0_checkpoints(ddp):
    _, out = ddp
    assert out[0]["world"] == out[1]["world"] == 2 and out[0]["backend"] == "gloo"
    for name in ("full", "resumed", "student"):
        assert_same(out[0][name][0], out[1][name][0])
        assert out[0][name][1] == out[1][name][1]                # the same history on every rank
    assert_same(out[0]["cross"], out[1]["cross"])
    (w, history, best_epoch, files), (_, _, _, files1) = out[0]["full"], out[1]["full"]
    assert files == ["last.pt"] and files1 == []
    assert [r["epoch"] for r in history] == [0, 1, 2]
    assert best_epoch == int(np.argmax([r["val_rsum"] for r in history]))
    # The returned weights are the selected epoch's (val_metric is a function of the weights).
    assert sum(v.astype(np.float64).sum() for k, v in w.items()) == pytest.approx(history[best_epoch]["val_rsum"])


def test_resume_under_ddp_matches_the_uninterrupted_run(ddp):
    _, out = ddp
    for rank in (0, 1):
        w, history, seen = out[rank]["resumed"]
        assert seen == [1, 2]                                    # epoch 0 came from rank 0's checkpoint
        assert history == out[rank]["full"][1]
        assert_same(w, out[rank]["full"][0])


def shard_grads(m: torch.nn.Module, store: FeatureStore, idx: np.ndarray) -> tuple[float, list[torch.Tensor]]:
    m.zero_grad()
    loss, _ = teacher_loss(m, store.pair_batch(idx))
    loss.backward()
    return loss.item(), [p.grad.clone() for p in m.parameters()]


def norm(grads: list[torch.Tensor]) -> float:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()


def clipped(grads: list[torch.Tensor]) -> list[torch.Tensor]:
    return [g * min(1.0, CLIP / (norm(grads) + 1e-6)) for g in grads]


def adam_step(grads: list[torch.Tensor]) -> dict[str, np.ndarray]:
    """The reference: one Adam step (with weight decay) from the initial weights."""
    m = model("alignment", {**TEACHER, "dropout": 0.0})
    opt = torch.optim.Adam(m.parameters(), lr=STEP["lr"], weight_decay=STEP["weight_decay"])
    for p, g in zip(m.parameters(), grads):
        p.grad = g
    opt.step()
    return weights(m)


def test_one_ddp_step_is_the_step_of_the_mean_gradient(ddp):
    root, out = ddp
    store = FeatureStore(root / "step")
    order = np.random.default_rng(epoch_seed(0, 0)).permutation(store.n_captions)
    m = model("alignment", {**TEACHER, "dropout": 0.0}).train()
    (loss0, g0), (loss1, g1) = (shard_grads(m, store, order[r * 8:(r + 1) * 8]) for r in (0, 1))
    mean = [(a + b) / 2 for a, b in zip(g0, g1)]
    assert norm(mean) > CLIP                                     # the clipped run does clip
    expected = {"step": adam_step(mean), "step_clip": adam_step(clipped(mean))}
    for rank in (0, 1):
        for name, ref in expected.items():
            w, train_loss = out[rank][name]
            assert train_loss == pytest.approx((loss0 + loss1) / 2, rel=1e-6)   # the mean over ranks
            for k in ref:
                np.testing.assert_allclose(w[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=f"{name} {k}")

    # The checks can tell: summing the shards' gradients, or clipping each before averaging,
    # gives another step.
    def differs(w, ref):
        return any(not np.allclose(w[k], ref[k], rtol=1e-5, atol=1e-6) for k in ref)

    assert differs(out[0]["step"][0], adam_step([a + b for a, b in zip(g0, g1)]))
    assert differs(out[0]["step_clip"][0],
                   adam_step([(a + b) / 2 for a, b in zip(clipped(g0), clipped(g1))]))


def test_epoch_batches_shard_one_permutation():
    order = np.random.default_rng(0).permutation(25)
    single = epoch_batches(order, 5)                             # one process: today's batches
    assert [b.tolist() for b in single] == [order[i:i + 5].tolist() for i in range(0, 25, 5)]
    shards = [epoch_batches(order, 5, world_size=2, rank=r) for r in (0, 1)]
    assert [len(b) for b in shards[0]] == [5, 5, 3] and [len(b) for b in shards[1]] == [5, 5, 2]
    for i in range(3):                                           # step i: rank 0's shard, then rank 1's
        assert np.concatenate([shards[0][i], shards[1][i]]).tolist() == order[i * 10:(i + 1) * 10].tolist()
    # A 3-pair tail would leave rank 1 a lone pair (no negatives): the whole step goes, on both ranks.
    shards = [epoch_batches(order[:23], 5, world_size=2, rank=r) for r in (0, 1)]
    assert [len(b) for b in shards[0]] == [5, 5] == [len(b) for b in shards[1]]


def test_nproc_is_checked(monkeypatch):
    with pytest.raises(ConfigError, match="teacher.nproc: must be >= 1"):
        distributed.check_nproc(0, torch.device("cpu"), "teacher.nproc")
    distributed.check_nproc(4, torch.device("cpu"))              # CPU processes: gloo, any number
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match="distill.nproc: 3 processes but 2 visible GPU"):
        distributed.check_nproc(3, torch.device("cuda"), "distill.nproc")


def test_stage_relaunches_itself_under_torchrun(tmp_path):
    """`python -m stages.teacher` with teacher.nproc=2: two workers, one set of outputs, one MLflow run."""
    random_store(tmp_path / "features" / "train", 12, CPI, R, L, D_IMG, D_TXT, seed=3)
    random_store(tmp_path / "features" / "val", 6, CPI, R, L, D_IMG, D_TXT, seed=4)
    params = {"seed": 0, "tracking": {"enabled": True, "experiment": "ddp"},
              "teacher": {"model": {"d": 8, "heads": 2, "ff": 16}, "optim": {"epochs": 2, "batch_size": 4},
                          "device": "cpu", "threads": 1, "nproc": 2}}
    write_params(tmp_path, params)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    for k in distributed.TORCHRUN_ENV:
        env.pop(k, None)
    proc = run_stage("teacher", tmp_path, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "relaunching under torchrun" in proc.stderr and "DDP: 2 processes, backend gloo" in proc.stderr
    assert (tmp_path / "models" / "teacher.pt").is_file() and not (tmp_path / "checkpoints" / "teacher").exists()
    history = (tmp_path / "plots" / "teacher_history.csv").read_text().splitlines()
    assert len(history) == 3
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("ddp").experiment_id], "tags.stage = 'teacher'")
    assert len(runs) == 1 and runs[0].data.params["teacher.nproc"] == "2"      # rank 0's run only

    params["teacher"]["nproc"] = 0
    write_params(tmp_path, params)
    proc = run_stage("teacher", tmp_path, env=env, timeout=60)
    assert proc.returncode == 2 and "teacher.nproc: must be >= 1" in proc.stderr
