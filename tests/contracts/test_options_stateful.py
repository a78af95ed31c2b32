"""Options against a plain-Python model, driven through titanoboa over a real DEX
(Pool blueprint, Factory, Router, Oracle).

Users create capped calls and puts on two tokens with short terms, write them,
offer and buy them (premiums), pass them around, unwind, and, once expired, settle,
claim and reclaim them, while an lp moves the pools' prices and a keeper updates
the Oracle as time passes (the model keeps its own record of the Oracle's ring).
Steps are drawn among the valid ones; failures are probed now and then (settling
twice, at expiry, with a wrong pair of observations; the same terms twice), since
test_options.py tries every revert and a revert is costly under titanoboa. An
attacker's rule replays the reviewer's attack on a live series: an Oracle update a
second before expiry, then a pump and another update a period later, before
anyone settles. After every step:

- collateral held ≥ the maximum payout of every open series: unsettled, a series
  holds collateral_per_unit × units written, which equals its units outstanding;
  settled, payout × units outstanding + (collateral − payout) × units written;
- USDC is conserved: Options holds exactly `total_collateral`, the sum of the
  series' collateral, and every user's USDC balance equals the model's;
- every balance of option units and every short position equals the model (for the
  series a step touched; all series and every offer at the end of a run).

A settlement price is checked against the model's own time-weighted average of the
pool's price (tracked from the trades), over the observations the contract used:
the span must end at or before expiry and last at least the window (so nothing
traded after expiry counts); a late settlement (the Oracle's ring no longer holds
the window) must equal the Oracle's TWAP then. At the end of every run, time runs
past every expiry and every series still open must settle and pay out in full: no
collateral is ever locked.
"""

from dataclasses import dataclass, field

import boa
from boa_dex import FEE, PERIOD, deploy_dex, seed_pools
from boa_partial import LazyPartial
from ci_share import ci_share
from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from promptex.protocol import options as helpers
from promptex.protocol.units import TOKEN_UNIT as UNIT
from promptex.protocol.units import USD_MICRO as USD

OPTIONS = LazyPartial("contracts/Options.vy")

