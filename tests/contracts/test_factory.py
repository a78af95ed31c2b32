"""Factory through ape: pools from the blueprint, one per (pair, fee), the
registry, fee tiers and their admin, and every revert."""

import ape
import pytest
from eth_utils import keccak

from promptex.chain.dex import pool_at, pool_init_code_hash
from promptex.protocol.dex import DEFAULT_FEE
from promptex.protocol.units import ZERO_ADDRESS as ZERO


def test_deploy__defaults__fee_tiers_blueprint_and_admin(factory, dex, admin):
    assert factory.DEFAULT_FEE() == DEFAULT_FEE
    assert [factory.fee_enabled(fee) for fee in (5, 30, 100)] == [True, True, True]
    assert not factory.fee_enabled(1)
    assert factory.pool_blueprint() == dex["PoolBlueprint"]
    assert factory.pool_init_code_hash() == pool_init_code_hash()
    assert factory.owner() == admin.address
    assert factory.pool_count() == 0


def test_create_pool__new_pair__registered_in_both_orders_with_event(factory, plain, trader):
    receipt = factory.create_pool(plain[1], plain[0], 100, sender=trader)  # anyone, any order
    pool = factory.get_pool(plain[0], plain[1], 100)
    assert pool != ZERO
    assert factory.get_pool(plain[1], plain[0], 100) == pool
    assert factory.is_pool(pool)
    assert (factory.pool_count(), factory.all_pools(0)) == (1, pool)
    event = factory.PoolCreated.from_receipt(receipt)[0]
    assert (event.token0, event.token1, event.fee, event.pool, event.pool_count) == (
        plain[0].address,
        plain[1].address,
        100,
        pool,
        1,
    )
    assert (pool_at(pool).token0(), pool_at(pool).token1(), pool_at(pool).fee()) == (
        plain[0].address,
        plain[1].address,
        100,
    )


def test_create_pool__fee_omitted__default_fee(factory, plain, admin):
    factory.create_pool(plain[0], plain[1], sender=admin)
    assert pool_at(factory.get_pool(plain[0], plain[1], DEFAULT_FEE)).fee() == DEFAULT_FEE


def test_create_pool__same_pair_other_fee__separate_pool(factory, plain, admin):
    factory.create_pool(plain[0], plain[1], 5, sender=admin)
    factory.create_pool(plain[0], plain[1], 30, sender=admin)
    assert factory.get_pool(plain[0], plain[1], 5) != factory.get_pool(plain[0], plain[1], 30)
    assert factory.pool_count() == 2


def test_create_pool__address__predicted_by_factory_and_router(factory, router, plain, admin):
    predicted = factory.pool_address(plain[1], plain[0], 30)
    assert router.pool_for(plain[0], plain[1], 30) == predicted
    factory.create_pool(plain[0], plain[1], 30, sender=admin)
    assert factory.get_pool(plain[0], plain[1], 30) == predicted


def test_create_pool__existing_pair_and_fee__reverts(factory, plain, admin):
    factory.create_pool(plain[0], plain[1], 30, sender=admin)
    with ape.reverts("factory: pool exists"):
        factory.create_pool(plain[1], plain[0], 30, sender=admin)


def test_create_pool__identical_tokens__reverts(factory, plain, admin):
    with ape.reverts("factory: identical tokens"):
        factory.create_pool(plain[0], plain[0], 30, sender=admin)


def test_create_pool__zero_address__reverts(factory, plain, admin):
    with ape.reverts("factory: zero address"):
        factory.create_pool(ZERO, plain[0], 30, sender=admin)


def test_create_pool__token_without_code__reverts(factory, plain, admin, trader):
    with ape.reverts("factory: token has no code"):
        factory.create_pool(plain[0], trader, 30, sender=admin)


def test_create_pool__fee_not_enabled__reverts(factory, plain, admin):
    with ape.reverts("factory: fee not enabled"):
        factory.create_pool(plain[0], plain[1], 31, sender=admin)


def test_pool_parameters__outside_creation__empty(factory):
    assert factory.pool_parameters() == (ZERO, ZERO, 0)


def test_deploy__wrong_init_code_hash__first_pool_reverts(project, admin, dex, plain):
    wrong = admin.deploy(project.Factory, dex["PoolBlueprint"], keccak(b"not the pool"))
    with ape.reverts("factory: wrong pool init code hash"):
        wrong.create_pool(plain[0], plain[1], 30, sender=admin)


def test_deploy__blueprint_without_code__reverts(project, admin, trader):
    with ape.reverts("factory: blueprint has no code"):
        admin.deploy(project.Factory, trader, pool_init_code_hash())


# ─── fee tiers ───────────────────────────────────────────────────────────────


def test_enable_fee__admin__enabled_with_event(factory, plain, admin):
    receipt = factory.enable_fee(1, sender=admin)
    assert factory.fee_enabled(1)
    assert factory.FeeEnabled.from_receipt(receipt)[0].fee == 1
    factory.create_pool(plain[0], plain[1], 1, sender=admin)


@pytest.mark.parametrize("fee", [0, 1_001])
def test_enable_fee__out_of_range__reverts(factory, admin, fee):
    with ape.reverts("factory: fee out of range"):
        factory.enable_fee(fee, sender=admin)


def test_enable_fee__already_enabled__reverts(factory, admin):
    with ape.reverts("factory: fee already enabled"):
        factory.enable_fee(30, sender=admin)


def test_enable_fee__not_admin__reverts(factory, attacker):
    with ape.reverts("ownable: caller is not the owner"):
        factory.enable_fee(1, sender=attacker)


def test_transfer_ownership__two_steps__new_admin_enables_fees(factory, admin, trader):
    factory.transfer_ownership(trader, sender=admin)
    assert factory.owner() == admin.address
    factory.accept_ownership(sender=trader)
    assert factory.owner() == trader.address
    factory.enable_fee(1, sender=trader)
    with ape.reverts("ownable: caller is not the owner"):
        factory.enable_fee(2, sender=admin)
