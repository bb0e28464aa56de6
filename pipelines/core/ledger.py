"""The action ledger: each user's playbook history, part of the shard state.

Per user and action the grant time (uint32 seconds), the current action and the rule that chose it, and the
day's cap counters. It lives in the shard's state and snapshot, so cooldowns, quiet hours and daily caps
survive restarts and replays decide the same (:func:`pipelines.core.playbook.decide` reads and updates it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from pipelines.contract.time import NEVER


class ActionLedger:
    """Per-user action history of one shard (rows = the shard state's rows) and the day's cap counters.

    ``given[row, a]``: event time of the user's last grant of action ``a`` in
    whole seconds (uint32, 0 = never: 4 bytes per user and action, as the
    state's bytes per user are a capacity figure; valid until 2106);
    ``current``/``rule``: the user's current action and the rule that chose
    it (its grant time is ``given`` of the current action). Arrays grow with
    the state; erased users are cleared (:meth:`clear`).
    """

    def __init__(self, actions: tuple[str, ...], rules: tuple[str, ...]) -> None:
        self.actions = actions
        self.rules = rules
        self.n = 0
        k = len(actions)
        self.given = np.zeros((0, k), np.uint32)
        self.current = np.zeros(0, np.int8)  # -1 = none
        self.rule = np.zeros(0, np.int16)  # -1 = none
        self.day = NEVER  # operating day of the counters
        self.used = np.zeros(k, np.int64)  # grants per action on ``day`` in this shard

    def ensure(self, rows: int) -> None:
        """Room for ``rows`` rows (new rows start with no history)."""
        if rows <= self.given.shape[0]:
            return
        have = self.given.shape[0]
        # as the state's arrays: doubling while small, +25% past a million rows (bounded slack)
        cap = max(rows, have + (have if have < (1 << 20) else have // 4), 1024)
        k = len(self.actions)
        given = np.zeros((cap, k), np.uint32)
        given[: self.given.shape[0]] = self.given
        current = np.full(cap, -1, np.int8)
        current[: self.current.shape[0]] = self.current
        rule = np.full(cap, -1, np.int16)
        rule[: self.rule.shape[0]] = self.rule
        self.given, self.current, self.rule = given, current, rule

    def clear(self, rows: npt.NDArray[np.int64]) -> None:
        rows = rows[(rows >= 0) & (rows < self.given.shape[0])]
        self.given[rows] = 0
        self.current[rows] = -1
        self.rule[rows] = -1

    def nbytes(self) -> int:
        return int(self.given.nbytes + self.current.nbytes + self.rule.nbytes)

    def at_ms(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """When each row's current action was granted (ms, whole seconds; NEVER if none)."""
        cur = self.current[rows].astype(np.int64)
        sec = self.given[rows, np.maximum(cur, 0)].astype(np.int64) if rows.shape[0] else np.zeros(0, np.int64)
        return np.where(cur >= 0, sec * 1000, NEVER)

    def snapshot(self, n: int) -> dict[str, Any]:
        self.ensure(n)
        return {
            "actions": self.actions,
            "rules": self.rules,
            "given": self.given[:n].copy(),
            "current": self.current[:n].copy(),
            "rule": self.rule[:n].copy(),
            "day": self.day,
            "used": self.used.copy(),
        }

    @classmethod
    def restore(cls, snap: dict[str, Any], actions: tuple[str, ...], rules: tuple[str, ...]) -> ActionLedger:
        """Restore, mapping actions and rules *by name* onto the (possibly edited) playbook.

        An action removed from the playbook loses its history; a renamed rule id
        keeps the user's current action but no longer names a rule.
        """
        led = cls(actions, rules)
        given = snap["given"]
        n = given.shape[0]
        led.ensure(n)
        led.n = n
        old_actions: tuple[str, ...] = tuple(snap["actions"])
        a_map = np.array([actions.index(a) if a in actions else -1 for a in old_actions], np.int64)
        for old, new in enumerate(a_map):
            if new >= 0:
                led.given[:n, new] = given[:, old]
                led.used[new] = snap["used"][old]
        cur = snap["current"].astype(np.int64)
        mapped = np.where(cur >= 0, a_map[np.maximum(cur, 0)] if a_map.shape[0] else -1, -1)
        led.current[:n] = mapped
        old_rules: tuple[str, ...] = tuple(snap["rules"])
        r_map = np.array([rules.index(r) if r in rules else -1 for r in old_rules] or [-1], np.int64)
        rl = snap["rule"].astype(np.int64)
        led.rule[:n] = np.where((rl >= 0) & (mapped >= 0), r_map[np.maximum(rl, 0)], -1)
        led.day = int(snap["day"])
        return led
