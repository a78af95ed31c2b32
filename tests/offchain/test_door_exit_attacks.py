"""Breaking the coordinator's door (issue 21 item 5): two releases of one wallet usable
together, or one for more than is free of unsettled usage (session 4's breaker).

Each attack interleaves two entrances that share no lock — the door and the operator's
`promptex coordinator release` (another process: another `Coordinator` on the same
database), or two doors — exactly where one has checked what is free and the other then
answers. The promise that must hold whatever the interleaving: every release a wallet
holds carries the vault's one release nonce of that wallet (so at most one of them can
ever be used on chain), none is for more than was free, and once the chain's nonce moves
every twin is closed and its lock given back.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from coordinator_fakes import FakeChain
from eth_account import Account
from test_coordinator_door import ADDRESSES, CHAIN_ID, USDC, VAULT, World

from promptex.coordinator.service import Coordinator
from promptex.coordinator.store import ReleaseRefused
from promptex.ledger import Ledger
from promptex.protocol.escrow import KIND_LISTED
from promptex.protocol.vault import sign_exit_request


@pytest.fixture
def world(tmp_path: Path, clock) -> Iterator[World]:  # noqa: ANN001
    book = Ledger.open(f"sqlite:///{tmp_path}/ledger.sqlite3", clock=clock, sqlite_synchronous="NORMAL")
    yield World(book, FakeChain())
    book.close()


class _Interleaved:
    """The operator's view of the same chain, which runs `between` once right after the
    operator's `sign_release` has read the wallet's vault nonce (or, with `on="balance"`,
    its vault balance): exactly where another entrance may then act."""

    def __init__(self, chain: FakeChain, between: Any, on: str = "nonce") -> None:
        self._chain, self._between, self._on = chain, between, on

    def __getattr__(self, name: str) -> Any:
        return getattr(self._chain, name)

    def _then(self, value: int, on: str) -> int:
        if on == self._on and self._between is not None:
            between, self._between = self._between, None
            between()
        return value

    def release_nonce(self, address: str) -> int:
        return self._then(self._chain.release_nonce(address), "nonce")

    def balance_of(self, address: str, asset: str) -> int:
        return self._then(self._chain.balance_of(address, asset), "balance")


def _operator(world: World, between: Any, on: str = "nonce") -> Coordinator:
    chain: Any = _Interleaved(world.chain, between, on)
    return Coordinator(world.book.engine, chain, holder="operator", clock=world.book.clock, tx_timeout=0)


def _locked(world: World, account: int) -> int:
    return world.book.balance(account, "USDC").locked


@pytest.mark.parametrize(("door_asks", "operator_asks", "twin_signed"), [(5, 5, True), (10, 10, False), (15, 1, False)])
def test_operator_release_while_the_door_answers__one_vault_nonce__never_more_than_free_leaves(
    world: World, door_asks: int, operator_asks: int, twin_signed: bool
) -> None:
    """The operator's release has read 15 USDC free (20 in the vault, 5 unsettled) and the
    wallet's vault nonce when the door answers the wallet's own request. Either the
    operator is refused, or it signs a twin at the same vault nonce: never a second
    release the vault would honour after the first, never more than 15 usable."""
    account, wallet = world.buyer(20 * USDC, unsettled=5 * USDC)
    door_answer: dict[str, Any] = {}

    def door_answers() -> None:
        door_answer.update(world.post(world.request(wallet, door_asks * USDC))[1])

    operator = _operator(world, door_answers)
    try:
        twin = operator.sign_release(wallet.address, "USDC", operator_asks * USDC)
    except ReleaseRefused as exc:
        twin = None
        assert exc.code in {"ledger_short", "release_outstanding"}
    first = door_answer["release"]
    releases = world.coordinator.store.active_releases(wallet.address)
    assert {r.nonce for r in releases} == {first["nonce"]} == {world.chain.release_nonce(wallet.address)}
    assert max(r.amount for r in releases) <= 15 * USDC  # one of them at most: each fits what was free
    assert _locked(world, account) == sum(r.amount for r in releases) <= 15 * USDC
    assert (twin is not None) == twin_signed  # the ledger's lock refuses a twin beyond what is free
    if twin is not None:
        assert twin.nonce == first["nonce"] and len(releases) == 2

    # The wallet uses one on chain: the vault's nonce moves, every twin is void, locks go.
    world.chain.s.release_nonce[wallet.address] = first["nonce"] + 1
    world.coordinator.run_once()
    assert world.coordinator.store.active_releases(wallet.address) == [] and _locked(world, account) == 0


def test_two_doors_racing_one_wallets_requests__at_most_one_usable_release_within_what_is_free(world: World) -> None:
    """Two doors of one coordinator (two processes: no shared lock) each get one of the
    wallet's signed requests at once — the same one replayed, then two nonces each asking
    for everything free. One nonce is answered once; every release signed carries the one
    vault nonce; the locks never exceed what is free."""
    account, wallet = world.buyer(20 * USDC, unsettled=4 * USDC)
    doors = [world.client, World(world.book, world.chain).client]
    answers: list[tuple[int, dict[str, Any]]] = []

    def race(bodies: list[dict[str, Any]]) -> None:
        start = threading.Barrier(len(bodies))

        def go(client: Any, body: dict[str, Any]) -> None:
            start.wait()
            got = client.post("/v1/exits", json=body)
            answers.append((got.status_code, got.json()))

        threads = [threading.Thread(target=go, args=(c, b)) for c, b in zip(doors, bodies, strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    replayed = world.request(wallet, 16 * USDC, nonce=0)
    race([replayed, replayed])
    assert sorted(status for status, _ in answers) == [200, 409]  # the replay: bad_nonce
    assert answers[[s for s, _ in answers].index(409)][1]["error"]["code"] == "bad_nonce"
    answers.clear()
    world.chain.time = world.coordinator.store.active_releases(wallet.address)[0].expiry + 1
    world.coordinator.run_once()  # the first release expired unused: its lock is back
    assert _locked(world, account) == 0
    race([world.request(wallet, 16 * USDC, nonce=1), world.request(wallet, 16 * USDC, nonce=2)])
    signed = [a["release"] for status, a in answers if status == 200]
    assert {r["nonce"] for r in signed} <= {world.chain.release_nonce(wallet.address)}
    assert _locked(world, account) <= 16 * USDC


def test_release_at_its_expiry_second__still_locked__a_new_one_waits_until_the_vault_refuses_it(world: World) -> None:
    """The vault honours a release while block time ≤ its expiry: at that very second the
    lock must hold (a new request is refused); one second later it is given back."""
    account, wallet = world.buyer(10 * USDC)
    got, answer = world.post(world.request(wallet, 10 * USDC))
    assert got == 200
    world.chain.time = answer["release"]["expiry"]
    world.coordinator.run_once()
    assert _locked(world, account) == 10 * USDC
    got, refused = world.post(world.request(wallet, USDC, nonce=1))
    assert got == 409 and refused["error"]["code"] == "release_outstanding"
    world.chain.time += 1
    world.coordinator.run_once()
    assert _locked(world, account) == 0
    assert world.post(world.request(wallet, 10 * USDC, nonce=2))[0] == 200


def test_request_signed_for_another_vault_or_chain__refused_nothing_locked_nonce_kept(world: World) -> None:
    """A wallet's ExitRequest for another market (vault or chain) is not a request here."""
    account, wallet = world.buyer(10 * USDC)
    fields = {"account": wallet.address, "asset": ADDRESSES["USDC"], "amount": USDC, "nonce": 0,
              "expiry": world.chain.now() + 300}  # fmt: skip
    other_vault = Account.create().address
    for chain_id, vault in ((CHAIN_ID, other_vault), (CHAIN_ID + 1, VAULT)):
        signature = sign_exit_request(wallet.key, chain_id=chain_id, vault=vault, **fields)
        body = {**fields, "asset": "USDC", "amount": str(USDC), "signature": "0x" + signature.hex()}
        got, answer = world.post(body)
        assert got == 403 and answer["error"]["code"] == "wrong_signer"
    assert _locked(world, account) == 0
    assert world.client.get("/v1/exits/nonce", params={"account": wallet.address}).json()["nonce"] == 0


