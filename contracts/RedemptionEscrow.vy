# pragma version ~=0.4.3
"""
@title RedemptionEscrow
@license MIT
@notice Turns a user's provider tokens (CLD, GPT, …) back into credits on the
        user's own provider account, without trusting an agent with a wallet.

        1. The user links a provider account (`link_account`) and grants an
           agent a scope (`set_grant`): which tokens it may sell, how many of
           each per UTC day, the most slippage against the Oracle's TWAP, an
           expiry, and the payee (the agent operator) to reimburse. The user
           approves token allowances to THIS contract, never to the agent.
        2. The agent calls `redeem`: exactly the tokens needed are pulled from
           the user's wallet and sold through the Router for an exact amount of
           USDC, which this contract holds as one redemption (user, payee,
           provider, linked account, USDC due, deadline).
        3. The operator buys that many USD of credits on the user's linked
           account from its own funds; the provider's billing API signs an
           EIP-712 `Receipt`. Anyone submits it to `release`: the USDC goes to
           the payee recorded at redemption, and nowhere else.
        4. Without a release by `deadline`, the user (only) calls `refund`.

@dev Design choices.

     Grants live here, not in a separate AgentRegistry: the contract that
     pulls the tokens is the one that checks the scope, so there is no
     cross-contract trust edge to mis-wire (a registry read by the escrow would
     make the registry's address, upgrades and views part of every
     redemption's security), and the check costs storage reads, not calls.
     The views `grant`, `daily_limit`, `spent_today` expose the scope to others.

     What an agent can do: `redeem` for users that granted it, and nothing else.
       - It sells only path[0], a token in its current grant (never USDC: USDC
         cannot be granted), along a path that must end in USDC; the output
         always comes to this contract (no buying, no other recipient).
       - It pulls exactly the Router's input for `usdc_out`, so no token is
         ever left here (the contract checks it holds what it held before).
       - The credits go to the account the USER linked for that provider (the
         agent cannot name an account of its own), and the USDC to the payee
         the USER named in the grant.
       - Revocation (`revoke_grant`) and expiry stop it at once; a new
         `set_grant` replaces the whole scope (token limits are versioned, so
         a token left out of the new grant is no longer allowed).

     Day window: a calendar UTC day (block.timestamp // 86,400). The tokens
     actually sold (not the agent's maximum) count against the grant's daily
     limit per (user, agent, token); the count survives re-grants and
     revocations within the day. A calendar day is one storage slot and
     exact; its cost is that up to twice the limit can be sold across a
     midnight (a rolling window would need a history per user).

     Slippage: with p = Oracle.consult(token, twap_window) (USDC units per
     10**18 token units, 18-decimal fixed point, so x token units are worth
     x·p / 10**36 USDC) and s the grant's max_slippage_bps, a redemption that
     sells `tokens_in` for `usdc_out` must satisfy

         usdc_out ≥ tokens_in · p · (10,000 − s) / (10,000 · 10**36),
     i.e. tokens_in ≤ floor(usdc_out · 10**36 · 10,000 / (p · (10,000 − s))),

     rounded against the agent. It bounds the EFFECTIVE price (pool fees and
     price impact included) whatever path the agent chose, so a path through
     a pool the agent manipulated, or a sandwich, costs the user at most `s`
     against the TWAP. An untracked token, or one whose window is not yet
     covered, cannot be redeemed (the Oracle reverts): the check fails closed.

     Receipts: EIP-712 `Receipt(redemption_id, provider, account_ref,
     usd_micro, billing_ref)` in the domain ("PROMPTEX RedemptionEscrow",
     "1", chain id, this contract), signed by the billing signer the admin
     registered for that provider when `release` is called (rotation voids
     unsubmitted receipts of the old key, which is the point of rotating).
     usd_micro (USD micro-units, 1:1 with USDC units) must be at least the
     USDC held. Replays are refused by the redemption's status, not by the
     signature bytes, so EIP-2098 malleability is harmless. `billing_ref` is
     the provider's own receipt id, logged for reconciliation.

     Timeout: a release is accepted while the redemption is open, even after
     its deadline (a valid receipt proves the credits were delivered); a
     refund only after the deadline, by the user. Whichever comes first wins.

     Identifiers: a provider is a bytes32 id (its name, e.g. "anthropic",
     left-aligned); an account reference is a bytes32 the user, the agent and
     the provider agree on (a salted hash of the provider's account id, so
     the chain does not reveal it).

     Money: USDC held is kept in `total_held` (internal accounting, never
     balanceOf(self)): the contract holds exactly the sum of open
     redemptions. Amounts of USDC fit in 96 bits.

     Roles: admin (snekmate `ownable_2step`) registers billing signers and may
     pause new redemptions; release, refund and every user call stay open.

     Storage, one slot each (uint40 fields are seconds, days or counters):
       - _grants[user][agent]: payee (0..159) | expiry (160..199) |
         max_slippage_bps (200..215) | version (216..255);
       - _limits[user][agent][token]: daily limit (0..215) | version (216..255);
       - _spent[user][agent][token]: sold that day (0..215) | day (216..255);
       - _records[id]: head = user (0..159) | deadline (160..223) |
         status (224..231); funds = payee (0..159) | usdc (160..255);
         account_hash = keccak256(abi_encode(provider, account_ref)).
     Three slots, not four: `release` takes the provider and account
     reference (they are receipt fields anyway, and `Redeemed` logs them) and
     checks them against the hash, which saves a fresh slot (~22k gas) per
     redemption.
"""

