"""Implicit-feedback data: the planted synthetic world, MovieLens-style files, leave-last-out, negatives."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lab.data import DATAMODULES
from lab.data.ratings import PAD, RatingsDataConfig, RatingsDataModule, leave_last_out
from lab.data.ratings_source import ML100K_GENRES, Interactions, read_interactions, synthesize
from lab.errors import ConfigError, DataError

SMALL = {"n_users": 120, "n_items": 60, "interactions": 12}


def small_dm(samples: int = 2000, seed: int = 7, **changes) -> RatingsDataModule:
    dm = RatingsDataModule(RatingsDataConfig(**{**SMALL, "batch_size": 32, **changes}), seed=seed,
                           num_train_samples=samples)
    dm.setup()
    return dm


# --------------------------------------------------------------------------- the synthetic world


def test_the_synthetic_world_is_seeded_by_its_own_seed_not_the_runs() -> None:
    a, b = small_dm(seed=1), small_dm(seed=2)
    assert np.array_equal(a.data.items, b.data.items) and np.array_equal(a.truth, b.truth)
    c = small_dm(generator_seed=5)
    assert not np.array_equal(a.truth, c.truth)
    # The run's seed orders the training samples and draws the negatives.
    assert not torch.equal(a.datasets["train"].tensors[1], b.datasets["train"].tensors[1])


def test_the_world_has_its_planted_structure() -> None:
    c = RatingsDataConfig(n_users=400, n_items=200, interactions=20)
    data = synthesize(c)
    counts = np.bincount(data.items, minlength=c.n_items)
    # A long tail: the most chosen tenth of the items gets a large share of all choices.
    top = np.sort(counts)[::-1][: c.n_items // 10].sum() / counts.sum()
    assert top > 0.3
    # Users choose what they are planted to like: chosen items score higher in the truth than the rest.
    chosen = np.zeros((c.n_users, c.n_items), dtype=bool)
    chosen[data.users, data.items] = True
    assert data.truth[chosen].mean() > data.truth[~chosen].mean() + 1.0
    # Without popularity and taste, choices are uniform: no long tail.
    flat = np.bincount(synthesize(RatingsDataConfig(n_users=400, n_items=200, interactions=20, taste=0.0,
                                                    popularity=0.0)).items, minlength=200)
    assert np.sort(flat)[::-1][:20].sum() / flat.sum() < 0.2
    # Each user chooses an item once; two genres per item.
    pairs = data.users * c.n_items + data.items
    assert len(np.unique(pairs)) == len(pairs) and (data.item_features.sum(1) == 2).all()


# --------------------------------------------------------------------------- leave-last-out


def _toy(users: list[int], items: list[int], times: list[int], n_items: int = 10) -> Interactions:
    return Interactions(np.array(users), np.array(items), np.array(times), max(users) + 1, n_items,
                        np.zeros((n_items, 0), dtype=np.float32))


def test_leave_last_out_holds_out_the_newest_choices() -> None:
    # User 0 chose 5, 3, 8, 1 (times 10..40, listed out of order); user 1 only two items (too few to hold out).
    data = _toy([0, 0, 0, 0, 1, 1], [8, 5, 1, 3, 2, 4], [30, 10, 40, 20, 1, 2])
    s = leave_last_out(data, 1.0, 1.0, seed=0)
    assert s.held["test"][0].tolist() == [0] and s.held["test"][1].tolist() == [1]  # the newest
    assert s.held["val"][1].tolist() == [8]  # the one before
    assert s.seen["test"][0].tolist() == [5, 3, 8] and s.seen["val"][0].tolist() == [5, 3]
    train = sorted(zip(s.train_users.tolist(), s.train_items.tolist()))
    assert train == [(0, 3), (0, 5), (1, 2), (1, 4)]
    no_test = leave_last_out(data, 1.0, 0.0, seed=0)
    assert "test" not in no_test.held and no_test.held["val"][1].tolist() == [1]


def test_fractions_hold_out_a_share_of_the_users() -> None:
    dm = small_dm(val_fraction=0.5, test_fraction=0.25)
    eligible = SMALL["n_users"]  # every synthetic user makes >= 5 choices
    assert dm.split_sizes["val"] == round(0.5 * eligible) and dm.split_sizes["test"] == round(0.25 * eligible)
    assert dm.split_sizes["train"] == len(dm.data.users) - dm.split_sizes["val"] - dm.split_sizes["test"]


def test_evaluation_batches_carry_the_held_out_item_and_the_history() -> None:
    dm = small_dm()
    x, y = next(iter(dm.test_dataloader()))
    assert x.dtype == torch.int64 and y.shape[0] == len(x) and y.shape[1] >= 2
    for user, row in zip(x.tolist(), y):
        seen = row[1:][row[1:] != PAD].tolist()
        assert row[0].item() == dm.held_out(user, "test") and seen == dm.history(user, "test").tolist()
        assert row[0].item() not in seen and dm.held_out(user, "val") in seen  # validation's item came before
    assert dm.item_counts.sum() == dm.split_sizes["train"]


# --------------------------------------------------------------------------- negatives, seeded and resumable


def test_negatives_are_items_the_user_never_chose_in_training() -> None:
    dm = small_dm(samples=5000)
    users, pairs = dm.datasets["train"].tensors
    chosen = set(zip(dm.split.train_users.tolist(), dm.split.train_items.tolist()))
    assert all((u, p) in chosen for u, p in zip(users.tolist(), pairs[:, 0].tolist()))
    assert not any((u, n) in chosen for u, n in zip(users.tolist(), pairs[:, 1].tolist()))
    # Every train choice appears once per pass before any appears again.
    n = dm.split_sizes["train"]
    first_pass = set(zip(users[:n].tolist(), pairs[:n, 0].tolist()))
    assert first_pass == chosen


def test_the_nth_batch_is_the_same_on_every_run_and_after_a_resume() -> None:
    a, b = small_dm(), small_dm()
    batches = list(a.train_dataloader())
    assert all(torch.equal(p[1], q[1]) for p, q in zip(batches, b.train_dataloader()))
    loader = b.train_dataloader()
    loader.sampler.skip(5 * loader.batch_size)  # what ResumeState does after 5 batches
    resumed = next(iter(loader))
    assert torch.equal(resumed[0], batches[5][0]) and torch.equal(resumed[1], batches[5][1])


# --------------------------------------------------------------------------- MovieLens-style files


def write_ml100k(path: Path, rows: list[str], items: list[str] | None = None) -> Path:
    """A zip in MovieLens-100k's layout: ml-100k/u.data (tab separated) and ml-100k/u.item."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("ml-100k/u.data", "\n".join(rows) + "\n")
        if items is not None:
            z.writestr("ml-100k/u.item", "\n".join(items) + "\n")
    return path