WINDOW = 600
PRICES = (USD // 2, 2 * USD)  # USDC units per whole token
DEPTH = 500_000 * USD  # USDC a side of each pool
SIZE = 1_000 * UNIT  # tokens per option unit: collateral = spread / 10**15 USDC units
N_USERS = 3
USER_USDC = 10**7 * USD
MASK32 = 2**32 - 1


class World:
    """Deployed once, at import; titanoboa's pytest plugin runs every hypothesis example
    inside an anchor, so each starts from this state."""

    def __init__(self) -> None:
        self.admin = boa.env.generate_address("admin")
        self.lp = boa.env.generate_address("lp")
        self.keeper = boa.env.generate_address("keeper")
        self.users = [boa.env.generate_address(f"options user {i}") for i in range(N_USERS)]
        dex = deploy_dex(self.admin)
        self.usdc, self.tokens, self.router, self.oracle = dex.usdc, dex.tokens, dex.router, dex.oracle
        with boa.env.prank(self.admin):
            self.options = OPTIONS.deploy(self.usdc.address, self.oracle.address, WINDOW)
        seed_pools(dex, self.lp, PRICES, DEPTH, WINDOW)
        self.pools, first = dex.pools, dex.first_observed
        for user in self.users:
            self.usdc.mint(user, USER_USDC)
            self.usdc.approve(self.options.address, 2**256 - 1, sender=user)
        self.start = boa.env.evm.patch.timestamp
        self.observed = [self.start, first]  # the Oracle's observation times of each token, newest first

    def uq_price(self, i: int) -> int:
        """Pool i's price of its token in USDC, UQ112.112, as the pool accumulates it."""
        pool, token = self.pools[i], self.tokens[i]
        reserve0, reserve1, _ = pool.get_reserves()
        if pool.token0() == token.address:
            return (reserve1 << 112) // reserve0
        return (reserve0 << 112) // reserve1


WORLD = World()


@dataclass
class Series:
    terms: helpers.Terms
    token_index: int
    written: dict[str, int] = field(default_factory=dict)
    settled: bool = False
    payout: int = 0

    @property
    def collateral_per_unit(self) -> int:
        return self.terms.collateral_per_unit


@dataclass
class Offer:
    seller: str
    series: int
    units: int
    premium: int


@dataclass
class Model:
    series: dict[int, Series] = field(default_factory=dict)
    units: dict[tuple[int, str], int] = field(default_factory=dict)  # (series, holder) → units
    usdc: dict[str, int] = field(default_factory=dict)
    offers: dict[int, Offer] = field(default_factory=dict)
    # Per token: (time, UQ112.112 price from then on), the pool's price path.
    path: list[list[tuple[int, int]]] = field(default_factory=list)
    # Per token: the times of the observations the Oracle's ring holds, newest first.
    observed: list[list[int]] = field(default_factory=list)

    def held(self, series_id: int, holder: str) -> int:
        return self.units.get((series_id, holder), 0)

    def supply(self, series_id: int) -> int:
        return sum(n for (s, _), n in self.units.items() if s == series_id)

    def collateral(self, series_id: int) -> int:
        s = self.series[series_id]
        written = sum(s.written.values())
        if not s.settled:
            return s.collateral_per_unit * written
        return s.payout * self.supply(series_id) + (s.collateral_per_unit - s.payout) * written

    def twap(self, token: int, start: int, end: int) -> int:
        """The model's time-weighted UQ112.112 price of `token` over [start, end]."""
        total = 0
        points = self.path[token]
        for k, (t, price) in enumerate(points):
            t_next = points[k + 1][0] if k + 1 < len(points) else end
            lo, hi = max(t, start), min(t_next, end)
            if hi > lo:
                total += price * (hi - lo)
        return total // (end - start)


users = st.integers(0, N_USERS - 1)
units = st.integers(1, 20)


class OptionsMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.w = WORLD
        self.options, self.usdc, self.oracle = WORLD.options, WORLD.usdc, WORLD.oracle
        self.m = Model(
            usdc={u: USER_USDC for u in WORLD.users},
            path=[[(WORLD.start - 10 * WINDOW, WORLD.uq_price(i))] for i in range(2)],
            observed=[list(WORLD.observed) for _ in range(2)],
        )
        self.touched: set[int] = set()  # series a step may have changed

    def update_oracle(self) -> None:
        """The keeper asks for an observation of both tokens; the model records it
        when a period has passed since the last one."""
        for index, token in enumerate(self.w.tokens):
            recorded = self.oracle.update(token.address, sender=self.w.keeper)
            observed = self.m.observed[index]
            assert recorded == (self.now() - observed[0] >= PERIOD)
            if recorded:
                observed.insert(0, self.now())
                del observed[helpers.ORACLE_CARDINALITY :]

    def now(self) -> int:
        return boa.env.evm.patch.timestamp

    def series_ids(self) -> list[int]:
        return sorted(self.m.series)

    def pick(self, data: st.DataObject, choices: list[int], label: str) -> int:
        return data.draw(st.sampled_from(choices), label=label)

    # ── series and writers ───────────────────────────────────────────────────

    @initialize(
        strikes=st.tuples(st.integers(5, 15), st.integers(5, 15)),
        terms=st.tuples(st.sampled_from([1, 300, 900]), st.sampled_from([1, 300, 900])),
        n=st.tuples(units, units),
        premium=st.integers(0, 100 * USD),
    )
    def two_written_series(self, strikes, terms, n, premium):
        """A capped call on token 0 written by user 0 and a put on token 1 written by
        user 1, each offering what it wrote."""
        for token, kind in ((0, helpers.CALL), (1, helpers.PUT)):
            series_id = self.new_series(token, kind, strikes[token], 5, terms[token], token)
            self.write_units(series_id, token, n[token])
            self.options.offer(series_id, n[token], premium, sender=self.w.users[token])
            self.m.offers[len(self.m.offers) + 1] = Offer(self.w.users[token], series_id, n[token], premium)

    @rule(
        token=st.integers(0, 1),
        kind=st.sampled_from([helpers.CALL, helpers.PUT]),
        strike_pct=st.integers(5, 15),
        width_pct=st.sampled_from([1, 2, 5, 20]),
        term=st.sampled_from([1, 300, 900, 1_800]),
        user=users,
    )
    def create_series(self, token, kind, strike_pct, width_pct, term, user):
        self.new_series(token, kind, strike_pct, width_pct, term, user)

    def new_series(self, token, kind, strike_pct, width_pct, term, user):
        price = PRICES[token] * 10**18  # Oracle units of the initial price
        strike = price * strike_pct // 10
        width = price * width_pct // 10
        bound = strike + width if kind == helpers.CALL else max(0, strike - width)
        terms = helpers.Terms(self.w.tokens[token].address, kind, strike, bound, self.now() + term, SIZE)
        if terms.id in self.m.series:
            with boa.reverts("options: series exists"):
                self.options.create_series(*terms.args(), sender=self.w.users[user])
            return terms.id
        self.options.create_series(*terms.args(), sender=self.w.users[user])
        self.m.series[terms.id] = Series(terms, token)
        self.touched.add(terms.id)
        return terms.id

    def live(self) -> list[int]:
        """Series not yet expired."""
        return [i for i in self.series_ids() if self.now() < self.m.series[i].terms.expiry]

    @rule(data=st.data(), user=users, n=units)
    def write(self, data, user, n):
        live = self.live()
        if live:
            self.write_units(self.pick(data, live, "series"), user, n)

    def write_units(self, series_id, user, n):
        self.touched.add(series_id)
        s, who = self.m.series[series_id], self.w.users[user]
        self.options.write(series_id, n, sender=who)
        s.written[who] = s.written.get(who, 0) + n
        self.m.units[(series_id, who)] = self.m.held(series_id, who) + n
        self.m.usdc[who] -= n * s.collateral_per_unit

    @rule(data=st.data(), n=units)
    def unwind(self, data, n):
        closable = [
            (i, who, min(s.written.get(who, 0), self.m.held(i, who)))
            for i, s in self.m.series.items()
            for who in self.w.users
            if not s.settled and min(s.written.get(who, 0), self.m.held(i, who)) > 0
        ]
        if not closable:
            return
        series_id, who, most = data.draw(st.sampled_from(closable), label="position")
        n = min(n, most)
        self.touched.add(series_id)
        self.options.unwind(series_id, n, sender=who)
        self.m.series[series_id].written[who] -= n
        self.m.units[(series_id, who)] -= n
        self.m.usdc[who] += n * self.m.series[series_id].collateral_per_unit

    @rule(data=st.data(), recipient=users, n=units)
    def transfer(self, data, recipient, n):
        held = sorted((i, who) for (i, who), k in self.m.units.items() if k > 0)
        if not held:
            return
        series_id, sender = data.draw(st.sampled_from(held), label="holding")
        n, to = min(n, self.m.held(series_id, sender)), self.w.users[recipient]
        self.touched.add(series_id)
        self.options.safeTransferFrom(sender, to, series_id, n, b"", sender=sender)
        self.m.units[(series_id, sender)] -= n
        self.m.units[(series_id, to)] = self.m.held(series_id, to) + n

    # ── premium ──────────────────────────────────────────────────────────────

    @rule(data=st.data(), user=users, n=units, premium=st.integers(0, 300 * USD))
    def offer(self, data, user, n, premium):
        live = self.live()
        if not live:
            return
        series_id, who = self.pick(data, live, "series"), self.w.users[user]
        self.options.offer(series_id, n, premium, sender=who)
        self.m.offers[len(self.m.offers) + 1] = Offer(who, series_id, n, premium)

    @rule(data=st.data(), user=users, n=units)
    def buy(self, data, user, n):
        who = self.w.users[user]
        fillable = [
            offer_id
            for offer_id, o in sorted(self.m.offers.items())
            if o.units and o.seller != who and self.m.held(o.series, o.seller)
            and self.now() < self.m.series[o.series].terms.expiry
        ]  # fmt: skip
        if not fillable:
            return
        offer_id = self.pick(data, fillable, "offer")
        o = self.m.offers[offer_id]
        n = min(n, o.units, self.m.held(o.series, o.seller))
        self.touched.add(o.series)
        self.options.buy(offer_id, n, sender=who)
        o.units -= n
        self.m.units[(o.series, o.seller)] -= n
        self.m.units[(o.series, who)] = self.m.held(o.series, who) + n
        self.m.usdc[who] -= n * o.premium
        self.m.usdc[o.seller] += n * o.premium
        event("bought")

    @rule(data=st.data())
    def cancel_offer(self, data):
        open_offers = [offer_id for offer_id, o in sorted(self.m.offers.items()) if o.units]
        if open_offers:
            offer_id = self.pick(data, open_offers, "offer")
            self.options.cancel_offer(offer_id, sender=self.m.offers[offer_id].seller)
            self.m.offers[offer_id].units = 0

    # ── market and time ──────────────────────────────────────────────────────

    @rule(token=st.integers(0, 1), up=st.booleans(), pct=st.integers(1, 40))
    def trade(self, token, up, pct):
        """The lp moves a pool's price; from now on the pool accumulates the new price."""
        tok, deadline = self.w.tokens[token], self.now() + 600
        if up:
            self.w.router.swap_exact_in(DEPTH * pct // 100, 0, [self.usdc.address, tok.address], [FEE], self.w.lp,
                                        deadline, sender=self.w.lp)  # fmt: skip
        else:
            amount = DEPTH * UNIT // PRICES[token] * pct // 100
            self.w.router.swap_exact_in(amount, 0, [tok.address, self.usdc.address], [FEE], self.w.lp, deadline,
                                        sender=self.w.lp)  # fmt: skip
        path = self.m.path[token]
        if path[-1][0] == self.now():
            path.pop()  # the pool accumulates the block's last price from the next second on
        path.append((self.now(), self.w.uq_price(token)))

    @rule(seconds=st.sampled_from([60, 120, 300, 601]))
    def tick(self, seconds):
        """Time passes; the keeper records an observation of both tokens."""
        boa.env.time_travel(seconds=seconds)
        self.update_oracle()

    # ── settlement ───────────────────────────────────────────────────────────

    @rule(data=st.data(), pump_pct=st.integers(10, 40))
    def attacker_updates_just_before_expiry_then_pumps(self, data, pump_pct):
        """The reviewer's attack on a live series: the Oracle's last observation a
        second before expiry (so the next is refused for a period), a pump from the
        expiry second on, and the pumped observation a period later."""
        live = [i for i in self.live() if self.m.series[i].terms.expiry - 1 > self.now()]
        if not live:
            return
        s = self.m.series[self.pick(data, live, "series")]
        boa.env.time_travel(seconds=s.terms.expiry - 1 - self.now())
        self.update_oracle()
        boa.env.time_travel(seconds=1)
        self.trade(s.token_index, True, pump_pct)
        boa.env.time_travel(seconds=PERIOD)
        self.update_oracle()
        event("attack: update before expiry, pump after")

    @precondition(lambda self: self.m.series)
    @rule(data=st.data(), wait=st.booleans(), late=st.integers(1, 120), probe=st.booleans())
    def settle(self, data, wait, late, probe):
        """Settle a series; with `wait`, first let time run `late` seconds past its
        expiry, the keeper recording an observation then (if a period has passed)."""
        series_id = self.pick(data, self.series_ids(), "series")
        s = self.m.series[series_id]
        if wait and self.now() < s.terms.expiry + late:
            boa.env.time_travel(seconds=s.terms.expiry + late - self.now())
            self.update_oracle()
        now = self.now()
        self.touched.add(series_id)
        # Failures are probed now and then (a revert is costly under titanoboa: it
        # dumps the contract's storage); test_options.py tries each of them.
        if s.settled:
            if probe:
                with boa.reverts("options: series settled"):
                    self.options.settle(series_id, 1, 0, sender=self.w.keeper)
            return
        if now <= s.terms.expiry:
            if probe:
                with boa.reverts("options: not expired"):
                    self.options.settle(series_id, 1, 0, sender=self.w.keeper)
            return
        self.settle_series(series_id, probe)

    def settle_series(self, series_id: int, probe: bool) -> None:
        s, now = self.m.series[series_id], self.now()
        times = self.m.observed[s.token_index]
        # The rule, applied to the model's own record of the ring.
        start, end = helpers.settlement_ranks([(t & MASK32, 0) for t in times], now, s.terms.expiry, WINDOW)
        assert tuple(self.options.settlement_ranks(series_id)) == (start, end)
        late = helpers.is_late((start, end), len(times))
        if end > 0 and end < len(times) and probe:  # a wrong pair is refused
            with boa.reverts("options: bad end rank"):
                self.options.settle(series_id, start, end - 1, sender=self.w.keeper)
        if late:
            twap = self.oracle.consult(s.terms.token, WINDOW)  # same block as the settlement
        self.options.settle(series_id, start, end, sender=self.w.keeper)

        price = self.options.series(series_id).settlement_price
        if late:
            assert price == twap
            since = next(t for t in times if now - t >= WINDOW)  # consult's span starts there
            expected = helpers.uq_to_price(self.m.twap(s.token_index, since, now))
            event("settled late")
        else:
            t_start, t_end = times[start], times[end]
            assert t_end <= s.terms.expiry and t_start <= t_end - WINDOW  # nothing after expiry counts
            expected = helpers.uq_to_price(self.m.twap(s.token_index, t_start, t_end))
            (time_end, c_end), (time_start, c_start) = (self.oracle.observation(s.terms.token, r) for r in (end, start))
            assert (time_end, time_start) == (t_end & MASK32, t_start & MASK32)
            assert price == helpers.uq_to_price(((c_end - c_start) % 2**256) // (t_end - t_start))
        assert abs(price - expected) <= expected // 10**9 + 10**12
        s.settled, s.payout = True, s.terms.payout_per_unit(price)
        assert self.options.series(series_id).payout_per_unit == s.payout <= s.collateral_per_unit
        event("settled " + ("in full" if s.payout == s.collateral_per_unit else "partly" if s.payout else "worthless"))

    @rule(data=st.data())
    def claim(self, data):
        claimable = sorted((i, who) for (i, who), k in self.m.units.items() if k > 0 and self.m.series[i].settled)
        if not claimable:
            return
        series_id, who = data.draw(st.sampled_from(claimable), label="holding")
        held, s = self.m.held(series_id, who), self.m.series[series_id]
        self.touched.add(series_id)
        self.options.claim(series_id, sender=who)
        self.m.units[(series_id, who)] = 0
        self.m.usdc[who] += held * s.payout
        event("claimed")

    @rule(data=st.data())
    def reclaim(self, data):
        shorts = sorted((i, who) for i, s in self.m.series.items() if s.settled for who, k in s.written.items() if k)
        if not shorts:
            return
        series_id, who = data.draw(st.sampled_from(shorts), label="short")
        s = self.m.series[series_id]
        written = s.written[who]
        self.touched.add(series_id)
        self.options.reclaim(series_id, sender=who)
        s.written[who] = 0
        self.m.usdc[who] += written * (s.collateral_per_unit - s.payout)
        event("reclaimed")

    # ── invariants ───────────────────────────────────────────────────────────

    def check_series(self, series_id: int) -> None:
        """The contract's view of a series equals the model's, and covers its maximum payout."""
        s = self.m.series[series_id]
        held = self.options.collateral(series_id)
        assert held == self.m.collateral(series_id)
        outstanding = self.options.total_supply(series_id)
        assert outstanding == self.m.supply(series_id)
        assert held >= outstanding * (s.payout if s.settled else s.collateral_per_unit)
        if not s.settled:
            assert outstanding == sum(s.written.values())  # every unit outstanding is backed in full
        users = self.w.users
        balances = self.options.balanceOfBatch(users, [series_id] * len(users))
        assert list(balances) == [self.m.held(series_id, user) for user in users]
        for user in users:
            assert self.options.written(series_id, user) == s.written.get(user, 0)

    @invariant()
    def collateral_covers_the_maximum_payout_of_every_series(self):
        # The series this step touched are compared with the contract in full. The
        # others cannot have changed unseen (the total below would break); teardown
        # compares them all.
        for series_id in self.touched:
            self.check_series(series_id)
        self.touched.clear()
        total = 0
        for series_id, s in self.m.series.items():
            held = self.m.collateral(series_id)
            assert held >= self.m.supply(series_id) * (s.payout if s.settled else s.collateral_per_unit)
            total += held
        assert self.options.total_collateral() == total == self.usdc.balanceOf(self.options.address)

    @invariant()
    def usdc_conserved(self):
        for user in self.w.users:
            assert self.usdc.balanceOf(user) == self.m.usdc[user]
        assert sum(self.m.usdc.values()) + self.options.total_collateral() == N_USERS * USER_USDC

    def teardown(self):
        for series_id in self.m.series:
            self.check_series(series_id)
        assert self.options.offer_count() == len(self.m.offers)
        for offer_id, o in self.m.offers.items():
            assert self.options.offers(offer_id).units == o.units
        self.every_series_settles_and_pays_out()

    def every_series_settles_and_pays_out(self) -> None:
        """Collateral is never locked: once every series has expired, each open one
        settles (late where its ring no longer holds the window, which the settle rule
        reaches in most runs), every holder claims, every writer reclaims, and Options
        holds nothing."""
        if not self.m.series:
            return
        last = max(s.terms.expiry for s in self.m.series.values())
        if self.now() <= last:
            boa.env.time_travel(seconds=last + 1 - self.now())
        self.update_oracle()
        for series_id, s in sorted(self.m.series.items()):
            if not s.settled:
                self.settle_series(series_id, probe=False)
        for (series_id, who), held in sorted(self.m.units.items()):
            if held:
                self.options.claim(series_id, sender=who)
                self.m.usdc[who] += held * self.m.series[series_id].payout
                self.m.units[(series_id, who)] = 0
        for series_id, s in sorted(self.m.series.items()):
            for who, written in sorted(s.written.items()):
                if written:
                    self.options.reclaim(series_id, sender=who)
                    self.m.usdc[who] += written * (s.collateral_per_unit - s.payout)
                    s.written[who] = 0
        assert self.options.total_collateral() == 0 == self.usdc.balanceOf(self.options.address)
        for user in self.w.users:
            assert self.usdc.balanceOf(user) == self.m.usdc[user]


TestOptionsMachine = OptionsMachine.TestCase
ci_share(TestOptionsMachine, max_examples=12)
