"""A seeded synthetic implicit-feedback data set with real structure, the built-in default for `hvae train`.

Users mix a few latent tastes; each taste prefers a random subset of the catalogue; items have power-law
popularity. A user's items are drawn without replacement with probability proportional to
popularity_i^popularity_weight * sum_k taste_uk * affinity_ki, so a model that learns the tastes beats popularity.
"""

from __future__ import annotations

import numpy as np

from hvae_jax.data.interactions import Interactions, from_raw_ids


def synthetic_interactions(
    n_users: int = 3000,
    n_items: int = 1000,
    n_tastes: int = 12,
    mean_items_per_user: float = 40.0,
    popularity_exponent: float = 1.0,
    popularity_weight: float = 0.5,
    taste_concentration: float = 0.15,
    seed: int = 0,
) -> Interactions:
    """Draws a synthetic data set.

    Args:
      n_users, n_items: sizes.
      n_tastes: latent tastes; each user is a Dirichlet(taste_concentration) mixture of them.
      mean_items_per_user: mean of the (log-normal, at least 5) number of items per user.
      popularity_exponent: item i (after a random relabelling) has popularity (i + 1)^-popularity_exponent.
      popularity_weight: how much popularity, rather than taste, drives choices (0: taste alone).
      seed: all randomness derives from it.

    Returns:
      Interactions with raw ids "u<k>" and "i<k>".
    """
    rng = np.random.default_rng(seed)
    popularity = (np.arange(1, n_items + 1, dtype=np.float64)) ** -popularity_exponent
    popularity = popularity[rng.permutation(n_items)]
    # Each taste likes a random fifth of the catalogue strongly and the rest weakly.
    affinity = np.where(rng.random((n_tastes, n_items)) < 0.2, 1.0, 0.02) * rng.gamma(2.0, 1.0, (n_tastes, n_items))
    affinity /= affinity.sum(axis=1, keepdims=True)
    tastes = rng.dirichlet(np.full(n_tastes, taste_concentration), size=n_users)
    sizes = np.clip(rng.lognormal(np.log(mean_items_per_user) - 0.5, 1.0, n_users).astype(int), 5, n_items // 2)

    log_weight = popularity_weight * np.log(popularity)[None, :] + np.log(tastes @ affinity + 1e-12)
    # Sampling without replacement in proportion to the weights: top-k of Gumbel-perturbed log-weights.
    perturbed = log_weight + rng.gumbel(size=(n_users, n_items))
    order = np.argsort(-perturbed, axis=1)
    users = np.repeat(np.arange(n_users), sizes)
    items = np.concatenate([order[u, : sizes[u]] for u in range(n_users)])
    return from_raw_ids(
        np.char.add("u", users.astype(str)),
        np.char.add("i", items.astype(str)),
        source=f"synthetic(n_users={n_users}, n_items={n_items}, n_tastes={n_tastes}, seed={seed})",
    )
