"""Router through ape: add/remove liquidity with minimums, exact-in and exact-out
swaps over multi-hop paths (CLD → USDC → GPT in one call), the vault's exit market
(`sell`), quotes, every bad input the issue names (each a clear revert with the
pools untouched) and a sandwich bounded by min_out."""

import ape
import pytest

from promptex.chain.dex import pool_at
from promptex.protocol.dex import DEFAULT_FEE, amount_out
from promptex.protocol.units import MAX_UINT256 as MAX_UINT
from promptex.protocol.units import TOKEN_UNIT as UNIT


def reserves_of(pool, token_a):
    reserve0, reserve1, _ = pool.get_reserves()
    return (reserve0, reserve1) if pool.token0() == token_a.address else (reserve1, reserve0)


def snapshot(*pools):
    return [(p.get_reserves(), p.totalSupply()) for p in pools]


@pytest.fixture
def ab(plain, add_liquidity):
    """A 1,000 / 1,000 pool of plain[0] / plain[1] and a 1,000 / 2,000 pool of plain[1] / plain[2]."""
    first = add_liquidity(plain[0], plain[1], 1_000 * UNIT, 1_000 * UNIT)
    second = add_liquidity(plain[1], plain[2], 1_000 * UNIT, 2_000 * UNIT)
    return first, second


@pytest.fixture
def fot(project, admin, lp, trader, plain, router, factory):
    """A fee-on-transfer token (1 %) with a pool against plain[0], seeded directly
    (the router would refuse it)."""
    token = admin.deploy(project.FeeOnTransferToken)
    for account in (lp, trader):
        token.mint(account, 10**6 * UNIT, sender=account)
        token.approve(router, MAX_UINT, sender=account)
    factory.create_pool(token, plain[0], DEFAULT_FEE, sender=lp)
    pool = pool_at(factory.get_pool(token, plain[0], DEFAULT_FEE))
    token.transfer(pool, 1_000 * UNIT, sender=lp)
    plain[0].transfer(pool, 1_000 * UNIT, sender=lp)
    pool.mint(lp, sender=lp)
    return token, pool


# ─── add liquidity ───────────────────────────────────────────────────────────


def test_add_liquidity__no_pool__creates_it_at_the_desired_amounts(router, factory, plain, lp, deadline):
    router.add_liquidity(plain[1], plain[0], 100, 3 * UNIT, 2 * UNIT, 0, 0, lp, deadline, sender=lp)
    pool = pool_at(factory.get_pool(plain[0], plain[1], 100))
    assert reserves_of(pool, plain[1]) == (3 * UNIT, 2 * UNIT)
    assert pool.balanceOf(lp) == pool.totalSupply() - 1_000


def test_add_liquidity__more_b_than_the_ratio__b_cut_to_ratio(router, ab, plain, trader, deadline):
    pool = ab[0]
    before = plain[1].balanceOf(trader)
    router.add_liquidity(
        plain[0], plain[1], DEFAULT_FEE, 10 * UNIT, 50 * UNIT, 0, 9 * UNIT, trader, deadline, sender=trader
    )
    assert before - plain[1].balanceOf(trader) == 10 * UNIT
    assert reserves_of(pool, plain[0]) == (1_010 * UNIT, 1_010 * UNIT)


def test_add_liquidity__more_a_than_the_ratio__a_cut_to_ratio(router, ab, plain, trader, deadline):
    pool = ab[1]  # plain[1] : plain[2] = 1 : 2
    router.add_liquidity(
        plain[1], plain[2], DEFAULT_FEE, 50 * UNIT, 10 * UNIT, 5 * UNIT, 0, trader, deadline, sender=trader
    )
    assert reserves_of(pool, plain[1]) == (1_005 * UNIT, 2_010 * UNIT)


def test_add_liquidity__ratio_gives_less_than_min__reverts_pool_untouched(router, ab, plain, trader, deadline):
    before = snapshot(*ab)
    with ape.reverts("router: insufficient b amount"):
        router.add_liquidity(
            plain[0], plain[1], DEFAULT_FEE, 10 * UNIT, 50 * UNIT, 0, 11 * UNIT, trader, deadline, sender=trader
        )
    with ape.reverts("router: insufficient a amount"):
        router.add_liquidity(
            plain[1], plain[2], DEFAULT_FEE, 50 * UNIT, 10 * UNIT, 6 * UNIT, 0, trader, deadline, sender=trader
        )
    assert snapshot(*ab) == before


