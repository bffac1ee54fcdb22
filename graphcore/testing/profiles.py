"""Hypothesis settings the kit needs, registered as profiles.

A graph's first compute JIT-compiles its kernels (about a second each, once per machine), which
trips hypothesis' default 200 ms deadline; so importing graphcore.testing registers:

- "graphcore": hypothesis' defaults without the deadline and the too-slow health check. Loaded
  on import when no other profile has been loaded, so a property test of your own works as
  written;
- "ci": the same, derandomized (the same examples every run), 25 examples;
- "dev": as "ci" but random;
- "fuzz": 2000 examples per test (tests/test_fuzz.py).

`load_profile()` loads the profile named by the HYPOTHESIS_PROFILE environment variable (or
the one given). Your own settings still win: `@settings(...)` on a test, or your own profile
loaded after import.
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_SLOW_OK = [HealthCheck.too_slow]
PROFILES = {
    "graphcore": dict(deadline=None, suppress_health_check=_SLOW_OK),
    "ci": dict(derandomize=True, deadline=None, max_examples=25,
               suppress_health_check=_SLOW_OK + [HealthCheck.data_too_large]),
    "dev": dict(deadline=None, max_examples=25, suppress_health_check=_SLOW_OK),
    "fuzz": dict(deadline=None, max_examples=2000, suppress_health_check=_SLOW_OK + [HealthCheck.data_too_large]),
}
for _name, _kw in PROFILES.items():
    settings.register_profile(_name, **_kw)


def load_profile(name: str | None = None) -> str:
    """Load a kit profile: `name`, else $HYPOTHESIS_PROFILE, else "graphcore". Returns its name."""
    name = name or os.environ.get("HYPOTHESIS_PROFILE") or "graphcore"
    if name not in PROFILES:
        raise ValueError(f"graphcore.testing.load_profile: unknown profile {name!r} "
                         f"(known: {', '.join(PROFILES)})")
    settings.load_profile(name)
    return name


def _load_default() -> None:
    """On import: the kit's profile unless the user already chose one."""
    current = settings.get_current_profile_name() if hasattr(settings, "get_current_profile_name") \
        else getattr(settings, "_current_profile", "default")
    if current in (None, "default"):
        load_profile(os.environ.get("HYPOTHESIS_PROFILE") if os.environ.get("HYPOTHESIS_PROFILE") in PROFILES
                     else "graphcore")


_load_default()
