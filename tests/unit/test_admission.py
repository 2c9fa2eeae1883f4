from __future__ import annotations

import pytest

from serve_app.config import RouterConfig
from serve_app.core.admission import AdmissionController, AdmissionTicket, Rejection


def admit(controller: AdmissionController, cost: int) -> AdmissionTicket:
    result = controller.try_admit(cost)
    assert isinstance(result, AdmissionTicket), result
    return result


def test_queue_full_rejects_with_configured_status_and_retry_after() -> None:
    controller = AdmissionController(max_queued_requests=2, max_queued_tokens=10_000, retry_after_s=3)
    admit(controller, 10)
    admit(controller, 10)
    rejection = controller.try_admit(10)
    assert rejection == Rejection(status=429, retry_after_s=3, reason="queue_full")
    assert "retry later" in rejection.message


def test_overflow_status_503_from_config() -> None:
    config = RouterConfig(max_queued_requests=1, overflow_status=503, retry_after_s=5)
    controller = AdmissionController.from_config(config)
    admit(controller, 1)
    rejection = controller.try_admit(1)
    assert isinstance(rejection, Rejection)
    assert (rejection.status, rejection.retry_after_s, rejection.reason) == (503, 5, "queue_full")


def test_token_budget_rejects_what_does_not_fit() -> None:
    controller = AdmissionController(max_queued_requests=100, max_queued_tokens=1000)
    admit(controller, 600)
    rejection = controller.try_admit(500)
    assert isinstance(rejection, Rejection) and rejection.reason == "token_budget"
    admit(controller, 400)
    assert (controller.queued_requests, controller.queued_tokens) == (2, 1000)


def test_a_request_larger_than_the_budget_runs_alone() -> None:
    controller = AdmissionController(max_queued_requests=10, max_queued_tokens=100)
    big = admit(controller, 5000)
    assert isinstance(controller.try_admit(1), Rejection)
    big.release()
    admit(controller, 1)


def test_release_frees_capacity_and_double_release_is_harmless() -> None:
    controller = AdmissionController(max_queued_requests=1, max_queued_tokens=100)
    ticket = admit(controller, 80)
    assert isinstance(controller.try_admit(10), Rejection)
    assert ticket.release() is True
    assert ticket.release() is False
    assert (controller.queued_requests, controller.queued_tokens) == (0, 0)
    second = admit(controller, 90)
    ticket.release()  # a stale ticket must not free the new request's capacity
    assert (controller.queued_requests, controller.queued_tokens) == (1, 90)
    second.release()


def test_ticket_context_manager_releases_on_error() -> None:
    controller = AdmissionController(max_queued_requests=1, max_queued_tokens=100)
    with pytest.raises(RuntimeError), admit(controller, 50):
        raise RuntimeError("client went away")
    assert (controller.queued_requests, controller.queued_tokens) == (0, 0)


def test_counters_for_metrics() -> None:
    controller = AdmissionController(max_queued_requests=2, max_queued_tokens=100)
    a = admit(controller, 60)
    controller.try_admit(60)  # token budget
    admit(controller, 10)
    controller.try_admit(1)  # queue full
    controller.try_admit(1)
    a.release()
    a.release()
    assert controller.admitted_total == 2
    assert controller.released_total == 1
    assert dict(controller.rejected_total) == {"token_budget": 1, "queue_full": 2}
