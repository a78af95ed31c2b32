"""A state machine's share of CI's time budget (the whole suite must run in 20 minutes).

In CI's profile (`HYPOTHESIS_PROFILE` unset or `ci`) the machine runs fewer examples than
the profile's 30; any other profile (`deep`, `deep_part`, `quick`) keeps its own size, so
the deep runs recorded in the README are unchanged."""

import os

from hypothesis import settings


def ci_share(case: type, max_examples: int, stateful_step_count: int = 50) -> None:
    if os.environ.get("HYPOTHESIS_PROFILE", "ci") == "ci":
        case.settings = settings(  # type: ignore[attr-defined]
            settings.default, max_examples=max_examples, stateful_step_count=stateful_step_count
        )
