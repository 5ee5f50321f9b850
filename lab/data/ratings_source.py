"""Where the choices come from: a synthetic world with planted tastes, or MovieLens-style files.

    from lab.data.ratings_source import synthesize, read_interactions
    data = synthesize(RatingsDataConfig(n_users=200, n_items=100))    # offline, seeded
    data.users, data.items, data.times, data.truth                    # the planted preferences too
    data = read_interactions(RatingsDataConfig(path="ml-100k.zip"), cache_dir)

The synthetic world (``synthesize``): user ``u`` and item ``i`` have hidden traits ``p_u`` and
``q_i`` (``factors`` dimensions, Gaussian); items have a Zipf popularity (item of popularity rank
``r`` gets ``-popularity * log r``). How much ``u`` wants ``i`` is

    truth[u, i] = taste * standardised(p_u . q_i) + popularity term of i

and ``u`` makes about ``interactions`` choices, drawn without replacement with probability
proportional to ``exp(truth[u, i])`` (the Gumbel top-k trick), in a random order (their times).
So the data has a known ground truth (``truth``), a long tail of rarely chosen items, and two
signals: what is popular, and what this user likes. Items get genres too (two each, the ones
their hidden traits lean to, with some noise): features a two-tower model can read.

Files (``read_interactions``): a MovieLens-100k zip (``ml-100k/u.data``, and ``u.item`` for
titles and genres), or a ratings file of user, item, rating and timestamp columns -- tab or
comma separated, with a header naming them (``userId,movieId,rating,timestamp`` works) or
without one (u.data's order). A row with a missing column or an id that is not a whole number
is refused with its line number. User and item ids become 0..n-1 in sorted order of the ids;
a (user, item) pair chosen twice counts once, at its first time.
"""

from __future__ import annotations

import csv
import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lab.data.corpus import fetch
from lab.errors import DataError

COLUMNS = ("user", "item", "rating", "timestamp")
"""A ratings file's columns, in u.data's order (the order a file without a header must use)."""
HEADER_NAMES = {
    "user": ("user", "user_id", "userid"), "item": ("item", "item_id", "itemid", "movie", "movie_id", "movieid"),
    "rating": ("rating", "score"), "timestamp": ("timestamp", "time", "ts"),
}
"""Column names a header may use for each column (case-insensitive)."""
ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                 "War", "Western")
"""The 19 genre flags of MovieLens-100k's u.item, in its order."""
MIN_SYNTHETIC_CHOICES = 5


@dataclass
class Interactions:
    """Choices as parallel arrays, ids already 0..n-1."""

    users: np.ndarray
    items: np.ndarray
    times: np.ndarray
    n_users: int
    n_items: int
    item_features: np.ndarray
    """[n_items, n_features] float32 (genres, multi-hot); n_features may be 0."""
    feature_names: tuple[str, ...] = ()
    titles: list[str] | None = None
    """Item titles (MovieLens), else None."""
    truth: np.ndarray | None = None
    """The planted preferences [n_users, n_items] (synthetic world only)."""
    raw_ids: dict[str, np.ndarray] = field(default_factory=dict)
    """"user"/"item" -> the id in the file of each index."""

    def item_name(self, item: int) -> str:
        genres = [self.feature_names[g] for g in np.flatnonzero(self.item_features[item])] \
            if self.item_features.shape[1] else []
        base = self.titles[item] if self.titles else f"item {item}"
        return f"{base} ({', '.join(genres)})" if genres else base


# --------------------------------------------------------------------------- the synthetic world


