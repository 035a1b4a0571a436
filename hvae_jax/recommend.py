"""Top-K recommendations from a finished run: load its model from the workdir, turn users' raw item ids into input
rows, rank every item on the device with the user's own items excluded, and export item embeddings and user latents.

Neural runs (Mult-VAE, hierarchical VAE, Mult-DAE) are restored from their best checkpoint (else the latest).
EASE and popularity runs keep no checkpoint; they are refitted from the saved split (EASE with the L2 weight that
`results.json` records), which is exact because both fits are deterministic.
"""

from __future__ import annotations

import dataclasses
import pathlib
import warnings
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from hvae_jax import ranking
from hvae_jax.checkpoint import Checkpoints, abstract_like
from hvae_jax.configs import NEURAL_KINDS, model_config_from_dict
from hvae_jax.data import sources
from hvae_jax.data.batches import host_dense_rows
from hvae_jax.data.features import read_user_features
from hvae_jax.data.readers import read_titles
from hvae_jax.evaluate import model_scorer
from hvae_jax.input_paths import pad_columns
from hvae_jax.models import baselines
from hvae_jax.models.hvae import build_model, init_params
from hvae_jax.rundir import RunDir

DEFAULT_BATCH_SIZE = 256
_TITLE_FILES = ("movies.csv", "movies.dat", "u.item")
_UNKNOWN_POLICIES = ("raise", "skip")


class Recommendation(NamedTuple):
    """One ranked item: its raw id, its score (the decoder logit for neural models) and its title if known."""

    item_id: str
    score: float
    title: str | None


# scores(state, x [batch, n_items], side [batch, F] or None) -> [batch, n_items]
ScoreFn = Callable[[Any, jax.Array, jax.Array | None], jax.Array]


def _neural_scores(model: nn.Module) -> ScoreFn:
    """Scores of the model's real items for dense rows of the run's catalogue (an item-sharded run's model is built
    at the padded size; its padding items are never inputs and never recommended)."""

    def scores(params, x, side):
        logits = model_scorer(model, params)(pad_columns(x, model.n_items), side)
        return logits[:, : x.shape[1]]

    return scores


def _baseline_scores(kind: str) -> ScoreFn:
    if kind == "ease":
        return lambda weights, x, side: baselines.ease_scores(weights, x)
    return lambda popularity, x, side: baselines.popularity_scores(popularity, x)


def _make_top_k(score_fn: ScoreFn) -> Callable:
    """Jitted `top_k(state, x, side, k=K) -> (scores, columns)`, both [batch, K], seen items scored -inf.

    The state is an argument rather than a closed-over constant, so the compiled call does not embed the weights.
    """

    def top_k(state, x, side, *, k: int):
        scores = score_fn(state, x, side)
        scores = jnp.where(x > 0, -jnp.inf, scores)
        return ranking.top_k(scores, k)

    return jax.jit(top_k, static_argnames="k")


def _make_posterior_means(model: nn.Module) -> Callable:
    """Jitted `means(params, x, side) -> tuple of [batch, d_l]` posterior means, bottom level first."""

    def means(params, x, side):
        one_user = lambda x_u, s_u: model.apply({"params": params}, x_u, s_u, None, with_kl=False).means  # noqa: E731
        return jax.vmap(one_user, in_axes=(0, None if side is None else 0))(pad_columns(x, model.n_items), side)

    return jax.jit(means)


def find_titles(settings: Mapping[str, Any]) -> dict[str, str] | None:
    """Item titles for a run's data settings, or None where none are known.

    A registered data set uses its cached titles file (`sources.dataset_paths`); a data path (or, for the given
    protocol, the training file) uses a `movies.csv`, `movies.dat` or `u.item` in the same folder. A titles file that
    cannot be read gives a warning and no titles rather than failing the recommendation.
    """

    path = None
    data = settings.get("train_file") if settings.get("protocol") == "given" else settings.get("data")
    if data is None or data == "synthetic":
        return None
    if data in sources.DATASETS:
        try:
            path = sources.dataset_paths(data).get("titles")
        except sources.SourceError:
            return None
    else:
        location = pathlib.Path(data)
        folder = location if location.is_dir() else location.parent
        path = next((folder / name for name in _TITLE_FILES if (folder / name).is_file()), None)
    if path is None:
        return None
    try:
        return read_titles(path)
    except (OSError, ValueError) as error:
        warnings.warn(f"item titles not shown: could not read {path}: {error}", stacklevel=2)
        return None


