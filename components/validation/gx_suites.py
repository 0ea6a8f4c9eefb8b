"""Great Expectations adapter: the tier rules of `wallwm.data.tiers` as GX 1.x suites.

Why GX rather than plain pandas checks: the suites, results and Data Docs are the reviewable
record of a dataset build. Why a *file* context in the build folder: an ephemeral context writes
its Data Docs to a temp dir, and the build must keep them next to its manifest.

Every GX result is mapped back to episodes (result format COMPLETE: ``unexpected_index_list``
holds row positions, each row carries its ``episode_key``), so the build can quarantine exactly
the bad episodes with the rule, column and value.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# Before GX is imported: no telemetry, no network (the build must run offline).
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import great_expectations as gx  # noqa: E402
import great_expectations.expectations as gxe  # noqa: E402
from great_expectations.checkpoint import UpdateDataDocsAction  # noqa: E402
from great_expectations.core.run_identifier import RunIdentifier  # noqa: E402
from great_expectations.data_context.types.base import ProgressBarsConfig  # noqa: E402
from great_expectations.expectations.row_conditions import Column  # noqa: E402

from wallwm.data.tiers import SCHEMAS, Rule  # noqa: E402

KEY = "episode_key"
FRAME = "frame_index"
DATA_SOURCE = "wallwm"
PRESENT = "_present_"  # helper columns: this row's episode has the frame column at all
# COMPLETE: every unexpected row index, so each failing row maps back to its episode_key.
RESULT_FORMAT = {"result_format": "COMPLETE"}

GX_TYPE = {
    "exists": "expect_column_to_exist",
    "not_null": "expect_column_values_to_not_be_null",
    "between": "expect_column_values_to_be_between",
    "in_set": "expect_column_values_to_be_in_set",
    "unique": "expect_column_values_to_be_unique",
    "equal_columns": "expect_column_pair_values_to_be_equal",
}


@dataclass
class Failure:
    """One reason an episode fails: which suite, GX expectation, tier rule, column and value."""

    episode_key: str
    tier: str
    suite: str
    expectation: str  # GX expectation type, e.g. "expect_column_values_to_be_between"
    rule: str  # Rule.name
    column: str
    value: Any  # the first offending value for this episode (JSON-able; None for NaN/inf)
    why: str
    frame_index: int | None = None  # frame-table failures: the first offending frame

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ValidationReport:
    success: bool
    failures: list[Failure]
    suites: dict[str, dict]  # suite -> evaluated/successful/unsuccessful counts, success
    data_docs: str | None  # path of the Data Docs index.html

    def failed_episodes(self) -> dict[str, list[Failure]]:
        """Failures grouped per episode (the quarantine list: episode -> reasons)."""
        out: dict[str, list[Failure]] = {}
        for f in self.failures:
            out.setdefault(f.episode_key, []).append(f)
        return out


def _jsonable(v: Any) -> Any:
    """Plain Python for the manifest: numpy scalars unwrapped, NaN/inf as None."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def _is_feature_column(col: str, feature: str) -> bool:
    return col == feature or col.startswith(feature + "[")


@dataclass
class _Table:
    """One batch: the suite name, the DataFrame, its rules and the GX expectations made of them."""

    suite: str
    tier: str
    df: pd.DataFrame
    rules: list[Rule]
    expectations: list[tuple[Rule, gxe.Expectation]] = field(default_factory=list)
    missing: list[Rule] = field(default_factory=list)  # rules whose column is absent


def _prepare(tier: str, eps: pd.DataFrame, frames: pd.DataFrame) -> tuple[_Table, _Table]:
    """Both tables of one tier, trimmed to its columns, and the rules that apply to them."""
    schema = SCHEMAS[tier]
    # Columns that no episode of this tier has come from other tiers in the concatenated table.
    eps = eps.dropna(axis=1, how="all").reset_index(drop=True)
    for c in eps.columns:  # frame counts of cameras other tiers lack were made float by NaN
        if c.startswith("video_frames/") and eps[c].notna().all():
            eps[c] = eps[c].astype("int64")
    if KEY not in frames.columns:  # no per-frame features at all (t0 video-only builds)
        frames = pd.DataFrame({KEY: pd.Series(dtype=object), FRAME: pd.Series(dtype="int64")})
    fr = frames[frames[KEY].isin(set(eps[KEY]))].reset_index(drop=True)
    required = schema.required_features
    keep = [
        c
        for c in fr.columns
        if c in (KEY, FRAME)
        or fr[c].notna().any()
        or any(_is_feature_column(c, f) for f in required)
    ]
    fr = fr[keep]
    rules = schema.rules(eps, fr)
    tables = (
        _Table(f"{tier}.episodes", tier, eps, [r for r in rules if r.table == "episodes"]),
        _Table(f"{tier}.frames", tier, fr, [r for r in rules if r.table == "frames"]),
    )
    present = _presence(tables[1], required)
    for t in tables:
        for rule in t.rules:
            absent = [c for c in (rule.column, rule.other) if c and c not in t.df.columns]
            if absent:
                t.missing.append(rule)
                continue
            t.expectations.append((rule, _expectation(rule, present.get(rule.column))))
    return tables


