"""Replay an outcomes table through the classifier and the policy engine, without calling any model.

How it runs (and why it is fast):

1. Every distinct (prompt, set of measured models) is classified once (``classify_batch`` in chunks), so a file
   that repeats prompts pays for each text once.
2. The policy engine decides once per distinct prompt, on the model cards of the models measured for that
   request (the router may only pick a model whose outcome we know). Budgets are not replayed: the engine
   gets an empty budget state (a file without timestamps has no windows to spend).
3. Each request's chosen model indexes the score and joules columns: numpy gathers over all rows.

Baselines in the same run, on the same rows: always-small (cheapest general model measured for the row),
always-large (largest tier, then most joules), random at the router's matched share (per model set, seeded),
oracle (cheapest model with the best score on each row; needs hindsight) and a plain threshold router
(cheapest model whose predicted P(correct) >= a threshold, else the most likely; no task rules, no budgets).

Length: the replay is one pipeline (classify, decide, score, sum) read top to bottom; its helpers already live apart
(``outcomes``, ``metrics``, ``policy_bridge``, ``importers``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from ..backends.base import estimated_tokens, utf8_size
from ..cards import ModelCard
from ..classify.base import Classification, RequestClassifier
from ..policy.decision import Decision
from ..types import TIER_ORDER
from .metrics import pareto_front, routing_metrics, score_curve
from .outcomes import OutcomesTable

DEFAULT_SWEEP = tuple(round(x, 3) for x in np.linspace(0.30, 1.0, 36))


def model_sets(present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(sets, labels)`` of a boolean (rows, models) matrix: its distinct rows (the sets of models measured), and
    each row's index among them. The rows are compared as packed bytes, so any number of models is exact (a row
    read as one 64-bit number lost every model past the 64th); the sets come in the order of that number, the
    columns read as bits, last column highest (the random baseline's draws follow this order)."""
    n, m = present.shape
    if n == 0 or m == 0:
        return np.ones((min(n, 1), m), dtype=bool), np.zeros(n, dtype=np.int64)
    # the last column first, so that byte order is that number's order
    packed = np.ascontiguousarray(np.packbits(present[:, ::-1], axis=1))
    distinct, labels = np.unique(packed.view(np.dtype((np.void, packed.shape[1]))).ravel(), return_inverse=True)
    bits = np.unpackbits(distinct.view(np.uint8).reshape(len(distinct), -1), axis=1, count=m)
    return bits[:, ::-1].astype(bool), labels.reshape(-1).astype(np.int64)
Progress = Callable[[str, int, int], None]
"""progress(stage, done, total)"""


class DecisionEngine(Protocol):
    """What the simulator needs from the policy engine (see :mod:`router.simulate.policy_bridge`)."""

    name: str

    def decide(
        self,
        classification: Classification,
        cards: Mapping[str, ModelCard],
        overrides: Mapping[str, Any],
        input_tokens: int,
    ) -> Decision:
        """The decision for one request; ``input_tokens`` is its prompt's token estimate, the Router's own
        (:func:`~router.backends.base.estimated_tokens` of the prompt's UTF-8 size)."""
        ...

    def decide_many(
        self,
        classifications: Sequence[Classification],
        cards: Mapping[str, ModelCard],
        overrides: Mapping[str, Any],
        input_tokens: Sequence[int],
    ) -> list[str]:
        """Chosen model names, the same rule as :meth:`decide` (vectorised where the engine offers it)."""
        ...


@dataclass
class RunStats:
    """One way of routing the whole table (the policy, a baseline, or a sweep point)."""

    name: str
    accuracy: float
    quality_vs_large: float
    energy_j_total: float
    energy_j_per_request: float
    energy_vs_large: float
    large_share: float
    share_requests: dict[str, float]
    quality_vs_best: float = float("nan")
    """Accuracy over always-best's: the model with the best mean score among those measured for the row."""
    energy_vs_best: float = float("nan")
    share_energy: dict[str, float] = field(default_factory=dict)
    by_segment: dict[str, dict[str, float]] = field(default_factory=dict)
    target: float | None = None
    co2e_g_total: float | None = None
    """Grams CO2e at each request's grid intensity (``router simulate --carbon``); None without a series."""
    co2e_g_per_request: float | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("target", "co2e_g_total", "co2e_g_per_request"):
            if d[key] is None:
                d.pop(key)
        return d


