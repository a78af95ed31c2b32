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
           the user's wallet and sold in the Oracle's pool for the token for
           an exact amount of USDC, which this contract holds as one
           redemption (user, payee, the token's provider, the account the
           user linked there, USDC due, deadline).
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
       - It sells only a token in its current grant (never USDC: USDC cannot
         be granted), in ONE pool: the token/USDC pool the Oracle prices it
         by (no path, no pool of the agent's choosing); the USDC always comes
         to this contract (no buying, no other recipient).
       - Exactly the pool's input for `usdc_out` goes from the user's wallet
         straight into that pool (the contract checks the pool received it).
       - Each token stands for one provider (`token_provider`, registered
         once by the admin: CLD → anthropic): the credits are bought from
         THAT provider, on the account the USER linked there (the agent can
         name neither the provider nor an account), and the USDC goes to the
         payee the USER named in the grant.
       - Revocation (`revoke_grant`) and expiry stop it at once; a new
         `set_grant` replaces the whole scope (token limits are versioned, so
         a token left out of the new grant is no longer allowed).

     Day window: a calendar UTC day (block.timestamp // 86,400). The tokens
     actually sold (not the agent's maximum) count against the grant's daily
     limit per (user, agent, token); the count survives re-grants and
     revocations within the day. A calendar day is one storage slot and
     exact; its cost is that up to twice the limit can be sold across a
     midnight (a rolling window would need a history per user).

     The price: two bounds, both on the input the pool takes. With
     p = Oracle.consult(token, twap_window) (USDC units per 10**18 token
     units, 18-decimal fixed point, so x token units are worth x·p / 10**36
     USDC):

       1. The honest price (the protocol's, not the agent's to loosen): the
          input is at most what the trade would take at TWAP-consistent
          reserves — the pool's own k = x·y, at the ratio p:
              y' = √k · √p / 10**18 (USDC), x' = √k · 10**18 / √p (token),
              honest = x' · usdc_out · D / ((y' − usdc_out) · (D − fee)) + 1
          (the TWAP amount, the pool's fee and the trade's own impact) —
          plus IMPACT_TOLERANCE_BPS (0.5 %). So a spot price pushed away from
          the TWAP in the same transaction (a sandwich) gains its author less
          than 0.5 % of the trade, and pays the pool's fee twice to get it.
       2. The user's grant: with s its max_slippage_bps,
              tokens_in ≤ floor(usdc_out · 10**36 · 10,000 / (p · (10,000 − s))),
          a cap on the user's loss against the TWAP, fees and impact included
          (a redemption larger than the pool can take at that cost fails).
     The slippage allowance limits the user's loss; it is not the agent's to
     take. Both round against the agent. An untracked token, or one whose
     window is not yet covered, cannot be redeemed (the Oracle reverts): the
     check fails closed. Limit: k is read when the trade runs, so an LP
     who removes liquidity just before makes the trade's own impact larger
     (the user's grant still caps it).

     Receipts: EIP-712 `Receipt(redemption_id, sale, provider, account_ref,
     usd_micro, billing_ref)` in the domain ("PROMPTEX RedemptionEscrow",
     "1", chain id, this contract), signed by a billing signer registered for
     that provider when `release` is called and added no later than the
     sale (`add_billing_signer`, through the timelock;
     `revoke_billing_signer` is immediate and voids unsubmitted receipts of
     that key, which is the point of revoking). Rotation: add the new key;
     the old one signs the sales made before the new one was added, and is
     revoked once they are closed (at most MAX_REFUND_DELAY later).
     Why a key's age: a user sees an added key coming (the Timelock's
     delay), but the agent keeps selling meanwhile, and a sale made in the
     delay's last MAX_REFUND_DELAY could not be refunded before the key went
     live: a key the admin added (whoever holds the payee) would release it
     with no credits bought. A key never releases a sale older than itself,
     so a user has the whole delay to revoke the grant (rbreak4 s14).
     usd_micro (USD micro-units, 1:1 with USDC units) must be at least the
     USDC held. Replays are refused by the redemption's status, not by the
     signature bytes, so EIP-2098 malleability is harmless. `billing_ref` is
     the provider's own receipt id, logged for reconciliation.

     A receipt names the sale, not only its id: `sale` =
     keccak256(abi_encode(agent, sale_ref)), where `agent` is the caller of
     `redeem` and `sale_ref` a bytes32 it gives each sale, unique on every
     branch (the agent passes fresh random bits per redeem signed; not its
     nonce: a reorg can give a released sale's nonce to another redeem of
     the same user, and a receipt is public once its release is sent). An
     id alone is not one sale: after a reorg the same id can
     hold another sale (another agent key of the same user, not ordered
     behind ours), and a release's bytes still held by a node would pay
     that sale out with our receipt. The record keeps the sale in its hash,
     so a receipt for sale A reverts ("redemption: sale, provider or
     account mismatch") on a sale B under A's id; another agent cannot name our sale
     (its address is in the hash). Uniqueness of `sale_ref` among one
     agent's sales is the agent's to keep (not checked: a slot per sale).

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

     Roles: admin (snekmate `ownable_2step`; the Timelock after deploy)
     registers tokens' providers (once per token) and billing signers, and
     grants pausers; revoking a billing signer or a pauser is a separate
     function (the Timelock's guardian calls it at once). A pauser may pause
     and unpause new redemptions only; release, refund and every user call
     stay open. MAX_REFUND_DELAY (3 days) is shorter than the Timelock's
     delay, and a billing signer never releases a sale made before it was
     added, so a user sees any change coming before an open redemption of
     theirs could be affected.

     Storage, one slot each (uint40 fields are seconds, days or counters):
       - _grants[user][agent]: payee (0..159) | expiry (160..199) |
         max_slippage_bps (200..215) | version (216..255);
       - _limits[user][agent][token]: daily limit (0..215) | version (216..255);
       - _spent[user][agent][token]: sold that day (0..215) | day (216..255);
       - _records[id]: head = user (0..159) | deadline (160..223) |
         status (224..231); funds = payee (0..159) | usdc (160..255);
         sale_hash = keccak256(abi_encode(provider, account_ref, sale)).
     Three slots, not four: `release` takes the provider, account reference
     and sale (they are receipt fields anyway, and `Redeemed` logs them) and
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
from .interfaces import IPool

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

# ─── Constants ───────────────────────────────────────────────────────────────

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
MAX_REFUND_DELAY: public(constant(uint256)) = 3 * 86_400
# @notice Most a redemption's input may exceed the honest input at TWAP-consistent
#         reserves (0.5 %, see the contract @dev).
IMPACT_TOLERANCE_BPS: public(constant(uint256)) = 50
# @notice Fees are parts of this many (Pool.FEE_DENOMINATOR).
FEE_DENOMINATOR: public(constant(uint256)) = 10_000
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
    "Receipt(uint256 redemption_id,bytes32 sale,bytes32 provider,bytes32 account_ref,uint256 usd_micro,bytes32 billing_ref)"
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
# @notice The Oracle whose TWAP bounds slippage.
oracle: public(immutable(address))
# @notice Seconds of the TWAP that slippage is measured against.
twap_window: public(immutable(uint256))
# @notice Seconds from a redemption until its user may refund it.
refund_delay: public(immutable(uint256))


struct _Record:
    head: uint256
    funds: uint256
    sale_hash: bytes32


# @notice One redemption, as `redemptions(id)` returns it.
struct Redemption:
    user: address
    payee: address
    sale_hash: bytes32
    usdc: uint256
    deadline: uint256
    status: uint8


# @notice token → the provider whose credits it stands for (zero: not redeemable).
token_provider: public(HashMap[address, bytes32])
# @notice provider → key → when it was added as that provider's billing signer
#         (0: it is not one); it signs receipts for sales made since then.
billing_signer_since: public(HashMap[bytes32, HashMap[address, uint256]])
# @notice provider → how many billing signers it has (zero: no redemption for it).
billing_signer_count: public(HashMap[bytes32, uint256])
# @notice account → whether it may pause and unpause new redemptions.
is_pauser: public(HashMap[address, bool])
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
    sale: bytes32

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

event TokenRegistered:
    token: indexed(address)
    provider: indexed(bytes32)

event BillingSignerAdded:
    provider: indexed(bytes32)
    signer: indexed(address)

event BillingSignerRevoked:
    provider: indexed(bytes32)
    signer: indexed(address)

event PauserGranted:
    account: indexed(address)

event PauserRevoked:
    account: indexed(address)


@deploy
def __init__(usdc_: address, oracle_: address, twap_window_: uint256, refund_delay_: uint256):
    """
    @notice Deploys the escrow; the deployer becomes the admin.
    @param usdc_ USDC: the Oracle's quote asset.
    @param oracle_ The Oracle (its pools are where tokens are sold).
    @param twap_window_ Seconds of TWAP for slippage checks: at least the
           Oracle's period, at most MAX_TWAP_WINDOW (30 minutes on a live chain).
    @param refund_delay_ Seconds from a redemption until its user may refund
           it: MIN_REFUND_DELAY .. MAX_REFUND_DELAY.
    """
    assert usdc_ != empty(address), "redemption: zero address"
    assert oracle_.is_contract, "redemption: oracle has no code"
    assert staticcall IOracle(oracle_).quote_token() == usdc_, "redemption: oracle does not quote usdc"
    assert twap_window_ >= staticcall IOracle(oracle_).period(), "redemption: twap window below oracle period"
    assert twap_window_ <= MAX_TWAP_WINDOW, "redemption: twap window too long"
    assert refund_delay_ >= MIN_REFUND_DELAY and refund_delay_ <= MAX_REFUND_DELAY, "redemption: refund delay out of range"
    ownable.__init__()
    ownable_2step.__init__()
    pausable.__init__()
    eip712.__init__("PROMPTEX RedemptionEscrow", "1")
    usdc = usdc_
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
    user: address, token: address, usdc_out: uint256, max_tokens_in: uint256, swap_deadline: uint256, sale_ref: bytes32
) -> uint256:
    """
    @notice Sells `user`'s `token` for exactly `usdc_out` USDC in the Oracle's
            pool for it, held for a purchase of that many USD of credits from
            the token's provider, on the account the user linked there.
    @dev Caller: an agent with a live grant from `user` naming `token`. The
         pool's exact input goes from the user's wallet (allowance to this
         contract) into the pool; it must be at most `max_tokens_in`, within
         the honest price's tolerance and the grant's slippage (see the
         contract @dev) and within what is left of today's limit. Stopped by
         pause.
    @param user The token holder.
    @param token A provider token in the grant, registered with its provider.
    @param usdc_out USDC units to raise (= USD micro-units of credits due);
           1 .. MAX_USDC.
    @param max_tokens_in Most `token` units to sell.
    @param swap_deadline Latest block timestamp for the sale.
    @param sale_ref The agent's id for this sale, unique among its sales on
           every branch (random bits, not a nonce); receipts name
           keccak256(abi_encode(agent, sale_ref)), logged as `sale`.
    @return uint256 The redemption id.
    """
    pausable._require_not_paused()
    assert block.timestamp <= swap_deadline, "redemption: deadline passed"
    assert usdc_out != 0 and usdc_out <= MAX_USDC, "redemption: usdc amount out of range"

    # The grant: live, naming the token.
    grant: uint256 = self._grants[user][msg.sender]
    payee: address = convert(convert(grant & _ADDRESS_MASK, uint160), address)
    assert payee != empty(address), "redemption: no grant"
    assert block.timestamp <= (grant >> _EXPIRY_SHIFT) & _MASK40, "redemption: grant expired"
    limit: uint256 = self._limits[user][msg.sender][token]
    assert limit >> _VERSION_SHIFT == grant >> _VERSION_SHIFT, "redemption: token not granted"
    limit &= _AMOUNT_MASK

    # The token's provider, and the user's account there.
    provider: bytes32 = self.token_provider[token]
    assert provider != empty(bytes32), "redemption: token has no provider"
    account_ref: bytes32 = self.linked_account[user][provider]
    assert account_ref != empty(bytes32), "redemption: account not linked"
    assert self.billing_signer_count[provider] != 0, "redemption: unknown provider"

    # The price: the pool's exact input, bounded by the honest price and the grant.
    price: uint256 = self._twap(token)  # reverts for a token without a TWAP: fails closed
    pool: address = staticcall IOracle(oracle).pool_of(token)
    token_is_0: bool = staticcall IPool(pool).token0() == token
    reserve_token: uint256 = 0
    reserve_usdc: uint256 = 0
    reserve_token, reserve_usdc = self._reserves(pool, token_is_0)
    fee: uint256 = staticcall IPool(pool).fee()
    tokens_in: uint256 = self._amount_in(usdc_out, reserve_token, reserve_usdc, fee)
    assert tokens_in <= max_tokens_in, "redemption: input above maximum"
    assert tokens_in <= self._honest_limit(usdc_out, reserve_token * reserve_usdc, price, fee), "redemption: price beyond twap tolerance"
    assert tokens_in <= self._slippage_limit(usdc_out, price, (grant >> _SLIPPAGE_SHIFT) & _MASK16), "redemption: slippage beyond grant"
    sold: uint256 = self._spent_today(user, msg.sender, token) + tokens_in
    assert sold <= limit, "redemption: daily limit exceeded"

    # Effects.
    self._spent[user][msg.sender][token] = ((block.timestamp // DAY) << _VERSION_SHIFT) | sold
    redemption_id: uint256 = self.redemption_count + 1
    self.redemption_count = redemption_id
    deadline: uint256 = block.timestamp + refund_delay
    sale: bytes32 = keccak256(abi_encode(msg.sender, sale_ref))
    self._records[redemption_id] = _Record(
        head=convert(convert(user, uint160), uint256)
        | (deadline << _DEADLINE_SHIFT)
        | (convert(STATUS_OPEN, uint256) << _STATUS_SHIFT),
        funds=convert(convert(payee, uint160), uint256) | (usdc_out << _USDC_SHIFT),
        sale_hash=keccak256(abi_encode(provider, account_ref, sale)),
    )
    self.total_held += usdc_out

    # Interactions: user → pool, pool → USDC here. Nothing else moves.
    pool_held: uint256 = staticcall IERC20(token).balanceOf(pool)
    usdc_held: uint256 = staticcall IERC20(usdc).balanceOf(self)
    assert extcall IERC20(token).transferFrom(user, pool, tokens_in, default_return_value=True), "redemption: transfer failed"
    assert staticcall IERC20(token).balanceOf(pool) == pool_held + tokens_in, "redemption: fee-on-transfer token"
    if token_is_0:
        extcall IPool(pool).swap(0, usdc_out, self)
    else:
        extcall IPool(pool).swap(usdc_out, 0, self)
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
        sale=sale,
    )
    return redemption_id


@external
@view
def quote(token: address, usdc_out: uint256) -> (uint256, uint256):
    """
    @notice What `redeem` would sell now for `usdc_out`, and the most the
            honest-price bound lets it sell (the grant's bound is
            `slippage_limit`).
    @param token A token the Oracle prices (its pool must hold more than usdc_out).
    @param usdc_out USDC units.
    @return uint256 The pool's exact input now.
    @return uint256 The honest input at TWAP-consistent reserves plus IMPACT_TOLERANCE_BPS.
    """
    pool: address = staticcall IOracle(oracle).pool_of(token)
    assert pool != empty(address), "redemption: token not priced"
    reserve_token: uint256 = 0
    reserve_usdc: uint256 = 0
    reserve_token, reserve_usdc = self._reserves(pool, staticcall IPool(pool).token0() == token)
    fee: uint256 = staticcall IPool(pool).fee()
    return (
        self._amount_in(usdc_out, reserve_token, reserve_usdc, fee),
        self._honest_limit(usdc_out, reserve_token * reserve_usdc, self._twap(token), fee),
    )


# ─── Release and refund ──────────────────────────────────────────────────────


@external
@nonreentrant
def release(
    redemption_id: uint256,
    sale: bytes32,
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
    @param sale The redemption's sale (as logged in `Redeemed`): a receipt for
           another sale under the same id (a reorg) is refused.
    @param provider The redemption's provider (as logged in `Redeemed`).
    @param account_ref The redemption's account reference (as logged in `Redeemed`).
    @param usd_micro USD micro-units of credits the receipt states; at least
           the USDC held.
    @param billing_ref The provider's receipt id.
    @param signature The billing signer's 65-byte signature of the EIP-712
           Receipt(redemption_id, sale, provider, account_ref, usd_micro, billing_ref).
    """
    record: _Record = self._records[redemption_id]
    assert self._status(record.head) == STATUS_OPEN, "redemption: not open"
    assert keccak256(abi_encode(provider, account_ref, sale)) == record.sale_hash, "redemption: sale, provider or account mismatch"
    amount: uint256 = record.funds >> _USDC_SHIFT
    assert usd_micro >= amount, "redemption: receipt below amount due"
    digest: bytes32 = self._receipt_digest(redemption_id, sale, provider, account_ref, usd_micro, billing_ref)
    signer: address = ecdsa._recover_sig(digest, signature)
    since: uint256 = self.billing_signer_since[provider][signer]
    assert signer != empty(address) and since != 0, "redemption: receipt not signed by billing signer"
    # A key added after the sale does not release it (the sale's time: its deadline less the delay).
    assert since <= ((record.head >> _DEADLINE_SHIFT) & _MASK64) - refund_delay, "redemption: billing signer newer than the sale"

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
def register_token(token: address, provider: bytes32):
    """
    @notice Records the provider whose credits `token` stands for; once per
            token, for good.
    @dev Admin only (the Timelock after deploy).
    @param token A provider token (not USDC).
    @param provider The provider id (e.g. "anthropic" for CLD).
    """
    ownable._check_owner()
    assert token != empty(address) and token != usdc, "redemption: bad token"
    assert provider != empty(bytes32), "redemption: zero provider"
    assert self.token_provider[token] == empty(bytes32), "redemption: token registered"
    self.token_provider[token] = provider
    log TokenRegistered(token=token, provider=provider)


@external
def add_billing_signer(provider: bytes32, signer: address):
    """
    @notice Trusts `signer` for `provider`'s billing receipts.
    @dev Admin only (the Timelock after deploy: delayed). Rotation: add the
         new key, then revoke the old one.
    @param provider The provider id.
    @param signer The billing signer.
    """
    ownable._check_owner()
    assert provider != empty(bytes32), "redemption: zero provider"
    assert signer != empty(address), "redemption: zero address"
    assert self.billing_signer_since[provider][signer] == 0, "redemption: signer already added"
    self.billing_signer_since[provider][signer] = block.timestamp
    self.billing_signer_count[provider] += 1
    log BillingSignerAdded(provider=provider, signer=signer)


@external
def revoke_billing_signer(provider: bytes32, signer: address):
    """
    @notice Stops trusting `signer` for `provider`: its unsubmitted receipts
            no longer release anything.
    @dev Admin only (the Timelock's guardian calls it at once). A provider
         left without signers takes no new redemption; its open ones refund.
    @param provider The provider id.
    @param signer A billing signer of it.
    """
    ownable._check_owner()
    assert self.billing_signer_since[provider][signer] != 0, "redemption: not a billing signer"
    self.billing_signer_since[provider][signer] = 0
    self.billing_signer_count[provider] -= 1
    log BillingSignerRevoked(provider=provider, signer=signer)


@external
def grant_pauser(account: address):
    """
    @notice Lets `account` pause and unpause new redemptions.
    @dev Admin only (the Timelock after deploy: delayed).
    @param account The pauser.
    """
    ownable._check_owner()
    assert account != empty(address), "redemption: zero address"
    self.is_pauser[account] = True
    log PauserGranted(account=account)


@external
def revoke_pauser(account: address):
    """
    @notice Takes the pauser role from `account`.
    @dev Admin only (the Timelock's guardian calls it at once).
    @param account A pauser.
    """
    ownable._check_owner()
    assert self.is_pauser[account], "redemption: not a pauser"
    self.is_pauser[account] = False
    log PauserRevoked(account=account)


@external
def pause():
    """
    @notice Stops new redemptions; releases, refunds and grants keep working.
    @dev A pauser only.
    """
    assert self.is_pauser[msg.sender], "redemption: caller is not a pauser"
    pausable._pause()


@external
def unpause():
    """
    @notice Lifts the pause.
    @dev A pauser, or the admin (if every pauser was revoked).
    """
    assert self.is_pauser[msg.sender] or msg.sender == ownable.owner, "redemption: caller is not a pauser"
    pausable._unpause()


# ─── Views ───────────────────────────────────────────────────────────────────


@external
@view
def is_billing_signer(provider: bytes32, signer: address) -> bool:
    """
    @notice Whether `signer` signs `provider`'s billing receipts (for sales made
            since `billing_signer_since`).
    @param provider The provider id.
    @param signer The key.
    @return bool True for a billing signer not revoked.
    """
    return self.billing_signer_since[provider][signer] != 0


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
    return self._slippage_limit(usdc_out, self._twap(token), max_slippage_bps)


@external
@view
def redemptions(redemption_id: uint256) -> Redemption:
    """
    @notice One redemption (all zeros if it does not exist).
    @param redemption_id The id.
    @return Redemption user, payee, sale_hash (keccak256(abi_encode(provider,
            account_ref, sale))), usdc, deadline, status.
    """
    record: _Record = self._records[redemption_id]
    return Redemption(
        user=convert(convert(record.head & _ADDRESS_MASK, uint160), address),
        payee=convert(convert(record.funds & _ADDRESS_MASK, uint160), address),
        sale_hash=record.sale_hash,
        usdc=record.funds >> _USDC_SHIFT,
        deadline=(record.head >> _DEADLINE_SHIFT) & _MASK64,
        status=self._status(record.head),
    )


@external
@view
def receipt_digest(
    redemption_id: uint256,
    sale: bytes32,
    provider: bytes32,
    account_ref: bytes32,
    usd_micro: uint256,
    billing_ref: bytes32,
) -> bytes32:
    """
    @notice The EIP-712 digest a billing signer signs for a receipt.
    @param redemption_id The redemption.
    @param sale The sale (keccak256(abi_encode(agent, sale_ref)), logged in `Redeemed`).
    @param provider The provider id.
    @param account_ref The linked account reference.
    @param usd_micro USD micro-units of credits bought.
    @param billing_ref The provider's receipt id.
    @return bytes32 The digest.
    """
    return self._receipt_digest(redemption_id, sale, provider, account_ref, usd_micro, billing_ref)


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
def _twap(token: address) -> uint256:
    price: uint256 = staticcall IOracle(oracle).consult(token, twap_window)
    assert price != 0, "redemption: no oracle price"
    return price


@internal
@pure
def _slippage_limit(usdc_out: uint256, price: uint256, slippage_bps: uint256) -> uint256:
    return usdc_out * _PRICE_SCALE * BPS // (price * (BPS - slippage_bps))


@internal
@view
def _reserves(pool: address, token_is_0: bool) -> (uint256, uint256):
    reserve0: uint256 = 0
    reserve1: uint256 = 0
    last: uint256 = 0
    reserve0, reserve1, last = staticcall IPool(pool).get_reserves()
    if token_is_0:
        return reserve0, reserve1
    return reserve1, reserve0


@internal
@pure
def _amount_in(usdc_out: uint256, reserve_token: uint256, reserve_usdc: uint256, fee: uint256) -> uint256:
    # The least input the pool accepts (Router.get_amount_in): rounded up.
    assert usdc_out < reserve_usdc, "redemption: pool too shallow"
    numerator: uint256 = reserve_token * usdc_out * FEE_DENOMINATOR
    denominator: uint256 = (reserve_usdc - usdc_out) * (FEE_DENOMINATOR - fee)
    return (numerator + denominator - 1) // denominator


@internal
@pure
def _honest_limit(usdc_out: uint256, k: uint256, price: uint256, fee: uint256) -> uint256:
    # The pool's k at the TWAP's ratio: y'/x' = price / 10**36, x'·y' = k.
    root_k: uint256 = isqrt(k)
    root_price: uint256 = isqrt(price)
    usdc_side: uint256 = root_k * root_price // 10**18
    token_side: uint256 = root_k * 10**18 // root_price
    assert usdc_out < usdc_side, "redemption: pool too shallow"
    honest: uint256 = self._amount_in(usdc_out, token_side, usdc_side, fee)
    return honest * (BPS + IMPACT_TOLERANCE_BPS) // BPS


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
    redemption_id: uint256,
    sale: bytes32,
    provider: bytes32,
    account_ref: bytes32,
    usd_micro: uint256,
    billing_ref: bytes32,
) -> bytes32:
    return eip712._hash_typed_data_v4(
        keccak256(abi_encode(RECEIPT_TYPEHASH, redemption_id, sale, provider, account_ref, usd_micro, billing_ref))
    )


@internal
@pure
def _status(head: uint256) -> uint8:
    return convert((head >> _STATUS_SHIFT) & 255, uint8)


@internal
@pure
def _closed(head: uint256, status: uint8) -> uint256:
    return (head & ~(255 << _STATUS_SHIFT)) | (convert(status, uint256) << _STATUS_SHIFT)