def _feature_of(col: str) -> str:
    """`action[3]` -> `action` (probe flattens multi-dimensional features that way)."""
    return col.split("[", 1)[0] if col.endswith("]") else col


def _presence(frames: _Table, required: tuple[str, ...]) -> dict[str, str]:
    """Add helper columns that restrict not-null to the episodes that have a frame column at all.

    The concatenated frame table is NaN where an episode lacks a column others have (a shorter
    state vector, an optional feature): that is absence, not a NaN value. A column that is all NaN
    in one episode counts as absent there when the episode has other columns of the same feature
    (fewer dimensions), or when the feature is optional; an all-NaN *required* feature stays a
    not-null failure. Returns column -> helper column name.
    """
    fr = frames.df
    values = [c for c in fr.columns if c not in (KEY, FRAME)]
    if not len(fr) or not values:
        return {}
    all_nan = fr[values].isna().groupby(fr[KEY], sort=False).all()
    feats = {c: _feature_of(c) for c in values}
    has_feat = (~all_nan).T.groupby(pd.Series(feats)).any().T  # episode x feature
    present: dict[str, str] = {}
    extra: dict[str, pd.Series] = {}
    for i, c in enumerate(values):
        f = feats[c]
        absent = all_nan[c] & (has_feat[f] | (f not in required))
        if not absent.any():
            continue
        present[c] = f"{PRESENT}{i}"
        extra[present[c]] = ~fr[KEY].map(absent).astype(bool)
    if extra:
        frames.df = pd.concat([fr, pd.DataFrame(extra)], axis=1)
    return present


def _expectation(rule: Rule, present_col: str | None = None) -> gxe.Expectation:
    """The GX 1.x expectation of one rule; `meta` carries the rule so results map back to it."""
    meta = {"rule": rule.name, "why": rule.why}
    c = rule.column
    if rule.kind == "exists":
        return gxe.ExpectColumnToExist(column=c, meta=meta)
    if rule.kind == "not_null":
        cond = {"row_condition": Column(present_col) == True} if present_col else {}  # noqa: E712
        return gxe.ExpectColumnValuesToNotBeNull(column=c, meta=meta, **cond)
    if rule.kind == "between":
        return gxe.ExpectColumnValuesToBeBetween(
            column=c, min_value=rule.min, max_value=rule.max, meta=meta
        )
    if rule.kind == "in_set":
        return gxe.ExpectColumnValuesToBeInSet(column=c, value_set=list(rule.values), meta=meta)
    if rule.kind == "unique":
        return gxe.ExpectColumnValuesToBeUnique(column=c, meta=meta)
    if rule.kind == "equal_columns":
        # A camera one episode lacks is NaN in the table: that is `num_cameras`' business.
        return gxe.ExpectColumnPairValuesToBeEqual(
            column_A=c, column_B=rule.other, ignore_row_if="either_value_is_missing", meta=meta
        )
    raise ValueError(f"rule {rule.name}: unknown kind {rule.kind!r}")


def _context(build_dir: Path) -> Any:
    """A file context at `build_dir/gx`, quiet and offline, emptied of our previous objects."""
    ctx = gx.get_context(mode="file", project_root_dir=str(build_dir))
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    ctx.enable_analytics(False)  # also saves the variables
    # Re-runs: the suites of a build follow its tiers and columns; recreate rather than diff.
    for cp in list(ctx.checkpoints.all()):
        ctx.checkpoints.delete(cp.name)
    for vd in list(ctx.validation_definitions.all()):
        ctx.validation_definitions.delete(vd.name)
    for suite in list(ctx.suites.all()):
        ctx.suites.delete(suite.name)
    if DATA_SOURCE in [ds.name for ds in ctx.data_sources.all().values()]:
        ctx.data_sources.delete(DATA_SOURCE)
    return ctx


def _first_values(table: _Table, rule: Rule, result: dict) -> dict[str, tuple[Any, int | None]]:
    """episode_key -> (first offending value, frame index) from one COMPLETE result."""
    idx = result.get("unexpected_index_list") or []
    df = table.df
    rows = [int(i) for i in idx]  # RangeIndex: GX index values are row positions
    rows = [r for r in rows if 0 <= r < len(df)]
    if rule.kind == "unique":  # the first copy stays valid, the later ones are the duplicates
        dup = df[rule.column].duplicated(keep="first").to_numpy()
        rows = [r for r in rows if dup[r]]
    out: dict[str, tuple[Any, int | None]] = {}
    for r in sorted(rows):
        key = str(df.at[r, KEY])
        if key in out:
            continue
        if rule.kind == "equal_columns":
            value = [_jsonable(df.at[r, rule.column]), _jsonable(df.at[r, rule.other])]
        else:
            value = _jsonable(df.at[r, rule.column])
        frame = int(df.at[r, FRAME]) if rule.table == "frames" else None
        out[key] = (value, frame)
    return out