def _item(i: int, title: str, genres: tuple[int, ...]) -> str:
    flags = ["1" if g in genres else "0" for g in range(len(ML100K_GENRES))]
    return "|".join([str(i), title, "01-Jan-1995", "", "http://x", *flags])


def ml_rows(n_users: int = 6, n_items: int = 9) -> list[str]:
    """Ids starting at 1 as in MovieLens, each user rating 6 items at increasing times."""
    rows = []
    for u in range(1, n_users + 1):
        for k in range(6):
            rows.append(f"{u}\t{(u + 2 * k) % n_items + 1}\t{1 + (u + k) % 5}\t{880000000 + 100 * u + k}")
    return rows


def test_a_movielens_zip_is_read_with_titles_and_genres(tmp_path: Path) -> None:
    items = [_item(i, f"Film {i} (1995)", (1, 8) if i % 2 else (5,)) for i in range(1, 10)]
    rows = ml_rows() + ["1\t3\t5\t880000999"]  # user 1 rates item 3 again later: counts once, at its first time
    zpath = write_ml100k(tmp_path / "ml-100k.zip", rows, items)
    dm = RatingsDataModule(RatingsDataConfig(path=str(zpath), batch_size=4), num_train_samples=50)
    dm.setup()
    assert (dm.n_users, dm.n_items) == (6, 9) and len(dm.data.users) == 36
    assert dm.item_features.shape == (9, len(ML100K_GENRES))
    assert dm.item_name(0) == "Film 1 (1995) (Action, Drama)" and dm.item_name(1) == "Film 2 (1995) (Comedy)"
    # User 1 (index 0) rated items 2, 4, 6, 8, 1, 3 in that order: the last one is held out for the test.
    assert dm.held_out(0, "test") == 2 and dm.held_out(0, "val") == 0
    assert dm.data.raw_ids["user"].tolist() == [1, 2, 3, 4, 5, 6]
    # min_rating keeps only the ratings at least that high.
    high = RatingsDataModule(RatingsDataConfig(path=str(zpath), min_rating=4), num_train_samples=10)
    high.prepare_data()
    assert len(high.data.users) == len({tuple(r.split("\t")[:2]) for r in rows if int(r.split("\t")[2]) >= 4})


