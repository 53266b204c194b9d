"""The control socket's pure parts: the rate limit (clock injected) and the peer check, without any socket."""

from __future__ import annotations

from companion.acme.orderlimit import OrderLimit
from companion.serve.control import peer_problem
from tests.harness.clock import NOW, Clock

# -- the rate limit, pure --------------------------------------------------------------------------


def test_one_order_per_certificate_per_interval_and_the_refusal_says_when() -> None:
    clock = Clock()
    limit = OrderLimit(interval=3600, per_hour=20, clock=clock)
    assert limit.next_allowed("a.test") is None
    limit.record("a.test")
    assert limit.next_allowed("a.test") == NOW + 3600
    assert limit.next_allowed("b.test") is None  # another certificate has its own turn
    assert limit.refusal("a.test") == (
        "refused: next order of a.test allowed at 2030-01-01 01:00:00 UTC (`companion renew` may order each "
        "certificate once every 60 min, 20 in all per hour)"
    )
    clock.now += 3599
    assert limit.next_allowed("a.test") == NOW + 3600
    clock.now += 1
    assert limit.next_allowed("a.test") is None and limit.refusal("a.test") == ""


def test_orders_in_all_are_capped_per_sliding_hour() -> None:
    clock = Clock()
    limit = OrderLimit(interval=60, per_hour=3, clock=clock)
    for minute, name in enumerate(("a", "b", "c")):
        clock.now = NOW + 600 * minute  # at 0, 10 and 20 minutes
        assert limit.next_allowed(name) is None
        limit.record(name)
    clock.now = NOW + 1800
    assert limit.next_allowed("d") == NOW + 3600  # the first of the three leaves the hour
    assert limit.next_allowed("a") == NOW + 3600  # both limits hold; the later one is the answer
    clock.now = NOW + 3600
    assert limit.next_allowed("d") is None
    limit.record("d")
    assert limit.next_allowed("e") == NOW + 600 + 3600


# -- the peer check, pure --------------------------------------------------------------------------


def test_a_peer_must_be_the_services_user_or_root_in_its_pid_namespace() -> None:
    def same(_pid: int) -> bool:
        return True

    def other(_pid: int) -> bool:
        return False

    assert peer_problem(123, 1000, 1000, same) == ""
    assert peer_problem(123, 0, 1000, same) == ""
    assert "another PID namespace" in peer_problem(0, 0, 0, same)  # the kernel's answer for another container
    assert "another PID namespace" in peer_problem(123, 0, 0, other)  # a container below the service's namespace
    assert peer_problem(123, 1001, 1000, same) == "refused: uid 1001 is neither the service's (1000) nor root"