def validate_tables(
    build_dir: Path, episodes: pd.DataFrame, frames: pd.DataFrame, *, run_name: str = "build"
) -> ValidationReport:
    """Validate the episode and frame tables of a build, one pair of suites per tier present.

    Returns every failure mapped to its episode, the per-suite statistics and the Data Docs path.
    """
    build_dir = Path(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    failures: list[Failure] = []
    tables: list[_Table] = []
    for tier, eps in episodes.groupby("tier", sort=True, dropna=False):
        if tier not in SCHEMAS:
            rule = Rule("episodes", "in_set", "tier", values=tuple(SCHEMAS), why="unknown tier")
            failures += [
                Failure(
                    str(k),
                    str(tier),
                    "unknown.episodes",
                    GX_TYPE["in_set"],
                    rule.name,
                    column="tier",
                    value=_jsonable(tier),
                    why=rule.why,
                )
                for k in eps[KEY]
            ]
            continue
        tables += _prepare(str(tier), eps, frames)

    ctx = _context(build_dir)
    ds = ctx.data_sources.add_pandas(DATA_SOURCE)
    vds = []
    for t in tables:
        asset = ds.add_dataframe_asset(name=t.suite)
        bd = asset.add_batch_definition_whole_dataframe(t.suite)
        suite = gx.ExpectationSuite(name=t.suite)
        for _, e in t.expectations:
            suite.add_expectation(e)
        for rule in t.missing:  # fails: the absent column is reported as missing
            suite.add_expectation(
                gxe.ExpectColumnToExist(
                    column=rule.column if rule.column not in t.df.columns else rule.other,
                    meta={"rule": rule.name, "why": rule.why},
                )
            )
        suite = ctx.suites.add(suite)
        vds.append(
            ctx.validation_definitions.add(
                gx.ValidationDefinition(name=t.suite, data=bd, suite=suite)
            )
        )
    # One checkpoint per table: batch parameters apply to every definition of a checkpoint,
    # and each table is its own DataFrame.
    suites: dict[str, dict] = {}
    run_id = RunIdentifier(run_name=run_name)
    for t, vd in zip(tables, vds, strict=True):
        checkpoint = ctx.checkpoints.add(
            gx.Checkpoint(
                name=t.suite,
                validation_definitions=[vd],
                actions=[UpdateDataDocsAction(name="update_data_docs")],
                result_format=RESULT_FORMAT,
            )
        )
        cp_res = checkpoint.run(batch_parameters={"dataframe": t.df}, run_id=run_id)
        (res,) = cp_res.run_results.values()
        stats = res.statistics
        suites[t.suite] = {
            "evaluated": int(stats["evaluated_expectations"]),
            "successful": int(stats["successful_expectations"]),
            "unsuccessful": int(stats["unsuccessful_expectations"]),
            "success": bool(res.success),
        }
        failures += _failures(t, res.results)
    sites = [s["site_url"] for s in ctx.get_docs_sites_urls() if s.get("site_url")]
    docs = [Path(u.removeprefix("file://")) for u in sites if u.startswith("file://")]
    return ValidationReport(
        success=not failures,
        failures=failures,
        suites=suites,
        data_docs=str(docs[0]) if docs and docs[0].is_file() else None,
    )


def _failures(t: _Table, results: Iterable[Any]) -> list[Failure]:
    """Map the expectation results of one table to per-episode failures."""
    by_rule = {r.name: r for r in t.rules}
    out: list[Failure] = []
    all_keys = [str(k) for k in pd.unique(t.df[KEY])] if len(t.df) else []
    for r in results:
        if r.success:
            continue
        cfg = r.expectation_config
        rule = by_rule.get((cfg.meta or {}).get("rule", ""))
        if rule is None:
            continue
        if cfg.type == GX_TYPE["exists"] or rule in t.missing:
            col = cfg.kwargs.get("column", rule.column)
            out += [
                Failure(
                    k,
                    t.tier,
                    t.suite,
                    cfg.type,
                    rule.name,
                    col,
                    value=None,
                    why=f"missing column {col}: {rule.why}".rstrip(": "),
                )
                for k in all_keys
            ]
            continue
        if r.exception_info and r.exception_info.get("raised_exception"):
            msg = r.exception_info.get("exception_message")
            raise RuntimeError(f"GX could not evaluate {rule.name} in {t.suite}: {msg}")
        for key, (value, frame) in _first_values(t, rule, r.result).items():
            out.append(
                Failure(
                    key, t.tier, t.suite, cfg.type, rule.name, rule.column, value, rule.why, frame
                )
            )
    return out