from ethereum.ercs import IERC20
from snekmate.auth import ownable
from snekmate.auth import ownable_2step
from snekmate.utils import ecdsa
from snekmate.utils import eip712_domain_separator as eip712
from snekmate.utils import pausable

from .interfaces import IOracle

initializes: ownable
initializes: ownable_2step[ownable := ownable]
initializes: pausable
initializes: eip712

exports: (
    ownable_2step.owner,
    ownable_2step.pending_owner,
    ownable_2step.transfer_ownership,
    ownable_2step.accept_ownership,
    pausable.paused,
    eip712.eip712Domain,
)


# ─── Interfaces ──────────────────────────────────────────────────────────────

interface IRouter:
    def quote_token() -> address: view
    def get_amounts_in(
        amount_out: uint256, path: DynArray[address, MAX_HOPS + 1], fees: DynArray[uint256, MAX_HOPS]
    ) -> DynArray[uint256, MAX_HOPS + 1]: view
    def swap_exact_out(
        amount_out: uint256,
        max_in: uint256,
        path: DynArray[address, MAX_HOPS + 1],
        fees: DynArray[uint256, MAX_HOPS],
        to: address,
        deadline: uint256,
    ) -> uint256: nonpayable



# ─── Constants ───────────────────────────────────────────────────────────────

# @notice Longest swap path: five tokens, four hops (Router.MAX_HOPS).
MAX_HOPS: public(constant(uint256)) = 4
# @notice Most tokens one grant names.
MAX_GRANT_TOKENS: public(constant(uint256)) = 8
# @notice Slippage is in parts of this many.
BPS: public(constant(uint256)) = 10_000
# @notice Highest slippage a grant may allow (50 %).
MAX_SLIPPAGE_BPS: public(constant(uint256)) = 5_000
# @notice Length of the daily limit's window: a UTC calendar day.
DAY: public(constant(uint256)) = 86_400
# @notice Bounds of the refund delay (seconds from redemption to refundability).
MIN_REFUND_DELAY: public(constant(uint256)) = 3_600
MAX_REFUND_DELAY: public(constant(uint256)) = 30 * 86_400
# @notice Longest TWAP window (Oracle.MAX_WINDOW).
MAX_TWAP_WINDOW: public(constant(uint256)) = 2**31
# @notice Largest daily limit (216 bits) and USDC amount (96 bits) of a redemption.
MAX_DAILY_LIMIT: public(constant(uint256)) = 2**216 - 1
MAX_USDC: public(constant(uint256)) = 2**96 - 1
# @notice Largest grant expiry (unix seconds, 40 bits).
MAX_EXPIRY: public(constant(uint256)) = 2**40 - 1

