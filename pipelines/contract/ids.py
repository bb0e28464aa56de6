"""User ids: the one normalisation rule and the stable 64-bit key.

NFC (canonical composition) only: NFC and NFD spellings of one id are the same
user. Not NFKC: compatibility variants (full-width ``Ｕ１`` vs ``U1``,
ligatures) stay distinct ids, since a producer may mean them apart. The
decoder, the Kafka partitioner, the producers and erasure all call
:func:`normalize_user_id` / :func:`normalize_user_ids`, so one user is one key
everywhere.
"""

from __future__ import annotations

import unicodedata

import numpy as np
import numpy.typing as npt
import pandas as pd


def normalize_user_id(user_id: str) -> str:
    """The id as the pipeline stores it (NFC); ASCII is NFC already and costs nothing."""
    return user_id if user_id.isascii() else unicodedata.normalize("NFC", user_id)


def normalize_user_ids(ids: npt.NDArray[np.object_], non_ascii: npt.NDArray[np.bool_]) -> None:
    """NFC-normalise, in place, the ids flagged ``non_ascii`` (the others are NFC already)."""
    for i in np.flatnonzero(non_ascii):
        ids[i] = unicodedata.normalize("NFC", ids[i])


def user_key_bytes(user_id: str) -> bytes:
    """Kafka partition key of a user: the normalised id's UTF-8 bytes (one user, one partition)."""
    return normalize_user_id(user_id).encode()


def hash_strings(values: npt.NDArray[np.object_]) -> npt.NDArray[np.int64]:
    """Stable 64-bit hashes of strings (SipHash with pandas' fixed key), vectorised.

    Stable across processes and restarts, unlike ``hash()``; collisions are
    detected by the shard state, which keeps the original id per row.
    """
    if values.shape[0] == 0:
        return np.zeros(0, np.int64)
    return pd.util.hash_array(values, categorize=False).view(np.int64)