@pytest.mark.parametrize(
    "case, reason",
    [
        ("zero", "router: zero amount"),
        ("identical", "router: identical tokens"),
        ("expired", "router: expired"),
        ("to", "router: zero address"),
        ("fee", "factory: fee not enabled"),
    ],
)
def test_add_liquidity__bad_input__reverts(router, plain, trader, chain, case, reason):
    args = dict(a=plain[0], b=plain[1], fee=DEFAULT_FEE, amount=UNIT, to=trader, deadline=chain.pending_timestamp + 60)
    if case == "zero":
        args["amount"] = 0
    elif case == "identical":
        args["b"] = plain[0]
    elif case == "expired":
        args["deadline"] = chain.pending_timestamp - 1
    elif case == "to":
        args["to"] = "0x0000000000000000000000000000000000000000"
    elif case == "fee":
        args["fee"] = 31
    with ape.reverts(reason):
        router.add_liquidity(
            args["a"], args["b"], args["fee"], args["amount"], UNIT, 0, 0, args["to"], args["deadline"], sender=trader
        )


def test_add_liquidity__fee_on_transfer_token__reverts_pool_untouched(router, fot, plain, trader, deadline):
    token, pool = fot
    before = snapshot(pool)
    with ape.reverts("router: fee-on-transfer token"):
        router.add_liquidity(token, plain[0], DEFAULT_FEE, UNIT, UNIT, 0, 0, trader, deadline, sender=trader)
    assert snapshot(pool) == before


# ─── remove liquidity ────────────────────────────────────────────────────────


def test_remove_liquidity__lp_units__pays_share_and_meets_minimums(router, ab, plain, lp, deadline):
    pool = ab[0]
    pool.approve(router, MAX_UINT, sender=lp)
    liquidity = pool.balanceOf(lp) // 4
    supply = pool.totalSupply()
    share = liquidity * 1_000 * UNIT // supply
    before = plain[0].balanceOf(lp)
    router.remove_liquidity(plain[1], plain[0], DEFAULT_FEE, liquidity, share, share, lp, deadline, sender=lp)
    assert plain[0].balanceOf(lp) - before == share
    assert pool.balanceOf(lp) == pool.totalSupply() - 1_000


def test_remove_liquidity__below_min__reverts_pool_untouched(router, ab, plain, lp, deadline):
    pool = ab[0]
    pool.approve(router, MAX_UINT, sender=lp)
    before = snapshot(pool)
    with ape.reverts("router: insufficient b amount"):
        router.remove_liquidity(plain[0], plain[1], DEFAULT_FEE, UNIT, 0, UNIT + 1, lp, deadline, sender=lp)
    assert snapshot(pool) == before


def test_remove_liquidity__bad_input__reverts(router, ab, plain, lp, chain, deadline):
    with ape.reverts("router: zero amount"):
        router.remove_liquidity(plain[0], plain[1], DEFAULT_FEE, 0, 0, 0, lp, deadline, sender=lp)
    with ape.reverts("router: no pool"):
        router.remove_liquidity(plain[0], plain[1], 100, UNIT, 0, 0, lp, deadline, sender=lp)
    with ape.reverts("router: expired"):
        router.remove_liquidity(plain[0], plain[1], DEFAULT_FEE, UNIT, 0, 0, lp, chain.pending_timestamp - 1, sender=lp)


def test_remove_liquidity__fee_on_transfer_pool__lp_can_still_leave(router, fot, plain, lp, deadline):
    token, pool = fot
    pool.approve(router, MAX_UINT, sender=lp)
    router.remove_liquidity(token, plain[0], DEFAULT_FEE, pool.balanceOf(lp), 0, 0, lp, deadline, sender=lp)
    assert pool.balanceOf(lp) == 0


# ─── swap_exact_in ───────────────────────────────────────────────────────────


def test_swap_exact_in__one_hop__pays_the_quote(router, ab, plain, trader, deadline):
    quoted = router.get_amounts_out(10 * UNIT, [plain[0], plain[1]], [DEFAULT_FEE])
    assert quoted == [10 * UNIT, amount_out(10 * UNIT, 1_000 * UNIT, 1_000 * UNIT)]
    before = plain[1].balanceOf(trader)
    router.swap_exact_in(10 * UNIT, quoted[1], [plain[0], plain[1]], [DEFAULT_FEE], trader, deadline, sender=trader)
    assert plain[1].balanceOf(trader) - before == quoted[1]


