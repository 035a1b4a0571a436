"""Tests of hvae_jax.recommend against a tiny trained run: rankings checked against a direct model.apply + numpy
argsort, raw-id round trips, unknown ids, one compilation for any number of users, titles, exports, baselines, CLI.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil

import jax
import numpy as np
import pytest

from hvae_jax.checkpoint import Checkpoints
from hvae_jax.configs import EASEConfig, PopularityConfig, TrainConfig, VAEConfig, model_config_to_dict
from hvae_jax.data import splits as splits_lib
from hvae_jax.data.synthetic import synthetic_interactions
from hvae_jax.experiment import RunSettings, run
from hvae_jax.models.hvae import build_model, init_params
from hvae_jax.cli import recommend_cli
from hvae_jax.recommend import Recommendation, Recommender

N_ITEMS = 200
LATENTS = (16, 8)
HIDDEN = 32


def _quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> pathlib.Path:
    """A ratings CSV of small synthetic data (raw ids u*/i*) with a movies.csv of titles beside it."""
    folder = tmp_path_factory.mktemp("data")
    interactions = synthetic_interactions(n_users=600, n_items=N_ITEMS, seed=3)
    lines = ["user,item"] + [
        f"{interactions.user_ids[u]},{interactions.item_ids[i]}" for u, i in zip(interactions.users, interactions.items)
    ]
    (folder / "ratings.csv").write_text("\n".join(lines) + "\n")
    titles = ["movieId,title,genres"] + [f'{item},"Film {item}, the sequel",Drama' for item in interactions.item_ids]
    (folder / "movies.csv").write_text("\n".join(titles) + "\n")
    return folder


def _train(workdir: pathlib.Path, data_dir: pathlib.Path, model, **settings) -> pathlib.Path:
    # optax's Adam bias correction mixes a Python float with an int32 count, which strict dtype promotion (set for
    # the whole suite in conftest.py) rejects; rank promotion keeps raising.
    with jax.numpy_dtype_promotion("standard"):
        run(
            RunSettings(data=str(data_dir / "ratings.csv"), workdir=str(workdir), ks=(20, 100), **settings),
            model,
            TrainConfig(epochs=2, batch_size=200, seed=1),
            progress=False,
            log=_quiet,
        )
    return workdir


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, data_dir) -> pathlib.Path:
    return _train(tmp_path_factory.mktemp("hvae"), data_dir, VAEConfig(latents=LATENTS, hidden=HIDDEN))


@pytest.fixture(scope="module")
def recommender(workdir) -> Recommender:
    return Recommender.load(workdir)


@pytest.fixture(scope="module")
def split(workdir) -> splits_lib.Split:
    return splits_lib.load_split(workdir)


def _test_histories(split: splits_lib.Split, n_users: int) -> list[list[str]]:
    """Raw item ids of the first test users' fold-in items."""
    fold_in = split.test.fold_in
    return [
        [str(split.item_ids[c]) for c in fold_in.indices[fold_in.indptr[u] : fold_in.indptr[u + 1]]]
        for u in range(n_users)
    ]


def test_recommendations_exclude_history_are_sorted_and_respect_k(recommender, split):
    histories = _test_histories(split, 5)
    ranked = recommender.recommend(histories, k=15)
    assert len(ranked) == 5
    known = set(split.item_ids.astype(str))
    for history, items in zip(histories, ranked):
        assert len(items) == 15
        assert all(isinstance(r, Recommendation) for r in items)
        ids = [r.item_id for r in items]
        assert len(set(ids)) == 15 and set(ids) <= known and not set(ids) & set(history)
        scores = [r.score for r in items]
        assert scores == sorted(scores, reverse=True)
        assert all(isinstance(i, str) and i.startswith("i") for i in ids)  # raw ids, not column numbers


def test_ranking_matches_direct_model_apply_and_argsort(recommender, split):
    (history,) = _test_histories(split, 1)
    (items,) = recommender.recommend([history], k=10)

    column = {str(item): c for c, item in enumerate(split.item_ids)}
    x = np.zeros(N_ITEMS, np.float32)
    x[[column[item] for item in history]] = 1.0
    # One user, no vmap, no mask, no top_k: jitted only because op-by-op dispatch compiles slowly on CPU.
    forward = jax.jit(lambda params, x_u: recommender.model.apply({"params": params}, x_u, None, None))
    logits = np.asarray(forward(recommender.params, x).logits, np.float64)
    logits[x > 0] = -np.inf
    expected = np.argsort(-logits, kind="stable")[:10]
    assert [r.item_id for r in items] == [str(split.item_ids[c]) for c in expected]
    np.testing.assert_allclose([r.score for r in items], logits[expected], rtol=1e-5, atol=1e-5)