@dataclass
class SimulationResult:
    outcomes: str
    policy: str
    classifier: str
    requests: int
    lines_read: int
    skipped: int
    skipped_reasons: dict[str, int]
    skipped_examples: list[str]
    distinct_prompts: int
    models: list[str]
    large_reference: str
    router: RunStats
    baselines: dict[str, RunStats]
    routing_metrics: dict[str, Any] | None
    sweep: list[RunStats]
    threshold_sweep: list[RunStats]
    pareto: list[str]
    timings_s: dict[str, float]
    notes: list[str]
    chosen: np.ndarray = field(repr=False)
    """Per row: index into ``models`` of the policy's choice."""
    reasons: list[str] = field(repr=False)
    """Per distinct prompt group: the decision's reason."""
    p_correct: np.ndarray = field(repr=False)
    """float [G, M]: predicted P(correct) per group and model (NaN where not a candidate)."""
    best_single: dict[str, str] = field(default_factory=dict)
    """Per set of measured models (names joined by ``+``): the model with the best mean score, always-best's pick."""
    best_single_rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per key of :attr:`best_single`: the rows measured on that set of models, ``{"rows": N, "sources": [...]}``
    (the workload segments those rows come from: ``mmlu``, ``alpaca_eval``, ``chat``), so a report can say which
    always-best pick is for which source."""
    carbon: dict[str, Any] | None = None
    """The series the requests were replayed over (``router simulate --carbon``)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "outcomes": self.outcomes,
            "policy": self.policy,
            "classifier": self.classifier,
            "requests": self.requests,
            "lines_read": self.lines_read,
            "skipped": self.skipped,
            "skipped_reasons": self.skipped_reasons,
            "skipped_examples": self.skipped_examples,
            "distinct_prompts": self.distinct_prompts,
            "models": self.models,
            "large_reference": self.large_reference,
            "accuracy": self.router.accuracy,
            "quality_vs_large": self.router.quality_vs_large,
            "energy_j_total": self.router.energy_j_total,
            "energy_j_per_request": self.router.energy_j_per_request,
            "energy_vs_large": self.router.energy_vs_large,
            "quality_vs_best": self.router.quality_vs_best,
            "energy_vs_best": self.router.energy_vs_best,
            "best_single": self.best_single,
            "best_single_rows": self.best_single_rows,
            **({"co2e_g_total": self.router.co2e_g_total, "co2e_g_per_request": self.router.co2e_g_per_request,
                "carbon": self.carbon} if self.carbon is not None else {}),
            "share_requests": self.router.share_requests,
            "share_energy": self.router.share_energy,
            "by_segment": self.router.by_segment,
            "routing_metrics": self.routing_metrics,
            "baselines": {k: v.to_json() for k, v in self.baselines.items()},
            "sweep": [s.to_json() for s in self.sweep],
            "threshold_sweep": [s.to_json() for s in self.threshold_sweep],
            "pareto": self.pareto,
            "timings_s": self.timings_s,
            "notes": self.notes,
        }


def segment_of(task: str) -> str:
    """``mmlu/anatomy`` -> ``mmlu``: the workload part a task belongs to."""
    return task.split("/", 1)[0]


