"""Hostile or careless operator files fail with one line naming file, line and field, never a crash.

Each case was a crash before: an alias bomb (300 bytes expanding to over a million values in seconds),
a self-referencing alias (RecursionError), a 2,000-term expression (RecursionError), ``1/0 > x``
(ZeroDivisionError).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pipelines.core.rules import RuleError
from pipelines.core.taxonomy import TAXONOMY_DIR, load_taxonomy

BASE = (TAXONOMY_DIR / "lifecycle-5.yaml").read_text()
AT_RISK = next(line for line in BASE.splitlines() if line.startswith("at_risk:"))


def _with(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "t.yaml"
    path.write_text(text)
    return path


def _error(path: Path) -> str:
    t = time.perf_counter()
    with pytest.raises(RuleError) as err:
        load_taxonomy(path)
    assert time.perf_counter() - t < 5  # refused, not expanded
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}:")
    return message


BOMB = "\n".join(
    ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(6)]
)


def test_a_yaml_alias_bomb_is_refused_without_expanding_it(tmp_path: Path) -> None:
    message = _error(_with(tmp_path, BASE + "\nextra:\n" + "\n".join("  " + line for line in BOMB.splitlines())))
    assert "alias" in message and ":" in message.split(" ")[0]


def test_a_self_referencing_alias_is_refused(tmp_path: Path) -> None:
    message = _error(_with(tmp_path, BASE + "\nloop: &loop [*loop]\n"))
    assert "alias *loop" in message


def test_a_huge_expression_is_refused_by_size(tmp_path: Path) -> None:
    rule = " + ".join(["churn_risk"] * 2_000) + " > 1"
    message = _error(_with(tmp_path, BASE.replace(AT_RISK, f"at_risk: {rule}")))
    assert "at_risk" in message and "characters" in message


def test_a_deeply_nested_expression_is_refused_by_depth(tmp_path: Path) -> None:
    rule = "not " * 150 + "churn_risk > 0.5"
    message = _error(_with(tmp_path, BASE.replace(AT_RISK, f"at_risk: {rule}")))
    assert "at_risk" in message and "nested" in message


def test_a_long_sum_within_the_size_is_refused_by_depth(tmp_path: Path) -> None:
    rule = " + ".join(["1"] * 300) + " > churn_risk"
    message = _error(_with(tmp_path, BASE.replace(AT_RISK, f"at_risk: {rule}")))
    assert "nested" in message


@pytest.mark.parametrize("rule", ["1/0 > churn_risk", "churn_risk > 1e308 * 1e308"])
def test_constant_arithmetic_that_fails_is_an_error_at_the_field(tmp_path: Path, rule: str) -> None:
    message = _error(_with(tmp_path, BASE.replace(AT_RISK, f"at_risk: {rule}")))
    line = BASE.splitlines().index(AT_RISK) + 1
    assert message.startswith(f"{tmp_path / 't.yaml'}:{line}: at_risk:")


def test_a_file_that_is_too_large_is_refused(tmp_path: Path) -> None:
    message = _error(_with(tmp_path, BASE + "\n# " + "x" * (1 << 20) + "\n"))
    assert "bytes" in message