def test_a_plain_ratings_file_with_a_header_and_a_verified_url(tmp_path: Path) -> None:
    csv = tmp_path / "ratings.csv"
    csv.write_text("userId,movieId,rating,timestamp\n" + "\n".join(r.replace("\t", ",") for r in ml_rows()) + "\n")
    data = read_interactions(RatingsDataConfig(path=str(csv)), tmp_path / "cache")
    assert (data.n_users, data.n_items, len(data.users)) == (6, 9, 36) and data.titles is None
    zpath = write_ml100k(tmp_path / "ml-100k.zip", ml_rows())
    sha = hashlib.sha256(zpath.read_bytes()).hexdigest()
    config = RatingsDataConfig(url=zpath.as_uri(), sha256=sha)  # a local URL: nothing leaves the machine
    fetched = read_interactions(config, tmp_path / "cache")
    assert np.array_equal(fetched.items, data.items) and (tmp_path / "cache" / "downloads").is_dir()


@pytest.mark.parametrize("content,needle", [
    ("1\t2\t5\n1\t3\t4\n", "line 1 has 3 columns"),                      # no timestamp column
    ("user,item,rating\n1,2,5\n", "no timestamp column"),                # a header without one
    ("1\t2\t5\t100\nalice\t3\t4\t101\n", "line 2: user id 'alice' is not an integer"),
    ("1\t2\t5\t100\n1\tB52\t4\t101\n", "item id 'B52' is not an integer"),
    ("1\t2\tgood\t100\n", "rating 'good' is not a number"),
    ("\n\n", "is empty"),
    ("user\titem\trating\ttimestamp\n", "no ratings"),
])
def test_a_bad_ratings_file_is_refused_naming_the_line(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / "ratings.tsv"
    path.write_text(content)
    with pytest.raises(DataError, match=needle) as e:
        RatingsDataModule(RatingsDataConfig(path=str(path)), num_train_samples=10).prepare_data()
    assert "\n" not in str(e.value)


def test_a_zip_without_u_data_and_too_few_choices_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "other.zip"
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("readme.txt", "no ratings here")
    with pytest.raises(DataError, match="has no u.data"):
        RatingsDataModule(RatingsDataConfig(path=str(empty)), num_train_samples=10).prepare_data()
    few = tmp_path / "few.tsv"
    few.write_text("1\t1\t5\t1\n1\t2\t5\t2\n2\t1\t5\t1\n")
    with pytest.raises(DataError, match="nothing can be held out"):
        RatingsDataModule(RatingsDataConfig(path=str(few)), num_train_samples=10).setup()


@pytest.mark.parametrize("changes,field", [
    ({"val_fraction": 0.0}, "data.val_fraction"), ({"test_fraction": 1.5}, "data.test_fraction"),
    ({"n_items": 5}, "data.n_items"), ({"interactions": 400}, "data.interactions"),
    ({"taste": -1.0}, "data.taste"), ({"batch_size": 0}, "data.batch_size"),
    ({"url": "https://example.org/ml-100k.zip"}, "data.sha256"), ({"path": "/no/such/ratings.zip"}, "data.path"),
])
def test_bad_settings_are_refused_before_any_work(changes: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        RatingsDataModule(RatingsDataConfig(**changes))


def test_it_is_registered_as_ratings() -> None:
    assert DATAMODULES["ratings"] == (RatingsDataConfig, RatingsDataModule)