def _restore_params(run_dir: RunDir, model: nn.Module, n_side: int):
    """The best checkpoint's parameters, else the latest training state's, checked against the model's shapes."""
    checkpoint_dir = run_dir.checkpoints_dir
    if not checkpoint_dir.is_dir():
        raise FileNotFoundError(f"no checkpoints in {checkpoint_dir}: the run has not finished an epoch yet")
    abstract = abstract_like(jax.eval_shape(lambda: init_params(model, n_side, key=jax.random.key(0))))
    checkpoints = Checkpoints(run_dir, create=False)
    try:
        restored = checkpoints.restore("best", abstract)
        if restored is not None:
            return restored[0]
        # No validation users means no best checkpoint; the latest state then holds the parameters to use.
        latest = checkpoints.restore("latest", None)
    finally:
        checkpoints.close()
    if latest is None:
        raise FileNotFoundError(f"no checkpoint in {checkpoint_dir}")
    params = latest[0]["params"]
    expected = jax.tree.map(lambda leaf: leaf.shape, abstract)
    found = jax.tree.map(lambda leaf: tuple(leaf.shape), params)
    if jax.tree.structure(expected) != jax.tree.structure(found) or expected != found:
        raise ValueError(f"the latest checkpoint in {checkpoint_dir} does not match the model in config.json")
    return jax.tree.map(jnp.asarray, params)


def _padded_catalogue_size(run_dir: RunDir) -> int:
    """The catalogue size an item-sharded run's model was built at, as its results.json records it."""
    layout = (run_dir.read_results() or {}).get("catalogue_layout")
    if layout is None:
        raise FileNotFoundError(f"{run_dir.results_path} does not record the run's catalogue layout, so the padded "
                                f"size of its model is unknown: run `hvae evaluate --workdir {run_dir.path}` first")
    return int(layout["n_padded"])


def _ease_lambda(run_dir: RunDir) -> float:
    l2 = (run_dir.read_results() or {}).get("ease_lambda")
    if l2 is None:
        raise FileNotFoundError(f"{run_dir.results_path} does not record the EASE run's L2 weight (ease_lambda): run "
                                f"`hvae evaluate --workdir {run_dir.path}` first")
    return float(l2)


