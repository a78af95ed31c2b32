"""The settlement coordinator: batches settled usage per (asset, epoch) into CreditsVault
settlements with a Merkle root of the records, crash-safe; registers signed spend caps;
co-signs instant-exit releases for amounts free of unsettled usage."""

from promptex.coordinator.service import Coordinator, PassReport, ReleaseRefused, serve

__all__ = ["Coordinator", "PassReport", "ReleaseRefused", "serve"]
