"""The default taxonomy's stage and tier names and codes, and the shipped defaults.

Stage rules are configuration (:mod:`pipelines.core.taxonomy`); this module names the
default 5-stage lifecycle model (导入/成长/成熟/休眠/流失, ``lifecycle-5``) for the
code that is defined over it rather than over any taxonomy: model training and
evaluation group users by these stages, and the simulator's ground truth uses
them. A test keeps these names equal to the shipped ``lifecycle-5.yaml``.
"""

from __future__ import annotations

from functools import lru_cache

from pipelines.core.playbook import DEFAULT_PLAYBOOK, Playbook, load_playbook
from pipelines.core.taxonomy import DEFAULT_TAXONOMY, Taxonomy, load_taxonomy

STAGES: tuple[str, ...] = ("new", "growing", "mature", "dormant", "churned")
TIERS: tuple[str, ...] = ("vip", "regular", "potential")
NEW, GROWING, MATURE, DORMANT, CHURNED = range(5)
VIP, REGULAR, POTENTIAL = range(3)


@lru_cache(maxsize=1)
def default_taxonomy() -> Taxonomy:
    """The shipped ``lifecycle-5`` taxonomy (loaded once)."""

    return load_taxonomy(DEFAULT_TAXONOMY)


@lru_cache(maxsize=1)
def default_playbook() -> Playbook:
    """The shipped playbook of the default taxonomy (loaded once)."""

    return load_playbook(DEFAULT_PLAYBOOK, default_taxonomy())
