"""The NBD server's reply budget: reservations never exceed it, wait their turn in order, and
come back in full whichever way a reply ends."""

from __future__ import annotations

import threading
import time

import pytest

from volpack.serve.budget import ReplyBudget


def test_reservations_never_exceed_the_budget_and_come_back_in_full():
    budget = ReplyBudget(10)
    a = budget.reserve(6)
    b = budget.reserve(4)
    assert budget.in_use == 10
    got = []
    waiter = threading.Thread(target=lambda: got.append(budget.reserve(3)))
    waiter.start()
    time.sleep(0.1)
    assert not got  # no room: it waits
    b.keep(1)  # a slow client's reply was copied down to 1 byte
    waiter.join(5)
    assert got and budget.in_use == 10
    for hold in (a, b, got[0]):
        hold.release()
    assert budget.in_use == 0
    assert budget.peak == 10


def test_a_reservation_larger_than_the_budget_runs_alone_instead_of_waiting_forever():
    budget = ReplyBudget(8)
    with budget.reserve(100) as hold:
        assert hold.held == 8
    assert budget.in_use == 0


def test_waiters_are_served_first_come_first_served():
    budget = ReplyBudget(10)
    first = budget.reserve(10)
    order: list[str] = []

    def take(name: str, n: int) -> None:
        with budget.reserve(n):
            order.append(name)
            time.sleep(0.05)

    big = threading.Thread(target=take, args=("big", 10))
    big.start()
    time.sleep(0.1)
    small = threading.Thread(target=take, args=("small", 1))
    small.start()
    time.sleep(0.1)
    first.release()
    big.join(5)
    small.join(5)
    assert order == ["big", "small"]  # the small one did not overtake the big one
    assert budget.in_use == 0


def test_keep_never_grows_a_reservation_and_release_is_idempotent():
    budget = ReplyBudget(10)
    hold = budget.reserve(4)
    hold.keep(9)
    assert hold.held == 4 and budget.in_use == 4
    hold.release()
    hold.release()
    assert budget.in_use == 0


def test_a_budget_must_be_positive():
    with pytest.raises(ValueError):
        ReplyBudget(0)