STATUS_NONE: public(constant(uint8)) = 0
STATUS_OPEN: public(constant(uint8)) = 1
STATUS_RELEASED: public(constant(uint8)) = 2
STATUS_REFUNDED: public(constant(uint8)) = 3

# @notice EIP-712 type of a provider billing API's receipt for credits bought.
RECEIPT_TYPEHASH: public(constant(bytes32)) = keccak256(
    "Receipt(uint256 redemption_id,bytes32 provider,bytes32 account_ref,uint256 usd_micro,bytes32 billing_ref)"
)

_ADDRESS_MASK: constant(uint256) = 2**160 - 1
_MASK40: constant(uint256) = 2**40 - 1
_MASK64: constant(uint256) = 2**64 - 1
_MASK16: constant(uint256) = 2**16 - 1
_EXPIRY_SHIFT: constant(uint256) = 160
_SLIPPAGE_SHIFT: constant(uint256) = 200
_VERSION_SHIFT: constant(uint256) = 216  # also the day's shift in _spent
_AMOUNT_MASK: constant(uint256) = 2**216 - 1
_DEADLINE_SHIFT: constant(uint256) = 160
_STATUS_SHIFT: constant(uint256) = 224
_USDC_SHIFT: constant(uint256) = 160
# @dev 10**36 = 10**18 token units per price × 10**18 fixed point (Oracle.consult).
_PRICE_SCALE: constant(uint256) = 10**36


# ─── Immutables and storage ──────────────────────────────────────────────────

# @notice The asset redemptions are held and paid in.
usdc: public(immutable(address))
# @notice The DEX router tokens are sold through.
router: public(immutable(address))
# @notice The Oracle whose TWAP bounds slippage.
oracle: public(immutable(address))
# @notice Seconds of the TWAP that slippage is measured against.
twap_window: public(immutable(uint256))
# @notice Seconds from a redemption until its user may refund it.
refund_delay: public(immutable(uint256))


struct _Record:
    head: uint256
    funds: uint256
    account_hash: bytes32


# @notice One redemption, as `redemptions(id)` returns it.
struct Redemption:
    user: address
    payee: address
    account_hash: bytes32
    usdc: uint256
    deadline: uint256
    status: uint8


# @notice provider → the key that signs its billing API's receipts (zero: none).
billing_signer: public(HashMap[bytes32, address])
# @notice user → provider → the user's linked account reference (zero: none).
linked_account: public(HashMap[address, HashMap[bytes32, bytes32]])
# @notice Redemptions made so far; ids run 1 .. redemption_count.
redemption_count: public(uint256)
# @notice USDC held for open redemptions (the contract holds exactly this).
total_held: public(uint256)

_grants: HashMap[address, HashMap[address, uint256]]
_limits: HashMap[address, HashMap[address, HashMap[address, uint256]]]
_spent: HashMap[address, HashMap[address, HashMap[address, uint256]]]
_records: HashMap[uint256, _Record]


# ─── Events ──────────────────────────────────────────────────────────────────

event GrantSet:
    user: indexed(address)
    agent: indexed(address)
    payee: indexed(address)
    expiry: uint256
    max_slippage_bps: uint256
    version: uint256
    tokens: DynArray[address, MAX_GRANT_TOKENS]
    daily_limits: DynArray[uint256, MAX_GRANT_TOKENS]

event GrantRevoked:
    user: indexed(address)
    agent: indexed(address)
    version: uint256

event AccountLinked:
    user: indexed(address)
    provider: indexed(bytes32)
    account_ref: bytes32

event Redeemed:
    redemption_id: indexed(uint256)
    user: indexed(address)
    agent: indexed(address)
    token: address
    tokens_in: uint256
    usdc: uint256
    payee: address
    provider: bytes32
    account_ref: bytes32
    deadline: uint256

event Released:
    redemption_id: indexed(uint256)
    payee: indexed(address)
    provider: indexed(bytes32)
    usdc: uint256
    usd_micro: uint256
    billing_ref: bytes32

