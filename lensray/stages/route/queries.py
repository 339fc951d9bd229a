"""The finalists' per-query results, as the `route` stage routes on them.

A probe with `probe.metric: task` keeps, in every Observation's `extra[QUERIES_KEY]`, one record
per held-out query (lensray.probe.hf.worker.QUERY_FIELDS: id, query, correct, answer, output,
tokens, flops, latency_s). A candidate's results are those of the last size it ran that has
them. The finalists are the best candidates of the ranking that have results and did not fail,
and every finalist must have been scored on the same held-out queries (the same ids with the
same texts): then RouteData is their columns side by side, queries in order of id::

    from lensray.stages.route.queries import query_results, pick_finalists, route_data
    results = query_results(selection.observations)       # candidate -> QueryResults
    finalists = pick_finalists(selection.doc, results, 3)  # at most 3 names, best first
    data = route_data(results, finalists)                  # a RouteData, n queries x m finalists
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lensray.core.errors import DataError
from lensray.core.types import Observation, Status
from lensray.probe.hf.worker import QUERIES_KEY
from lensray.stages.route.evaluate import RouteData


@dataclass(frozen=True)
class QueryResults:
    """One candidate's per-query records, from one size of its probe."""

    candidate: str
    size: int
    """The subset size the probe had fine-tuned on when it answered them."""
    records: list[dict[str, Any]]
    """One record per held-out query (QUERY_FIELDS), in order of id."""
    weights: str = ""
    """Where the probe kept its weights fine-tuned at that size (`extra["weights"]`, a path or a
    URI), or empty when it kept none."""


def query_results(observations: dict[str, list[Observation]]) -> dict[str, QueryResults]:
    """Each candidate's per-query records from its last Observation (by size) that has them;
    candidates without any are left out."""
    out = {}
    for candidate, obs in observations.items():
        last = max((o for o in obs if o.extra.get(QUERIES_KEY)), key=lambda o: o.size, default=None)
        if last is None:
            continue
        records = sorted(last.extra[QUERIES_KEY], key=lambda r: r["id"])
        ids = [r["id"] for r in records]
        if len(set(ids)) != len(ids):
            raise DataError(f"{candidate}: its per-query records at size {last.size} repeat a query id; "
                            "the sweep's record (sweep.jsonl) is damaged: run the sweep again")
        out[candidate] = QueryResults(candidate, last.size, records, last.extra.get("weights", ""))
    return out


def pick_finalists(doc: dict[str, Any], results: dict[str, QueryResults], finalists: int) -> list[str]:
    """The first `finalists` candidates of selection.json's ranking that have per-query results
    and did not fail, best first; at least 2 (a DataError saying why not)."""
    picked = [e["candidate"] for e in doc["ranking"] if e["status"] != Status.FAILED and e["candidate"] in results]
    if len(picked) < 2:
        have = f": {', '.join(picked)}" if picked else ""
        raise DataError(
            f"route: {len(picked)} candidate{'s' * (len(picked) != 1)} of the selection {'has' if len(picked) == 1 else 'have'} "
            f"per-query results{have}; routing needs at least 2. Probes keep them with probe.metric: task "
            "(failed candidates are left out): run the sweep with that metric and two or more models"
        )
    return picked[:finalists]


def route_data(results: dict[str, QueryResults], finalists: Sequence[str]) -> RouteData:
    """The finalists' correctness, answers and costs side by side, one row per query in order of
    id. Raises DataError when their held-out queries differ (ids or texts): they are only
    comparable on the same queries."""
    first = results[finalists[0]].records
    ids, texts = [r["id"] for r in first], [r["query"] for r in first]
    for name in finalists[1:]:
        records = results[name].records
        other = [r["id"] for r in records]
        if other != ids:
            missing = sorted(set(ids) ^ set(other))[:3]
            raise DataError(
                f"route: finalists {finalists[0]!r} and {name!r} were scored on different held-out queries "
                f"({len(ids)} and {len(other)} queries; e.g. id {missing} is in one only). Every probe holds "
                "out the same rows only when the candidates tokenise the data alike: give them one tokenizer, "
                "or data.overflow: truncate with a data.max_length that drops no example"
            )
        for r, text in zip(records, texts):
            if r["query"] != text:
                raise DataError(
                    f"route: query id {r['id']} reads differently for {finalists[0]!r} and {name!r} "
                    f"({text[:40]!r} / {r['query'][:40]!r}): their probes read different data; probe them on one data.path"
                )
    columns = [results[name].records for name in finalists]

    def stack(field: str) -> np.ndarray:
        return np.array([[records[i][field] for records in columns] for i in range(len(ids))], dtype=float)

    return RouteData(
        queries=texts,
        finalists=list(finalists),
        correct=stack("correct").astype(int),
        answers=[[records[i]["answer"] for records in columns] for i in range(len(ids))],
        flops=stack("flops"),
        latency=stack("latency_s"),
    )