class Simulator:
    def __init__(
        self,
        table: OutcomesTable,
        cards: Mapping[str, ModelCard],
        classifier: RequestClassifier,
        engine: DecisionEngine,
        *,
        progress: Progress | None = None,
        batch: int = 512,
        seed: int = 0,
        intensity: np.ndarray | None = None,
    ) -> None:
        self.t = table
        self.intensity = intensity
        """g/kWh per row (the grid at the time each request is replayed at), or None."""
        self.cards = {m: cards[m] for m in table.models}
        self.classifier = classifier
        self.engine = engine
        self.progress = progress
        self.batch = batch
        self.seed = seed
        self.timings: dict[str, float] = {}
        n, m = table.score.shape
        self.rows = np.arange(n)
        self._score = np.nan_to_num(table.score.astype(np.float64), nan=0.0)
        self._energy = np.nan_to_num(table.energy_j, nan=0.0)
        present = ~np.isnan(table.score)
        # the largest model of each row: highest tier, then most joules on that row
        rank = np.array([TIER_ORDER.get(self.cards[x].tier, 1) for x in table.models], dtype=np.float64)
        key = np.where(present, rank[None, :] * 1e15 + table.energy_j, -np.inf)
        self.large = key.argmax(axis=1)
        general = np.array([self.cards[x].tier != "specialist" for x in table.models])
        cheap = np.where(present & general[None, :], table.energy_j, np.inf)
        cheap_any = np.where(present, table.energy_j, np.inf)
        self.small = np.where(np.isfinite(cheap.min(axis=1)), cheap.argmin(axis=1), cheap_any.argmin(axis=1))
        self.large_score = self._score[self.rows, self.large]
        self.large_energy = self._energy[self.rows, self.large]
        self.best, self.best_single, self.best_single_rows = self._best_single(present)
        self.best_score = self._score[self.rows, self.best]
        self.best_energy = self._energy[self.rows, self.best]
        self.segments = sorted({segment_of(x) for x in table.task_names})
        segment_code = {seg: i for i, seg in enumerate(self.segments)}
        seg_of_code = np.array([segment_code[segment_of(x)] for x in table.task_names], dtype=np.int32)
        self.row_segment = seg_of_code[table.tasks] if n else np.zeros(0, np.int32)
        # a static price order for the plain threshold router: mean joules per model over the file
        with np.errstate(invalid="ignore"):
            self.mean_energy = np.nanmean(table.energy_j, axis=0) if n else np.zeros(m)
        self.classifications: list[Classification] = []
        # per distinct prompt, the input tokens the Router's decision would estimate for it (bytes, not
        # characters: a Chinese character is three bytes and about a token)
        self.input_tokens = [estimated_tokens(utf8_size(p)) for p in table.prompts]
        self.p_correct = np.zeros((0, m))

    def _best_single(self, present: np.ndarray) -> tuple[np.ndarray, dict[str, str], dict[str, dict[str, Any]]]:
        """Per row: the model with the best mean score over the rows measured on the same set of models (on real
        data the largest model is not always the best: AlpacaEval's judge prefers long answers); per set, its pick
        and which rows it covers (how many, and their sources)."""
        n, m = present.shape
        best = np.zeros(n, dtype=np.int64)
        names: dict[str, str] = {}
        scope: dict[str, dict[str, Any]] = {}
        if not n:
            return best, names, scope
        sets, labels = model_sets(present)
        for k, measured in enumerate(sets):
            rows = labels == k
            cols = np.nonzero(measured)[0]
            means = self._score[rows][:, cols].mean(axis=0)
            j = int(cols[int(np.argmax(means))])
            best[rows] = j
            models = "+".join(self.t.models[c] for c in cols)
            names[models] = self.t.models[j]
            sources = sorted({segment_of(self.t.task_names[t]) for t in np.unique(self.t.tasks[rows]).tolist()})
            scope[models] = {"rows": int(rows.sum()), "sources": sources}
        return best, names, scope

    # -- stages ----------------------------------------------------------------------------------------------
    def classify(self) -> None:
        t0 = time.perf_counter()
        prompts = self.t.prompts
        out: list[Classification] = []
        for i in range(0, len(prompts), self.batch):
            out.extend(self.classifier.classify_batch(prompts[i : i + self.batch]))
            if self.progress:
                self.progress("classify", min(i + self.batch, len(prompts)), len(prompts))
        self.classifications = out
        g, m = len(out), len(self.t.models)
        p = np.full((g, m), np.nan)
        for j, model in enumerate(self.t.models):
            col = [c.p_correct.get(model, np.nan) for c in out]
            p[:, j] = col
        p[~self.t.group_mask] = np.nan
        self.p_correct = p
        self.timings["classify"] = time.perf_counter() - t0

    def _model_sets(self) -> list[tuple[np.ndarray, dict[str, ModelCard]]]:
        """Groups split by the set of models measured for them: (group indices, the cards of that set)."""
        sets, labels = model_sets(self.t.group_mask)
        out = []
        for k, measured in enumerate(sets):
            idx = np.nonzero(labels == k)[0]
            cards = {m: self.cards[m] for j, m in enumerate(self.t.models) if measured[j]}
            out.append((idx, cards))
        return out

    def decide(
        self, overrides: Mapping[str, Any] | None = None, *, reasons: bool = False
    ) -> tuple[np.ndarray, list[str]]:
        """Per group: index of the chosen model (and the reasons, from the scalar path, when asked)."""
        overrides = dict(overrides or {})
        g = len(self.classifications)
        chosen = np.full(g, -1, dtype=np.int64)
        why = [""] * g if reasons else []
        col = {m: j for j, m in enumerate(self.t.models)}
        for idx, cards in self._model_sets():
            if reasons:
                for k, gi in enumerate(idx):
                    d = self.engine.decide(self.classifications[gi], cards, overrides, self.input_tokens[gi])
                    chosen[gi] = self._column(d.model, cards, col)
                    why[gi] = d.reason
                    if self.progress and (k + 1) % 2048 == 0:
                        self.progress("decide", k + 1, len(idx))
            else:
                names = self.engine.decide_many([self.classifications[i] for i in idx], cards, overrides,
                                                [self.input_tokens[i] for i in idx])
                chosen[idx] = [self._column(x, cards, col) for x in names]
        return chosen, why

    @staticmethod
    def _column(model: str, cards: Mapping[str, ModelCard], col: Mapping[str, int]) -> int:
        if model not in cards:
            raise ValueError(f"the policy chose `{model}`, which has no outcome for this request ({sorted(cards)})")
        return col[model]

    # -- statistics ------------------------------------------------------------------------------------------
    def stats(self, name: str, chosen_rows: np.ndarray, target: float | None = None) -> RunStats:
        n = len(chosen_rows)
        score = self._score[self.rows, chosen_rows]
        energy = self._energy[self.rows, chosen_rows]
        total_e = float(energy.sum())
        large_acc = float(self.large_score.mean()) if n else 0.0
        large_e = float(self.large_energy.sum())
        best_acc = float(self.best_score.mean()) if n else 0.0
        best_e = float(self.best_energy.sum())
        m = len(self.t.models)
        counts = np.bincount(chosen_rows, minlength=m)
        e_by = np.bincount(chosen_rows, weights=energy, minlength=m)
        segs: dict[str, dict[str, float]] = {}
        if len(self.segments) > 1:
            # one pass per statistic (not one per segment): files can hold tens of thousands of segments
            n_seg = len(self.segments)
            k = np.bincount(self.row_segment, minlength=n_seg)
            sums = {
                "accuracy": np.bincount(self.row_segment, weights=score, minlength=n_seg),
                "large_accuracy": np.bincount(self.row_segment, weights=self.large_score, minlength=n_seg),
                "energy_j_per_request": np.bincount(self.row_segment, weights=energy, minlength=n_seg),
                "large_energy_j_per_request": np.bincount(self.row_segment, weights=self.large_energy, minlength=n_seg),
            }
            columns = [k.tolist(), *((v / k).tolist() for v in sums.values())]
            names = ["requests", *sums]
            for seg, *row in zip(self.segments, *columns, strict=True):
                segs[seg] = dict(zip(names, row, strict=True))
        co2e = None if self.intensity is None else float((energy * self.intensity).sum() / 3.6e6)
        return RunStats(
            co2e_g_total=co2e,
            co2e_g_per_request=None if co2e is None else co2e / n,
            name=name,
            accuracy=float(score.mean()),
            quality_vs_large=float(score.mean() / large_acc) if large_acc else float("nan"),
            energy_j_total=total_e,
            energy_j_per_request=total_e / n,
            energy_vs_large=total_e / large_e if large_e else float("nan"),
            large_share=float((chosen_rows == self.large).mean()),
            quality_vs_best=float(score.mean() / best_acc) if best_acc else float("nan"),
            energy_vs_best=total_e / best_e if best_e else float("nan"),
            share_requests={mm: float(c / n) for mm, c in zip(self.t.models, counts, strict=True)},
            share_energy={
                mm: float(e / total_e) if total_e else 0.0 for mm, e in zip(self.t.models, e_by, strict=True)
            },
            by_segment=segs,
            target=target,
        )

    def random_matched(self, chosen_rows: np.ndarray) -> np.ndarray:
        """Random routing with the router's exact model counts within each set of measured models."""
        rng = np.random.default_rng(self.seed)
        out = chosen_rows.copy()
        _, labels = model_sets(self.t.group_mask[self.t.group])
        for k in range(int(labels.max(initial=-1)) + 1):
            idx = np.nonzero(labels == k)[0]
            out[idx] = rng.permutation(chosen_rows[idx])
        return out

    def oracle(self) -> np.ndarray:
        """Hindsight: the best score on the row, and among the models that reach it, the fewest joules."""
        present = ~np.isnan(self.t.score)
        best = np.where(present, self._score, -1.0).max(axis=1, keepdims=True)
        cand = present & (self._score >= best - 1e-9)
        return np.where(cand, self._energy, np.inf).argmin(axis=1)

    def threshold_groups(self, tau: float) -> np.ndarray:
        """Plain threshold router per group: cheapest (by mean joules) model with P(correct) >= tau, else the
        most likely one."""
        p = self.p_correct
        order = np.argsort(self.mean_energy, kind="stable")
        choice = np.full(len(p), -1, dtype=np.int64)
        for j in order[::-1]:  # cheapest last, so it wins
            ok = ~np.isnan(p[:, j]) & (p[:, j] >= tau)
            choice[ok] = j
        fallback = np.nanargmax(np.where(np.isnan(p), -1.0, p), axis=1) if len(p) else choice
        return np.where(choice >= 0, choice, fallback)

    # -- the whole run ---------------------------------------------------------------------------------------
    def run(
        self,
        *,
        policy_name: str,
        classifier_name: str,
        sweep: Sequence[float] | None = None,
        threshold: float = 0.6,
        want_reasons: bool = False,
        routing_sweep: Sequence[float] = DEFAULT_SWEEP,
        scalar_limit: int = 200_000,
    ) -> SimulationResult:
        t_all = time.perf_counter()
        notes: list[str] = []
        self.classify()
        t0 = time.perf_counter()
        # the policy engine's own decision, request by request, unless there are very many distinct prompts;
        # then the engine's vectorised decide_batch (tests check the two agree)
        scalar = want_reasons or len(self.classifications) <= scalar_limit
        group_choice, reasons = self.decide(reasons=scalar)
        notes.append(
            "decisions: the policy engine per distinct prompt" if scalar else
            f"decisions: vectorised decide_batch ({len(self.classifications):,} distinct prompts > {scalar_limit:,})"
        )
        notes.extend(getattr(self.engine, "notes", []))
        self.timings["decide"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        chosen = group_choice[self.t.group]
        router = self.stats(policy_name, chosen)
        baselines = {
            "always-small": self.stats("always-small", self.small),
            "always-large": self.stats("always-large", self.large),
            "always-best": self.stats("always-best", self.best),
            "random (matched share)": self.stats("random (matched share)", self.random_matched(chosen)),
            "oracle": self.stats("oracle", self.oracle()),
            f"threshold {threshold:g}": self.stats(
                f"threshold {threshold:g}", self.threshold_groups(threshold)[self.t.group], target=threshold
            ),
        }
        th_sweep = [
            self.stats("threshold", self.threshold_groups(float(t))[self.t.group], target=float(t))
            for t in np.linspace(0.0, 1.0, 41)
        ]
        self.timings["baselines"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        sweep_stats: list[RunStats] = []
        targets = list(sweep) if sweep else []
        two = self._two_model()
        if two is not None and not targets:
            targets = list(routing_sweep)  # an internal sweep, for APGR / CPT
        for k, tgt in enumerate(targets):
            gc, _ = self.decide({"accuracy_target": float(tgt)})
            sweep_stats.append(self.stats(f"{policy_name} @ {tgt:g}", gc[self.t.group], target=float(tgt)))
            if self.progress:
                self.progress("sweep", k + 1, len(targets))
        self.timings["sweep"] = time.perf_counter() - t0
        metrics = self._routing_metrics(two, sweep_stats, router) if two is not None else None
        if two is None:
            notes.append("APGR/CPT need two-model data (every request measured on the same two models); not computed")
        elif metrics is not None and "note" in metrics:
            notes.append(f"APGR/CPT: {metrics['note']}")
        points = [router, *baselines.values(), *sweep_stats]
        real = [p for p in points if p.name != "oracle"]
        front = pareto_front([p.energy_j_total for p in real], [p.accuracy for p in real])
        pareto = list(dict.fromkeys(real[i].name for i in front))
        if self.t.defaulted_output_tokens:
            notes.append(
                f"{self.t.defaulted_output_tokens} outcomes had no output_tokens or energy_j; their joules use the "
                "default output length"
            )
        measured = int(self.t.measured.sum())
        notes.append(
            f"joules: {measured} outcomes measured (energy_j in the file), "
            f"{int((~np.isnan(self.t.score)).sum()) - measured} estimated from model cards"
        )
        notes.append("budgets are not replayed: the engine sees an empty budget state")
        self.timings["total"] = time.perf_counter() - t_all
        return SimulationResult(
            outcomes=self.t.path,
            policy=policy_name,
            classifier=classifier_name,
            requests=self.t.n,
            lines_read=self.t.lines_read,
            skipped=self.t.skipped,
            skipped_reasons=dict(self.t.skipped_reasons),
            skipped_examples=list(self.t.skipped_examples),
            distinct_prompts=len(self.t.prompts),
            models=list(self.t.models),
            large_reference="per request: the largest-tier (then most joules) model measured for it",
            router=router,
            baselines=baselines,
            routing_metrics=metrics,
            sweep=sweep_stats if sweep else [],
            threshold_sweep=th_sweep,
            pareto=pareto,
            timings_s={k: round(v, 4) for k, v in self.timings.items()},
            notes=notes,
            chosen=chosen,
            reasons=reasons,
            p_correct=self.p_correct,
            best_single=self.best_single,
            best_single_rows=self.best_single_rows,
        )

    def _two_model(self) -> tuple[int, int] | None:
        """(weak, strong) columns when every row has exactly the same two models."""
        if len(self.t.models) != 2 or not self.t.group_mask.all():
            return None
        large = int(np.bincount(self.large, minlength=2).argmax())
        return 1 - large, large

    def _routing_metrics(
        self, two: tuple[int, int], sweep: list[RunStats], router: RunStats
    ) -> dict[str, Any]:
        weak, strong = two
        wname, sname = self.t.models[weak], self.t.models[strong]
        w = float(self._score[:, weak].mean())
        s = float(self._score[:, strong].mean())
        out: dict[str, Any] = {"weak": wname, "strong": sname, "weak_accuracy": w, "strong_accuracy": s}
        if s <= w:  # the gap routing recovers is s - w: none, or a loss, and PGR's scale is then meaningless
            out["note"] = ("both models score the same: PGR is undefined" if s == w else
                           f"the larger model {sname} scores below {wname} ({s:.1%} against {w:.1%}): there is no "
                           "gap for routing to recover, so APGR/CPT are not computed")
            return out
        shares = [p.share_requests[sname] for p in sweep]
        accs = [p.accuracy for p in sweep]
        out["policy_sweep"] = routing_metrics(shares, accs, w, s) | {"points": len(sweep)}
        g = self.p_correct
        score = (g[:, strong] - g[:, weak])[self.t.group]
        cs, ca = score_curve(score, self._score[:, weak], self._score[:, strong])
        out["classifier_score"] = routing_metrics(cs, ca, w, s) | {"score": f"P({sname}) - P({wname})"}
        oracle_score = (self._score[:, strong] > self._score[:, weak]).astype(float)
        os_, oa = score_curve(oracle_score, self._score[:, weak], self._score[:, strong])
        out["oracle"] = routing_metrics(os_, oa, w, s)
        out["random"] = {"apgr": 0.5, "cpt50": 0.5, "cpt80": 0.8, "note": "expected value of random routing"}
        out["this_run"] = {
            "strong_share": router.share_requests[sname],
            "pgr": (router.accuracy - w) / (s - w),
        }
        return out
