"""Perp against a plain-Python model, driven through titanoboa over a real DEX (Pool
blueprint, Factory, Router, Oracle).

Three traders open longs and shorts on two markets (amounts that sometimes break the
leverage, the open-interest cap or the pool's reserve), add and remove margin, close
their positions (and try to close others'); a liquidator liquidates (healthy and
unhealthy positions) and sweeps; two LPs deposit and withdraw (sometimes into the
reserved liquidity); donors fund the insurance fund; a market maker moves the spot
prices and time passes (funding accrues, the TWAP follows). Against the LPs and
traders: an LP withdraws right after a spot jump, before the TWAP follows; the pauser
pauses; the admin raises funding, tightens the depth cap and closes markets to new
positions; a keeper refreshes a side's bounds. The model, built on the mirror in
`promptex.protocol.perp`, predicts every outcome and amount; after every step:

- USDC conservation: the contract's balance == pool + margins + insurance ==
  deposits − withdrawals (every transfer in and out, counted by the model);
- realised PnL and fees balance to zero: pool + insurance == LP and insurance
  deposits − LP withdrawals + Σ fees − Σ realised gains − Σ bad debt − Σ bonuses paid
  by the insurance fund, every term read from the contract's events;
- every storage aggregate (pool, insurance, margins, reserve, shares, each market's
  open interest and funding indices, bad-debt totals) equals the model's;
- the pool covers its worst-case liability (pool_amount ≥ total_reserved);
- a liquidation call on a position below maintenance margin always succeeds (one
  above it always fails), and after a sweep no position is below maintenance;
- LPs cannot pick each other's pockets: at every deposit and withdrawal, the value
  per share of the LPs who stay — priced exactly, each position's PnL net of funding
  clamped to [−margin, reserved], at the spot and at the TWAP — does not fall;
- each side's book (margins, reserve, count, bounds) equals the model's, and its
  bounds hold every open position's bankruptcy and cap prices.
At the end of every run every position is closed (or liquidated) whatever the pauser
and the admin did, and every LP withdraws what the pool holds for it.
"""

from dataclasses import dataclass, field, replace

import boa
from boa_dex import FEE, PERIOD, deploy_dex, seed_pools
from boa_partial import LazyPartial
from ci_share import ci_share
from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from promptex.protocol import perp as m
from promptex.protocol.perp import DEFAULT_INSURANCE_FEE_BPS as INSURANCE_FEE_BPS
from promptex.protocol.perp import LOCAL_TWAP_WINDOW as TWAP_WINDOW
from promptex.protocol.units import MAX_UINT256 as MAX_UINT
from promptex.protocol.units import TOKEN_UNIT as UNIT
from promptex.protocol.units import USD_MICRO as USD

PERP = LazyPartial("contracts/Perp.vy")
ZERO = "0x" + "00" * 20

