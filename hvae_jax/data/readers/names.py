"""Which columns of a header (CSV, RecBole, Parquet) hold the user, the item and the rating, found by their names."""

from __future__ import annotations

import re

# Normalised (lower case, letters and digits only) column names.
USER_PREFIXES = ("user", "customer", "reviewer", "member", "visitor")
ITEM_PREFIXES = ("item", "movie", "artist", "track", "song", "book", "product", "business", "isbn", "asin")
VALUE_NAMES = frozenset({"rating", "ratings", "value", "weight", "count", "score", "playcount", "plays", "clicks",
                         "stars", "preference", "frequency", "confidence"})
NOT_VALUE_NAMES = frozenset({"timestamp", "time", "date", "datetime", "ts", "tag", "tags", "title", "genres", "genre",
                             "name"})


def normalise_name(name: str) -> str:
    """'userId', 'user_id', 'User ID' -> 'userid'."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


def pick_columns(header: list[str]) -> tuple[int, int, int | None]:
    """Picks the (user, item, value) columns of a header.

    User and item columns are found by name (userId, user_id, movieId, itemId, artistID, ...) and otherwise are
    the first two columns. The value column is the first one named like a rating (rating, value, weight, count,
    score, ...); failing that the third column, unless it is named like a timestamp, tag, title or genre.

    Returns:
      (user column, item column, value column or None), 0-based.
    """
    names = [normalise_name(name) for name in header]
    user_field = next((k for k, name in enumerate(names) if name.startswith(USER_PREFIXES) or name == "uid"), None)
    item_field = next((k for k, name in enumerate(names)
                       if k != user_field and (name.startswith(ITEM_PREFIXES) or name == "iid")), None)
    if user_field is None or item_field is None:
        user_field, item_field = 0, 1
    value_field = next((k for k, name in enumerate(names) if name in VALUE_NAMES), None)
    if value_field is None and len(names) >= 3 and 2 not in (user_field, item_field) and (
        names[2] not in NOT_VALUE_NAMES
    ):
        value_field = 2
    return user_field, item_field, value_field
