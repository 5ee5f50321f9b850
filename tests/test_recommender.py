"""The recommender family: its models, losses and ranking metrics, and the whole lab workflow on it."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from conftest import listed_and_compared
from lab import ranking, runs
from lab.cli import main
from lab.compress import compress
from lab.config import load_config
from lab.data.ratings import RatingsDataConfig, RatingsDataModule
from lab.errors import ConfigError, LabError
from lab.evaluate import evaluate, scalar_figures
from lab.families import build_datamodule, build_module, family
from lab.models.recommender import PRUNED, Recommender, RecommenderConfig

pytestmark = pytest.mark.usefixtures("one_thread")

WORLD = {"data.n_users": 120, "data.n_items": 60, "data.interactions": 12, "data.batch_size": 32}
TINY = {**WORLD, "trainer.max_steps": 30, "trainer.val_check_interval": 15, "trainer.limit_val_batches": 2,
        "optimizer.warmup_steps": 2, "model.dim": 32, "model.hidden": 16}


@pytest.fixture(scope="module")
def dm() -> RatingsDataModule:
    d = RatingsDataModule(RatingsDataConfig(n_users=120, n_items=60, interactions=12, batch_size=32), seed=3,
                          num_train_samples=500)
    d.setup()
    return d


# --------------------------------------------------------------------------- the models


def test_mf_scores_are_dot_products_plus_the_item_bias() -> None:
    model = Recommender(RecommenderConfig(kind="mf", n_users=4, n_items=6, dim=3))
    torch.nn.init.normal_(model.items.bias)
    users = torch.tensor([0, 3])
    expected = model.users.weight[users] @ model.items.embedding.weight.T + model.items.bias
    assert torch.allclose(model(users), expected)


def test_the_two_tower_model_reads_item_features_and_scores_cosines() -> None:
    c = RecommenderConfig(kind="two-tower", n_users=4, n_items=6, dim=4, hidden=8, item_features=3, temperature=0.5)
    model = Recommender(c).eval()
    before = model(torch.arange(4))
    assert before.abs().max() <= 1 / c.temperature + 1e-5  # cosines over the temperature
    model.items.features[2] = torch.tensor([1.0, 0.0, 1.0])  # item 2 gets genres: only its scores move
    after = model(torch.arange(4))
    assert not torch.allclose(after[:, 2], before[:, 2]) and torch.allclose(after[:, [0, 1, 3, 4, 5]],
                                                                          before[:, [0, 1, 3, 4, 5]])


@pytest.mark.parametrize("changes,field", [({"kind": "svd"}, "model.kind"), ({"dim": 0}, "model.dim"),
                                           ({"temperature": 0.0}, "model.temperature"), ({"n_items": 0}, "model.n_items")])
def test_bad_model_settings_are_refused(changes: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        RecommenderConfig(**changes).validate()


# --------------------------------------------------------------------------- losses


def test_bpr_loss_is_the_log_sigmoid_of_the_score_gap() -> None:
    scores = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    y = torch.tensor([[0, 2], [1, 2]])  # (chosen, negative)
    expected = -(math.log(1 / (1 + math.exp(-3.0))) + math.log(1 / (1 + math.exp(2.0)))) / 2
    assert ranking.bpr_loss(scores, y).item() == pytest.approx(expected, rel=1e-6)
    pruned = scores.clone()
    pruned[1, 1] = PRUNED  # a chosen item that pruning removed teaches nothing
    assert ranking.bpr_loss(pruned, y).item() == pytest.approx(-math.log(1 / (1 + math.exp(-3.0))), rel=1e-6)


def test_in_batch_loss_treats_the_other_users_choices_as_negatives() -> None:
    scores = torch.tensor([[5.0, 1.0, 0.0], [0.0, 4.0, 2.0], [0.0, 3.0, 1.0]])
    y = torch.tensor([[0, 9], [1, 9], [1, 9]])  # users 1 and 2 chose the same item: not a negative for each other
    logits = torch.tensor([[5.0, 1.0, 1.0], [0.0, 4.0, -math.inf], [0.0, -math.inf, 3.0]])
    expected = torch.nn.functional.cross_entropy(logits, torch.arange(3))
    assert ranking.in_batch_loss(scores, y).item() == pytest.approx(expected.item(), rel=1e-6)


# --------------------------------------------------------------------------- ranking metrics


def test_ranks_leave_out_seen_items_and_count_ties_against_the_held_out_item() -> None:
    scores = torch.tensor([[0.9, 0.5, 0.5, 0.1, 0.8], [0.1, 0.2, 0.3, 0.4, 0.5]])
    y = torch.tensor([[1, 0, 4, -1], [4, 3, -1, -1]])  # user 0: held out item 1, has seen items 0 and 4
    rank, masked = ranking.ranks(scores, y)
    assert rank.tolist() == [1, 0]  # item 2 ties with item 1: counted above it; seen items 0 and 4 are out
    assert math.isinf(masked[0, 0]) and math.isinf(masked[0, 4])
    hit, ndcg = ranking.hits(torch.tensor([0, 1, 9, 10]))
    assert hit.tolist() == [1, 1, 1, 0] and ndcg.tolist() == pytest.approx([1.0, 1 / math.log2(3), 1 / math.log2(11), 0])


def test_quality_ranks_the_model_beside_popularity_random_and_the_oracle(dm: RatingsDataModule) -> None:
    oracle = ranking.quality(lambda users: torch.as_tensor(dm.truth)[users], dm, "test")
    assert oracle["ndcg_at_10"] == pytest.approx(oracle["oracle_ndcg_at_10"]) and oracle["users"] == dm.split_sizes["test"]
    assert oracle["ndcg_at_10"] > oracle["popularity_ndcg_at_10"] > oracle["random_ndcg_at_10"] > 0
    assert oracle["ndcg_vs_popularity"] == pytest.approx(oracle["ndcg_at_10"] / oracle["popularity_ndcg_at_10"])
    # Scoring by popularity alone: the same list for everyone, so little of the catalogue is covered.
    popular = ranking.quality(ranking.popularity_scores(dm), dm, "test")
    assert popular["coverage_at_10"] < oracle["coverage_at_10"]
    assert popular["ndcg_at_10"] == pytest.approx(popular["popularity_ndcg_at_10"], abs=0.03)
    # A model that scores every item alike ranks each held-out item last: no free hits from ties.
    flat = ranking.quality(lambda users: torch.zeros(len(users), dm.n_items), dm, "test")
    assert flat["recall_at_10"] == 0 and flat["loss"] == pytest.approx(
        np.mean([math.log(dm.n_items - len(dm.history(u, "test"))) for u in dm.split.held["test"][0]]), rel=1e-6)
    # Deterministic: the seeded baselines give the same figures twice.
    assert ranking.quality(ranking.popularity_scores(dm), dm, "test") == popular


def test_a_users_top_k_and_a_reports_examples(dm: RatingsDataModule) -> None:
    user = int(dm.split.held["test"][0][0])
    rec = ranking.top_k(lambda users: torch.as_tensor(dm.truth)[users], dm, user)
    items = [r["item"] for r in rec["top"]]
    assert len(items) == 10 and not set(items) & set(rec["history"])  # never what the user already chose
    scores = [r["score"] for r in rec["top"]]
    assert scores == sorted(scores, reverse=True) and rec["held_out"] == dm.held_out(user, "test")
    assert (rec["held_out_rank"] < 10) == any(r["held_out"] for r in rec["top"])
    q = ranking.quality(lambda users: torch.as_tensor(dm.truth)[users], dm, "test")
    assert ranking.users_with_examples(q)[0] == user
    rows = ranking.example_rows(q, user)
    assert [r["item"] for r in rows] == items and rows[0]["name"] == dm.item_name(items[0])
    with pytest.raises(LabError, match="pick one of"):
        ranking.example_rows(q, 10_000)
    with pytest.raises(LabError, match="not in the data"):
        ranking.top_k(lambda users: torch.zeros(len(users), dm.n_items), dm, -1)


# --------------------------------------------------------------------------- the family in the lab


def test_the_family_takes_its_sizes_from_the_data(dm: RatingsDataModule) -> None:
    fam = family("recommender")
    assert fam.task == "ranking" and fam.metric == "val/ndcg_at_10" and fam.mode == "max"
    c = fam.complete(RecommenderConfig(kind="two-tower"), dm)
    assert (c.n_users, c.n_items, c.item_features) == (120, 60, 8)
    with pytest.raises(ConfigError, match="model.n_items"):
        fam.complete(RecommenderConfig(n_items=61), dm)
    with pytest.raises(ConfigError, match="model.n_users"):
        load_config("recommender-mf", {**WORLD, "model.n_users": 7})
    cfg = load_config("recommender-two-tower", WORLD)
    module = build_module(cfg, dm)  # the features ride in the model (and so in every checkpoint)
    assert torch.equal(module.model.items.features, torch.as_tensor(dm.item_features))


@pytest.fixture(scope="module")
def mf_run(tmp_path_factory: pytest.TempPathFactory) -> runs.Run:
    from lab.train import fit

    return fit(load_config("recommender-mf", TINY), runs_root=tmp_path_factory.mktemp("runs"), progress=False)


@pytest.mark.slow
def test_fit_evaluate_and_the_cli_report_ranking_figures(mf_run: runs.Run, capsys: pytest.CaptureFixture) -> None:
    assert mf_run.status == "completed" and mf_run.config["model"]["n_items"] == 60
    assert {"test/ndcg_at_10", "test/recall_at_10", "test/loss"} <= set(mf_run.summary["test"])
    report = evaluate(mf_run, repeats=1, warmup=0)
    q = report["quality"]
    assert report["kind"] == "ranking" and q["primary"]["name"] == "ndcg_at_10" and q["primary"]["higher_is_better"]
    assert 0 <= q["ndcg_at_10"] <= q["recall_at_10"] <= 1 and 0 < q["coverage_at_10"] <= 1
    assert set(scalar_figures(report)) >= {f"test/{k}" for k in ranking.SCALARS}
    assert json.loads(mf_run.eval_report("best").read_text())["quality"]["examples"][0]["top_names"]
    assert main(["evaluate", mf_run.name, "--runs_dir", str(mf_run.path.parents[1]), "--repeats", "1"]) == 0
    assert "test/ndcg_at_10" in capsys.readouterr().out


@pytest.mark.slow
def test_int8_tables_and_pruning_rare_items_are_measured(mf_run: runs.Run) -> None:
    from lab.compress.prune import load_pruned
    from lab.evaluate import load_checked, load_data, run_config

    int8 = compress(mf_run, "int8-dynamic", repeats=1, warmup=0)
    assert int8["backend"] == "torch.ao.quantization.quantize_dynamic" and int8["deltas"]["size_ratio"] < 0.6
    assert "Embedding tables int8 per row" in int8["notes"]["quantized"]
    assert abs(int8["deltas"]["quality_delta"]) < 0.05  # NDCG@10 barely moves
    pruned = compress(mf_run, "prune-structured", repeats=1, warmup=0, sparsity=0.5, steps=0)
    assert pruned["notes"]["importance"].startswith("How often each row's item was chosen")
    assert pruned["notes"]["kept"] == {"items": "60 -> 30"} and pruned["deltas"]["size_ratio"] < 0.9
    assert pruned["params"] == mf_run.summary["model"]["params"] - 30 * (32 + 1)  # 30 rows and biases fewer
    model = load_pruned(mf_run.compressed_dir("prune-structured"))
    dm = load_data(run_config(mf_run), "test")
    kept = set(model.items.kept.tolist())
    counts = dm.item_counts
    assert min(counts[list(kept)]) >= max(np.delete(counts, list(kept)))  # the most chosen half stays
    scores = model(torch.arange(5))
    assert (scores[:, [i for i in range(60) if i not in kept]] == PRUNED).all()
    original = load_checked(mf_run).model
    assert torch.allclose(scores[:, sorted(kept)], original(torch.arange(5))[:, sorted(kept)])


@pytest.mark.slow
def test_export_and_plan_work_on_it(mf_run: runs.Run) -> None:
    from lab.export import export, load_safetensors
    from lab.plan import plan

    folder = export(mf_run, "onnx")
    assert (folder / "model.onnx").exists() and "user ids" in (folder / "README.md").read_text()
    model = load_safetensors(export(mf_run, "safetensors"))
    assert model(torch.tensor([0, 1])).shape == (2, 60)
    p = plan(load_config("recommender-mf", TINY), device="cpu", with_recommendation=False)
    assert p.model.params == mf_run.summary["model"]["params"] and p.flops_per_unit > 0


@pytest.mark.slow
def test_the_two_tower_model_trains_and_evaluates(tmp_path: Path) -> None:
    from lab.checkpoints import load_module
    from lab.train import fit

    run = fit(load_config("recommender-two-tower", TINY), runs_root=tmp_path, progress=False)
    q = evaluate(run, repeats=1, warmup=0)["quality"]
    assert run.status == "completed" and q["ndcg_at_10"] > q["random_ndcg_at_10"]
    module = load_module(run)  # the item features came back from the checkpoint, no data needed
    dm = build_datamodule(load_config("recommender-two-tower", TINY))
    dm.setup()
    assert torch.equal(module.model.items.features, torch.as_tensor(dm.item_features))


class _StopAt(L.Callback):
    def __init__(self, step: int, stop: threading.Event) -> None:
        self.step, self.stop = step, stop

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            self.stop.set()


@pytest.mark.slow
def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    """The negatives are part of the batches: after a resume the same batches come, so the same weights."""
    from lab.checkpoints import load_checkpoint
    from lab.errors import RunInterrupted
    from lab.train import fit

    cfg = {**TINY, "trainer.deterministic": True, "trainer.checkpoint_every_n_steps": 5}
    whole = fit(load_config("recommender-mf", cfg), runs_root=tmp_path / "a", progress=False, test=False)
    stop = threading.Event()
    with pytest.raises(RunInterrupted):
        fit(load_config("recommender-mf", cfg), runs_root=tmp_path / "b", progress=False, test=False,
            stop=stop, callbacks=[_StopAt(12, stop)])
    (paused,) = runs.list_runs(tmp_path / "b")
    done = fit(None, runs_root=tmp_path / "b", progress=False, test=False, resume=paused)
    a = load_checkpoint(whole.checkpoint("last"))["state_dict"]
    b = load_checkpoint(done.checkpoint("last"))["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_the_run_page_shows_ranking_figures_and_a_users_top_10(mf_run: runs.Run, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.testing.v1 import AppTest

    report = evaluate(mf_run, repeats=1, warmup=0)
    repo = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("LAB_RUNS_DIR", str(mf_run.path.parents[1]))
    monkeypatch.chdir(repo)
    at = AppTest.from_file(str(repo / "dashboard" / "pages" / "run.py"), default_timeout=90)
    at.query_params["run"] = mf_run.name
    at.run()
    assert not at.exception
    frames = [d.value for d in at.dataframe]
    figures = next(f for f in frames if "figure" in f.columns)
    assert {"test/ndcg_at_10", "test/popularity_ndcg_at_10", "test/coverage_at_10"} <= set(figures["figure"])
    picker = next(s for s in at.selectbox if s.label == "User")
    users = ranking.users_with_examples(report["quality"])
    assert picker.options == [str(u) for u in users]
    top = next(f for f in frames if "held out (chosen next)" in f.columns)
    assert list(top["item"]) == [r["item"] for r in ranking.example_rows(report["quality"], users[0])]
    picker.set_value(users[1]).run()
    top = next(d.value for d in at.dataframe if "held out (chosen next)" in d.value.columns)
    assert list(top["item"]) == [r["item"] for r in ranking.example_rows(report["quality"], users[1])]


@pytest.mark.slow
def test_the_runs_and_compare_pages_show_a_recommender_run(mf_run: runs.Run, dashboard_page) -> None:
    listed_and_compared(dashboard_page, mf_run, "recommender", "test/ndcg_at_10")
