"""The market as the fork tests find it, plus what each test needs on top: users with
USDC and CLD, a listed lot to credit and a tokenized lot to draw — all made through the
deployed contracts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from forkchain import ForkChain, Roles
from web3 import Web3

from promptex.protocol.dex import DEFAULT_FEE
from promptex.protocol.escrow import KIND_LISTED, KIND_TOKENIZED
from promptex.protocol.units import MAX_UINT256 as MAX
from promptex.protocol.units import USD_MICRO as USDC_UNIT

TERMS = Web3.keccak(text="fork tests: resale permitted")
FAR = 10 * 365 * 86_400
SOONER = 60 * 86_400  # < seed.LOT_LIFETIME


@dataclass
class World:
    chain: ForkChain
    roles: Roles
    usdc: Any
    cld: Any
    vault: Any
    escrow: Any
    router: Any
    pool: Any
    listed_lot: int
    tokenized_lot: int

    def path(self, token_in: Any, token_out: Any) -> tuple[list[str], list[int]]:
        return [token_in.address, token_out.address], [DEFAULT_FEE]

    def deadline(self) -> int:
        return self.chain.now() + 3_600


def open_lot(chain: ForkChain, roles: Roles, escrow: Any, token: Any, kind: int, face_value: int, expiry: int) -> int:
    """Open a lot for the test seller (who approves exactly the bond: the escrow opens a
    lot only against an allowance of exactly its bond); returns its id."""
    tokenized = kind != KIND_LISTED  # a tokenized lot's only bond is its token's share
    bond = (
        escrow.functions.tokenized_bond(token.address, face_value).call()
        if tokenized
        else escrow.functions.min_bond(face_value).call()
    )
    chain.send(chain.contract("USDC").functions.approve(escrow.address, bond), roles.seller)
    rate = 6_000 if kind == KIND_LISTED else 0
    call = escrow.functions.open_lot(roles.seller, token.address, kind, face_value, expiry, bond, TERMS, rate)
    lot_id = call.call({"from": roles.attestor})
    chain.send(call, roles.attestor)
    return int(lot_id)


def build_world(chain: ForkChain) -> World:
    roles = Roles(chain)
    usdc, cld = chain.contract("USDC"), chain.contract("token:CLD")
    vault, escrow, router = chain.contract("CreditsVault"), chain.contract("CreditEscrow"), chain.contract("Router")
    pool_address = chain.contract("Factory").functions.get_pool(cld.address, usdc.address, DEFAULT_FEE).call()
    pool = chain.at(pool_address, "PoolBlueprint")  # the blueprint record carries the Pool ABI
    assert pool.functions.totalSupply().call() > 0, "the deployment's CLD/USDC pool has no liquidity: seed it"

    for who in (*roles.users, roles.seller):
        chain.send(usdc.functions.mint(who, 1_000_000 * USDC_UNIT), who)
        for spender in (vault.address, router.address, escrow.address):
            chain.send(usdc.functions.approve(spender, MAX), who)
            chain.send(cld.functions.approve(spender, MAX), who)
    expiry = chain.now() + FAR
    listed = open_lot(chain, roles, escrow, chain.contract("token:GPT"), KIND_LISTED, 50_000 * USDC_UNIT, expiry)
    # Tokenized lots are drawn nearest-expiry first: this one must expire before the
    # market maker's seeded lots (LOT_LIFETIME) so settlements may draw it.
    tokenized = open_lot(chain, roles, escrow, cld, KIND_TOKENIZED, 50_000 * USDC_UNIT, chain.now() + SOONER)
    world = World(chain, roles, usdc, cld, vault, escrow, router, pool, listed, tokenized)
    for user in roles.users:  # each buys some CLD on the market
        path, fees = world.path(usdc, cld)
        chain.send(router.functions.swap_exact_in(2_000 * USDC_UNIT, 1, path, fees, user, world.deadline()), user)
    return world
