"""The router: a query's text -> the probability that each finalist answers it right.

SelectLLM's router is a multi-label classifier trained with binary cross-entropy on which
models answered each training query right. Here it is an encoder followed by one logistic
layer shared by the m finalists' labels::

    x = encode(query)                                   (d,)
    c = sigmoid(x W + b)                                (m,)  confidences, W (d, m), b (m,)
    loss(W, b) = sum_i sum_j [ log(1 + exp(z_ij)) - y_ij z_ij ] + l2 / 2 ||W||^2,  z = X W + b

with y_ij = 1 when finalist j answered query i right; minimised by L-BFGS from zero over the
feature columns the training queries use (an unused column's weight stays 0: its gradient is
l2 w). A finalist right (or wrong) on every training query gets a confidence near 1 (or 0)
from its bias alone.

Encoders (`RouteConfig.encoder`):

    hashed      nothing to download: the query's word 1-2-grams and character 2-4-grams
                (within words), each hashed into `features` buckets, counts L2-normalised per
                view (sparse, 2 * features columns)
    <hub id>    a transformers encoder (e.g. "roberta-base", or a local folder): the mean of its
                last hidden states over the query's tokens (at most `max_length`), frozen;
                loaded with transformers' `from_pretrained`, from its cache on a cluster
                that has it. Embeddings are cached per text, so cross-validation encodes each
                query once.

    from lensray.stages.route.router import Router
    router = Router(RouteConfig()).fit(queries, correct)    # n texts, (n, m) 0/1
    conf = router.predict_proba(new_queries)                 # (n', m)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import scipy.sparse as sp
from scipy.optimize import minimize
from scipy.special import expit

from lensray.core.errors import DataError
from lensray.stages.route.config import HASHED, RouteConfig


class Encoder(Protocol):
    """Texts -> their features (n, d), dense or scipy sparse; a text always gets the same row."""

    def __call__(self, texts: Sequence[str]) -> np.ndarray | sp.spmatrix: ...


class HashedEncoder:
    """Hashed word 1-2-grams and character 2-4-grams, each view L2-normalised (see the module)."""

    def __init__(self, features: int = 2**18):
        from sklearn.feature_extraction.text import HashingVectorizer

        common = {"n_features": features, "alternate_sign": False, "norm": "l2", "lowercase": True}
        self.views = (
            HashingVectorizer(analyzer="word", ngram_range=(1, 2), **common),
            HashingVectorizer(analyzer="char_wb", ngram_range=(2, 4), **common),
        )

    def __call__(self, texts: Sequence[str]) -> sp.csr_matrix:
        return sp.hstack([v.transform(list(texts)) for v in self.views], format="csr")


class HubEncoder:
    """A transformers encoder's last hidden states, mean-pooled over each query's tokens; frozen."""

    def __init__(self, name: str, max_length: int = 128, batch_size: int = 32, device: str = "cpu"):
        self.name, self.max_length, self.batch_size, self.device = name, max_length, batch_size, device
        self._cache: dict[str, np.ndarray] = {}
        self._model = self._tokenizer = None

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start:start + self.batch_size]
            self._cache.update(zip(batch, self._embed(batch)))
        return np.stack([self._cache[t] for t in texts])

    def _embed(self, batch: list[str]) -> np.ndarray:
        import torch

        if self._model is None:
            from transformers import AutoModel, AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.name)
            self._model = AutoModel.from_pretrained(self.name).to(self.device).eval()
        enc = self._tokenizer(batch, padding=True, truncation=True, max_length=self.max_length,
                              return_tensors="pt").to(self.device)
        with torch.no_grad():
            hidden = self._model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float().cpu().numpy()


def make_encoder(cfg: RouteConfig) -> Encoder:
    """The encoder `cfg.encoder` names."""
    if cfg.encoder == HASHED:
        return HashedEncoder(cfg.features)
    return HubEncoder(cfg.encoder, cfg.max_length, cfg.batch_size, cfg.device)


class Router:
    """Multi-label router: an encoder and a logistic layer trained with BCE (see the module).

    Parameters
    ----------
    cfg : the encoder and the L2 penalty (`encoder`, `features`, `l2`, ...); default RouteConfig().
    encoder : an encoder to use instead of the one `cfg` names (share one across the folds of a
        cross-validation so that a hub encoder embeds each query once).

    Attributes after `fit`: `columns_` (d',) the feature columns the training queries use,
    `coef_` (d', m) their weights, `intercept_` (m,), `n_iter_`, `converged_`.
    """

    def __init__(self, cfg: RouteConfig | None = None, encoder: Encoder | None = None):
        self.cfg = cfg if cfg is not None else RouteConfig()
        self.encoder = encoder if encoder is not None else make_encoder(self.cfg)

    def fit(self, texts: Sequence[str], correct: np.ndarray) -> Router:
        """Train on n queries and their (n, m) 0/1 correctness, one column per finalist."""
        y = np.asarray(correct, dtype=float)
        if y.ndim != 2 or y.shape[0] != len(texts) or len(texts) == 0:
            raise DataError(f"Router.fit: needs n >= 1 texts and an (n, m) correctness matrix; got {len(texts)} texts and shape {y.shape}")
        x = self.encoder(texts)
        columns = np.unique(x.tocsr().indices) if sp.issparse(x) else np.arange(x.shape[1])
        x = x[:, columns]
        d, m = len(columns), y.shape[1]
        l2 = self.cfg.l2

        def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
            w, b = theta[:d * m].reshape(d, m), theta[d * m:]
            z = np.asarray(x @ w) + b
            r = expit(z) - y
            value = np.logaddexp(0.0, z).sum() - (y * z).sum() + 0.5 * l2 * np.dot(w.ravel(), w.ravel())
            grad = np.concatenate([(np.asarray(x.T @ r) + l2 * w).ravel(), r.sum(0)])
            return float(value), grad

        res = minimize(loss, np.zeros(d * m + m), jac=True, method="L-BFGS-B", options={"maxiter": 1000})
        self.columns_, self.coef_, self.intercept_ = columns, res.x[:d * m].reshape(d, m), res.x[d * m:]
        self.n_iter_, self.converged_ = int(res.nit), bool(res.success)
        if not res.success:
            warnings.warn(f"Router.fit: L-BFGS stopped after {res.nit} iterations without converging: {res.message}", stacklevel=2)
        return self

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """(n, m): the probability that each finalist answers each query right."""
        return expit(np.asarray(self.encoder(texts)[:, self.columns_] @ self.coef_) + self.intercept_)

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """(n, m) bool: the finalists labelled right (confidence above 0.5)."""
        return self.predict_proba(texts) > 0.5