def test_titles_come_from_movies_csv_beside_the_data(recommender):
    (items,) = recommender.recommend([["i1", "i2"]], k=3)
    assert all(r.title == f"Film {r.item_id}, the sequel" for r in items)


def test_any_number_of_users_compiles_once_and_batches_do_not_interact(workdir, split):
    recommender = Recommender.load(workdir)  # a fresh jitted step, compiled by this test alone
    histories = _test_histories(split, 40)
    many = histories * 7  # 280 users: two padded batches of 256
    small = recommender.recommend(histories[:3], k=20)
    large = recommender.recommend(many, k=20)
    assert recommender.recommend([], k=20) == []
    assert recommender._top_k._cache_size() == 1
    assert len(large) == 280
    for a, b in zip(small, large[:3]):
        assert [r.item_id for r in a] == [r.item_id for r in b]
        np.testing.assert_allclose([r.score for r in a], [r.score for r in b], rtol=1e-5, atol=1e-6)
    assert [r.item_id for r in large[0]] == [r.item_id for r in large[40]] == [r.item_id for r in large[240]]


def test_unknown_ids_raise_or_are_skipped_with_a_warning(recommender):
    with pytest.raises(ValueError, match=r"2 item id\(s\).*'nope'.*'i99999'"):
        recommender.recommend([["i1"], ["nope", "i2", "i99999"]])
    with pytest.warns(UserWarning, match="'nope'.*skipped"):
        skipped = recommender.recommend([["i1", "nope", "i2"]], k=5, on_unknown="skip")
    assert skipped == recommender.recommend([["i1", "i2"]], k=5)
    with pytest.raises(TypeError, match="list of item ids"):
        recommender.recommend(["i1"])  # a bare string, not a list of ids
    with pytest.raises(ValueError, match="on_unknown"):
        recommender.recommend([["i1"]], on_unknown="ignore")


def test_integer_ids_and_duplicates_are_read_as_raw_strings(recommender):
    with pytest.raises(ValueError, match="'7'"):
        recommender.recommend([[7]])  # MovieLens-style ints are compared as their string form
    assert recommender.recommend([["i1", "i1", "i2"]], k=5) == recommender.recommend([["i2", "i1"]], k=5)


def test_k_is_capped_by_the_unseen_items(recommender, split):
    all_but_three = [str(item) for item in split.item_ids[3:]]
    (items,) = recommender.recommend([all_but_three], k=50)
    assert sorted(r.item_id for r in items) == sorted(str(item) for item in split.item_ids[:3])
    (items,) = recommender.recommend([[]], k=N_ITEMS + 10)
    assert len(items) == N_ITEMS
    with pytest.raises(ValueError, match="k must be"):
        recommender.recommend([["i1"]], k=0)


def test_side_features_rejected_for_a_model_without_them(recommender):
    with pytest.raises(ValueError, match="without user features"):
        recommender.recommend([["i1"]], side_features=np.zeros((1, 3), np.float32))


def test_item_embeddings_and_user_latents(recommender, split):
    embeddings = recommender.item_embeddings()
    assert embeddings.shape == (N_ITEMS, HIDDEN)
    np.testing.assert_array_equal(embeddings, np.asarray(recommender.params["decoder_output"]["kernel"]).T)
    histories = _test_histories(split, 3)
    latents = recommender.user_latents(histories)
    assert [level.shape for level in latents] == [(3, d) for d in LATENTS]
    x = np.zeros(N_ITEMS, np.float32)
    x[split.test.fold_in[1].indices] = 1.0
    forward = jax.jit(lambda params, x_u: recommender.model.apply({"params": params}, x_u, None, None))
    means = forward(recommender.params, x).means
    for level, mean in zip(latents, means):
        np.testing.assert_allclose(level[1], np.asarray(mean), rtol=1e-5, atol=1e-5)


