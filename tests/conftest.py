"""Shared test settings: hypothesis profiles.

The default profile is what CI runs (at least 200 examples x 50 steps per state
machine); `HYPOTHESIS_PROFILE=quick` is for iterating locally.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("quick", max_examples=20, stateful_step_count=20, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