def test_settlement_confirmed_between_reading_the_balance_and_the_usage__never_releases_the_usage(world: World) -> None:
    """`sign_release` reads the vault balance, then the unsettled usage. The 5 USDC batch
    lands and the coordinator's pass confirms it right between the two reads: the balance
    read is from before the debit, the usage read no longer counts it — 20 looks free
    where 15 is. The ledger's own lock (its balance was charged at settle) refuses what
    the chain's reads overstated; exactly 15 is released."""
    account, wallet = world.buyer(20 * USDC, unsettled=5 * USDC)
    world.chain.open_lot(2, KIND_LISTED, "USDC")
    world.chain.hold = True
    world.chain.next_window()
    world.coordinator.run_once()  # the batch is posted, waiting in the mempool
    assert world.coordinator.store.unsettled(account, "USDC") == 5 * USDC

    def lands_and_is_confirmed() -> None:
        world.chain.mine()
        world.coordinator.run_once()

    operator = _operator(world, lands_and_is_confirmed, on="balance")
    with pytest.raises(ReleaseRefused) as refused:
        operator.sign_release(wallet.address, "USDC", 20 * USDC)
    assert refused.value.code == "ledger_short"
    assert world.chain.balance_of(wallet.address, "USDC") == 15 * USDC  # the batch did land
    assert world.coordinator.store.unsettled(account, "USDC") == 0 and _locked(world, account) == 0
    assert world.coordinator.sign_release(wallet.address, "USDC", 15 * USDC).amount == 15 * USDC