event Refunded:
    redemption_id: indexed(uint256)
    user: indexed(address)
    usdc: uint256

event BillingSignerSet:
    provider: indexed(bytes32)
    old_signer: indexed(address)
    new_signer: indexed(address)


@deploy
def __init__(usdc_: address, router_: address, oracle_: address, twap_window_: uint256, refund_delay_: uint256):
    """
    @notice Deploys the escrow; the deployer becomes the admin.
    @param usdc_ USDC: the Router's and the Oracle's quote asset.
    @param router_ The DEX Router.
    @param oracle_ The Oracle.
    @param twap_window_ Seconds of TWAP for slippage checks: at least the
           Oracle's period, at most MAX_TWAP_WINDOW (30 minutes on a live chain).
    @param refund_delay_ Seconds from a redemption until its user may refund
           it: MIN_REFUND_DELAY .. MAX_REFUND_DELAY.
    """
    assert usdc_ != empty(address), "redemption: zero address"
    assert router_.is_contract and oracle_.is_contract, "redemption: router or oracle has no code"
    assert staticcall IRouter(router_).quote_token() == usdc_, "redemption: router does not quote usdc"
    assert staticcall IOracle(oracle_).quote_token() == usdc_, "redemption: oracle does not quote usdc"
    assert twap_window_ >= staticcall IOracle(oracle_).period(), "redemption: twap window below oracle period"
    assert twap_window_ <= MAX_TWAP_WINDOW, "redemption: twap window too long"
    assert refund_delay_ >= MIN_REFUND_DELAY and refund_delay_ <= MAX_REFUND_DELAY, "redemption: refund delay out of range"
    ownable.__init__()
    ownable_2step.__init__()
    pausable.__init__()
    eip712.__init__("PROMPTEX RedemptionEscrow", "1")
    usdc = usdc_
    router = router_
    oracle = oracle_
    twap_window = twap_window_
    refund_delay = refund_delay_


# ─── Users: grants and linked accounts ───────────────────────────────────────


@external
def set_grant(
    agent: address,
    payee: address,
    expiry: uint256,
    max_slippage_bps: uint256,
    tokens: DynArray[address, MAX_GRANT_TOKENS],
    daily_limits: DynArray[uint256, MAX_GRANT_TOKENS],
) -> uint256:
    """
    @notice Grants `agent` the right to sell the caller's `tokens` into
            redemptions, reimbursing `payee`; replaces any earlier grant to
            that agent as a whole.
    @dev The caller must also approve this contract (not the agent) for each
         token. Tokens sold earlier the same day still count against the new
         limits.
    @param agent The agent's address.
    @param payee The agent operator's address that releases pay.
    @param expiry Unix time after which the grant is void; in the future.
    @param max_slippage_bps Most the effective price may fall below the TWAP,
           in parts of 10,000 (pool fees included); at most MAX_SLIPPAGE_BPS.
    @param tokens Distinct tokens the agent may sell; never USDC.
    @param daily_limits Most token units of each sold per UTC day; non-zero.
    @return uint256 The grant's version.
    """
    assert agent != empty(address) and payee != empty(address), "redemption: zero address"
    assert expiry > block.timestamp, "redemption: expiry in the past"
    assert expiry <= MAX_EXPIRY, "redemption: expiry too far"
    assert max_slippage_bps <= MAX_SLIPPAGE_BPS, "redemption: slippage above maximum"
    assert len(tokens) != 0, "redemption: no tokens"
    assert len(tokens) == len(daily_limits), "redemption: one limit per token"
    # Versions count grants to one agent; 2**40 of them cannot fit in any chain's gas.
    version: uint256 = (self._grants[msg.sender][agent] >> _VERSION_SHIFT) + 1
    for i: uint256 in range(len(tokens), bound=MAX_GRANT_TOKENS):
        token: address = tokens[i]
        limit: uint256 = daily_limits[i]
        assert token != empty(address) and token != usdc, "redemption: token cannot be granted"
        assert limit != 0 and limit <= MAX_DAILY_LIMIT, "redemption: daily limit out of range"
        # A slot already at this version was written by this loop: a repeated token.
        assert self._limits[msg.sender][agent][token] >> _VERSION_SHIFT != version, "redemption: token repeated"
        self._limits[msg.sender][agent][token] = (version << _VERSION_SHIFT) | limit
    self._grants[msg.sender][agent] = (
        convert(convert(payee, uint160), uint256)
        | (expiry << _EXPIRY_SHIFT)
        | (max_slippage_bps << _SLIPPAGE_SHIFT)
        | (version << _VERSION_SHIFT)
    )
    log GrantSet(
        user=msg.sender,
        agent=agent,
        payee=payee,
        expiry=expiry,
        max_slippage_bps=max_slippage_bps,
        version=version,
        tokens=tokens,
        daily_limits=daily_limits,
    )
    return version


