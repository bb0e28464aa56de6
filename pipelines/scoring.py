"""The scoring engine: feature rows -> churn risk, purchase propensity and reason codes.

Rows are scored in micro-batches of at most ``max_batch_rows`` on the injected
torch device (``auto`` = CUDA when present, else CPU). Reasons come from an
input x gradient attribution of the churn head (see
:func:`models.network.input_x_gradient`), turned into operator phrases by the
feature registry, so that streaming and batch scoring explain identically.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import torch

from models.artifact import Artifact, load_artifact
from models.network import input_x_gradient
from pipelines.features import FEATURE_NAMES, REGISTRY, schema_hash
from pipelines.metrics import PipelineMetrics

log = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "artifacts" / "default"
N_REASONS = 3
_MAX_CENTS = (1 << 40) - 1  # phrase-cache key packs the value in 40 bits of cents
_CACHE_MAX = 200_000


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when usable, else CPU; an explicit ``cuda`` without a GPU falls back loudly."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        log.warning("device %s requested but CUDA is not available; scoring on CPU", name)
        return torch.device("cpu")
    return torch.device(name)


@dataclass(frozen=True, slots=True)
class Scores:
    churn_risk: npt.NDArray[np.float32]
    purchase_propensity: npt.NDArray[np.float32]
    reasons: pa.ListArray  # list<string> per row, strongest driver first


class Scorer:
    """Scores feature matrices with one loaded model on one device."""

    def __init__(
        self,
        artifact: Artifact,
        *,
        device: torch.device,
        max_batch_rows: int = 8192,
        metrics: PipelineMetrics | None = None,
    ) -> None:
        if max_batch_rows <= 0:
            raise ValueError(f"max_batch_rows must be positive, got {max_batch_rows}")
        self.artifact = artifact
        self.model = artifact.model.to(device).eval()
        self.device = device
        self.max_batch_rows = max_batch_rows
        self.metrics = metrics
        self.model_version = artifact.model_version
        self._phrase_cache: dict[int, str] = {}
        self._mean_raw = self._raw_means()

    @classmethod
    def from_dir(
        cls, path: Path, *, device: str = "auto", max_batch_rows: int = 8192, metrics: PipelineMetrics | None = None
    ) -> Scorer:
        dev = resolve_device(device)
        art = load_artifact(path, expected_schema_hash=schema_hash(), expected_names=FEATURE_NAMES, device=dev)
        return cls(art, device=dev, max_batch_rows=max_batch_rows, metrics=metrics)

    def _raw_means(self) -> npt.NDArray[np.float64]:
        m = self.model
        mean = m.mean.detach().cpu().numpy().astype(np.float64)
        log_mask = m.log_mask.detach().cpu().numpy()
        return np.where(log_mask, np.expm1(mean), mean)

    def score(self, features: npt.NDArray[np.float32]) -> Scores:
        """Score rows (n x F). Non-finite values are zeroed and counted, never fed to the model."""
        n = features.shape[0]
        bad = ~np.isfinite(features)
        if bad.any():
            if self.metrics:
                self.metrics.nonfinite_rows.inc(int(bad.any(axis=1).sum()))
            features = np.where(bad, 0.0, features).astype(np.float32)
        churn = np.empty(n, np.float32)
        prop = np.empty(n, np.float32)
        reasons: list[pa.ListArray] = []
        for i in range(0, n, self.max_batch_rows):
            chunk = features[i : i + self.max_batch_rows]
            t0 = time.perf_counter()
            x = torch.from_numpy(np.ascontiguousarray(chunk)).to(self.device, non_blocking=True)
            probs, attr = input_x_gradient(self.model, x, head=0)
            k = min(N_REASONS, attr.shape[1])
            top_attr, top = torch.topk(attr, k, dim=1)  # sorted, strongest first
            p = probs.cpu().numpy()
            churn[i : i + len(chunk)] = p[:, 0]
            prop[i : i + len(chunk)] = p[:, 1]
            reasons.append(self._phrases(chunk, top.cpu().numpy(), top_attr.cpu().numpy()))
            if self.metrics:
                self.metrics.scoring_seconds.observe(time.perf_counter() - t0)
                self.metrics.scoring_batch_rows.observe(len(chunk))
        if self.metrics:
            self.metrics.rows_scored.inc(n)
        merged = pa.concat_arrays(reasons) if reasons else pa.array([], pa.list_(pa.string()))
        return Scores(churn, prop, merged)

    def _phrases(
        self, x: npt.NDArray[np.float32], top: npt.NDArray[np.int64], top_attr: npt.NDArray[np.float32]
    ) -> pa.ListArray:
        """Top churn drivers per row as short phrases (only features that raise the risk).

        ``top``/``top_attr``: per row, the strongest attributions' feature indices and
        values, strongest first. Rows share few distinct (feature, direction,
        value) triples, so each distinct phrase is formatted once (and cached
        across batches) and the per-row lists are assembled as an Arrow list
        array without a Python loop over rows.
        """
        n = x.shape[0]
        vals = np.take_along_axis(x, top, axis=1).astype(np.float64)
        high = vals >= self._mean_raw[top]
        valid = top_attr > 0  # sorted descending, so the valid ones are a prefix of each row
        cents = np.clip(np.round(vals * 100), 0, _MAX_CENTS).astype(np.int64)
        keys = ((top.astype(np.int64) * 2 + high) << 40) + cents
        uniq, inv = np.unique(keys[valid], return_inverse=True)
        cache = self._phrase_cache
        phrases = np.empty(uniq.shape[0], dtype=object)
        for i, key in enumerate(uniq.tolist()):
            phrase = cache.get(key)
            if phrase is None:
                f, is_high, v = key >> 41, (key >> 40) & 1, (key & _MAX_CENTS) / 100
                spec = REGISTRY[f]
                phrase = (spec.high if is_high else spec.low).format(v=v)
                if len(cache) < _CACHE_MAX:
                    cache[key] = phrase
            phrases[i] = phrase
        offsets = np.zeros(n + 1, np.int32)
        np.cumsum(valid.sum(axis=1), out=offsets[1:])
        return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(phrases[inv], pa.string()))
