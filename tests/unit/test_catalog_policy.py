"""The retention policy (keep-last/daily/weekly/monthly): worked examples and hypothesis
properties against an independent statement of each rule."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from volpack.catalog.policy import Policy, Snapshot, apply
from volpack.errors import UsageError

UTC = dt.UTC


def at(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def snaps(*times: str) -> list[Snapshot]:
    return [Snapshot(t, at(t)) for t in times]


def kept_ids(policy: Policy, snapshots: list[Snapshot]) -> list[str]:
    return [s.id for s in apply(policy, snapshots, UTC).keep]


def test_keep_last_keeps_the_newest_n():
    s = snaps("2024-01-01T10:00", "2024-01-02T10:00", "2024-01-03T10:00")
    assert kept_ids(Policy(last=2), s) == ["2024-01-03T10:00", "2024-01-02T10:00"]


def test_keep_daily_keeps_the_last_archive_of_each_of_the_newest_days():
    s = snaps(
        "2024-01-01T08:00",
        "2024-01-01T20:00",
        "2024-01-02T08:00",
        "2024-01-02T09:00",
        "2024-01-04T23:59",
    )
    assert kept_ids(Policy(daily=2), s) == ["2024-01-04T23:59", "2024-01-02T09:00"]


def test_keep_weekly_uses_iso_weeks_starting_monday():
    # 2024-01-07 is a Sunday (ISO week 1), 2024-01-08 a Monday (week 2).
    s = snaps("2024-01-06T12:00", "2024-01-07T12:00", "2024-01-08T12:00")
    assert kept_ids(Policy(weekly=2), s) == ["2024-01-08T12:00", "2024-01-07T12:00"]


def test_keep_monthly_and_rules_combine_by_union():
    s = snaps("2023-11-30T12:00", "2023-12-15T12:00", "2023-12-31T12:00", "2024-01-01T12:00")
    d = apply(Policy(last=1, monthly=3), s, UTC)
    assert [x.id for x in d.keep] == ["2024-01-01T12:00", "2023-12-31T12:00", "2023-11-30T12:00"]
    assert d.reasons["2024-01-01T12:00"] == ("last", "monthly")
    assert [x.id for x in d.remove] == ["2023-12-15T12:00"]


def test_days_follow_the_given_time_zone():
    s = snaps("2024-01-01T22:00", "2024-01-01T23:30")  # same UTC day
    plus2 = dt.timezone(dt.timedelta(hours=2))  # 00:00 and 01:30 on Jan 2 there
    assert len(apply(Policy(daily=5), s, UTC).keep) == 1
    assert len(apply(Policy(daily=5), s, plus2).keep) == 1
    minus1 = dt.timezone(dt.timedelta(hours=-1))  # 21:00 and 22:30 on Jan 1
    assert len(apply(Policy(daily=5), s, minus1).keep) == 1
    s2 = snaps("2024-01-01T21:30", "2024-01-01T22:30")
    assert len(apply(Policy(daily=5), s2, plus2).keep) == 2  # 23:30 Jan 1 and 00:30 Jan 2


def test_policy_without_any_rule_is_refused():
    with pytest.raises(UsageError, match="no retention rule"):
        apply(Policy(), snaps("2024-01-01T00:00"), UTC)
    with pytest.raises(UsageError, match="0 or more"):
        apply(Policy(last=-1, daily=1), snaps("2024-01-01T00:00"), UTC)


def test_empty_input_keeps_and_removes_nothing():
    d = apply(Policy(last=3), [], UTC)
    assert d.keep == () and d.remove == ()


# -- properties ------------------------------------------------------------------------------
T0 = at("2022-01-01T00:00")
times = st.lists(st.integers(0, 3 * 366 * 86400), min_size=0, max_size=60)
counts = st.integers(0, 6)


def policies() -> st.SearchStrategy[Policy]:
    return st.builds(Policy, counts, counts, counts, counts).filter(Policy.any)


def reference_keep(policy: Policy, snapshots: list[Snapshot]) -> set[str]:
    """Each rule stated on its own: the newest archive of each of the N newest buckets."""
    ordered = sorted(snapshots, key=lambda s: (s.created, s.id), reverse=True)
    keep = {s.id for s in ordered[: policy.last]}
    keys = {
        "daily": lambda d: d.date(),
        "weekly": lambda d: d.isocalendar()[:2],
        "monthly": lambda d: (d.year, d.month),
    }
    for name, key in keys.items():
        newest_of_bucket: dict[object, Snapshot] = {}
        for s in ordered:
            newest_of_bucket.setdefault(key(dt.datetime.fromtimestamp(s.created, UTC)), s)
        buckets = sorted(newest_of_bucket.values(), key=lambda s: (s.created, s.id), reverse=True)
        keep |= {s.id for s in buckets[: getattr(policy, name)]}
    return keep


@settings(max_examples=300, deadline=None)
@given(policies(), times)
def test_policy_keeps_exactly_what_the_rules_select(policy, offsets):
    s = [Snapshot(f"id{i}", T0 + o) for i, o in enumerate(offsets)]
    d = apply(policy, s, UTC)
    assert {x.id for x in d.keep} == reference_keep(policy, s)
    assert {x.id for x in d.keep} | {x.id for x in d.remove} == {x.id for x in s}
    assert not ({x.id for x in d.keep} & {x.id for x in d.remove})


@settings(max_examples=300, deadline=None)
@given(policies(), times.filter(bool))
def test_policy_never_removes_the_newest_archive(policy, offsets):
    s = [Snapshot(f"id{i}", T0 + o) for i, o in enumerate(offsets)]
    newest = max(s, key=lambda x: (x.created, x.id))
    assert newest.id in {x.id for x in apply(policy, s, UTC).keep}


@settings(max_examples=200, deadline=None)
@given(policies(), times, st.randoms(use_true_random=False))
def test_policy_does_not_depend_on_input_order(policy, offsets, rnd):
    s = [Snapshot(f"id{i}", T0 + o) for i, o in enumerate(offsets)]
    shuffled = list(s)
    rnd.shuffle(shuffled)
    assert apply(policy, s, UTC) == apply(policy, shuffled, UTC)


@settings(max_examples=200, deadline=None)
@given(policies(), times)
def test_keeping_more_never_removes_more(policy, offsets):
    s = [Snapshot(f"id{i}", T0 + o) for i, o in enumerate(offsets)]
    bigger = Policy(policy.last + 1, policy.daily + 1, policy.weekly + 1, policy.monthly + 1)
    assert {x.id for x in apply(policy, s, UTC).keep} <= {x.id for x in apply(bigger, s, UTC).keep}