def test_export_writes_arrays_of_the_right_shapes(recommender, split, tmp_path):
    written = recommender.export(tmp_path / "export")
    names = {path.name for path in written}
    assert names == {"item_embeddings.npy", "item_ids.npy", "user_latent_means_level1.npy",
                     "user_latent_means_level2.npy", "user_ids.npy"}
    folder = tmp_path / "export"
    n_train = split.train.shape[0]
    assert np.load(folder / "item_embeddings.npy").shape == (N_ITEMS, HIDDEN)
    item_ids = np.load(folder / "item_ids.npy")
    assert item_ids.dtype.kind == "U" and list(item_ids) == list(split.item_ids.astype(str))
    user_ids = np.load(folder / "user_ids.npy")
    assert user_ids.dtype.kind == "U" and list(user_ids) == list(split.train_user_ids.astype(str))
    level1 = np.load(folder / "user_latent_means_level1.npy")
    level2 = np.load(folder / "user_latent_means_level2.npy")
    assert level1.shape == (n_train, LATENTS[0]) and level2.shape == (n_train, LATENTS[1])
    # Row u belongs to user_ids[u]: compare one row with the latents of that user's training items.
    row = n_train - 1
    history = [str(split.item_ids[c]) for c in split.train[row].indices]
    expected = recommender.user_latents([history])
    np.testing.assert_allclose(level1[row], expected[0][0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(level2[row], expected[1][0], rtol=1e-5, atol=1e-5)


def test_cli_text_for_items_history_file_and_export(workdir, recommender, tmp_path):
    text = recommend_cli(workdir, "i1, i2,i3", None, 4)
    lines = text.splitlines()
    expected = recommender.recommend([["i1", "i2", "i3"]], k=4)[0]
    assert len(lines) == 4
    assert lines[0] == f"1. {expected[0].item_id} (Film {expected[0].item_id}, the sequel) {expected[0].score:.4f}"

    history = tmp_path / "history.txt"
    history.write_text("# user item item ...\nalice i1 i2\n\nbob i3\n")
    lines = recommend_cli(workdir, None, str(history), 2, export=str(tmp_path / "out")).splitlines()
    assert [line.split(":")[0] for line in lines[:4]] == ["alice", "alice", "bob", "bob"]
    assert lines[2].startswith("bob: 1. ")
    assert any(line.startswith("wrote ") and line.endswith("item_embeddings.npy") for line in lines)

    history.write_text("carol i1 unknown-item\n")
    with pytest.raises(ValueError, match="unknown-item"):
        recommend_cli(workdir, None, str(history), 2)
    with pytest.raises(ValueError, match="nothing to do"):
        recommend_cli(workdir, None, None, 2)


def test_missing_workdir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        Recommender.load(tmp_path)


def test_latest_checkpoint_is_used_without_a_best_one(workdir, recommender, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    shutil.rmtree(copy / "checkpoints" / "best")
    results = json.loads((workdir / "results.json").read_text())
    latest = Recommender.load(copy)
    if results["best_epoch"] == results["epochs"]:
        for a, b in zip(jax.tree.leaves(latest.params), jax.tree.leaves(recommender.params)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert len(latest.recommend([["i1"]], k=3)[0]) == 3


def test_ease_run_is_refitted_with_its_recorded_weight(workdir, split, tmp_path):
    ease_dir = tmp_path / "ease"
    ease_dir.mkdir()
    for name in ("split.npz", "split.json"):
        shutil.copy(workdir / name, ease_dir / name)
    config = json.loads((workdir / "config.json").read_text())
    config["model"] = model_config_to_dict(EASEConfig())
    (ease_dir / "config.json").write_text(json.dumps(config))
    (ease_dir / "results.json").write_text(json.dumps({"ease_lambda": 50.0}))
    (items,) = Recommender.load(ease_dir).recommend([["i1", "i2"]], k=5)

    train = split.train.toarray().astype(np.float64)
    precision = np.linalg.inv(train.T @ train + 50.0 * np.eye(N_ITEMS))
    weights = -precision / np.diag(precision)[None, :]
    np.fill_diagonal(weights, 0.0)
    column = {str(item): c for c, item in enumerate(split.item_ids)}
    x = np.zeros(N_ITEMS)
    x[[column["i1"], column["i2"]]] = 1.0
    scores = x @ weights
    scores[x > 0] = -np.inf
    assert [r.item_id for r in items] == [str(split.item_ids[c]) for c in np.argsort(-scores)[:5]]
    np.testing.assert_allclose([r.score for r in items], np.sort(scores)[::-1][:5], rtol=1e-3, atol=1e-5)


def test_popularity_run_is_refitted_from_the_split(tmp_path, data_dir, split):
    workdir = _train(tmp_path / "pop", data_dir, PopularityConfig())
    recommender = Recommender.load(workdir)
    (items,) = recommender.recommend([["i1"]], k=5)
    counts = np.bincount(split.train.indices, minlength=N_ITEMS).astype(np.float64)
    counts[list(split.item_ids.astype(str)).index("i1")] = -np.inf
    expected = [str(split.item_ids[c]) for c in np.argsort(-counts, kind="stable")[:5]]
    assert [r.item_id for r in items] == expected
    with pytest.raises(ValueError, match="need a neural model"):
        recommender.item_embeddings()


def _side_feature_workdir(tmp_path: pathlib.Path, trained: pathlib.Path, features: pathlib.Path) -> pathlib.Path:
    """A run directory as `hvae train --user-features` leaves it, with untrained parameters (training is slow on
    CPU and not what is tested here): config.json, the split and a best checkpoint."""
    workdir = tmp_path / "side"
    workdir.mkdir()
    for name in ("split.npz", "split.json"):
        shutil.copy(trained / name, workdir / name)
    config = json.loads((trained / "config.json").read_text())
    model_config = VAEConfig(latents=(8,), hidden=16)
    config["model"] = dataclasses.asdict(model_config)
    config["settings"].update(user_features=str(features), workdir=str(workdir))
    (workdir / "config.json").write_text(json.dumps(config))
    model = build_model(model_config, N_ITEMS)
    params = jax.jit(lambda key: init_params(model, 2, key=key))(jax.random.key(0))
    checkpoints = Checkpoints(workdir)
    checkpoints.save("best", 1, params, {"epoch": 1})
    checkpoints.close()
    return workdir


def test_side_feature_model_requires_side_features(tmp_path, data_dir, workdir):
    users = sorted({line.split(",")[0] for line in (data_dir / "ratings.csv").read_text().splitlines()[1:]})
    features = tmp_path / "features.csv"
    features.write_text("user,f1,f2\n" + "".join(f"{u},{k % 3},{(k % 5) / 5}\n" for k, u in enumerate(users)))
    workdir = _side_feature_workdir(tmp_path, workdir, features)
    recommender = Recommender.load(workdir)
    assert recommender.n_side_features == 2
    with pytest.raises(ValueError, match="trained with --user-features"):
        recommender.recommend([["i1"]])
    side = recommender.side_features_for([users[0], users[1]])
    np.testing.assert_allclose(side, [[0.0, 0.0], [1.0, 0.2]], rtol=1e-6)
    with_side = recommender.recommend([["i1"], ["i1"]], k=5, side_features=side)
    assert all(len(items) == 5 for items in with_side)
    history = tmp_path / "history.txt"
    history.write_text(f"{users[0]} i1 i2\n")
    assert recommend_cli(workdir, None, str(history), 3).startswith(f"{users[0]}: 1. ")
    with pytest.raises(ValueError, match="anonymous"):
        recommend_cli(workdir, "i1", None, 3)


def test_loading_and_recommending_write_nothing_in_the_run(workdir):
    def entries():
        return {str(path.relative_to(workdir)): (path.stat().st_mtime_ns, path.stat().st_size)
                for path in [workdir, *workdir.rglob("*")]}

    before = entries()
    recommender = Recommender.load(workdir)
    recommender.recommend([["i1"]], k=3)
    assert entries() == before


def test_export_onto_a_file_is_refused_before_anything_is_written(recommender, tmp_path):
    target = tmp_path / "embeddings.npy"
    target.write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="is an existing file, not a folder"):
        recommender.export(target)
    assert target.read_bytes() == b"keep"


def test_a_continued_run_reports_every_sessions_training_time(tmp_path, data_dir):
    """Continuing a run to more epochs: its results count all sessions' epochs, and say where it resumed."""
    settings = RunSettings(data=str(data_dir / "ratings.csv"), workdir=str(tmp_path), ks=(20, 100))
    model = VAEConfig(latents=(16,), hidden=32)
    with jax.numpy_dtype_promotion("standard"):  # optax's Adam (see _train)
        first = run(settings, model, TrainConfig(epochs=2, batch_size=200, anneal_epochs=5, seed=1), progress=False,
                    log=_quiet)
        second = run(settings, model, TrainConfig(epochs=3, batch_size=200, anneal_epochs=5, seed=1), progress=False,
                     log=_quiet)
    assert first["resumed_from_epoch"] is None and second["resumed_from_epoch"] == 2
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert second["train_seconds_all_sessions"] == pytest.approx(sum(row["train_seconds"] for row in history))
    assert second["train_seconds_all_sessions"] > second["train_seconds"]  # this session ran epoch 3 only
