"""The error hierarchy: every error survives pickling (Dask workers return them), as documented."""

from __future__ import annotations

import inspect
import multiprocessing
import pickle
import types
from concurrent.futures import ProcessPoolExecutor

import pytest

import monitor.errors as errors
from monitor.alerts.sinks import DeliveryUncertainError, with_reason
from monitor.errors import (
    BudgetExceeded,
    HubSentryError,
    NotifyError,
    RateLimited,
    RetryableNotifyError,
    TransientHubError,
)
from monitor.store.alerts import AlertNotFoundError
from monitor.store.protected import ProtectedExistsError
from monitor.store.queue import LeaseLostError
from monitor.worker import classify

# One instance per class, built the way the code raises it (keyword-only arguments included).
SAMPLES: dict[str, HubSentryError] = {
    "HubSentryError": errors.HubSentryError("base"),
    "ConfigError": errors.ConfigError("hubs[0].poll_interval: expected a duration"),
    "HubError": errors.HubError("hub failed"),
    "RateLimited": errors.RateLimited("429 from the hub", retry_after_s=42.5),
    "TransientHubError": errors.TransientHubError("503 Service Unavailable"),
    "NotFound": errors.NotFound("acme/gone: 404"),
    "GatedRepo": errors.GatedRepo("acme/gated: 401"),
    "RangeIgnored": errors.RangeIgnored("200 to a ranged request"),
    "CommitMoved": errors.CommitMoved("asked for a, hub answered b"),
    "FormatError": errors.FormatError("header length 2**63"),
    "UnsupportedFormat": errors.UnsupportedFormat("legacy pickle"),
    "BudgetExceeded": errors.BudgetExceeded("over budget", budget=65536, requested=70000),
    "StoreError": errors.StoreError("disk full [SQLITE_FULL]"),
    "NotifyError": errors.NotifyError("sink failed"),
    "RetryableNotifyError": errors.RetryableNotifyError("Slack 503", retry_after_s=None),
    "PermanentNotifyError": errors.PermanentNotifyError("token_revoked"),
}

ATTRIBUTES = ("args", "retry_after_s", "budget", "requested", "reason")


def public_errors() -> set[str]:
    return {
        name
        for name, value in vars(errors).items()
        if not name.startswith("_") and isinstance(value, type) and issubclass(value, BaseException)
    }


def same(a: BaseException, b: BaseException) -> None:
    assert type(a) is type(b)
    assert str(a) == str(b)
    for name in ATTRIBUTES:
        assert getattr(a, name, None) == getattr(b, name, None), name


def test_all_lists_every_error_and_every_error_has_a_sample() -> None:
    assert set(errors.__all__) == public_errors()
    assert set(SAMPLES) == public_errors()


def test_docstring_tree_names_every_error() -> None:
    doc = inspect.getdoc(errors) or ""
    for name in errors.__all__:
        assert name in doc, name


@pytest.mark.parametrize("name", sorted(SAMPLES))
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_every_error_pickles_to_an_equal_error(name: str, protocol: int) -> None:
    original = SAMPLES[name]
    copy = pickle.loads(pickle.dumps(original, protocol=protocol))
    same(copy, original)


def test_keyword_only_arguments_survive_and_stay_keyword_only() -> None:
    limited = pickle.loads(pickle.dumps(RateLimited("slow down", retry_after_s=7.0)))
    assert limited.retry_after_s == 7.0
    budget = pickle.loads(pickle.dumps(BudgetExceeded("too much", budget=10, requested=11)))
    assert (budget.budget, budget.requested) == (10, 11)
    notify = pickle.loads(pickle.dumps(RetryableNotifyError("429", retry_after_s=3.0)))
    assert notify.retry_after_s == 3.0
    with pytest.raises(TypeError):
        RateLimited("positional", 1.0)  # type: ignore[misc]  # the public contract is unchanged


def test_subclasses_elsewhere_and_extra_attributes_survive() -> None:
    uncertain = with_reason(DeliveryUncertainError("Slack timed out", retry_after_s=2.0), "timeout")
    copy = pickle.loads(pickle.dumps(uncertain))
    same(copy, uncertain)
    assert isinstance(copy, RetryableNotifyError)
    assert copy.reason == "timeout"  # type: ignore[attr-defined]
    for error in (
        LeaseLostError("work item 3: lease no longer held"),
        AlertNotFoundError("no alert 3f9c2a"),
        ProtectedExistsError("acme/guard exists"),
    ):
        same(pickle.loads(pickle.dumps(error)), error)


def test_unpickled_errors_are_classified_like_the_originals() -> None:
    for error in SAMPLES.values():
        assert classify(pickle.loads(pickle.dumps(error))) == classify(error)


def _raise(name: str) -> None:
    raise SAMPLES[name]


def test_errors_cross_a_process_boundary() -> None:
    """What a remote Dask worker does: the scan raises in another process, the coordinator gets the error."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        futures = {name: pool.submit(_raise, name) for name in ("RateLimited", "BudgetExceeded", "NotFound")}
        received = {name: future.exception(timeout=60) for name, future in futures.items()}
    for name, error in received.items():
        assert error is not None
        same(error, SAMPLES[name])
    limited = received["RateLimited"]
    assert isinstance(limited, RateLimited)
    assert classify(limited).pause_hub_s == 42.5


def test_hierarchy_is_what_retry_logic_branches_on() -> None:
    assert issubclass(RateLimited, errors.HubError)
    assert issubclass(TransientHubError, errors.HubError)
    assert issubclass(errors.UnsupportedFormat, errors.FormatError)
    assert issubclass(RetryableNotifyError, NotifyError)
    assert issubclass(errors.PermanentNotifyError, NotifyError)
    assert all(issubclass(getattr(errors, n), HubSentryError) for n in errors.__all__)
    assert not any(isinstance(v, types.ModuleType) for k, v in vars(errors).items() if k in errors.__all__)