@external
def revoke_grant(agent: address):
    """
    @notice Revokes the caller's grant to `agent`, effective at once.
    @dev Open redemptions are unaffected: they release to the payee recorded
         at redemption with a valid receipt, or refund after their deadline.
    @param agent The agent.
    """
    word: uint256 = self._grants[msg.sender][agent]
    assert word & _ADDRESS_MASK != 0, "redemption: no grant"
    version: uint256 = word >> _VERSION_SHIFT
    self._grants[msg.sender][agent] = version << _VERSION_SHIFT
    log GrantRevoked(user=msg.sender, agent=agent, version=version)


@external
def link_account(provider: bytes32, account_ref: bytes32):
    """
    @notice Links the caller's account at `provider`: redemptions for that
            provider buy credits on this account only.
    @dev Open redemptions keep the account they were made for.
    @param provider The provider id (its name, left-aligned, e.g. "anthropic").
    @param account_ref The account reference; zero unlinks.
    """
    assert provider != empty(bytes32), "redemption: zero provider"
    self.linked_account[msg.sender][provider] = account_ref
    log AccountLinked(user=msg.sender, provider=provider, account_ref=account_ref)


# ─── Agents: redeem ──────────────────────────────────────────────────────────


@external
@nonreentrant
def redeem(
    user: address,
    usdc_out: uint256,
    max_tokens_in: uint256,
    path: DynArray[address, MAX_HOPS + 1],
    fees: DynArray[uint256, MAX_HOPS],
    provider: bytes32,
    swap_deadline: uint256,
) -> uint256:
    """
    @notice Sells `user`'s path[0] tokens for exactly `usdc_out` USDC, held
            for a purchase of that many USD of credits on the user's account
            linked for `provider`.
    @dev Caller: an agent with a live grant from `user` naming path[0]. Pulls
         exactly the Router's input from the user's wallet (allowance to this
         contract), which must be at most `max_tokens_in`, within the grant's
         slippage against the TWAP and within what is left of today's limit.
         Stopped by pause.
    @param user The token holder.
    @param usdc_out USDC units to raise (= USD micro-units of credits due);
           1 .. MAX_USDC.
    @param max_tokens_in Most path[0] units to sell.
    @param path Tokens, path[0] the granted token sold, the last USDC.
    @param fees Fee tier of each hop's pool.
    @param provider A provider with a registered billing signer.
    @param swap_deadline Latest block timestamp for the swap.
    @return uint256 The redemption id.
    """
    pausable._require_not_paused()
    assert usdc_out != 0 and usdc_out <= MAX_USDC, "redemption: usdc amount out of range"
    assert len(path) >= 2, "redemption: path too short"
    assert path[len(path) - 1] == usdc, "redemption: path must end in usdc"
    token: address = path[0]

    # The grant: live, naming the token.
    grant: uint256 = self._grants[user][msg.sender]
    payee: address = convert(convert(grant & _ADDRESS_MASK, uint160), address)
    assert payee != empty(address), "redemption: no grant"
    assert block.timestamp <= (grant >> _EXPIRY_SHIFT) & _MASK40, "redemption: grant expired"
    limit: uint256 = self._limits[user][msg.sender][token]
    assert limit >> _VERSION_SHIFT == grant >> _VERSION_SHIFT, "redemption: token not granted"
    limit &= _AMOUNT_MASK

    account_ref: bytes32 = self.linked_account[user][provider]
    assert account_ref != empty(bytes32), "redemption: account not linked"
    assert self.billing_signer[provider] != empty(address), "redemption: unknown provider"

    # The price: what the swap will take, bounded three ways.
    tokens_in: uint256 = (staticcall IRouter(router).get_amounts_in(usdc_out, path, fees))[0]
    assert tokens_in <= max_tokens_in, "redemption: input above maximum"
    slippage: uint256 = (grant >> _SLIPPAGE_SHIFT) & _MASK16
    assert tokens_in <= self._slippage_limit(token, usdc_out, slippage), "redemption: slippage beyond grant"
    sold: uint256 = self._spent_today(user, msg.sender, token) + tokens_in
    assert sold <= limit, "redemption: daily limit exceeded"

    # Effects.
    self._spent[user][msg.sender][token] = ((block.timestamp // DAY) << _VERSION_SHIFT) | sold
    redemption_id: uint256 = self.redemption_count + 1
    self.redemption_count = redemption_id
    deadline: uint256 = block.timestamp + refund_delay
    self._records[redemption_id] = _Record(
        head=convert(convert(user, uint160), uint256)
        | (deadline << _DEADLINE_SHIFT)
        | (convert(STATUS_OPEN, uint256) << _STATUS_SHIFT),
        funds=convert(convert(payee, uint160), uint256) | (usdc_out << _USDC_SHIFT),
        account_hash=keccak256(abi_encode(provider, account_ref)),
    )
    self.total_held += usdc_out

    # Interactions: user → here → router → pools → USDC here. Nothing stays behind.
    held: uint256 = staticcall IERC20(token).balanceOf(self)
    usdc_held: uint256 = staticcall IERC20(usdc).balanceOf(self)
    assert extcall IERC20(token).transferFrom(user, self, tokens_in, default_return_value=True), "redemption: transfer failed"
    assert staticcall IERC20(token).balanceOf(self) == held + tokens_in, "redemption: fee-on-transfer token"
    assert extcall IERC20(token).approve(router, tokens_in, default_return_value=True), "redemption: approve failed"
    paid: uint256 = extcall IRouter(router).swap_exact_out(usdc_out, tokens_in, path, fees, self, swap_deadline)
    assert paid == tokens_in and staticcall IERC20(token).balanceOf(self) == held, "redemption: swap took a different amount"
    assert staticcall IERC20(usdc).balanceOf(self) == usdc_held + usdc_out, "redemption: swap paid a different amount"

    log Redeemed(
        redemption_id=redemption_id,
        user=user,
        agent=msg.sender,
        token=token,
        tokens_in=tokens_in,
        usdc=usdc_out,
        payee=payee,
        provider=provider,
        account_ref=account_ref,
        deadline=deadline,
    )
    return redemption_id


# ─── Release and refund ──────────────────────────────────────────────────────


@external
@nonreentrant
def release(
    redemption_id: uint256,
    provider: bytes32,
    account_ref: bytes32,
    usd_micro: uint256,
    billing_ref: bytes32,
    signature: Bytes[65],
):
    """
    @notice Pays an open redemption's USDC to its payee against the
            provider's receipt for credits bought on the linked account.
    @dev Anyone may submit it: the money can only go to the payee. Never paused.
    @param redemption_id The redemption.
    @param provider The redemption's provider (as logged in `Redeemed`).
    @param account_ref The redemption's account reference (as logged in `Redeemed`).
    @param usd_micro USD micro-units of credits the receipt states; at least
           the USDC held.
    @param billing_ref The provider's receipt id.
    @param signature The billing signer's 65-byte signature of the EIP-712
           Receipt(redemption_id, provider, account_ref, usd_micro, billing_ref).
    """
    record: _Record = self._records[redemption_id]
    assert self._status(record.head) == STATUS_OPEN, "redemption: not open"
    assert keccak256(abi_encode(provider, account_ref)) == record.account_hash, "redemption: provider or account mismatch"
    signer: address = self.billing_signer[provider]
    assert signer != empty(address), "redemption: no billing signer"
    amount: uint256 = record.funds >> _USDC_SHIFT
    assert usd_micro >= amount, "redemption: receipt below amount due"
    digest: bytes32 = self._receipt_digest(redemption_id, provider, account_ref, usd_micro, billing_ref)
    assert ecdsa._recover_sig(digest, signature) == signer, "redemption: receipt not signed by billing signer"

    payee: address = convert(convert(record.funds & _ADDRESS_MASK, uint160), address)
    self._records[redemption_id].head = self._closed(record.head, STATUS_RELEASED)
    self.total_held -= amount
    assert extcall IERC20(usdc).transfer(payee, amount, default_return_value=True), "redemption: transfer failed"
    log Released(
        redemption_id=redemption_id,
        payee=payee,
        provider=provider,
        usdc=amount,
        usd_micro=usd_micro,
        billing_ref=billing_ref,
    )


@external
@nonreentrant
def refund(redemption_id: uint256):
    """
    @notice Returns an unreleased redemption's USDC to its user once its
            deadline has passed.
    @dev The user only. Never paused.
    @param redemption_id The redemption.
    """
    record: _Record = self._records[redemption_id]
    assert self._status(record.head) == STATUS_OPEN, "redemption: not open"
    user: address = convert(convert(record.head & _ADDRESS_MASK, uint160), address)
    assert msg.sender == user, "redemption: caller is not the user"
    assert block.timestamp > (record.head >> _DEADLINE_SHIFT) & _MASK64, "redemption: deadline not reached"

    amount: uint256 = record.funds >> _USDC_SHIFT
    self._records[redemption_id].head = self._closed(record.head, STATUS_REFUNDED)
    self.total_held -= amount
    assert extcall IERC20(usdc).transfer(user, amount, default_return_value=True), "redemption: transfer failed"
    log Refunded(redemption_id=redemption_id, user=user, usdc=amount)


# ─── Admin ───────────────────────────────────────────────────────────────────


@external
def set_billing_signer(provider: bytes32, signer: address):
    """
    @notice Registers or rotates the key that signs `provider`'s receipts.
    @dev Admin only. The zero address removes it: no release and no new
         redemption for that provider until one is set (users refund).
    @param provider The provider id.
    @param signer The billing signer.
    """
    ownable._check_owner()
    assert provider != empty(bytes32), "redemption: zero provider"
    log BillingSignerSet(provider=provider, old_signer=self.billing_signer[provider], new_signer=signer)
    self.billing_signer[provider] = signer


@external
def pause():
    """
    @notice Stops new redemptions; releases, refunds and grants keep working.
    @dev Admin only.
    """
    ownable._check_owner()
    pausable._pause()


@external
def unpause():
    """
    @notice Lifts the pause.
    @dev Admin only.
    """
    ownable._check_owner()
    pausable._unpause()


# ─── Views ───────────────────────────────────────────────────────────────────


@external
@view
def grant(user: address, agent: address) -> (address, uint256, uint256, uint256):
    """
    @notice `user`'s grant to `agent` (zeros but the version once revoked).
    @param user The user.
    @param agent The agent.
    @return address The payee.
    @return uint256 The expiry (unix seconds).
    @return uint256 The maximum slippage (bps).
    @return uint256 The version (counts grants and survives revocation).
    """
    word: uint256 = self._grants[user][agent]
    return (
        convert(convert(word & _ADDRESS_MASK, uint160), address),
        (word >> _EXPIRY_SHIFT) & _MASK40,
        (word >> _SLIPPAGE_SHIFT) & _MASK16,
        word >> _VERSION_SHIFT,
    )


@external
@view
def daily_limit(user: address, agent: address, token: address) -> uint256:
    """
    @notice Token units of `token` that `agent` may sell per day for `user`.
    @param user The user.
    @param agent The agent.
    @param token The token.
    @return uint256 The limit; 0 when no live grant names the token.
    """
    grant: uint256 = self._grants[user][agent]
    limit: uint256 = self._limits[user][agent][token]
    if grant & _ADDRESS_MASK == 0 or limit >> _VERSION_SHIFT != grant >> _VERSION_SHIFT:
        return 0
    return limit & _AMOUNT_MASK


@external
@view
def spent_today(user: address, agent: address, token: address) -> uint256:
    """
    @notice Token units of `token` that `agent` sold for `user` this UTC day.
    @param user The user.
    @param agent The agent.
    @param token The token.
    @return uint256 The amount.
    """
    return self._spent_today(user, agent, token)


@external
@view
def slippage_limit(token: address, usdc_out: uint256, max_slippage_bps: uint256) -> uint256:
    """
    @notice Most `token` units that may be sold for `usdc_out` at a slippage
            of `max_slippage_bps` against the TWAP (see the contract @dev).
    @param token A token the Oracle tracks.
    @param usdc_out USDC units.
    @param max_slippage_bps At most MAX_SLIPPAGE_BPS.
    @return uint256 Token units, rounded down.
    """
    assert max_slippage_bps <= MAX_SLIPPAGE_BPS, "redemption: slippage above maximum"
    return self._slippage_limit(token, usdc_out, max_slippage_bps)


@external
@view
def redemptions(redemption_id: uint256) -> Redemption:
    """
    @notice One redemption (all zeros if it does not exist).
    @param redemption_id The id.
    @return Redemption user, payee, account_hash (keccak256(abi_encode(provider,
            account_ref))), usdc, deadline, status.
    """
    record: _Record = self._records[redemption_id]
    return Redemption(
        user=convert(convert(record.head & _ADDRESS_MASK, uint160), address),
        payee=convert(convert(record.funds & _ADDRESS_MASK, uint160), address),
        account_hash=record.account_hash,
        usdc=record.funds >> _USDC_SHIFT,
        deadline=(record.head >> _DEADLINE_SHIFT) & _MASK64,
        status=self._status(record.head),
    )


@external
@view
def receipt_digest(
    redemption_id: uint256, provider: bytes32, account_ref: bytes32, usd_micro: uint256, billing_ref: bytes32
) -> bytes32:
    """
    @notice The EIP-712 digest a billing signer signs for a receipt.
    @param redemption_id The redemption.
    @param provider The provider id.
    @param account_ref The linked account reference.
    @param usd_micro USD micro-units of credits bought.
    @param billing_ref The provider's receipt id.
    @return bytes32 The digest.
    """
    return self._receipt_digest(redemption_id, provider, account_ref, usd_micro, billing_ref)


@external
@view
def DOMAIN_SEPARATOR() -> bytes32:
    """
    @notice The EIP-712 domain separator (name, version, chain id, this contract).
    @return bytes32 The separator.
    """
    return eip712._domain_separator_v4()


# ─── Internals ───────────────────────────────────────────────────────────────


@internal
@view
def _slippage_limit(token: address, usdc_out: uint256, slippage_bps: uint256) -> uint256:
    price: uint256 = staticcall IOracle(oracle).consult(token, twap_window)
    assert price != 0, "redemption: no oracle price"
    return usdc_out * _PRICE_SCALE * BPS // (price * (BPS - slippage_bps))


@internal
@view
def _spent_today(user: address, agent: address, token: address) -> uint256:
    word: uint256 = self._spent[user][agent][token]
    if word >> _VERSION_SHIFT != block.timestamp // DAY:
        return 0
    return word & _AMOUNT_MASK


@internal
@view
def _receipt_digest(
    redemption_id: uint256, provider: bytes32, account_ref: bytes32, usd_micro: uint256, billing_ref: bytes32
) -> bytes32:
    return eip712._hash_typed_data_v4(
        keccak256(abi_encode(RECEIPT_TYPEHASH, redemption_id, provider, account_ref, usd_micro, billing_ref))
    )


@internal
@pure
def _status(head: uint256) -> uint8:
    return convert((head >> _STATUS_SHIFT) & 255, uint8)


@internal
@pure
def _closed(head: uint256, status: uint8) -> uint256:
    return (head & ~(255 << _STATUS_SHIFT)) | (convert(status, uint256) << _STATUS_SHIFT)