PRICES = (2 * USD, USD // 2)  # USDC units per whole token
DEPTH = 300_000 * USD  # USDC a side of each DEX pool
PARAMS = (
    m.MarketParams(
        funding_k=10**15, max_leverage=10, maintenance_bps=500, oi_cap_bps=5_000,
        liquidation_bonus_bps=200, open_fee_bps=10, close_fee_bps=10, max_profit_bps=10_000, depth_cap_bps=2_000,
    ),
    m.MarketParams(
        funding_k=10**16, max_leverage=20, maintenance_bps=300, oi_cap_bps=3_000,
        liquidation_bonus_bps=100, open_fee_bps=0, close_fee_bps=5, max_profit_bps=5_000, depth_cap_bps=1_000,
    ),
)  # fmt: skip
N_TRADERS, N_LPS = 3, 2


class World:
    """Deployed once, at import; titanoboa's pytest plugin runs every hypothesis example
    inside an anchor, so each starts from this state."""

    def __init__(self) -> None:
        self.admin = boa.env.generate_address("admin")
        self.pauser = boa.env.generate_address("pauser")
        self.keeper = boa.env.generate_address("keeper")
        self.maker = boa.env.generate_address("maker")
        self.liquidator = boa.env.generate_address("liquidator")
        self.donor = boa.env.generate_address("donor")
        self.traders = [boa.env.generate_address(f"trader{i}") for i in range(N_TRADERS)]
        self.lps = [boa.env.generate_address(f"lp{i}") for i in range(N_LPS)]
        dex = deploy_dex(self.admin)
        self.usdc, self.tokens, self.router, self.oracle = dex.usdc, dex.tokens, dex.router, dex.oracle
        with boa.env.prank(self.admin):
            self.perp = PERP.deploy(self.usdc.address, self.oracle.address, TWAP_WINDOW, INSURANCE_FEE_BPS)
            for token, params in zip(self.tokens, PARAMS, strict=True):
                self.perp.add_market(token.address, *params.as_args())
            self.perp.grant_pauser(self.pauser)
        seed_pools(dex, self.maker, PRICES, DEPTH, TWAP_WINDOW)
        self.pools = dex.pools
        for account in (*self.traders, *self.lps, self.liquidator, self.donor):
            self.usdc.mint(account, 10**13)
            self.usdc.approve(self.perp.address, MAX_UINT, sender=account)
        self.perp.deposit(100_000 * USD, 0, sender=self.lps[0])


WORLD = World()


@dataclass
class Market:
    params: m.MarketParams
    oi: m.OpenInterest = field(default_factory=m.OpenInterest)
    last: int = 0
    sides: dict[bool, m.Side] = field(default_factory=lambda: {True: m.Side(), False: m.Side()})
    active: bool = True


@dataclass
class Open:
    owner: str
    market: int
    position: m.Position


@dataclass
class Model:
    markets: list[Market]
    pool: int
    insurance: int = 0
    margin: int = 0
    reserved: int = 0
    total_shares: int = 0
    shares: dict[str, int] = field(default_factory=dict)
    positions: dict[int, Open] = field(default_factory=dict)
    count: int = 0
    bad_debt: tuple[int, int, int] = (0, 0, 0)  # total, covered by insurance, absorbed by the pool
    flows: int = 0  # USDC into the contract minus USDC out of it
    # What the events say: LP and insurance deposits − withdrawals, fees, realised
    # gains, bad debt, bonuses paid by the insurance fund.
    ev_capital: int = 0
    ev_fees: int = 0
    ev_gains: int = 0
    ev_bad_debt: int = 0
    ev_bonus_insurance: int = 0
    paused: bool = False


class PerpMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.w = WORLD
        self.perp, self.usdc = WORLD.perp, WORLD.usdc
        markets = []
        for token, params in zip(WORLD.tokens, PARAMS, strict=True):
            markets.append(Market(params, last=self.perp.markets(token.address).last_funding_time))
        self.m = Model(
            markets=markets,
            pool=self.perp.pool_amount(),
            total_shares=self.perp.total_shares(),
            shares={a: self.perp.shares_of(a) for a in (*WORLD.lps, "0x" + "00" * 20)},
            count=self.perp.position_count(),
            flows=self.usdc.balanceOf(self.perp.address),
            ev_capital=self.perp.pool_amount(),
        )

    # ── model helpers ────────────────────────────────────────────────────────

    def now(self) -> int:
        return boa.env.evm.patch.timestamp

    def token(self, market: int) -> str:
        return self.w.tokens[market].address

    def indices(self, market: int) -> tuple[int, int]:
        mk = self.m.markets[market]
        elapsed = self.now() - mk.last
        return m.accrue(
            mk.oi.long_funding, mk.oi.short_funding, mk.oi.long_notional, mk.oi.short_notional,
            mk.params.funding_k, elapsed,
        )  # fmt: skip

    def accrue(self, market: int) -> None:
        mk = self.m.markets[market]
        mk.oi.long_funding, mk.oi.short_funding = self.indices(market)
        mk.last = self.now()

    def index(self, o: Open) -> int:
        long_index, short_index = self.indices(o.market)
        return long_index if o.position.is_long else short_index

    def reserves(self, market: int) -> tuple[int, int]:
        """(token reserve, USDC reserve) of the market's DEX pool (the Oracle's)."""
        pool, token = self.w.pools[market], self.w.tokens[market]
        reserve0, reserve1, _ = pool.get_reserves()
        return (reserve0, reserve1) if pool.token0() == token.address else (reserve1, reserve0)

    def spot(self, market: int) -> int:
        return m.spot_price(*self.reserves(market))

    def value(self, for_deposit: bool) -> int:
        """The contract's share price, from the model's books and the mirror."""
        worths = []
        for i, mk in enumerate(self.m.markets):
            if not (mk.oi.long_notional or mk.oi.short_notional):
                continue
            twap, spot = self.perp.price(self.token(i)), self.spot(i)
            long_index, short_index = self.indices(i)
            oi = mk.oi
            if oi.long_notional:
                worths.append(m.side_worth(mk.sides[True], True, oi.long_notional, oi.long_size,
                                           oi.long_funding_basis, long_index, twap, spot, for_deposit))  # fmt: skip
            if oi.short_notional:
                worths.append(m.side_worth(mk.sides[False], False, oi.short_notional, oi.short_size,
                                           oi.short_funding_basis, short_index, twap, spot, for_deposit))  # fmt: skip
        return m.pool_value(self.m.pool, worths)

    def fair_values(self) -> list[int]:
        """What the pool is worth exactly if every position settled now, at each market's
        spot, then at each market's TWAP (each position clamped to [−margin, reserved])."""
        values = []
        for at_spot in (True, False):
            worth = 0
            for o in self.m.positions.values():
                price = self.spot(o.market) if at_spot else self.perp.price(self.token(o.market))
                worth += m.clamped_worth(o.position, price, self.index(o))
            values.append(self.m.pool - worth)
        return values

    def open_ids(self) -> list[int]:
        return sorted(self.m.positions)

    def logs(self) -> list:
        return [log for log in self.perp.get_logs() if getattr(log, "address", None) == self.perp.address]

    def read_events(self) -> None:
        for log in self.logs():
            name = type(log).__name__
            if name == "PositionOpened":
                self.m.ev_fees += log.fee
            elif name == "PositionClosed":
                self.m.ev_fees += log.fee
                self.m.ev_gains += log.gain
                self.m.ev_bonus_insurance += log.bonus_from_insurance
            elif name == "BadDebtRecorded":
                self.m.ev_bad_debt += log.amount
            elif name == "LiquidityDeposited" or name == "InsuranceFunded":
                self.m.ev_capital += log.amount
            elif name == "LiquidityWithdrawn":
                self.m.ev_capital -= log.amount

    def remove(self, position_id: int, s: m.Settlement) -> None:
        o = self.m.positions.pop(position_id)
        p, oi = o.position, self.m.markets[o.market].oi
        basis = p.notional * p.entry_funding
        if p.is_long:
            oi.long_notional -= p.notional
            oi.long_size -= p.size
            oi.long_funding_basis -= basis
        else:
            oi.short_notional -= p.notional
            oi.short_size -= p.size
            oi.short_funding_basis -= basis
        side = self.m.markets[o.market].sides[p.is_long]
        side.margin, side.reserved, side.count = side.margin - p.margin, side.reserved - p.reserved, side.count - 1
        self.m.pool += s.pool_change(p.margin, INSURANCE_FEE_BPS)
        self.m.insurance += s.insurance_change(INSURANCE_FEE_BPS)
        self.m.margin -= p.margin
        self.m.reserved -= p.reserved
        self.m.flows -= s.payout + s.bonus
        total, covered, absorbed = self.m.bad_debt
        self.m.bad_debt = (total + s.bad_debt, covered + s.bad_debt_covered, absorbed + s.bad_debt_absorbed)

    # ── traders ──────────────────────────────────────────────────────────────

    @rule(
        trader=st.integers(0, N_TRADERS - 1),
        market=st.integers(0, 1),
        is_long=st.booleans(),
        dollars=st.integers(0, 20_000),
        cents=st.integers(0, 99),
        leverage_tenths=st.integers(5, 220),
    )
    def open_position(self, trader, market, is_long, dollars, cents, leverage_tenths):
        margin = dollars * USD + cents * USD // 100
        who, token, mk = self.w.traders[trader], self.token(market), self.m.markets[market]
        params = mk.params
        notional = margin * leverage_tenths // 10
        fee = m.open_fee(notional, params)
        price = self.perp.price(token)
        long_index, short_index = self.indices(market)
        side_notional = mk.oi.long_notional if is_long else mk.oi.short_notional
        reserve = m.reserve(notional, params)
        depth = m.depth(*self.reserves(market), price)
        if self.m.paused:
            reason = "pausable: contract is paused"
        elif not mk.active:
            reason = "perp: market not active"
        elif notional < m.MIN_NOTIONAL:
            reason = "perp: notional too small"
        elif margin <= fee:
            reason = "perp: margin below fee"
        elif (margin - fee) * params.max_leverage < notional:
            reason = "perp: leverage too high"
        elif m.size_at(notional, price) == 0:
            reason = "perp: size rounds to zero"
        elif side_notional + notional > self.m.pool * params.oi_cap_bps // m.BPS:
            reason = "perp: open interest cap"
        elif (side_notional + notional) * m.BPS > depth * self.perp.depth_cap_bps(token):
            reason = "perp: open interest above pool depth cap"
        elif self.m.reserved + reserve > self.m.pool:
            reason = "perp: pool cannot cover the reserve"
        else:
            reason = None
        event(f"open: {reason or 'opened'}")
        if reason:
            with boa.reverts(reason):
                self.perp.open_position(token, is_long, margin, notional, sender=who)
            return
        position_id = self.perp.open_position(token, is_long, margin, notional, sender=who)
        self.read_events()
        self.accrue(market)
        entry = long_index if is_long else short_index
        position = m.Position.opened(is_long, margin, notional, price, params, entry)
        self.m.count += 1
        assert position_id == self.m.count
        self.m.positions[position_id] = Open(who, market, position)
        if is_long:
            mk.oi.long_notional += notional
            mk.oi.long_size += position.size
            mk.oi.long_funding_basis += notional * entry
        else:
            mk.oi.short_notional += notional
            mk.oi.short_size += position.size
            mk.oi.short_funding_basis += notional * entry
        m.add_to_side(mk.sides[is_long], is_long, position)
        to_insurance = fee * INSURANCE_FEE_BPS // m.BPS
        self.m.insurance += to_insurance
        self.m.pool += fee - to_insurance
        self.m.margin += position.margin
        self.m.reserved += position.reserved
        self.m.flows += margin
        got = self.perp.positions(position_id)
        assert (got.owner, got.margin, got.size, got.notional, got.reserved, got.entry_funding) == (
            who, position.margin, position.size, position.notional, position.reserved, position.entry_funding,
        )  # fmt: skip

    @precondition(lambda self: self.m.positions)
    @rule(data=st.data(), by_owner=st.booleans())
    def close_position(self, data, by_owner):
        position_id = data.draw(st.sampled_from(self.open_ids()))
        o = self.m.positions[position_id]
        caller = o.owner if by_owner else self.w.liquidator
        if not by_owner:
            with boa.reverts("perp: not the position owner"):
                self.perp.close_position(position_id, 0, sender=caller)
            return
        self.close(position_id)

    def close(self, position_id: int) -> None:
        o = self.m.positions[position_id]
        params = self.m.markets[o.market].params
        s = m.settle(o.position, self.perp.price(self.token(o.market)), self.index(o), params, self.m.insurance, False)
        event("close: " + ("bad debt" if s.bad_debt else "capped gain" if s.gain == o.position.reserved else "ok"))
        before = self.usdc.balanceOf(o.owner)
        assert self.perp.close_position(position_id, s.payout, sender=o.owner) == s.payout
        self.read_events()
        assert self.usdc.balanceOf(o.owner) == before + s.payout
        self.accrue(o.market)
        self.remove(position_id, s)

    @precondition(lambda self: self.m.positions)
    @rule(data=st.data(), amount=st.integers(1, 5_000 * USD))
    def add_margin(self, data, amount):
        position_id = data.draw(st.sampled_from(self.open_ids()))
        o = self.m.positions[position_id]
        self.perp.add_margin(position_id, amount, sender=o.owner)
        o.position = replace(o.position, margin=o.position.margin + amount)
        self.m.markets[o.market].sides[o.position.is_long].margin += amount
        self.m.margin += amount
        self.m.flows += amount

    @precondition(lambda self: self.m.positions)
    @rule(data=st.data(), share_bps=st.integers(1, 10_000))
    def remove_margin(self, data, share_bps):
        position_id = data.draw(st.sampled_from(self.open_ids()))
        o = self.m.positions[position_id]
        p, params = o.position, self.m.markets[o.market].params
        amount = max(1, p.margin * share_bps // m.BPS)
        _, _, gain = m.gain(p, self.perp.price(self.token(o.market)), self.index(o))
        left = p.margin - amount + min(gain, 0)
        if amount >= p.margin:
            reason = "perp: amount exceeds margin"
        elif left <= 0 or left * params.max_leverage < p.notional:
            reason = "perp: leverage too high"
        else:
            reason = None
        if reason:
            with boa.reverts(reason):
                self.perp.remove_margin(position_id, amount, sender=o.owner)
            return
        self.perp.remove_margin(position_id, amount, sender=o.owner)
        self.accrue(o.market)
        o.position = replace(p, margin=p.margin - amount)
        side = self.m.markets[o.market].sides[p.is_long]
        side.margin -= amount
        m.widen_bankrupt_bound(side, p.is_long, o.position)
        self.m.margin -= amount
        self.m.flows -= amount

    # ── liquidation ──────────────────────────────────────────────────────────

    def liquidate(self, position_id: int) -> bool:
        """Call liquidate; it must succeed exactly when the model says the position is
        below maintenance. Returns whether it was liquidated."""
        o = self.m.positions[position_id]
        params = self.m.markets[o.market].params
        s = m.settle(o.position, self.perp.price(self.token(o.market)), self.index(o), params, self.m.insurance, True)
        below = s.equity < m.maintenance(o.position.notional, params)
        event("liquidate: " + ("bad debt" if s.bad_debt else "below maintenance" if below else "healthy"))
        assert self.perp.is_liquidatable(position_id) == below
        if not below:
            with boa.reverts("perp: position is healthy"):
                self.perp.liquidate(position_id, sender=self.w.liquidator)
            return False
        owner_before = self.usdc.balanceOf(o.owner)
        liquidator_before = self.usdc.balanceOf(self.w.liquidator)
        assert self.perp.liquidate(position_id, sender=self.w.liquidator) == s.bonus
        self.read_events()
        assert self.usdc.balanceOf(self.w.liquidator) == liquidator_before + s.bonus
        assert self.usdc.balanceOf(o.owner) == owner_before + s.payout
        assert self.perp.positions(position_id).owner == "0x" + "00" * 20  # it did not survive
        self.accrue(o.market)
        self.remove(position_id, s)
        return True

    @precondition(lambda self: self.m.positions)
    @rule(data=st.data())
    def liquidate_one(self, data):
        self.liquidate(data.draw(st.sampled_from(self.open_ids())))

    @precondition(lambda self: self.m.positions)
    @rule()
    def sweep(self):
        for position_id in self.open_ids():
            self.liquidate(position_id)
        for position_id, o in self.m.positions.items():
            assert not self.perp.is_liquidatable(position_id)
            params = self.m.markets[o.market].params
            price = self.perp.price(self.token(o.market))
            assert not m.is_liquidatable(o.position, price, self.index(o), params)

    # ── LPs and insurance ────────────────────────────────────────────────────

    @rule(lp=st.integers(0, N_LPS - 1), amount=st.integers(1, 200_000 * USD))
    def deposit(self, lp, amount):
        who = self.w.lps[lp]
        value = self.value(True)
        minted = m.shares_for_deposit(amount, self.m.total_shares, value) if value else 0
        if value == 0:
            reason = "perp: pool has no value"
        elif minted == 0:
            reason = "perp: zero shares"
        else:
            reason = None
        if reason:
            with boa.reverts(reason):
                self.perp.deposit(amount, 0, sender=who)
            return
        fair_before, supply_before = self.fair_values(), self.m.total_shares
        assert self.perp.deposit(amount, minted, sender=who) == minted
        self.read_events()
        self.lps_keep_their_share(fair_before, supply_before, amount, minted)
        self.m.shares[who] = self.m.shares.get(who, 0) + minted
        self.m.total_shares += minted
        self.m.pool += amount
        self.m.flows += amount

    @rule(lp=st.integers(0, N_LPS - 1), share_bps=st.integers(1, 10_000))
    def withdraw(self, lp, share_bps):
        who = self.w.lps[lp]
        shares = self.m.shares.get(who, 0) * share_bps // m.BPS
        if shares == 0:
            with boa.reverts("perp: zero shares"):
                self.perp.withdraw(0, 0, sender=who)
            return
        amount = m.amount_for_shares(shares, self.m.total_shares, self.value(False))
        if amount == 0:
            reason = "perp: zero amount"
        elif amount + self.m.reserved > self.m.pool:
            reason = "perp: withdrawal exceeds free liquidity"
        else:
            reason = None
        event(f"withdraw: {reason or 'paid'}")
        if reason:
            with boa.reverts(reason):
                self.perp.withdraw(shares, 0, sender=who)
            return
        before = self.usdc.balanceOf(who)
        fair_before, supply_before = self.fair_values(), self.m.total_shares
        assert self.perp.withdraw(shares, amount, sender=who) == amount
        self.read_events()
        self.lps_keep_their_share(fair_before, supply_before, -amount, -shares)
        assert self.usdc.balanceOf(who) == before + amount
        self.m.shares[who] -= shares
        self.m.total_shares -= shares
        self.m.pool -= amount
        self.m.flows -= amount

    def lps_keep_their_share(self, fair_before: list[int], supply_before: int, paid_in: int, minted: int) -> None:
        """The LPs who stay hold at least the fair value per share they held before an LP
        entered (paying `paid_in`, getting `minted`) or left (negative both), at the spot
        prices and at the TWAPs alike."""
        for fair in fair_before:
            after = fair + paid_in
            # after / (supply + minted) ≥ fair / supply, cross-multiplied (no rounding).
            assert after * supply_before >= fair * (supply_before + minted)
        event("lp priced against itself")

    @rule(lp=st.integers(0, N_LPS - 1), share_bps=st.integers(1, 10_000), market=st.integers(0, 1),
          buy=st.booleans(), move_bps=st.integers(500, 6_000))  # fmt: skip
    def lp_leaves_right_after_a_spot_jump(self, lp, share_bps, market, buy, move_bps):
        """The reviewer's attack: a large trade moves a pool's spot, and an LP withdraws
        in the same block, before the TWAP follows."""
        self.move_spot(market, buy, move_bps)
        self.withdraw(lp, share_bps)

    @rule(amount=st.integers(1, 2_000 * USD))
    def fund_insurance(self, amount):
        self.perp.fund_insurance(amount, sender=self.w.donor)
        self.read_events()
        self.m.insurance += amount
        self.m.flows += amount

    # ── market and time ──────────────────────────────────────────────────────

    @rule(market=st.integers(0, 1), buy=st.booleans(), share_bps=st.integers(1, 4_000))
    def move_spot(self, market, buy, share_bps):
        """The market maker trades up to 40 % of a pool's reserve in one direction."""
        token = self.w.tokens[market]
        usdc_in = DEPTH * share_bps // m.BPS
        path = [self.usdc.address, token.address] if buy else [token.address, self.usdc.address]
        amount = usdc_in if buy else usdc_in * UNIT // PRICES[market]
        self.w.router.swap_exact_in(amount, 0, path, [FEE], self.w.maker, self.now() + 600, sender=self.w.maker)
        self.w.oracle.update(token.address)

    @rule(market=st.integers(0, 1), buy=st.booleans(), share_bps=st.integers(1_000, 6_000))
    def shock(self, market, buy, share_bps):
        """A large trade that lasts: the TWAP takes the new price a window later."""
        self.move_spot(market, buy, share_bps)
        self.time_travel(TWAP_WINDOW + PERIOD)

    @rule(seconds=st.integers(1, 4 * 3_600))
    def time_travel(self, seconds):
        boa.env.time_travel(seconds=seconds)
        for token in self.w.tokens:
            self.w.oracle.update(token.address)

    @rule(market=st.integers(0, 1))
    def accrue_funding(self, market):
        self.perp.accrue_funding(self.token(market))
        self.accrue(market)

    # ── roles acting against traders and LPs ─────────────────────────────────

    @rule(data=st.data(), market=st.integers(0, 1))
    def pauser_pauses_closes_still_work(self, data, market):
        """While paused nothing opens, and every exit still works (a close here; margin,
        liquidations and LP withdrawals elsewhere, and every position at teardown)."""
        self.perp.pause(sender=self.w.pauser)
        self.m.paused = True
        with boa.reverts("pausable: contract is paused"):
            self.perp.open_position(self.token(market), True, 1_000 * USD, 2_000 * USD, sender=self.w.traders[0])
        if self.m.positions:
            self.close(data.draw(st.sampled_from(self.open_ids())))
        self.perp.unpause(sender=self.w.pauser)
        self.m.paused = False

    @rule(market=st.integers(0, 1), k=st.sampled_from([0, m.MAX_FUNDING_K]))
    def admin_sets_funding(self, market, k):
        self.perp.set_funding_k(self.token(market), k, sender=self.w.admin)
        self.accrue(market)
        self.m.markets[market].params = replace(self.m.markets[market].params, funding_k=k)

    @rule(market=st.integers(0, 1), bps=st.sampled_from([500, 2_000, 10_000]))
    def admin_sets_depth_cap(self, market, bps):
        self.perp.set_depth_cap_bps(self.token(market), bps, sender=self.w.admin)

    @rule(market=st.integers(0, 1))
    def admin_closes_a_market_to_new_positions(self, market):
        token = self.token(market)
        self.perp.set_market_active(token, False, sender=self.w.admin)
        with boa.reverts("perp: market not active"):
            self.perp.open_position(token, False, 1_000 * USD, 2_000 * USD, sender=self.w.traders[1])
        self.perp.set_market_active(token, True, sender=self.w.admin)

    @rule(market=st.integers(0, 1), is_long=st.booleans())
    def keeper_refreshes_bounds(self, market, is_long):
        ids = [i for i, o in sorted(self.m.positions.items()) if o.market == market and o.position.is_long == is_long]
        self.perp.refresh_bounds(self.token(market), is_long, ids, sender=self.w.keeper)
        side, fresh = self.m.markets[market].sides[is_long], m.Side()
        for i in ids:
            m.add_to_side(fresh, is_long, self.m.positions[i].position)
        if ids:
            side.bankrupt_bound, side.cap_bound = fresh.bankrupt_bound, fresh.cap_bound
            side.index_high, side.index_low = fresh.index_high, fresh.index_low
        else:
            side.bankrupt_bound, side.cap_bound = (0, 2**256 - 1) if is_long else (2**256 - 1, 0)
            side.index_high, side.index_low = -(2**255), 2**255 - 1

    # ── invariants ───────────────────────────────────────────────────────────

    @invariant()
    def usdc_is_conserved(self):
        held = self.usdc.balanceOf(self.perp.address)
        assert held == self.perp.pool_amount() + self.perp.total_margin() + self.perp.insurance_fund()
        assert held == self.m.flows

    @invariant()
    def realised_pnl_and_fees_balance_to_zero(self):
        m_ = self.m
        expected = m_.ev_capital + m_.ev_fees - m_.ev_gains - m_.ev_bad_debt - m_.ev_bonus_insurance
        assert self.perp.pool_amount() + self.perp.insurance_fund() == expected

    @invariant()
    def storage_agrees_with_model(self):
        perp, m_ = self.perp, self.m
        assert (perp.pool_amount(), perp.insurance_fund(), perp.total_margin(), perp.total_reserved()) == (
            m_.pool, m_.insurance, m_.margin, m_.reserved,
        )  # fmt: skip
        assert perp.total_shares() == m_.total_shares
        assert all(perp.shares_of(a) == n for a, n in m_.shares.items())
        assert perp.position_count() == m_.count
        assert (
            perp.bad_debt_total(), perp.bad_debt_covered_by_insurance(), perp.bad_debt_absorbed_by_pool()
        ) == m_.bad_debt  # fmt: skip
        for i, mk in enumerate(m_.markets):
            got = perp.markets(self.token(i))
            assert (
                got.long_notional, got.short_notional, got.long_size, got.short_size, got.long_funding,
                got.short_funding, got.long_funding_basis, got.short_funding_basis, got.last_funding_time,
            ) == (
                mk.oi.long_notional, mk.oi.short_notional, mk.oi.long_size, mk.oi.short_size, mk.oi.long_funding,
                mk.oi.short_funding, mk.oi.long_funding_basis, mk.oi.short_funding_basis, mk.last,
            )  # fmt: skip

    @invariant()
    def sides_agree_with_model_and_bound_every_position(self):
        for i, mk in enumerate(self.m.markets):
            for is_long in (True, False):
                got = self.perp.sides(self.token(i), is_long)
                side = mk.sides[is_long]
                assert (got.margin, got.reserved, got.count) == (side.margin, side.reserved, side.count)
                assert (got.bankrupt_bound, got.cap_bound, got.index_high, got.index_low) == (
                    side.bankrupt_bound, side.cap_bound, side.index_high, side.index_low,
                )  # fmt: skip
        for o in self.m.positions.values():
            side, p = self.m.markets[o.market].sides[o.position.is_long], o.position
            bankrupt, cap = m.kinks(p.is_long, p.margin, p.notional, p.reserved, p.size)
            if p.is_long:
                assert bankrupt <= side.bankrupt_bound and cap >= side.cap_bound
            else:
                assert bankrupt >= side.bankrupt_bound and cap <= side.cap_bound
            assert side.index_low <= p.entry_funding <= side.index_high

    @invariant()
    def pool_covers_worst_case_liability(self):
        assert self.perp.pool_amount() >= self.perp.total_reserved()
        total, covered, absorbed = self.m.bad_debt
        assert total == covered + absorbed

    def teardown(self):
        for position_id, o in self.m.positions.items():
            got = self.perp.positions(position_id)
            assert (got.owner, got.margin, got.notional) == (o.owner, o.position.margin, o.position.notional)
        # With the pauser and the admin at their worst (paused, every market closed to new
        # positions), every position closes (or is liquidated) and every LP takes out what
        # the pool holds for it.
        self.perp.pause(sender=self.w.pauser)
        for i in range(len(self.m.markets)):
            self.perp.set_market_active(self.token(i), False, sender=self.w.admin)
        for position_id in self.open_ids():
            if not self.liquidate(position_id):
                self.close(position_id)
        assert self.perp.total_reserved() == 0 and self.perp.total_margin() == 0
        for lp in range(N_LPS):
            if self.m.shares.get(self.w.lps[lp], 0):
                self.withdraw(lp, 10_000)
        self.usdc_is_conserved()


TestPerpMachine = PerpMachine.TestCase
ci_share(TestPerpMachine, max_examples=12)  # 20 took 41-75 s of CI's budget
