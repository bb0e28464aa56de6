from pathlib import Path

import numpy as np
import pytest
import torch

from models.artifact import ArtifactError, SchemaMismatchError, load_artifact, save_artifact
from models.fit import FitConfig, fit
from models.network import LifecycleNet, input_x_gradient, input_x_gradient_autograd


def _data(n: int = 600, f: int = 6, seed: int = 0, noise: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.gamma(1.0, 2.0, size=(n, f)).astype(np.float32)
    churn = (x[:, 0] + rng.normal(0, noise, n) > 2).astype(np.float32)
    order = (x[:, 1] + rng.normal(0, noise, n) > 3).astype(np.float32)
    return x, np.stack([churn, order], axis=1)


def test_fit_is_deterministic_on_cpu_for_a_seed() -> None:
    x, y = _data()
    mask = np.zeros(x.shape[1], bool)
    cfg = FitConfig(epochs=3, seed=5, hidden=(16,))
    m1, _ = fit(x, y, mask, cfg)
    m2, _ = fit(x, y, mask, cfg)
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_fit_learns_a_signal_better_than_the_base_rate() -> None:
    x, y = _data(2000, noise=0.1)
    model, report = fit(x, y, np.zeros(x.shape[1], bool), FitConfig(epochs=15, hidden=(16,), batch_size=64))
    with torch.no_grad():
        p = model(torch.from_numpy(x)).numpy()
    base = -np.mean(y * np.log(y.mean(0)) + (1 - y) * np.log(1 - y.mean(0)))
    loss = -np.mean(y * np.log(p + 1e-7) + (1 - y) * np.log(1 - p + 1e-7))
    assert loss < 0.8 * base
    assert report.epochs_run >= 1


def test_manual_input_x_gradient_equals_autograd() -> None:
    x, _ = _data(64)
    model = LifecycleNet(x.shape[1], (16, 8)).eval()
    model.set_normalisation(torch.from_numpy(x), torch.tensor([True, False, True, False, False, True]))
    p1, a1 = input_x_gradient(model, torch.from_numpy(x), head=0)
    p2, a2 = input_x_gradient_autograd(model, torch.from_numpy(x), head=0)
    torch.testing.assert_close(p1, p2)
    torch.testing.assert_close(a1, a2, rtol=1e-5, atol=1e-6)


def test_artifact_round_trip_scores_identically(tmp_path: Path) -> None:
    x, _ = _data(32)
    model = LifecycleNet(x.shape[1], (8,)).eval()
    names = tuple(f"f{i}" for i in range(x.shape[1]))
    save_artifact(model, tmp_path / "a", model_version="t1", feature_names=names, schema_hash="h1", horizon_days=30)
    art = load_artifact(tmp_path / "a", expected_schema_hash="h1", expected_names=names)
    assert art.model_version == "t1" and art.meta["horizon_days"] == 30
    with torch.no_grad():
        torch.testing.assert_close(art.model(torch.from_numpy(x)), model(torch.from_numpy(x)))


def test_loading_an_artifact_with_another_feature_schema_fails_with_the_difference(tmp_path: Path) -> None:
    model = LifecycleNet(3, (4,))
    save_artifact(model, tmp_path, model_version="t", feature_names=("a", "b", "c"), schema_hash="old", horizon_days=30)
    with pytest.raises(SchemaMismatchError, match=r"schema old.*provides new.*lacks: \['d'\].*provide: \['c'\]"):
        load_artifact(tmp_path, expected_schema_hash="new", expected_names=("a", "b", "d"))


def test_a_directory_without_artifact_json_is_not_an_artifact(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no artifact.json"):
        load_artifact(tmp_path, expected_schema_hash="x")


def test_committed_default_model_matches_the_feature_registry() -> None:
    from pipelines.core.features import FEATURE_NAMES, schema_hash
    from pipelines.scoring.scorer import DEFAULT_MODEL_DIR

    art = load_artifact(DEFAULT_MODEL_DIR, expected_schema_hash=schema_hash(), expected_names=FEATURE_NAMES)
    assert tuple(art.meta["feature_names"]) == FEATURE_NAMES


def test_validation_split_by_group_never_puts_one_user_on_both_sides() -> None:
    from models.fit import validation_split

    groups = np.repeat(np.arange(50), 4)  # 50 users at 4 origins each
    val, tr = validation_split(groups.shape[0], 0.2, np.random.default_rng(0), groups)
    assert not set(groups[val]) & set(groups[tr])
    assert len(set(groups[val])) == 10 and val.shape[0] + tr.shape[0] == groups.shape[0]


def test_normalisation_is_centred_on_the_baseline_rows_and_scaled_on_all() -> None:
    x, y = _data(400)
    active = x[:, 0] < 1.0
    model, _ = fit(x, y, np.zeros(x.shape[1], bool), FitConfig(epochs=1, hidden=(8,), val_fraction=0.25),
                   baseline_mask=active)  # fmt: skip
    # the centre is the mean of baseline rows (of the training split), far from the all-row mean of feature 0
    assert float(model.mean[0]) < 1.0 < float(x[:, 0].mean())
    assert float(model.std[0]) == pytest.approx(float(x[:, 0].std()), rel=0.15)


def test_sample_weights_must_be_finite_and_non_negative() -> None:
    x, y = _data(100)
    with pytest.raises(ValueError, match="sample_weight"):
        fit(x, y, np.zeros(x.shape[1], bool), FitConfig(epochs=1, hidden=(4,)), sample_weight=-np.ones(100, np.float32))