def synthesize(c: Any) -> Interactions:
    """The planted world of a ``RatingsDataConfig`` (its ``generator_seed`` alone decides it)."""
    rng = np.random.default_rng(c.generator_seed)
    users = rng.normal(size=(c.n_users, c.factors))
    traits = rng.normal(size=(c.n_items, c.factors))
    affinity = users @ traits.T
    affinity = (affinity - affinity.mean()) / (affinity.std() or 1.0)
    rank = rng.permutation(c.n_items) + 1  # which item is the most popular is random, not its id
    truth = c.taste * affinity - c.popularity * np.log(rank)[None, :]
    counts = np.clip(np.round(rng.lognormal(np.log(c.interactions), 0.5, size=c.n_users)).astype(int),
                     MIN_SYNTHETIC_CHOICES, c.n_items // 2)
    # Gumbel top-k: the k largest truth + Gumbel noise are a draw of k items without replacement,
    # each with probability proportional to exp(truth) among those left.
    keys = truth + rng.gumbel(size=truth.shape)
    chosen = np.argsort(-keys, axis=1)
    rows = [rng.permutation(chosen[u, : counts[u]]) for u in range(c.n_users)]  # a random order of the choices
    user_ids = np.repeat(np.arange(c.n_users), counts)
    items = np.concatenate(rows)
    times = np.concatenate([np.arange(k) for k in counts])
    features, names = _genres(traits, c.genres, rng)
    return Interactions(user_ids, items, times, c.n_users, c.n_items, features, names,
                        truth=truth.astype(np.float32),
                        raw_ids={"user": np.arange(c.n_users), "item": np.arange(c.n_items)})


def _genres(traits: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, tuple[str, ...]]:
    """Two genres per item: the ones its traits point to most, after some noise."""
    features = np.zeros((len(traits), n), dtype=np.float32)
    if n == 0:
        return features, ()
    directions = rng.normal(size=(n, traits.shape[1]))
    lean = traits @ directions.T + rng.normal(scale=1.0, size=(len(traits), n))
    top = np.argsort(-lean, axis=1)[:, : min(2, n)]
    np.put_along_axis(features, top, 1.0, axis=1)
    return features, tuple(f"genre {g}" for g in range(n))


# --------------------------------------------------------------------------- files


def read_interactions(c: Any, cache_dir: str | Path) -> Interactions:
    """The choices in ``data.path`` or the verified download ``data.url``, ratings below ``min_rating`` left out."""
    source = Path(c.path).expanduser() if c.path is not None else fetch(c.url, c.sha256, cache_dir)
    where = c.path or c.url
    titles: list[str] | None = None
    features = np.zeros((0, 0), dtype=np.float32)
    names: tuple[str, ...] = ()
    try:
        if zipfile.is_zipfile(source):
            with zipfile.ZipFile(source) as z:
                data_name = _member(z, "u.data", where)
                rows = _parse(z.read(data_name).decode("latin-1"), f"{where}:{data_name}")
                item_name = next((n for n in z.namelist() if n.endswith("u.item")), None)
                items_text = z.read(item_name).decode("latin-1") if item_name else None
        else:
            rows = _parse(source.read_bytes().decode("utf-8-sig", errors="replace"), str(where))
            items_text = None
    except (OSError, zipfile.BadZipFile) as e:
        raise DataError(f"cannot read {where}: {e}; check the file (a MovieLens-100k zip or a ratings file)") from None
    user, item, rating, time = rows
    keep = rating >= c.min_rating
    if not keep.any():
        raise DataError(f"{where}: no rating is >= data.min_rating = {c.min_rating}: lower it (0 keeps every rating)")
    user, item, time = user[keep], item[keep], time[keep]
    raw_users, u = np.unique(user, return_inverse=True)
    raw_items, i = np.unique(item, return_inverse=True)
    # A pair chosen twice counts once, at its first time (a stable sort keeps the file's order on ties).
    order = np.lexsort((np.arange(len(u)), time, i, u))
    pair = u[order] * len(raw_items) + i[order]
    first = order[np.r_[True, pair[1:] != pair[:-1]]]
    if items_text is not None:
        titles, features = _items(items_text, raw_items, where)
        names = ML100K_GENRES
    else:
        features = np.zeros((len(raw_items), 0), dtype=np.float32)
    return Interactions(u[first], i[first], time[first], len(raw_users), len(raw_items), features, names,
                        titles=titles, raw_ids={"user": raw_users, "item": raw_items})


def _member(z: zipfile.ZipFile, name: str, where: Any) -> str:
    found = [n for n in z.namelist() if n == name or n.endswith("/" + name)]
    if not found:
        raise DataError(f"{where} has no {name}: give the MovieLens-100k zip (ml-100k/u.data inside), or the "
                        "ratings file itself as data.path")
    return found[0]


def _header(fields: list[str], where: str) -> list[int] | None:
    """Column positions of user, item, rating, timestamp if ``fields`` is a header; None if it is data."""
    if any(_is_number(f) for f in fields):  # a header names its columns: a number means data
        return None
    lower = [f.strip().lower() for f in fields]
    positions = []
    for column in COLUMNS:
        at = next((lower.index(n) for n in HEADER_NAMES[column] if n in lower), None)
        if at is None:
            raise DataError(f"{where}: the header has no {column} column (it has {', '.join(fields)}): give the "
                            f"file {', '.join(COLUMNS)} columns (named e.g. userId, movieId, rating, timestamp)")
        positions.append(at)
    return positions


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _parse(text: str, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(user, item, rating, timestamp) columns of a ratings file; DataError naming the first bad line."""
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip()), None)
    if first is None:
        raise DataError(f"{where} is empty: give a ratings file with {', '.join(COLUMNS)} columns")
    delimiter = "\t" if "\t" in first else "," if "," in first else None
    split = (lambda ln: next(csv.reader([ln], delimiter=delimiter))) if delimiter else str.split
    positions = _header(split(first), where)
    start = 1 if positions is not None else 0
    positions = positions or [0, 1, 2, 3]
    need = max(positions) + 1
    out: list[list[float]] = [[], [], [], []]
    body = [(n, ln) for n, ln in enumerate(lines, 1) if ln.strip()][start:]
    for n, line in body:
        fields = split(line)
        if len(fields) < need:
            raise DataError(f"{where} line {n} has {len(fields)} columns, expected {need} ({', '.join(COLUMNS)}): "
                            "fix or remove the line")
        for k, (column, at) in enumerate(zip(COLUMNS, positions)):
            value = fields[at].strip()
            try:
                out[k].append(int(value) if k < 2 else float(value))
            except ValueError:
                if k < 2:
                    raise DataError(f"{where} line {n}: {column} id {value!r} is not an integer: give whole-number "
                                    "ids (as MovieLens' u.data has), numbering the users and items first") from None
                raise DataError(f"{where} line {n}: {column} {value!r} is not a number: fix or remove the line") \
                    from None
    if not body:
        raise DataError(f"{where} has a header but no ratings: add rows of {', '.join(COLUMNS)}")
    return (np.asarray(out[0], dtype=np.int64), np.asarray(out[1], dtype=np.int64),
            np.asarray(out[2], dtype=np.float64), np.asarray(out[3], dtype=np.float64))


def _items(text: str, raw_items: np.ndarray, where: Any) -> tuple[list[str], np.ndarray]:
    """Titles and genre flags of the items in ``raw_items`` from u.item (``id|title|date|video|url|19 flags``)."""
    info: dict[int, tuple[str, list[float]]] = {}
    for row in csv.reader(io.StringIO(text), delimiter="|"):
        if len(row) >= 5 + len(ML100K_GENRES) and row[0].strip().isdigit():
            flags = [1.0 if f.strip() == "1" else 0.0 for f in row[5:5 + len(ML100K_GENRES)]]
            info[int(row[0])] = (row[1], flags)
    titles = [info.get(int(r), (f"item {r}", None))[0] for r in raw_items]
    empty = [0.0] * len(ML100K_GENRES)
    features = np.asarray([info.get(int(r), ("", empty))[1] or empty for r in raw_items], dtype=np.float32)
    return titles, features