def test_swap_exact_in__cld_usdc_gpt__two_hops_in_one_call(router, markets, trader, deadline):
    cld, gpt, usdc, cld_pool, gpt_pool = markets
    amount = 100_000 * UNIT  # $421.80 of CLD
    path, fees = [cld, usdc, gpt], [DEFAULT_FEE, DEFAULT_FEE]
    quoted = router.get_amounts_out(amount, path, fees)
    usdc_mid = amount_out(amount, *reserves_of(cld_pool, cld))
    assert quoted[1] == usdc_mid
    assert quoted[2] == amount_out(usdc_mid, *reserves_of(gpt_pool, usdc))
    assert 0.98 * 421.8 / 3.695 < quoted[2] / UNIT < 421.8 / 3.695  # 2 × 0.30 % fee and price impact
    usdc_held = usdc.balanceOf(trader)
    router.swap_exact_in(amount, quoted[2], path, fees, trader, deadline, sender=trader)
    assert gpt.balanceOf(trader) == quoted[2]
    assert usdc.balanceOf(trader) == usdc_held  # USDC only passed between the pools
    assert usdc.balanceOf(router) == cld.balanceOf(router) == 0  # the router holds nothing


def test_swap_exact_in__same_pool_later_in_path__each_hop_priced_fresh(
    router, ab, plain, trader, add_liquidity, deadline
):
    # A → B (0.30 %) → C (0.30 %) → B (1 %) → A (0.30 %): the A/B pool is passed twice.
    add_liquidity(plain[2], plain[1], 1_000 * UNIT, 1_000 * UNIT, fee=100)
    path, fees = [plain[0], plain[1], plain[2], plain[1], plain[0]], [DEFAULT_FEE, DEFAULT_FEE, 100, DEFAULT_FEE]
    first = amount_out(10 * UNIT, 1_000 * UNIT, 1_000 * UNIT)
    second = amount_out(first, 1_000 * UNIT, 2_000 * UNIT)
    third = amount_out(second, 1_000 * UNIT, 1_000 * UNIT, fee=100)
    fourth = amount_out(third, 1_000 * UNIT - first, 1_010 * UNIT)  # the A/B pool after the first hop
    assert router.get_amounts_out(10 * UNIT, path, fees)[-1] != fourth  # a quote cannot see the first hop
    before = plain[0].balanceOf(trader)
    router.swap_exact_in(10 * UNIT, fourth, path, fees, trader, deadline, sender=trader)
    assert plain[0].balanceOf(trader) - before == fourth - 10 * UNIT


def test_swap_exact_in__same_pool_on_consecutive_hops__reverts(router, ab, plain, trader, deadline):
    with ape.reverts("router: pool repeated in path"):
        router.swap_exact_in(
            UNIT, 0, [plain[0], plain[1], plain[0]], [DEFAULT_FEE] * 2, trader, deadline, sender=trader
        )


def test_swap_exact_in__output_below_min__reverts_pools_untouched(router, ab, plain, trader, deadline):
    path, fees = [plain[0], plain[1], plain[2]], [DEFAULT_FEE] * 2
    quoted = router.get_amounts_out(UNIT, path, fees)[-1]
    before = snapshot(*ab)
    with ape.reverts("router: insufficient output"):
        router.swap_exact_in(UNIT, quoted + 1, path, fees, trader, deadline, sender=trader)
    assert snapshot(*ab) == before


def test_swap_exact_in__missing_pool_in_path__reverts_pools_untouched(router, ab, plain, trader, deadline):
    before = snapshot(*ab)
    with ape.reverts("router: no pool"):  # plain[1]/plain[2] exists at 0.30 %, not at 1 %
        router.swap_exact_in(
            UNIT, 0, [plain[0], plain[1], plain[2]], [DEFAULT_FEE, 100], trader, deadline, sender=trader
        )
    assert snapshot(*ab) == before


