"""Why a usage record cannot be proved or a proof cannot be checked; the message says it
to a user in one line."""

from __future__ import annotations


class ProofError(Exception):
    """A usage record that cannot be proved, or a proof that cannot be checked."""


class NoUsageRecord(ProofError, LookupError):
    """No usage record has this request id."""


class NotProvable(ProofError):
    """The record exists but is in no settlement batch: quarantined, or not batched yet."""


class BatchTampered(ProofError):
    """The batch's stored records no longer hash to the root it posted."""


class MalformedProof(ProofError, ValueError):
    """A proof document lacks a field or has one of the wrong type."""
