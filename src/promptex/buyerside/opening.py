"""Opening a signer for a session grant: the gateway's rates, then the lane book recovered
from the chain (when it can be read), the gateway's verified lane reports and the log."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from promptex import metering
from promptex.buyerside.answers import RateBook
from promptex.buyerside.recovery import ChainSession, recover
from promptex.buyerside.sessions import SessionGrant
from promptex.buyerside.signer import Signer
from promptex.buyerside.voucherlog import VoucherLog
from promptex.buyerside.wire import ASSET_HEADER, LANES_PATH, WireError, lane_reports
from promptex.gateway.requests import CHAT_IMAGE_TOKENS


@dataclass
class Opened:
    signer: Signer
    notes: list[str]


def log_path(folder: Path, grant: SessionGrant) -> Path:
    """One voucher log per (chain, vault, account, asset, session)."""
    return folder / f"vouchers-{grant.chain_id}-{grant.account.lower()}-{grant.asset_symbol}-{grant.session}.log"


def chain_session(vault: Any, grant: SessionGrant) -> ChainSession:
    """The vault's views for the grant's account and asset (a web3 contract)."""
    view = vault.functions.session_key(grant.account, grant.asset).call()
    key, session, lanes, maximum, settled = view[0], int(view[1]), int(view[2]), int(view[3]), int(view[4])
    per_lane = tuple(int(vault.functions.lane_settled(grant.account, grant.asset, i).call()) for i in range(lanes))
    return ChainSession(str(key), session, lanes, maximum, settled, per_lane)


def open_signer(
    grant: SessionGrant,
    client: httpx.Client,
    log_folder: Path,
    *,
    chain: ChainSession | None = None,
    catalog: metering.Catalog | None = None,
    **options: Any,
) -> Opened:
    """A signer for `grant`, talking to the gateway through `client` (its base URL and API
    key set). Without `chain`, the grant's own session figures stand in for the vault's
    (nothing settled yet is assumed: the log's and the gateway's vouchers still bound it)."""
    notes: list[str] = []
    answer = client.get("/v1/models", headers={ASSET_HEADER: grant.asset_symbol})
    answer.raise_for_status()
    rates = RateBook.from_models(answer.json(), catalog)
    notes.extend(rates.image_disagreements(CHAT_IMAGE_TOKENS))
    across = sorted(model for model in rates.listed if rates.own_token(model, grant.asset_symbol) is not None)
    if across:  # refused at each request too (`Signer.hold_for`): said once, up front
        shown = ", ".join(across[:3]) + (", …" if len(across) > 3 else "")
        notes.append(
            f"{len(across)} models not of {grant.asset_symbol}'s provider ({shown}) are refused here: "
            f"signed mode paying in another provider's token is not built (sign in their own token or USDC)"
        )
    reports = None
    try:
        lanes = client.get(LANES_PATH, params={"asset": grant.asset_symbol})
        if lanes.status_code == 200:
            reports = lane_reports(lanes.json())
        else:
            notes.append(f"the gateway gave no lane report ({lanes.status_code}): lanes start at their highest voucher")
    except (httpx.HTTPError, WireError, ValueError) as exc:
        notes.append(f"the gateway's lane report is unusable ({exc}): lanes start at their highest voucher")
    if chain is None:
        chain = ChainSession(grant.key, grant.session, grant.lanes, grant.maximum, 0, (0,) * grant.lanes)
        notes.append("the chain was not read: nothing settled assumed")
    if chain.session != grant.session:
        raise ValueError(
            f"the vault's current session is {chain.session}, the grant's {grant.session}: create a new one"
        )
    identity = grant.identity()
    voucher_log = VoucherLog(log_path(log_folder, grant), identity)
    try:
        recovered = recover(identity, chain, reports, voucher_log, asset_symbol=grant.asset_symbol)
        signer = Signer(grant.signing_session(), recovered.book, voucher_log, rates, **options)
    except BaseException:  # not opened: the log let go (held, a retry in this process was refused)
        voucher_log.close()
        raise
    return Opened(signer, notes + recovered.notes)