@pytest.mark.parametrize(
    "case, reason",
    [
        ("zero", "router: zero amount"),
        ("expired", "router: expired"),
        ("short", "router: path too short"),
        ("fees", "router: one fee per hop"),
        ("identical", "router: identical tokens"),
        ("to", "router: zero address"),
    ],
)
def test_swap_exact_in__bad_input__reverts(router, ab, plain, trader, chain, case, reason):
    amount, path, fees, to = UNIT, [plain[0], plain[1]], [DEFAULT_FEE], trader
    deadline = chain.pending_timestamp + 60
    if case == "zero":
        amount = 0
    elif case == "expired":
        deadline = chain.pending_timestamp - 1
    elif case == "short":
        path = [plain[0]]
    elif case == "fees":
        fees = [DEFAULT_FEE, DEFAULT_FEE]
    elif case == "identical":
        path = [plain[0], plain[0]]
    elif case == "to":
        to = "0x0000000000000000000000000000000000000000"
    before = snapshot(*ab)
    with ape.reverts(reason):
        router.swap_exact_in(amount, 0, path, fees, to, deadline, sender=trader)
    assert snapshot(*ab) == before


def test_swap_exact_in__fee_on_transfer_input__reverts_pool_untouched(router, fot, plain, trader, deadline):
    token, pool = fot
    before = snapshot(pool)
    with ape.reverts("pool: input not received"):
        router.swap_exact_in(UNIT, 0, [token, plain[0]], [DEFAULT_FEE], trader, deadline, sender=trader)
    assert snapshot(pool) == before


def test_swap_exact_in__fee_on_transfer_output__reverts_pool_untouched(router, fot, plain, trader, deadline):
    token, pool = fot
    before = snapshot(pool)
    with ape.reverts("router: fee-on-transfer token"):
        router.swap_exact_in(UNIT, 0, [plain[0], token], [DEFAULT_FEE], trader, deadline, sender=trader)
    assert snapshot(pool) == before


# ─── swap_exact_out ──────────────────────────────────────────────────────────


def test_swap_exact_out__two_hops__exact_output_for_the_quoted_input(router, ab, plain, trader, deadline):
    path, fees = [plain[0], plain[1], plain[2]], [DEFAULT_FEE] * 2
    quoted = router.get_amounts_in(5 * UNIT, path, fees)
    assert quoted[-1] == 5 * UNIT
    assert router.get_amounts_out(quoted[0], path, fees)[-1] >= 5 * UNIT
    held = (plain[0].balanceOf(trader), plain[2].balanceOf(trader))
    router.swap_exact_out(5 * UNIT, quoted[0], path, fees, trader, deadline, sender=trader)
    assert held[0] - plain[0].balanceOf(trader) == quoted[0]
    assert plain[2].balanceOf(trader) - held[1] == 5 * UNIT


def test_swap_exact_out__input_above_max__reverts_pools_untouched(router, ab, plain, trader, deadline):
    path, fees = [plain[0], plain[1]], [DEFAULT_FEE]
    needed = router.get_amounts_in(5 * UNIT, path, fees)[0]
    before = snapshot(*ab)
    with ape.reverts("router: excessive input"):
        router.swap_exact_out(5 * UNIT, needed - 1, path, fees, trader, deadline, sender=trader)
    assert snapshot(*ab) == before


def test_swap_exact_out__bad_input__reverts(router, ab, plain, trader, chain, deadline):
    with ape.reverts("router: zero amount"):
        router.swap_exact_out(0, MAX_UINT, [plain[0], plain[1]], [DEFAULT_FEE], trader, deadline, sender=trader)
    with ape.reverts("router: expired"):
        router.swap_exact_out(
            UNIT, MAX_UINT, [plain[0], plain[1]], [DEFAULT_FEE], trader, chain.pending_timestamp - 1, sender=trader
        )
    with ape.reverts("router: pool repeated in path"):
        router.swap_exact_out(
            UNIT, MAX_UINT, [plain[0], plain[1], plain[0]], [DEFAULT_FEE] * 2, trader, deadline, sender=trader
        )
    with ape.reverts("router: no pool"):
        router.swap_exact_out(UNIT, MAX_UINT, [plain[0], plain[2]], [DEFAULT_FEE], trader, deadline, sender=trader)
    with ape.reverts("router: insufficient liquidity"):
        router.swap_exact_out(
            1_000 * UNIT, MAX_UINT, [plain[0], plain[1]], [DEFAULT_FEE], trader, deadline, sender=trader
        )


