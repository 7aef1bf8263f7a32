"""The package's public surface: what ``__all__`` names is what an app may rely on."""

from __future__ import annotations

import importlib.metadata
import inspect

import consent_middleware
from consent_middleware import ConsentMiddlewareError, NotGatedError

EXPORTED = list(consent_middleware.__all__)


def test_every_exported_name_exists() -> None:
    missing = [name for name in EXPORTED if not hasattr(consent_middleware, name)]
    assert missing == []
    assert len(set(EXPORTED)) == len(EXPORTED)


def test_all_is_sorted() -> None:
    assert EXPORTED == sorted(EXPORTED)


def test_every_public_class_and_function_of_the_package_is_exported() -> None:
    defined_here = [
        name
        for name, member in vars(consent_middleware).items()
        if not name.startswith("_")
        and (inspect.isclass(member) or inspect.isfunction(member))
        and member.__module__.split(".")[0] == "consent_middleware"
    ]
    assert defined_here  # the scan itself found the package's members
    assert sorted(set(defined_here) - set(EXPORTED)) == []


def test_exported_exceptions_share_the_package_base() -> None:
    exceptions = [
        member
        for member in (getattr(consent_middleware, name) for name in EXPORTED)
        if inspect.isclass(member) and issubclass(member, BaseException)
    ]
    assert ConsentMiddlewareError in exceptions and NotGatedError in exceptions
    assert all(issubclass(exc, ConsentMiddlewareError) for exc in exceptions)


def test_not_gated_error_is_also_a_lookup_error() -> None:
    assert issubclass(NotGatedError, LookupError)
    assert issubclass(NotGatedError, ConsentMiddlewareError)


def test_version_matches_the_installed_distribution() -> None:
    assert consent_middleware.__version__ == importlib.metadata.version("consent-middleware")