@dataclasses.dataclass(frozen=True, eq=False)
class Recommender:
    """A trained model ready to rank items for users given by their raw item ids.

    Build it with `Recommender.load(workdir)`.

    Attributes:
      workdir: the run's directory.
      model_config: the run's model configuration.
      settings: the run's data settings (config.json's "settings").
      item_ids: [n_items] raw item id of each model column, as strings.
      titles: raw item id -> title, or None.
      state: what the scorer needs: parameters (neural), EASE weights [n_items, n_items] or popularity [n_items].
      model: the Flax module (neural kinds) or None.
      n_side_features: side features per user the model was trained with (0: none).
      batch_size: users per jitted call; every call has this shape, so each K compiles once.
    """

    workdir: pathlib.Path
    model_config: Any
    settings: Mapping[str, Any]
    item_ids: np.ndarray
    titles: Mapping[str, str] | None
    state: Any
    model: nn.Module | None
    n_side_features: int = 0
    batch_size: int = DEFAULT_BATCH_SIZE
    _column: Mapping[str, int] = dataclasses.field(default_factory=dict, repr=False)
    _top_k: Callable = dataclasses.field(default=None, repr=False)
    _means: Callable | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def load(cls, workdir: str | pathlib.Path, *, batch_size: int = DEFAULT_BATCH_SIZE) -> Recommender:
        """Loads the run in `workdir`: config.json, the saved split's item ids, the parameters and the titles.
        Reads the run (`RunDir.open_for_reading`) and writes nothing.

        Raises:
          FileNotFoundError: no config.json, split, checkpoint, EASE results.json or user-features file the run was
            trained with (the message says which).
          RunDirError: config.json, split.json or split.npz is damaged (the message names it).
          ValueError: the latest checkpoint does not match config.json's model.
        """
        run_dir = RunDir.open_for_reading(workdir)
        try:
            model_config = model_config_from_dict(run_dir.model)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{run_dir.config_path}: its model cannot be read by this hvae_jax ({error})") from None
        settings = dict(run_dir.settings)
        item_ids, train_user_ids = run_dir.split_ids()
        titles = find_titles(settings)
        n_side = 0
        means = None
        if model_config.kind in NEURAL_KINDS:
            model_items = len(item_ids)
            if settings.get("item_shards"):
                model_items = _padded_catalogue_size(run_dir)
            if settings.get("user_features"):
                try:
                    n_side = read_user_features(settings["user_features"], train_user_ids[:1]).n_features
                except FileNotFoundError as error:
                    raise FileNotFoundError(
                        f"the run was trained with --user-features {settings['user_features']}, which is needed to "
                        f"rebuild the model: {error}"
                    ) from None
            model = build_model(model_config, model_items)
            state = _restore_params(run_dir, model, n_side)
            score_fn = _neural_scores(model)
            if model_config.kind == "vae":
                means = _make_posterior_means(model)
        else:
            model = None
            split = run_dir.load_split(required=True)
            if model_config.kind == "ease":
                state = jnp.asarray(baselines.fit_ease(split.train, _ease_lambda(run_dir)))
            else:
                state = jnp.asarray(baselines.fit_popularity(split.train))
            score_fn = _baseline_scores(model_config.kind)
        return cls(
            workdir=run_dir.path,
            model_config=model_config,
            settings=settings,
            item_ids=item_ids,
            titles=titles,
            state=state,
            model=model,
            n_side_features=n_side,
            batch_size=batch_size,
            _column={item: column for column, item in enumerate(item_ids)},
            _top_k=_make_top_k(score_fn),
            _means=means,
        )

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def params(self):
        """The neural model's parameters (raises for EASE / popularity)."""
        self._require_neural("parameters")
        return self.state

    # ------------------------------------------------------------------------------------------------------------
    # Inputs

    def encode(self, histories: Sequence[Sequence[str]], *, on_unknown: str = "raise") -> sp.csr_matrix:
        """Binary [n_users, n_items] rows of `histories` (raw item ids; repeated ids count once).

        Args:
          histories: one list of raw item ids per user; ids are compared as strings, so 1 and "1" are the same.
          on_unknown: "raise" (ValueError naming the ids the run never saw in training) or "skip" (a warning naming
            them, then the other ids are used).
        """
        if on_unknown not in _UNKNOWN_POLICIES:
            raise ValueError(f"on_unknown must be one of {_UNKNOWN_POLICIES}, got {on_unknown!r}")
        if isinstance(histories, (str, bytes)):
            raise TypeError("histories must be a list of item-id lists, one per user, not a string")
        rows, columns, unknown = [], [], {}
        for row, history in enumerate(histories):
            if isinstance(history, (str, bytes)):
                raise TypeError(f"history {row} is the string {history!r}; pass a list of item ids, e.g. [{history!r}]")
            for item in history:
                column = self._column.get(str(item))
                if column is None:
                    unknown.setdefault(str(item), []).append(row)
                    continue
                rows.append(row)
                columns.append(column)
        if unknown:
            shown = ", ".join(f"{item!r} (history {users[0]})" for item, users in list(unknown.items())[:10])
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            known = ", ".join(repr(str(item)) for item in self.item_ids[:3])
            message = (f"{len(unknown)} item id(s) not among the run's {self.n_items} training items: {shown}{more}; "
                       f"known ids look like {known}")
            if on_unknown == "raise":
                raise ValueError(message)
            warnings.warn(message + "; skipped", stacklevel=3)
        matrix = sp.csr_matrix(
            (np.ones(len(rows), np.float32), (np.asarray(rows, np.int64), np.asarray(columns, np.int64))),
            shape=(len(histories), self.n_items),
        )
        matrix.sum_duplicates()
        matrix.data[:] = 1.0
        return matrix

    def _check_side(self, side_features, n_users: int) -> np.ndarray | None:
        if self.n_side_features and side_features is None:
            raise ValueError(
                f"this model was trained with --user-features ({self.settings.get('user_features')}, "
                f"{self.n_side_features} features per user): pass side_features [n_users, {self.n_side_features}]"
            )
        if not self.n_side_features and side_features is not None:
            raise ValueError("this model was trained without user features; do not pass side_features")
        if side_features is None:
            return None
        side_features = np.asarray(side_features, np.float32)
        if side_features.shape != (n_users, self.n_side_features):
            raise ValueError(f"side_features must be [{n_users}, {self.n_side_features}], got {side_features.shape}")
        return side_features

    def _batches(self, matrix: sp.csr_matrix, side: np.ndarray | None):
        """(start, x [batch_size, n_items], side rows or None, real [batch_size]) over `matrix`, zero-padded."""
        for start in range(0, matrix.shape[0], self.batch_size):
            x, real = host_dense_rows(matrix, start, self.batch_size)
            side_rows = None
            if side is not None:
                side_rows = np.zeros((self.batch_size, side.shape[1]), np.float32)
                chunk = side[start : start + self.batch_size]
                side_rows[: len(chunk)] = chunk
            yield start, x, side_rows, real

    def _require_neural(self, what: str, *, latent: bool = False) -> None:
        if self.model_config.kind not in NEURAL_KINDS:
            raise ValueError(f"{what} need a neural model (multvae, hvae, multdae); this run is "
                             f"{self.model_config.kind}")
        if latent and self.model_config.kind != "vae":
            raise ValueError(f"{what} need a VAE (multvae or hvae); Mult-DAE has no latent variables")

    # ------------------------------------------------------------------------------------------------------------
    # Outputs

    def recommend_matrix(
        self, matrix: sp.csr_matrix, k: int = 20, *, side_features: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-`k` unseen columns and their scores for each row of a binary [n_users, n_items] matrix.

        Returns:
          (columns [n_users, k'] int, scores [n_users, k'] float32) with k' = min(k, n_items), best first. Rows
          with fewer than k' unseen items end in score -inf.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        k = min(int(k), self.n_items)
        side = self._check_side(side_features, matrix.shape[0])
        columns, scores = [], []
        for _, x, side_rows, real in self._batches(matrix, side):
            top_scores, top_columns = self._top_k(self.state, x, side_rows, k=k)
            scores.append(np.asarray(top_scores)[real])
            columns.append(np.asarray(top_columns)[real])
        if not columns:
            return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
        return np.concatenate(columns), np.concatenate(scores)

    def recommend(
        self,
        histories: Sequence[Sequence[str]],
        k: int = 20,
        *,
        side_features: np.ndarray | None = None,
        on_unknown: str = "raise",
    ) -> list[list[Recommendation]]:
        """The `k` best items for each user that the user has not already got, best first.

        Args:
          histories: one list of raw item ids per user (the ids of the training data, e.g. MovieLens movie ids).
          k: items per user (at most the catalogue size; fewer when the user has seen almost everything).
          side_features: [n_users, F] when the model was trained with user features; required then.
          on_unknown: "raise" or "skip" ids the run never saw (see `encode`).

        Returns:
          Per user, a list of `Recommendation(item_id, score, title)` tuples sorted by decreasing score.
        """
        columns, scores = self.recommend_matrix(
            self.encode(histories, on_unknown=on_unknown), k, side_features=side_features
        )
        titles = self.titles or {}
        return [
            [
                Recommendation(str(self.item_ids[column]), float(score), titles.get(str(self.item_ids[column])))
                for column, score in zip(user_columns, user_scores)
                if np.isfinite(score)
            ]
            for user_columns, user_scores in zip(columns, scores)
        ]

    def item_embeddings(self) -> np.ndarray:
        """[n_items, hidden] item vectors: the decoder's output kernel transposed (row i scores item i)."""
        self._require_neural("item embeddings")
        return np.asarray(self.state["decoder_output"]["kernel"]).T[: self.n_items]

    def latents_of_matrix(self, matrix: sp.csr_matrix, *, side_features: np.ndarray | None = None) -> list[np.ndarray]:
        """Posterior means of every level for the rows of a binary [n_users, n_items] matrix (bottom level first)."""
        self._require_neural("user latents", latent=True)
        side = self._check_side(side_features, matrix.shape[0])
        chunks = []
        for _, x, side_rows, real in self._batches(matrix, side):
            chunks.append([np.asarray(level)[real] for level in self._means(self.state, x, side_rows)])
        if not chunks:
            return [np.zeros((0, d), np.float32) for d in self.model_config.latents]
        return [np.concatenate([chunk[level] for chunk in chunks]) for level in range(self.model_config.n_levels)]

    def user_latents(
        self,
        histories: Sequence[Sequence[str]],
        *,
        side_features: np.ndarray | None = None,
        on_unknown: str = "raise",
    ) -> list[np.ndarray]:
        """Posterior means E_q[z_l | history] for each user: a list over levels (bottom first) of [n_users, d_l]."""
        self._require_neural("user latents", latent=True)
        return self.latents_of_matrix(self.encode(histories, on_unknown=on_unknown), side_features=side_features)

    def export(self, directory: str | pathlib.Path) -> list[pathlib.Path]:
        """Writes the item embeddings and, for VAEs, the training users' posterior means, as .npy files.

        Files: item_embeddings.npy [n_items, hidden], item_ids.npy [n_items] str; for VAEs also
        user_latent_means_level{l}.npy [n_train_users, d_l] (l = 1 is the bottom level) and user_ids.npy
        [n_train_users] str, row u of each latent file belonging to user_ids[u].

        Returns:
          The paths written.
        """
        self._require_neural("exports")
        directory = export_folder(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written = []

        def save(name: str, array: np.ndarray) -> None:
            path = directory / name
            np.save(path, array, allow_pickle=False)
            written.append(path)

        save("item_embeddings.npy", self.item_embeddings())
        save("item_ids.npy", self.item_ids.astype(str))
        if self.model_config.kind != "vae":
            return written
        split = RunDir.open_for_reading(self.workdir).load_split(required=True)
        user_ids = np.asarray(split.train_user_ids).astype(str)
        side = None
        if self.n_side_features:
            side = self.side_features_for(user_ids, reference_users=user_ids)
        for level, means in enumerate(self.latents_of_matrix(split.train, side_features=side), start=1):
            save(f"user_latent_means_level{level}.npy", means)
        save("user_ids.npy", user_ids)
        return written

    def side_features_for(self, user_ids: Sequence[str], *, reference_users: np.ndarray | None = None) -> np.ndarray:
        """The run's user features (from the --user-features file it trained with) of `user_ids`: [n_users, F].

        MovieLens demographics standardise age over the users read together, so they are read together with the
        training users (`reference_users`, default the saved split's) to match what training saw as closely as
        possible.
        """
        path = self.settings.get("user_features")
        if not path:
            raise ValueError("this model was trained without user features")
        user_ids = np.asarray(user_ids).astype(str)
        if reference_users is None:
            _, reference_users = RunDir.open_for_reading(self.workdir).split_ids()
        extra = np.setdiff1d(user_ids, reference_users)
        together = np.concatenate([reference_users, extra])
        values = read_user_features(path, together).values
        row_of = {user: row for row, user in enumerate(together)}
        return np.asarray(values[[row_of[user] for user in user_ids]], np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Command line


def export_folder(directory: str | pathlib.Path) -> pathlib.Path:
    """`directory` as a Path, refused (before anything is computed) when it names something that is not a folder."""
    directory = pathlib.Path(directory)
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"--export {directory} is an existing file, not a folder: give a folder (new or "
                              "existing) for the .npy files")
    return directory