def test_swap_exact_out__fee_on_transfer_input__reverts_pool_untouched(router, fot, plain, trader, deadline):
    token, pool = fot
    before = snapshot(pool)
    with ape.reverts("router: fee-on-transfer token"):
        router.swap_exact_out(UNIT, MAX_UINT, [token, plain[0]], [DEFAULT_FEE], trader, deadline, sender=trader)
    assert snapshot(pool) == before


# ─── sell: the CreditsVault's exit market ────────────────────────────────────


def test_sell__provider_token__pulls_exactly_amount_pays_usdc_to_recipient(router, markets, trader, org):
    cld, _, usdc, cld_pool, _ = markets
    amount = 1_000_000 * UNIT
    expected = amount_out(amount, *reserves_of(cld_pool, cld))
    held = cld.balanceOf(trader)
    router.sell(cld, amount, expected, org, sender=trader)
    assert held - cld.balanceOf(trader) == amount
    assert usdc.balanceOf(org) == expected
    assert router.quote_token() == usdc.address
    assert router.EXIT_FEE() == DEFAULT_FEE


def test_sell__below_min_out__reverts_pool_untouched(router, markets, trader, org):
    cld, _, _, cld_pool, _ = markets
    expected = amount_out(UNIT * 10**6, *reserves_of(cld_pool, cld))
    before = snapshot(cld_pool)
    with ape.reverts("router: insufficient output"):
        router.sell(cld, UNIT * 10**6, expected + 1, org, sender=trader)
    assert snapshot(cld_pool) == before


def test_sell__token_without_usdc_pool__reverts(router, plain, trader, org):
    with ape.reverts("router: no pool"):
        router.sell(plain[0], UNIT, 0, org, sender=trader)


# ─── quotes ──────────────────────────────────────────────────────────────────


def test_quote__ratio__rounded_down(router):
    assert router.quote(10, 3, 7) == 23
    with ape.reverts("router: no liquidity"):
        router.quote(1, 0, 7)


def test_get_amounts_in__path_through_missing_pool__reverts(router, ab, plain):
    with ape.reverts("router: no pool"):
        router.get_amounts_in(UNIT, [plain[0], plain[2]], [DEFAULT_FEE])


# ─── attack: sandwich ────────────────────────────────────────────────────────


def test_swap_exact_in__sandwiched__victim_gets_min_out_or_reverts(router, ab, plain, trader, attacker, deadline):
    path, fees = [plain[0], plain[1]], [DEFAULT_FEE]
    victim_in = 10 * UNIT
    quoted = router.get_amounts_out(victim_in, path, fees)[1]
    min_out = quoted * 99 // 100  # 1 % slippage tolerance

    def victim_gets(front_run, r0=1_000 * UNIT, r1=1_000 * UNIT):
        bought = amount_out(front_run, r0, r1)
        return amount_out(victim_in, r0 + front_run, r1 - bought)

    # A greedy front-run pushes the victim below its minimum: the victim's swap reverts.
    snapshot_id = ape.chain.snapshot()
    router.swap_exact_in(100 * UNIT, 0, path, fees, attacker, deadline, sender=attacker)
    pool_state = snapshot(ab[0])
    with ape.reverts("router: insufficient output"):
        router.swap_exact_in(victim_in, min_out, path, fees, trader, deadline, sender=trader)
    assert snapshot(ab[0]) == pool_state
    ape.chain.restore(snapshot_id)

    # The largest front-run the victim's minimum still allows:
    low, high = 0, 100 * UNIT
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if victim_gets(middle) >= min_out else (low, middle - 1)
    front_run = low
    held_a, held_b = plain[0].balanceOf(attacker), plain[1].balanceOf(attacker)
    router.swap_exact_in(front_run, 0, path, fees, attacker, deadline, sender=attacker)
    victim_before = plain[1].balanceOf(trader)
    router.swap_exact_in(victim_in, min_out, path, fees, trader, deadline, sender=trader)
    received = plain[1].balanceOf(trader) - victim_before
    bought = plain[1].balanceOf(attacker) - held_b
    router.swap_exact_in(bought, 0, [plain[1], plain[0]], fees, attacker, deadline, sender=attacker)
    attacker_profit = plain[0].balanceOf(attacker) - held_a

    assert received >= min_out
    # At the pool's 1:1 price, what the attacker can take is bounded by what the
    # victim agreed to give up; fees make it smaller still.
    assert attacker_profit <= quoted - min_out
