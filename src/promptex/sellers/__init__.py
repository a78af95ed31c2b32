"""Sellers: the one tokenize/list path (`promptex seller add-capacity` and the
dashboard's onboarding) and a lot's life after it (`seller lots`, `seller close`).

    onboarding = Onboarding(store, chain, keys, catalog, posting_margin=300)
    opened = onboarding.add(capacity)       # checks, approves, records, opens; or one-line refusals
    print("\\n".join(opened.summary()))

Each lot's state is the ledger's (`promptex.ledger.lots`): the gateway routes a lot only
while it is `open` and before its `route_until`.
"""

from promptex.sellers.chain import ChainLot, SellerChain
from promptex.sellers.manage import CloseRefused, Closing, LotRow, lot_rows
from promptex.sellers.onboard import LotNotOpened, LotPending, Onboarded, Onboarding
from promptex.sellers.store import SellerStore
from promptex.sellers.terms import APIS, Capacity, CapacityRefused, attestation, check_terms, verify_key

__all__ = [
    "APIS",
    "Capacity",
    "CapacityRefused",
    "ChainLot",
    "CloseRefused",
    "Closing",
    "LotNotOpened",
    "LotPending",
    "LotRow",
    "Onboarded",
    "Onboarding",
    "SellerChain",
    "SellerStore",
    "attestation",
    "check_terms",
    "lot_rows",
    "verify_key",
]
