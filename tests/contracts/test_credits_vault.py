"""CreditsVault through ape: every function, every revert, and the attacks the
issue names (signature replay across chains / vaults / nonces, settlement by a
non-coordinator, an exit racing settlement, reentrancy through a token).

The deployment is the real one (`deploy_all`): USDC withdrawable, provider
tokens spend-only, the vault the escrow's only drawer of lots and a burner of each
token. The attacks of issue 19 (uncovered debits, blocked exits, long pauses) are in
tests/contracts/test_vault_attacks.py.
"""

import ape
import pytest
from eth_abi import encode
from eth_utils import keccak

from promptex.protocol.permit import sign_permit
from promptex.protocol.units import TOKEN_UNIT as TOKEN
from promptex.protocol.units import USD_MICRO, ZERO_ADDRESS
from promptex.protocol.vault import (
    POLICY_SPEND_ONLY,
    POLICY_WITHDRAWABLE,
    UNLIMITED,
    pack_debit,
    pack_debits,
    pack_lot_amount,
    quantize_per_epoch,
    sign_release,
    sign_spend_cap,
)

ROOT = keccak(text="usage records")
USD = USD_MICRO
MAX_BALANCE = 2**96 - 1


# ─── helpers ─────────────────────────────────────────────────────────────────


@pytest.fixture
def signed_cap(vault, chain, usdc):
    """A SpendCap signed by `account`; overrides let a test break one field."""

    def _sign(account, per_epoch=100 * USD, total=1_000 * USD, expiry=None, nonce=None, asset=None, **domain):
        asset = usdc if asset is None else asset
        expiry = chain.pending_timestamp + 3_600 if expiry is None else expiry
        nonce = vault.cap_nonce(account, asset) if nonce is None else nonce
        signature = sign_spend_cap(
            account.private_key,
            chain_id=domain.get("chain_id", chain.chain_id),
            vault=domain.get("verifying", vault.address),
            account=account.address,
            asset=asset.address,
            per_epoch=per_epoch,
            total=total,
            expiry=expiry,
            nonce=nonce,
        )
        return (account, asset, per_epoch, total, expiry, nonce, signature)

    return _sign


@pytest.fixture
def release(vault, chain, usdc, coordinator):
    """A Release for `account` signed by `signer` (the coordinator by default)."""

    def _release(account, amount, asset=None, signer=None, nonce=None, expiry=None, **domain):
        asset = usdc if asset is None else asset
        signer = coordinator if signer is None else signer
        nonce = vault.release_nonce(account) if nonce is None else nonce
        expiry = chain.pending_timestamp + 600 if expiry is None else expiry
        signature = sign_release(
            signer.private_key,
            chain_id=domain.get("chain_id", chain.chain_id),
            vault=domain.get("verifying", vault.address),
            account=account.address,
            asset=asset.address,
            amount=amount,
            nonce=nonce,
            expiry=expiry,
        )
        return nonce, expiry, signature

    return _release


@pytest.fixture
def funded(fund, cap, buyer):
    """The buyer holds 1,000 USDC in the vault with a 100/epoch, 1,000 total cap."""
    fund(buyer, 1_000 * USD)
    cap(buyer, per_epoch=100 * USD, total=1_000 * USD)
    return buyer


@pytest.fixture
def settle_usdc(vault, usdc, coordinator, next_window):
    """Post the next USDC settlement paying `credit_lot` (at list price) everything but the fee."""

    def _settle(debits, credit_lot, fee=0, sender=None):
        next_window(usdc)
        words = pack_debits({a.address if hasattr(a, "address") else a: x for a, x in debits.items()})
        total = sum(debits.values())
        credits = [pack_lot_amount(credit_lot, total - fee)] if total - fee > 0 else []
        epoch = vault.last_epoch(usdc) + 1
        return vault.settle(epoch, usdc, words, credits, 0, fee, ROOT, sender=sender or coordinator)

    return _settle


@pytest.fixture
def exited(vault, usdc, fund, cap, chain):
    """`account` deposits `amount` USDC under a cap and leaves with it by a trustless exit."""

    def _exit(account, amount):
        fund(account, amount)
        cap(account)
        vault.request_exit(usdc, amount, sender=account)
        chain.pending_timestamp = vault.exit_unlocks_at(account, usdc)
        return vault.complete_exit(usdc, 0, False, sender=account)

    return _exit


@pytest.fixture
def reserve(vault, usdc, org):
    """Fund the USDC reserve with `amount` from `org`."""

    def _fund(amount):
        usdc.mint(org, amount, sender=org)
        usdc.approve(vault, amount, sender=org)
        vault.fund_reserve(usdc, amount, sender=org)

    return _fund


def logs(receipt, event):
    return list(receipt.decode_logs(event))


# ─── deployment and constructor ──────────────────────────────────────────────


def test_deploy__deploy_all__lists_assets_and_wires_roles(vault, usdc, cld, gpt, escrow, admin, coordinator):
    assert vault.asset_policy(usdc) == POLICY_WITHDRAWABLE
    assert vault.asset_policy(cld) == POLICY_SPEND_ONLY
    assert vault.asset_policy(gpt) == POLICY_SPEND_ONLY
    assert vault.epoch_length() == 10
    assert vault.thaw_period() == 20
    assert vault.MAX_PAUSE() == 20
    assert vault.owner() == admin
    assert vault.is_coordinator(admin) and vault.is_coordinator(coordinator)
    assert escrow.vault() == vault.address
    assert cld.is_burner(vault)
    assert vault.usdc() == usdc.address and vault.escrow() == escrow.address


@pytest.mark.parametrize(
    "args_index, value, reason",
    [
        (2, 0, "vault: epoch length out of range"),
        (2, 3_601, "vault: epoch length out of range"),
        (0, "0x" + "00" * 20, "vault: zero address"),
        (1, "0x" + "00" * 20, "vault: zero address"),
        (3, 0, "vault: max pause out of range"),
        (3, 86_401, "vault: max pause out of range"),
        (4, "0x" + "00" * 20, "vault: signed module is not a contract"),
    ],
)
def test_constructor__bad_argument__reverts(project, admin, usdc, escrow, vault, args_index, value, reason):
    args = [usdc.address, escrow.address, 600, 1_200, vault.signed_module()]
    args[args_index] = value
    with ape.reverts(reason):
        admin.deploy(project.CreditsVault, *args)


def test_domain_separator__eip712__binds_chain_and_vault(vault, chain):
    domain_type = keccak(text="EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")
    expected = keccak(
        encode(
            ["bytes32", "bytes32", "bytes32", "uint256", "address"],
            [domain_type, keccak(text="PROMPTEX CreditsVault"), keccak(text="1"), chain.chain_id, vault.address],
        )
    )
    assert vault.DOMAIN_SEPARATOR() == expected
    assert vault.eip712Domain()[3] == chain.chain_id


# ─── deposits ────────────────────────────────────────────────────────────────


def test_deposit__usdc__credits_balance_and_emits_deposited(vault, usdc, buyer):
    usdc.mint(buyer, 50 * USD, sender=buyer)
    usdc.approve(vault, 50 * USD, sender=buyer)
    receipt = vault.deposit(usdc, 50 * USD, sender=buyer)
    assert vault.balance_of(buyer, usdc) == 50 * USD
    assert usdc.balanceOf(vault) == 50 * USD
    [event] = logs(receipt, vault.Deposited)
    assert (event.account, event.payer, event.amount, event.balance) == (buyer, buyer, 50 * USD, 50 * USD)


def test_deposit__spend_only_token__credits_balance(vault, cld, seller, buyer, tokenized_lot):
    cld.transfer(buyer, 5 * TOKEN, sender=seller)
    cld.approve(vault, 5 * TOKEN, sender=buyer)
    vault.deposit(cld, 5 * TOKEN, sender=buyer)
    assert vault.balance_of(buyer, cld) == 5 * TOKEN


def test_deposit_for__org_admin__credits_the_org_account(vault, usdc, org, buyer):
    usdc.mint(org, 70 * USD, sender=org)
    usdc.approve(vault, 70 * USD, sender=org)
    vault.deposit_for(buyer, usdc, 70 * USD, sender=org)
    assert vault.balance_of(buyer, usdc) == 70 * USD
    assert vault.balance_of(org, usdc) == 0


def test_deposit_for__zero_account__reverts(vault, usdc, org):
    with ape.reverts("vault: zero address"):
        vault.deposit_for("0x" + "00" * 20, usdc, 1, sender=org)


def test_deposit__unlisted_asset__reverts(project, vault, buyer):
    token = buyer.deploy(project.FeeOnTransferToken)
    with ape.reverts("vault: asset not listed"):
        vault.deposit(token, 1, sender=buyer)


def test_deposit__zero_amount__reverts(vault, usdc, buyer):
    with ape.reverts("vault: zero amount"):
        vault.deposit(usdc, 0, sender=buyer)


def test_deposit__fee_on_transfer_token__reverts(project, vault, admin, buyer):
    token = admin.deploy(project.FeeOnTransferToken)
    vault.list_asset(token, POLICY_WITHDRAWABLE, sender=admin)
    token.mint(buyer, 1_000, sender=buyer)
    token.approve(vault, 1_000, sender=buyer)
    with ape.reverts("vault: fee-on-transfer token"):
        vault.deposit(token, 1_000, sender=buyer)


def test_deposit__without_allowance__reverts(vault, usdc, buyer):
    usdc.mint(buyer, 10, sender=buyer)
    with ape.reverts("erc20: insufficient allowance"):
        vault.deposit(usdc, 10, sender=buyer)


def test_deposit__paused__reverts(vault, usdc, buyer, pauser):
    vault.pause(sender=pauser)
    with ape.reverts("vault: paused"):
        vault.deposit(usdc, 1, sender=buyer)


def test_deposit__delisted_asset__reverts(vault, usdc, buyer, admin):
    vault.delist_asset(usdc, sender=admin)
    with ape.reverts("vault: asset not listed"):
        vault.deposit(usdc, 1, sender=buyer)


def test_deposit__above_balance_bound__reverts(vault, usdc, buyer, fund):
    fund(buyer, MAX_BALANCE)
    usdc.mint(buyer, 1, sender=buyer)
    usdc.approve(vault, 1, sender=buyer)
    with ape.reverts("vault: balance above bound"):
        vault.deposit(usdc, 1, sender=buyer)


def _permit(token, owner, spender, value, chain):
    deadline = chain.pending_timestamp + 3_600
    v, r, s = sign_permit(
        owner.private_key,
        token_name=token.name(),
        chain_id=chain.chain_id,
        token=token.address,
        owner=owner.address,
        spender=spender.address,
        value=value,
        nonce=token.nonces(owner),
        deadline=deadline,
    )
    return deadline, v, r, s


def test_deposit_with_permit__valid_permit__deposits_without_approve(vault, usdc, buyer, chain):
    usdc.mint(buyer, 30 * USD, sender=buyer)
    permit = _permit(usdc, buyer, vault, 30 * USD, chain)
    vault.deposit_with_permit(usdc, 30 * USD, *permit, sender=buyer)
    assert vault.balance_of(buyer, usdc) == 30 * USD


def test_deposit_with_permit__permit_front_run__still_deposits(vault, usdc, buyer, attacker, chain):
    usdc.mint(buyer, 30 * USD, sender=buyer)
    permit = _permit(usdc, buyer, vault, 30 * USD, chain)
    usdc.permit(buyer, vault, 30 * USD, *permit, sender=attacker)  # copied from the mempool
    vault.deposit_with_permit(usdc, 30 * USD, *permit, sender=buyer)
    assert vault.balance_of(buyer, usdc) == 30 * USD


def test_deposit_with_permit__bad_permit__reverts(vault, usdc, buyer, attacker, chain):
    usdc.mint(buyer, 30 * USD, sender=buyer)
    permit = _permit(usdc, attacker, vault, 30 * USD, chain)  # signed by someone else
    with ape.reverts("vault: permit failed"):
        vault.deposit_with_permit(usdc, 30 * USD, *permit, sender=buyer)


def test_deposit_with_permit__unlisted_asset__reverts(vault, buyer, attacker):
    with ape.reverts("vault: asset not listed"):
        vault.deposit_with_permit(attacker, 1, 0, 27, b"\x00" * 32, b"\x00" * 32, sender=buyer)


# ─── spend caps ──────────────────────────────────────────────────────────────


def test_register_spend_cap__coordinator_submits_user_signature__sets_cap(vault, usdc, buyer, coordinator, signed_cap):
    args = signed_cap(buyer, per_epoch=100 * USD, total=1_000 * USD)
    receipt = vault.register_spend_cap(*args, sender=coordinator)
    assert vault.spend_cap(buyer, usdc) == (quantize_per_epoch(100 * USD), 1_000 * USD, args[4])
    assert vault.cap_nonce(buyer, usdc) == 1
    [event] = logs(receipt, vault.SpendCapRegistered)
    assert (event.account, event.total, event.nonce) == (buyer, 1_000 * USD, 0)


def test_register_spend_cap__signed_by_another__reverts(vault, buyer, attacker, signed_cap):
    account, *rest = signed_cap(attacker)
    with ape.reverts("vault: bad cap signature"):
        vault.register_spend_cap(buyer, *rest, sender=attacker)


def test_register_spend_cap__replayed__reverts(vault, buyer, coordinator, signed_cap):
    args = signed_cap(buyer)
    vault.register_spend_cap(*args, sender=coordinator)
    with ape.reverts("vault: bad nonce"):
        vault.register_spend_cap(*args, sender=coordinator)


def test_register_spend_cap__other_chain__reverts(vault, buyer, coordinator, signed_cap, chain):
    with ape.reverts("vault: bad cap signature"):
        vault.register_spend_cap(*signed_cap(buyer, chain_id=chain.chain_id + 1), sender=coordinator)


def test_register_spend_cap__other_vault__reverts(project, vault, admin, usdc, escrow, buyer, coordinator, signed_cap):
    other = admin.deploy(project.CreditsVault, usdc, escrow, 10, 20, vault.signed_module())
    args = signed_cap(buyer, verifying=other.address)
    other.register_spend_cap(*args, sender=coordinator)  # valid where it was signed for
    with ape.reverts("vault: bad cap signature"):
        vault.register_spend_cap(*args, sender=coordinator)


def test_register_spend_cap__tampered_limit__reverts(vault, buyer, coordinator, signed_cap):
    account, asset, per_epoch, total, expiry, nonce, signature = signed_cap(buyer)
    with ape.reverts("vault: bad cap signature"):
        vault.register_spend_cap(account, asset, per_epoch * 2, total, expiry, nonce, signature, sender=coordinator)


@pytest.mark.parametrize(
    "per_epoch, total, expiry_delta, reason",
    [
        (0, 1, 600, "vault: empty cap"),
        (1, 0, 600, "vault: empty cap"),
        (UNLIMITED, UNLIMITED, 600, "vault: cap sets no limit"),
        (1, 1, -1, "vault: cap expired"),
    ],
)
def test_set_spend_cap__bad_cap__reverts(vault, usdc, buyer, chain, per_epoch, total, expiry_delta, reason):
    with ape.reverts(reason):
        vault.set_spend_cap(usdc, per_epoch, total, chain.pending_timestamp + expiry_delta, sender=buyer)


def test_set_spend_cap__unlisted_asset__reverts(vault, buyer, attacker):
    with ape.reverts("vault: asset not listed"):
        vault.set_spend_cap(attacker, 1, 1, 2**32 - 1, sender=buyer)


@pytest.mark.parametrize(
    "signed",
    [0, 1, 2**17 - 1, 2**17, 2**17 + 1, 10**8, 123_456_789_012_345_678_901_234, 2**143, 2**200 + 12345, UNLIMITED],
)
def test_quantize_per_epoch__contract_and_python__agree_and_never_round_up(vault, signed):
    enforced = vault.quantize_per_epoch(signed)
    assert enforced == quantize_per_epoch(signed)
    assert enforced <= signed


@pytest.mark.parametrize("primary", ["SpendCap", "Release"])
def test_signing_helpers__digest__matches_eth_account_typed_data(primary, buyer):
    from eth_account import Account
    from eth_account.messages import encode_typed_data

    from promptex.protocol.vault import typed_data

    domain = {"chain_id": 31_337, "vault": "0x" + "ab" * 20}
    common = {"account": buyer.address, "asset": "0x" + "cd" * 20, "nonce": 7}
    if primary == "SpendCap":
        fields = {**common, "per_epoch": 10**8, "total": UNLIMITED, "expiry": 2**32 - 1}
        ours = sign_spend_cap(buyer.private_key, **domain, **fields)
    else:
        fields = {**common, "amount": 5 * 10**6, "expiry": 1_900_000_000}
        ours = sign_release(buyer.private_key, **domain, **fields)
    reference = encode_typed_data(full_message=typed_data(primary, **domain, message=fields))
    assert Account.sign_message(reference, buyer.private_key).signature == ours


def test_set_spend_cap__unlimited_total__clamps_down_to_bound(vault, usdc, buyer, cap):
    cap(buyer, per_epoch=5 * USD, total=UNLIMITED)
    assert vault.spend_cap(buyer, usdc)[:2] == (5 * USD, 2**96 - 1)


def test_set_spend_cap__per_epoch__rounded_down_never_up(vault, usdc, buyer, cap):
    signed = 123_456_789_012
    cap(buyer, per_epoch=signed)
    enforced = vault.spend_cap(buyer, usdc)[0]
    assert enforced == quantize_per_epoch(signed) == vault.quantize_per_epoch(signed)
    assert enforced <= signed and (signed - enforced) * 2**16 <= signed


def test_set_spend_cap__widening_an_active_cap__applies_at_once(vault, usdc, buyer, cap):
    cap(buyer, per_epoch=10 * USD, total=100 * USD, expiry=2**32 - 2)
    cap(buyer, per_epoch=20 * USD, total=200 * USD, expiry=2**32 - 1)
    assert vault.spend_cap(buyer, usdc)[:2] == (quantize_per_epoch(20 * USD), 200 * USD)


@pytest.mark.parametrize("field", ["per_epoch", "total", "expiry"])
def test_set_spend_cap__lowering_an_active_cap__reverts(vault, usdc, buyer, cap, field):
    cap(buyer, per_epoch=10 * USD, total=100 * USD, expiry=2**32 - 2)
    lower = {"per_epoch": 10 * USD, "total": 100 * USD, "expiry": 2**32 - 2}
    lower[field] -= 2**16 if field == "per_epoch" else 1
    with ape.reverts("vault: new cap lowers the active cap"):
        cap(buyer, **lower)


def test_set_spend_cap__after_the_cap_lapsed__a_lower_cap_is_allowed(vault, usdc, buyer, cap, chain):
    expiry = chain.pending_timestamp + 100
    cap(buyer, per_epoch=10 * USD, total=100 * USD, expiry=expiry)
    chain.pending_timestamp = expiry + 1
    cap(buyer, per_epoch=1 * USD, total=5 * USD)
    assert vault.spend_cap(buyer, usdc)[:2] == (1 * USD, 5 * USD)


def test_set_spend_cap__direct_call__voids_unregistered_signed_cap(vault, buyer, coordinator, cap, signed_cap):
    args = signed_cap(buyer)
    cap(buyer)
    with ape.reverts("vault: bad nonce"):
        vault.register_spend_cap(*args, sender=coordinator)


def test_revoke_spend_cap__voids_unregistered_signed_cap(vault, usdc, buyer, coordinator, signed_cap):
    args = signed_cap(buyer)
    receipt = vault.revoke_spend_cap(usdc, sender=buyer)
    assert logs(receipt, vault.SpendCapRevoked)[0].nonce == 0
    with ape.reverts("vault: bad nonce"):
        vault.register_spend_cap(*args, sender=coordinator)


def test_revoke_spend_cap__takes_effect_from_the_next_epoch(vault, usdc, funded, settle_usdc, listed_lot, chain, buyer):
    receipt = vault.revoke_spend_cap(usdc, sender=buyer)
    length, window = vault.epoch_length(), (receipt.timestamp - vault.genesis()) // vault.epoch_length()
    expiry = vault.spend_cap(buyer, usdc)[2]
    assert expiry == vault.genesis() + (window + 2) * length - 1
    chain.pending_timestamp = vault.genesis() + (window + 1) * length
    settle_usdc({buyer: 10 * USD}, listed_lot)  # the next window settles the epoch in progress
    assert vault.balance_of(buyer, usdc) == 990 * USD
    chain.pending_timestamp = expiry + 1
    with ape.reverts("vault: debit without an active spend cap"):  # no later settlement can use it
        settle_usdc({buyer: 10 * USD}, listed_lot, fee=10 * USD)
    assert vault.balance_of(buyer, usdc) == 990 * USD


# ─── settlement ──────────────────────────────────────────────────────────────


def test_settle__usdc_batch__debits_buyers_credits_seller_and_fee(
    vault, usdc, fund, cap, buyer, org, seller, listed_lot, coordinator, next_window
):
    for account in (buyer, org):
        fund(account, 500 * USD)
        cap(account, per_epoch=100 * USD)
    next_window(usdc)
    debits = pack_debits({buyer.address: 30 * USD, org.address: 12 * USD})
    credits = [pack_lot_amount(listed_lot, 40 * USD)]
    receipt = vault.settle(1, usdc, debits, credits, 0, 2 * USD, ROOT, sender=coordinator)

    assert vault.balance_of(buyer, usdc) == 470 * USD
    assert vault.balance_of(org, usdc) == 488 * USD
    assert vault.claimable(seller, usdc) == 40 * USD
    assert vault.reserve(usdc) == 2 * USD
    assert vault.spend_cap(buyer, usdc)[1] == 2**96 - 1 - 30 * USD  # the total left shrinks too
    assert vault.last_epoch(usdc) == 1
    assert vault.usage_roots(usdc, 1) == ROOT
    [settled] = logs(receipt, vault.EpochSettled)
    assert (settled.epoch, settled.asset, settled.usage_root, settled.total, settled.entries) == (
        1,
        usdc.address,
        ROOT,
        42 * USD,
        2,
    )
    [credited] = logs(receipt, vault.SellerCredited)
    assert (credited.seller, credited.lot_id, credited.amount, credited.consumed) == (
        seller,
        listed_lot,
        40 * USD,
        40 * USD,
    )
    # The vault holds exactly what it owes.
    assert usdc.balanceOf(vault) == 958 * USD + 40 * USD + 2 * USD


def test_settle__total_cap__decreases_and_binds_across_epochs(vault, usdc, fund, cap, buyer, settle_usdc, listed_lot):
    fund(buyer, 500 * USD)
    cap(buyer, per_epoch=UNLIMITED, total=150 * USD)
    settle_usdc({buyer: 100 * USD}, listed_lot)
    assert vault.spend_cap(buyer, usdc)[1] == 50 * USD
    with ape.reverts("vault: debit above the spend cap"):
        settle_usdc({buyer: 80 * USD}, listed_lot, fee=30 * USD)
    settle_usdc({buyer: 50 * USD}, listed_lot)
    assert vault.balance_of(buyer, usdc) == 350 * USD
    assert vault.spend_cap(buyer, usdc)[1] == 0


def test_settle__debit_above_per_epoch_cap__reverts(vault, usdc, funded, settle_usdc, listed_lot, buyer):
    with ape.reverts("vault: debit above the spend cap"):
        settle_usdc({buyer: 130 * USD}, listed_lot, fee=40 * USD)
    settle_usdc({buyer: quantize_per_epoch(100 * USD)}, listed_lot)  # exactly the enforced cap
    assert vault.balance_of(buyer, usdc) == 1_000 * USD - quantize_per_epoch(100 * USD)


def test_settle__debit_above_balance_without_exit__reverts(
    vault, usdc, fund, cap, buyer, settle_usdc, listed_lot, reserve
):
    fund(buyer, 20 * USD)
    cap(buyer)
    reserve(50 * USD)
    with ape.reverts("vault: uncovered debit"):
        settle_usdc({buyer: 45 * USD}, listed_lot)
    assert vault.reserve(usdc) == 50 * USD and vault.balance_of(buyer, usdc) == 20 * USD


def test_settle__debit_above_balance_after_exit__shortfall_paid_from_reserve(
    vault, usdc, buyer, settle_usdc, listed_lot, seller, exited, reserve
):
    reserve(50 * USD)
    exited(buyer, 20 * USD)
    receipt = settle_usdc({buyer: 15 * USD}, listed_lot)
    assert vault.balance_of(buyer, usdc) == 0
    assert vault.claimable(seller, usdc) == 15 * USD  # the seller is paid in full
    assert vault.reserve(usdc) == 35 * USD
    assert vault.shortfall(usdc) == 15 * USD
    assert vault.exit_allowance(buyer, usdc) == 5 * USD
    [short] = logs(receipt, vault.ShortfallRecorded)
    assert (short.account, short.amount) == (buyer, 15 * USD)


def test_settle__shortfall_beyond_fee_and_reserve__reverts(
    vault, usdc, buyer, settle_usdc, listed_lot, exited, reserve
):
    reserve(30 * USD)
    exited(buyer, 50 * USD)
    with ape.reverts("vault: shortfall exceeds reserve"):
        settle_usdc({buyer: 45 * USD}, listed_lot, fee=5 * USD)
    settle_usdc({buyer: 35 * USD}, listed_lot, fee=5 * USD)  # the batch's fee pays first
    assert vault.reserve(usdc) == 0
    assert vault.shortfall(usdc) == 35 * USD


def test_settle__no_cap__reverts(vault, usdc, fund, buyer, settle_usdc, listed_lot):
    fund(buyer, 20 * USD)
    with ape.reverts("vault: debit without an active spend cap"):
        settle_usdc({buyer: 5 * USD}, listed_lot, fee=5 * USD)
    assert vault.balance_of(buyer, usdc) == 20 * USD


def test_settle__expired_cap__reverts(vault, usdc, fund, cap, buyer, settle_usdc, listed_lot, chain):
    fund(buyer, 20 * USD)
    expiry = chain.pending_timestamp + 50
    cap(buyer, expiry=expiry)
    chain.pending_timestamp = expiry + 1
    with ape.reverts("vault: debit without an active spend cap"):
        settle_usdc({buyer: 5 * USD}, listed_lot, fee=5 * USD)
    assert vault.balance_of(buyer, usdc) == 20 * USD
    assert vault.debitable(buyer, usdc) == 0


def test_settle__listed_lot_below_list_price__credits_its_rate_rounded_down_cumulatively(
    vault, usdc, escrow, gpt, fund, cap, buyer, seller, open_lot, coordinator, next_window
):
    lot = open_lot(seller, gpt, kind=2, face_value=5_000 * USD, rate_bps=6_000)
    fund(buyer, 100 * USD)
    cap(buyer)
    credited = 0
    for epoch, consumed in enumerate((1, 1, 1, 2, 7), start=1):  # 0.6, 1.2, 1.8, 3.0, 7.2 cumulative
        next_window(usdc)
        before = escrow.lots(lot).consumed
        step = (before + consumed) * 6_000 // 10_000 - before * 6_000 // 10_000
        debits = pack_debits({buyer.address: step + 1})  # the credit, plus a fee of 1
        receipt = vault.settle(epoch, usdc, debits, [pack_lot_amount(lot, consumed)], 0, 1, ROOT, sender=coordinator)
        [event] = logs(receipt, vault.SellerCredited)
        assert (event.amount, event.consumed) == (step, consumed)
        credited += step
    # Per listed lot: Σ seller credits == rate × Σ consumed, rounded down once.
    assert escrow.lots(lot).consumed == 12
    assert credited == vault.claimable(seller, usdc) == 12 * 6_000 // 10_000
    assert vault.reserve(usdc) == 5


def test_settle__provider_token__burns_and_draws_the_lot_down(
    vault, cld, escrow, seller, buyer, tokenized_lot, cap, coordinator, next_window
):
    cld.transfer(buyer, 50 * TOKEN, sender=seller)
    cld.approve(vault, 50 * TOKEN, sender=buyer)
    vault.deposit(cld, 50 * TOKEN, sender=buyer)
    cap(buyer, asset=cld, per_epoch=20 * TOKEN)
    supply = cld.totalSupply()
    next_window(cld)
    vault.settle(1, cld, [pack_debit(buyer.address, 12 * TOKEN)], [], 12 * TOKEN, 0, ROOT, sender=coordinator)
    assert vault.balance_of(buyer, cld) == 38 * TOKEN
    assert cld.totalSupply() == supply - 12 * TOKEN
    assert cld.balanceOf(vault) == 38 * TOKEN
    lot = escrow.lots(tokenized_lot)
    assert (lot.consumed, lot.last_epoch) == (12 * TOKEN, 1)


def test_settle__provider_token__draws_nearest_expiry_first(
    vault, cld, usdc, escrow, seller, buyer, attestor, open_lot, cap, coordinator, next_window, expiry
):
    late = open_lot(seller, cld)  # expires at `expiry`
    bond = escrow.min_bond(10_000 * USD)
    usdc.mint(seller, bond, sender=seller)
    usdc.approve(escrow, bond, sender=seller)
    escrow.open_lot(seller, cld, 1, 10_000 * USD, expiry - 86_400, bond, ROOT, 0, sender=attestor)
    early = escrow.lot_count()
    cld.transfer(buyer, 30 * TOKEN, sender=seller)
    cld.approve(vault, 30 * TOKEN, sender=buyer)
    vault.deposit(cld, 30 * TOKEN, sender=buyer)
    cap(buyer, asset=cld)
    next_window(cld)
    vault.settle(1, cld, [pack_debit(buyer.address, 30 * TOKEN)], [], 30 * TOKEN, 0, ROOT, sender=coordinator)
    assert escrow.lots(early).consumed == 30 * TOKEN  # opened later, expires sooner: drawn first
    assert escrow.lots(late).consumed == 0


def test_settle__burn_without_drawable_capacity__reverts(
    vault, cld, escrow, seller, buyer, attestor, tokenized_lot, cap, coordinator, next_window
):
    cld.transfer(buyer, 5 * TOKEN, sender=seller)
    cld.approve(vault, 5 * TOKEN, sender=buyer)
    vault.deposit(cld, 5 * TOKEN, sender=buyer)
    cap(buyer, asset=cld)
    escrow.slash(tokenized_lot, sender=attestor)  # the only CLD lot stops serving
    next_window(cld)
    with ape.reverts("escrow: draw exceeds drawable capacity"):
        vault.settle(1, cld, [pack_debit(buyer.address, 5 * TOKEN)], [], 5 * TOKEN, 0, ROOT, sender=coordinator)
    assert vault.balance_of(buyer, cld) == 5 * TOKEN


def test_settle__non_coordinator__reverts(vault, usdc, attacker):
    with ape.reverts("vault: caller is not a coordinator"):
        vault.settle(1, usdc, [], [], 0, 0, ROOT, sender=attacker)


def test_settle__revoked_coordinator__reverts(vault, usdc, admin, coordinator):
    vault.revoke_coordinator(coordinator, sender=admin)
    with ape.reverts("vault: caller is not a coordinator"):
        vault.settle(1, usdc, [], [], 0, 0, ROOT, sender=coordinator)


def test_settle__repeated_epoch__reverts(vault, usdc, coordinator, next_window):
    vault.settle(1, usdc, [], [], 0, 0, ROOT, sender=coordinator)
    next_window(usdc)
    with ape.reverts("vault: epoch not consecutive"):
        vault.settle(1, usdc, [], [], 0, 0, ROOT, sender=coordinator)


def test_settle__skipped_epoch__reverts(vault, usdc, coordinator):
    with ape.reverts("vault: epoch not consecutive"):
        vault.settle(2, usdc, [], [], 0, 0, ROOT, sender=coordinator)


def test_settle__second_batch_in_one_window__reverts(vault, usdc, coordinator, chain):
    # Block times set explicitly: on a busy machine the wall clock can cross a window
    # boundary between two transactions.
    length = vault.epoch_length()
    windows_ahead = (chain.pending_timestamp - vault.genesis()) // length + 2
    start = vault.genesis() + windows_ahead * length  # a window boundary ahead of the clock
    chain.pending_timestamp = start
    vault.settle(1, usdc, [], [], 0, 0, ROOT, sender=coordinator)
    chain.pending_timestamp = start + length - 1  # the last second of the same window
    with ape.reverts("vault: epoch window already settled"):
        vault.settle(2, usdc, [], [], 0, 0, ROOT, sender=coordinator)
    chain.pending_timestamp = start + length
    vault.settle(2, usdc, [], [], 0, 0, ROOT, sender=coordinator)
    assert vault.last_epoch(usdc) == 2


def test_settle__epochs_are_per_asset(vault, usdc, cld, coordinator):
    vault.settle(1, usdc, [], [], 0, 0, ROOT, sender=coordinator)
    vault.settle(1, cld, [], [], 0, 0, ROOT, sender=coordinator)
    assert (vault.last_epoch(usdc), vault.last_epoch(cld)) == (1, 1)


def test_settle__debits_do_not_balance__reverts(vault, usdc, funded, listed_lot, coordinator, buyer):
    debits = [pack_debit(buyer.address, 10 * USD)]
    with ape.reverts("vault: debits do not balance"):
        vault.settle(1, usdc, debits, [pack_lot_amount(listed_lot, 9 * USD)], 0, 0, ROOT, sender=coordinator)


@pytest.mark.parametrize("order", ["descending", "duplicate"])
def test_settle__debits_not_strictly_sorted__reverts(vault, usdc, buyer, org, cap, coordinator, order):
    for account in (buyer, org):
        cap(account)
    low, high = sorted([buyer.address, org.address], key=lambda a: int(a, 16))
    accounts = [high, low] if order == "descending" else [low, low]
    debits = [pack_debit(a, 0) for a in accounts]
    with ape.reverts("vault: debits not sorted by account"):
        vault.settle(1, usdc, debits, [], 0, 0, ROOT, sender=coordinator)


def test_settle__paused__reverts(vault, usdc, coordinator, pauser):
    vault.pause(sender=pauser)
    with ape.reverts("vault: paused"):
        vault.settle(1, usdc, [], [], 0, 0, ROOT, sender=coordinator)


def test_settle__unlisted_asset__reverts(vault, coordinator, attacker):
    with ape.reverts("vault: asset not listed"):
        vault.settle(1, attacker, [], [], 0, 0, ROOT, sender=coordinator)


def test_settle__credit_to_a_tokenized_lot__reverts(vault, usdc, tokenized_lot, coordinator):
    credits = [pack_lot_amount(tokenized_lot, 1)]
    with ape.reverts("escrow: not a listed lot"):
        vault.settle(1, usdc, [], credits, 0, 0, ROOT, sender=coordinator)


def test_settle__credit_to_a_closed_lot__reverts(vault, usdc, escrow, seller, listed_lot, coordinator, chain):
    escrow.request_close(listed_lot, sender=seller)
    chain.pending_timestamp = escrow.lots(listed_lot).close_at
    escrow.finalize_close(listed_lot, sender=seller)
    with ape.reverts("escrow: lot not drawable"):
        vault.settle(1, usdc, [], [pack_lot_amount(listed_lot, 1)], 0, 0, ROOT, sender=coordinator)


def test_settle__credit_to_an_unknown_lot__reverts(vault, usdc, coordinator):
    with ape.reverts("escrow: not a listed lot"):
        vault.settle(1, usdc, [], [pack_lot_amount(999, 1)], 0, 0, ROOT, sender=coordinator)


def test_settle__zero_credit__reverts(vault, usdc, listed_lot, coordinator):
    with ape.reverts("escrow: zero amount"):
        vault.settle(1, usdc, [], [pack_lot_amount(listed_lot, 0)], 0, 0, ROOT, sender=coordinator)


@pytest.mark.parametrize("order", ["descending", "duplicate"])
def test_settle__credits_not_strictly_sorted__reverts(vault, usdc, seller, open_lot, gpt, coordinator, order):
    low, high = sorted(open_lot(seller, gpt, kind=2, rate_bps=10_000) for _ in range(2))
    lots = [high, low] if order == "descending" else [low, low]
    with ape.reverts("vault: credits not sorted by lot"):
        vault.settle(1, usdc, [], [pack_lot_amount(lot, 1) for lot in lots], 0, 0, ROOT, sender=coordinator)


def test_settle__credits_on_a_spend_only_asset__reverts(vault, cld, listed_lot, coordinator):
    with ape.reverts("vault: credits on a spend-only asset"):
        vault.settle(1, cld, [], [pack_lot_amount(listed_lot, 1)], 0, 0, ROOT, sender=coordinator)


def test_settle__credits_in_another_withdrawable_asset__reverts(project, vault, admin, listed_lot, coordinator):
    token = admin.deploy(project.MockUSDC)
    vault.list_asset(token, POLICY_WITHDRAWABLE, sender=admin)
    with ape.reverts("vault: credits are paid in usdc"):
        vault.settle(1, token, [], [pack_lot_amount(listed_lot, 1)], 0, 0, ROOT, sender=coordinator)


def test_settle__burn_on_a_withdrawable_asset__reverts(vault, usdc, coordinator):
    with ape.reverts("vault: burn on a withdrawable asset"):
        vault.settle(1, usdc, [], [], 1, 0, ROOT, sender=coordinator)


def test_settle__empty_batch__advances_the_epoch(vault, usdc, coordinator):
    receipt = vault.settle(1, usdc, [], [], 0, 0, ROOT, sender=coordinator)
    assert logs(receipt, vault.EpochSettled)[0].entries == 0
    assert vault.last_epoch(usdc) == 1


# ─── instant exit ────────────────────────────────────────────────────────────


def test_exit_instant__coordinator_release__pays_at_once(vault, usdc, fund, buyer, release):
    fund(buyer, 100 * USD)
    nonce, expiry, signature = release(buyer, 60 * USD)
    receipt = vault.exit_instant(usdc, 60 * USD, 0, nonce, expiry, signature, sender=buyer)
    assert usdc.balanceOf(buyer) == 60 * USD
    assert vault.balance_of(buyer, usdc) == 40 * USD
    assert vault.release_nonce(buyer) == 1
    [event] = logs(receipt, vault.ExitReleased)
    assert (event.amount, event.proceeds, event.nonce) == (60 * USD, 60 * USD, 0)


def test_exit_instant__replayed_release__reverts(vault, usdc, fund, buyer, release):
    fund(buyer, 100 * USD)
    nonce, expiry, signature = release(buyer, 10 * USD)
    vault.exit_instant(usdc, 10 * USD, 0, nonce, expiry, signature, sender=buyer)
    with ape.reverts("vault: bad nonce"):
        vault.exit_instant(usdc, 10 * USD, 0, nonce, expiry, signature, sender=buyer)


def test_exit_instant__release_signed_with_a_future_nonce__reverts(vault, usdc, fund, buyer, release):
    fund(buyer, 100 * USD)
    nonce, expiry, signature = release(buyer, 10 * USD, nonce=1)
    with ape.reverts("vault: bad nonce"):
        vault.exit_instant(usdc, 10 * USD, 0, nonce, expiry, signature, sender=buyer)


def test_exit_instant__release_for_another_chain__reverts(vault, usdc, fund, buyer, release, chain):
    fund(buyer, 100 * USD)
    nonce, expiry, signature = release(buyer, 10 * USD, chain_id=chain.chain_id + 1)
    with ape.reverts("vault: release not signed by a coordinator"):
        vault.exit_instant(usdc, 10 * USD, 0, nonce, expiry, signature, sender=buyer)


def test_exit_instant__release_for_another_vault__reverts(
    project, vault, usdc, escrow, fund, buyer, release, admin, coordinator
):
    other = admin.deploy(project.CreditsVault, usdc, escrow, 10, 20, vault.signed_module())
    other.grant_coordinator(coordinator, sender=admin)
    fund(buyer, 100 * USD)
    nonce, expiry, signature = release(buyer, 10 * USD, verifying=other.address)
    with ape.reverts("vault: release not signed by a coordinator"):
        vault.exit_instant(usdc, 10 * USD, 0, nonce, expiry, signature, sender=buyer)


def test_exit_instant__release_used_by_another_account__reverts(vault, usdc, fund, buyer, attacker, release):
    fund(buyer, 100 * USD)
    fund(attacker, 100 * USD)
    nonce, expiry, signature = release(buyer, 10 * USD)
    with ape.reverts("vault: release not signed by a coordinator"):
        vault.exit_instant(usdc, 10 * USD, 0, nonce, expiry, signature, sender=attacker)


def test_exit_instant__amount_above_the_release__reverts(vault, usdc, fund, buyer, release):
    fund(buyer, 100 * USD)
    nonce, expiry, signature = release(buyer, 10 * USD)
    with ape.reverts("vault: release not signed by a coordinator"):
        vault.exit_instant(usdc, 11 * USD, 0, nonce, expiry, signature, sender=buyer)


def test_exit_instant__signed_by_a_non_coordinator__reverts(vault, usdc, fund, buyer, attacker, release):
    fund(buyer, 100 * USD)
    nonce, expiry, signature = release(buyer, 10 * USD, signer=attacker)
    with ape.reverts("vault: release not signed by a coordinator"):
        vault.exit_instant(usdc, 10 * USD, 0, nonce, expiry, signature, sender=buyer)


def test_exit_instant__signer_lost_the_role__reverts(vault, usdc, fund, buyer, release, admin, coordinator):
    fund(buyer, 100 * USD)
    nonce, expiry, signature = release(buyer, 10 * USD)
    vault.revoke_coordinator(coordinator, sender=admin)
    with ape.reverts("vault: release not signed by a coordinator"):
        vault.exit_instant(usdc, 10 * USD, 0, nonce, expiry, signature, sender=buyer)


def test_exit_instant__expired_release__reverts(vault, usdc, fund, buyer, release, chain):
    fund(buyer, 100 * USD)
    nonce, expiry, signature = release(buyer, 10 * USD, expiry=chain.pending_timestamp - 1)
    with ape.reverts("vault: release expired"):
        vault.exit_instant(usdc, 10 * USD, 0, nonce, expiry, signature, sender=buyer)


def test_exit_instant__above_balance__reverts(vault, usdc, fund, buyer, release):
    fund(buyer, 5 * USD)
    nonce, expiry, signature = release(buyer, 10 * USD)
    with ape.reverts("vault: amount exceeds balance"):
        vault.exit_instant(usdc, 10 * USD, 0, nonce, expiry, signature, sender=buyer)


def test_exit_instant__zero_amount__reverts(vault, usdc, buyer, release):
    nonce, expiry, signature = release(buyer, 0)
    with ape.reverts("vault: zero amount"):
        vault.exit_instant(usdc, 0, 0, nonce, expiry, signature, sender=buyer)


def test_exit_instant__paused__reverts(vault, usdc, fund, buyer, release, pauser):
    fund(buyer, 100 * USD)
    nonce, expiry, signature = release(buyer, 10 * USD)
    vault.pause(sender=pauser)
    with ape.reverts("vault: paused"):
        vault.exit_instant(usdc, 10 * USD, 0, nonce, expiry, signature, sender=buyer)


@pytest.fixture
def market(project, admin, usdc, vault):
    """An exit market paying 2 USDC per CLD, set on the vault."""
    market = admin.deploy(project.MockExitMarket, usdc, 2 * USD)
    vault.set_exit_market(market, sender=admin)
    return market


@pytest.fixture
def cld_holder(vault, cld, seller, buyer, tokenized_lot):
    cld.transfer(buyer, 10 * TOKEN, sender=seller)
    cld.approve(vault, 10 * TOKEN, sender=buyer)
    vault.deposit(cld, 10 * TOKEN, sender=buyer)
    return buyer


def test_exit_instant__spend_only_token__sold_for_usdc(vault, cld, usdc, cld_holder, market, release):
    nonce, expiry, signature = release(cld_holder, 4 * TOKEN, asset=cld)
    receipt = vault.exit_instant(cld, 4 * TOKEN, 8 * USD, nonce, expiry, signature, sender=cld_holder)
    assert vault.balance_of(cld_holder, usdc) == 8 * USD  # the USDC lands in the vault balance
    assert usdc.balanceOf(vault) == 8 * USD
    assert usdc.balanceOf(cld_holder) == 0
    assert cld.balanceOf(cld_holder) == 0  # never the token itself
    sold = logs(receipt, vault.Sold)[0]
    assert (sold.account, sold.asset, sold.amount, sold.proceeds) == (
        cld_holder.address,
        cld.address,
        4 * TOKEN,
        8 * USD,
    )
    assert cld.balanceOf(market) == 4 * TOKEN
    assert vault.balance_of(cld_holder, cld) == 6 * TOKEN


def test_exit_instant__spend_only_proceeds_below_minimum__reverts(vault, cld, cld_holder, market, release):
    market.set_mode(2, sender=cld_holder)  # PAYS_LESS
    nonce, expiry, signature = release(cld_holder, 4 * TOKEN, asset=cld)
    with ape.reverts("vault: proceeds below minimum"):
        vault.exit_instant(cld, 4 * TOKEN, 8 * USD, nonce, expiry, signature, sender=cld_holder)


def test_exit_instant__market_takes_a_different_amount__reverts(vault, cld, cld_holder, market, release):
    market.set_mode(1, sender=cld_holder)  # TAKES_LESS
    nonce, expiry, signature = release(cld_holder, 4 * TOKEN, asset=cld)
    with ape.reverts("vault: exit market took a different amount"):
        vault.exit_instant(cld, 4 * TOKEN, 0, nonce, expiry, signature, sender=cld_holder)


# ─── trustless exit ──────────────────────────────────────────────────────────


def test_request_exit__then_thaw__complete_pays_out(vault, usdc, fund, buyer, chain):
    fund(buyer, 100 * USD)
    receipt = vault.request_exit(usdc, 70 * USD, sender=buyer)
    [requested] = logs(receipt, vault.ExitRequested)
    assert requested.unlock_at == receipt.timestamp + vault.thaw_period()
    assert vault.pending_exits(buyer, usdc).amount == 70 * USD
    assert vault.balance_of(buyer, usdc) == 100 * USD  # still debitable while thawing
    chain.pending_timestamp = requested.unlock_at
    receipt = vault.complete_exit(usdc, 0, False, sender=buyer)
    assert usdc.balanceOf(buyer) == 70 * USD
    assert vault.balance_of(buyer, usdc) == 30 * USD
    assert vault.pending_exits(buyer, usdc).amount == 0
    [completed] = logs(receipt, vault.ExitCompleted)
    assert (completed.requested, completed.amount, completed.proceeds) == (70 * USD, 70 * USD, 70 * USD)


def test_request_exit__thaw__is_at_least_two_epochs(vault):
    assert vault.thaw_period() >= 2 * vault.epoch_length()


def test_complete_exit__before_thaw__reverts(vault, usdc, fund, buyer, chain):
    fund(buyer, 100 * USD)
    unlock_at = logs(vault.request_exit(usdc, 70 * USD, sender=buyer), vault.ExitRequested)[0].unlock_at
    chain.pending_timestamp = unlock_at - 1
    with ape.reverts("vault: exit still thawing"):
        vault.complete_exit(usdc, 0, False, sender=buyer)


def test_complete_exit__paused_and_coordinator_removed__still_pays(
    vault, usdc, fund, buyer, chain, pauser, admin, coordinator
):
    fund(buyer, 100 * USD)
    vault.request_exit(usdc, 100 * USD, sender=buyer)
    vault.pause(sender=pauser)
    vault.revoke_coordinator(coordinator, sender=admin)
    vault.revoke_coordinator(admin, sender=admin)
    chain.pending_timestamp += vault.thaw_period() + vault.MAX_PAUSE()  # the thaw counts unpaused time
    vault.complete_exit(usdc, 0, False, sender=buyer)
    assert usdc.balanceOf(buyer) == 100 * USD


def test_request_exit__paused__still_works(vault, usdc, fund, buyer, pauser):
    fund(buyer, 100 * USD)
    vault.pause(sender=pauser)
    vault.request_exit(usdc, 1, sender=buyer)
    assert vault.pending_exits(buyer, usdc).amount == 1
    vault.cancel_exit(usdc, sender=buyer)
    assert vault.pending_exits(buyer, usdc).amount == 0
    assert vault.balance_of(buyer, usdc) == 100 * USD


def test_complete_exit__settled_while_thawing__pays_what_is_left(
    vault, usdc, funded, buyer, settle_usdc, listed_lot, chain
):
    vault.request_exit(usdc, 1_000 * USD, sender=buyer)
    settle_usdc({buyer: 60 * USD}, listed_lot)  # usage from before the exit still settles
    chain.pending_timestamp += vault.thaw_period()
    receipt = vault.complete_exit(usdc, 0, False, sender=buyer)
    assert usdc.balanceOf(buyer) == 940 * USD
    assert logs(receipt, vault.ExitCompleted)[0].amount == 940 * USD


def test_complete_exit__settlement_arrives_after_completion__recorded_as_shortfall(
    vault, usdc, funded, buyer, org, settle_usdc, listed_lot, chain, seller
):
    usdc.mint(org, 100 * USD, sender=org)
    usdc.approve(vault, 100 * USD, sender=org)
    vault.fund_reserve(usdc, 100 * USD, sender=org)
    vault.request_exit(usdc, 1_000 * USD, sender=buyer)
    chain.pending_timestamp += vault.thaw_period()
    vault.complete_exit(usdc, 0, False, sender=buyer)  # the coordinator was late
    receipt = settle_usdc({buyer: 60 * USD}, listed_lot)
    assert usdc.balanceOf(buyer) == 1_000 * USD
    [short] = logs(receipt, vault.ShortfallRecorded)
    assert (short.account, short.amount) == (buyer, 60 * USD)
    assert vault.shortfall(usdc) == 60 * USD
    assert vault.claimable(seller, usdc) == 60 * USD
    assert vault.reserve(usdc) == 40 * USD


def test_complete_exit__balance_debited_to_zero__completes_with_nothing(
    vault, usdc, fund, cap, buyer, settle_usdc, listed_lot, chain
):
    fund(buyer, 50 * USD)
    cap(buyer)
    vault.request_exit(usdc, 50 * USD, sender=buyer)
    settle_usdc({buyer: 50 * USD}, listed_lot)
    chain.pending_timestamp += vault.thaw_period()
    receipt = vault.complete_exit(usdc, 0, False, sender=buyer)
    assert logs(receipt, vault.ExitCompleted)[0].amount == 0
    assert vault.pending_exits(buyer, usdc).amount == 0


def test_complete_exit__spend_only_token__sold_for_usdc(vault, cld, usdc, cld_holder, market, chain):
    receipt = vault.request_exit(cld, 10 * TOKEN, sender=cld_holder)
    assert logs(receipt, vault.ExitRequested)[0].market == market.address
    assert vault.pending_exits(cld_holder, cld).market == market.address
    chain.pending_timestamp += vault.thaw_period()
    receipt = vault.complete_exit(cld, 20 * USD, True, sender=cld_holder)
    assert vault.balance_of(cld_holder, usdc) == 20 * USD  # withdrawable USDC in the vault
    assert usdc.balanceOf(cld_holder) == 0
    assert cld.balanceOf(cld_holder) == 0
    [completed] = logs(receipt, vault.ExitCompleted)
    assert (completed.amount, completed.proceeds, completed.sold) == (10 * TOKEN, 20 * USD, True)


def test_complete_exit__spend_only_token_taken__sends_the_token(vault, cld, usdc, cld_holder, market, chain):
    vault.request_exit(cld, 10 * TOKEN, sender=cld_holder)
    chain.pending_timestamp += vault.thaw_period()
    receipt = vault.complete_exit(cld, 0, False, sender=cld_holder)
    assert cld.balanceOf(cld_holder) == 10 * TOKEN  # the trustless exit's fallback: the token itself
    assert vault.balance_of(cld_holder, cld) == 0 and cld.balanceOf(vault) == 0
    assert vault.balance_of(cld_holder, usdc) == 0
    [completed] = logs(receipt, vault.ExitCompleted)
    assert (completed.amount, completed.proceeds, completed.sold) == (10 * TOKEN, 10 * TOKEN, False)


def test_complete_exit__spend_only_without_market__sale_reverts_token_taken(vault, cld, cld_holder, chain, admin):
    vault.set_exit_market(ZERO_ADDRESS, sender=admin)  # deploy sets the Router; unset it
    vault.request_exit(cld, 10 * TOKEN, sender=cld_holder)
    chain.pending_timestamp += vault.thaw_period()
    with ape.reverts("vault: no exit market"):
        vault.complete_exit(cld, 0, True, sender=cld_holder)
    vault.complete_exit(cld, 0, False, sender=cld_holder)
    assert cld.balanceOf(cld_holder) == 10 * TOKEN


@pytest.mark.parametrize(
    "amount, reason",
    [(0, "vault: zero amount"), (101 * USD, "vault: amount exceeds balance")],
)
def test_request_exit__bad_amount__reverts(vault, usdc, fund, buyer, amount, reason):
    fund(buyer, 100 * USD)
    with ape.reverts(reason):
        vault.request_exit(usdc, amount, sender=buyer)


def test_request_exit__unlisted_asset__reverts(vault, buyer, attacker):
    with ape.reverts("vault: asset not listed"):
        vault.request_exit(attacker, 1, sender=buyer)


def test_request_exit__already_pending__reverts(vault, usdc, fund, buyer):
    fund(buyer, 100 * USD)
    vault.request_exit(usdc, 10, sender=buyer)
    with ape.reverts("vault: exit already pending"):
        vault.request_exit(usdc, 10, sender=buyer)


def test_cancel_exit__pending__clears_it(vault, usdc, fund, buyer):
    fund(buyer, 100 * USD)
    vault.request_exit(usdc, 10, sender=buyer)
    receipt = vault.cancel_exit(usdc, sender=buyer)
    assert logs(receipt, vault.ExitCancelled)[0].amount == 10
    assert vault.pending_exits(buyer, usdc).amount == 0
    assert vault.balance_of(buyer, usdc) == 100 * USD


@pytest.mark.parametrize("action", ["cancel_exit", "complete_exit"])
def test_exit__nothing_pending__reverts(vault, usdc, buyer, action):
    args = (usdc,) if action == "cancel_exit" else (usdc, 0, False)
    with ape.reverts("vault: no pending exit"):
        getattr(vault, action)(*args, sender=buyer)


# ─── claims ──────────────────────────────────────────────────────────────────


def test_claim__listed_credit__pays_usdc_even_when_paused(
    vault, usdc, funded, buyer, seller, settle_usdc, listed_lot, pauser
):
    settle_usdc({buyer: 25 * USD}, listed_lot)
    vault.pause(sender=pauser)
    bond_returned = usdc.balanceOf(seller)
    receipt = vault.claim(usdc, sender=seller)
    assert usdc.balanceOf(seller) - bond_returned == 25 * USD
    assert vault.claimable(seller, usdc) == 0
    assert logs(receipt, vault.Claimed)[0].amount == 25 * USD


def test_claim__nothing_to_claim__reverts(vault, usdc, seller):
    with ape.reverts("vault: nothing to claim"):
        vault.claim(usdc, sender=seller)


# ─── protocol reserve ────────────────────────────────────────────────────────


def test_fund_reserve__anyone__adds_to_the_reserve(vault, usdc, org):
    usdc.mint(org, 9, sender=org)
    usdc.approve(vault, 9, sender=org)
    receipt = vault.fund_reserve(usdc, 9, sender=org)
    assert vault.reserve(usdc) == 9
    assert logs(receipt, vault.ReserveFunded)[0].amount == 9


@pytest.mark.parametrize("case", ["unlisted", "zero"])
def test_fund_reserve__bad_input__reverts(vault, usdc, org, attacker, case):
    asset, amount, reason = (
        (attacker, 1, "vault: asset not listed") if case == "unlisted" else (usdc, 0, "vault: zero amount")
    )
    with ape.reverts(reason):
        vault.fund_reserve(asset, amount, sender=org)


def test_withdraw_reserve__admin__pays_the_recipient(
    vault, usdc, funded, buyer, settle_usdc, listed_lot, admin, treasury
):
    settle_usdc({buyer: 25 * USD}, listed_lot, fee=5 * USD)
    receipt = vault.withdraw_reserve(usdc, 5 * USD, treasury, sender=admin)
    assert usdc.balanceOf(treasury) == 5 * USD
    assert vault.reserve(usdc) == 0
    assert logs(receipt, vault.ReserveWithdrawn)[0].amount == 5 * USD


@pytest.mark.parametrize(
    "sender_name, amount, to_zero, reason",
    [
        ("attacker", 1, False, "ownable: caller is not the owner"),
        ("admin", 0, False, "vault: zero amount"),
        ("admin", 1, False, "vault: amount exceeds reserve"),
        ("admin", 1, True, "vault: zero address"),
    ],
)
def test_withdraw_reserve__bad_call__reverts(
    vault, usdc, admin, attacker, treasury, sender_name, amount, to_zero, reason
):
    sender = {"admin": admin, "attacker": attacker}[sender_name]
    recipient = "0x" + "00" * 20 if to_zero else treasury.address
    with ape.reverts(reason):
        vault.withdraw_reserve(usdc, amount, recipient, sender=sender)


# ─── admin ───────────────────────────────────────────────────────────────────


def test_list_asset__new_withdrawable_token__opens_deposits(project, vault, admin):
    token = admin.deploy(project.MockUSDC)
    receipt = vault.list_asset(token, POLICY_WITHDRAWABLE, sender=admin)
    assert vault.asset_policy(token) == POLICY_WITHDRAWABLE and vault.deposits_open(token)
    assert logs(receipt, vault.AssetListed)[0].policy == POLICY_WITHDRAWABLE


def test_list_asset__delisted__relisting_reopens_deposits(vault, usdc, admin):
    vault.delist_asset(usdc, sender=admin)
    assert not vault.deposits_open(usdc)
    vault.list_asset(usdc, POLICY_WITHDRAWABLE, sender=admin)
    assert vault.deposits_open(usdc)


@pytest.mark.parametrize(
    "asset_name, policy, reason",
    [
        ("usdc", POLICY_SPEND_ONLY, "vault: policy cannot change"),
        ("cld", POLICY_WITHDRAWABLE, "vault: policy cannot change"),
        ("usdc", 3, "vault: bad policy"),
        ("zero", POLICY_WITHDRAWABLE, "vault: zero address"),
        ("other", POLICY_SPEND_ONLY, "vault: not a provider token"),
    ],
)
def test_list_asset__bad_listing__reverts(project, vault, usdc, cld, admin, asset_name, policy, reason):
    asset = {"usdc": usdc.address, "cld": cld.address, "zero": "0x" + "00" * 20}.get(asset_name)
    if asset_name == "other":
        asset = admin.deploy(project.MockUSDC).address
    with ape.reverts(reason):
        vault.list_asset(asset, policy, sender=admin)


def test_delist_asset__not_listed__reverts(vault, admin, attacker):
    with ape.reverts("vault: asset not listed"):
        vault.delist_asset(attacker, sender=admin)


@pytest.mark.parametrize(
    "call",
    [
        ("list_asset", ("usdc", POLICY_WITHDRAWABLE)),
        ("delist_asset", ("usdc",)),
        ("grant_coordinator", ("attacker",)),
        ("revoke_coordinator", ("attacker",)),
        ("grant_pauser", ("attacker",)),
        ("revoke_pauser", ("attacker",)),
        ("unpause", ()),
        ("set_thaw_period", (100,)),
        ("set_exit_market", ("attacker",)),
        ("transfer_ownership", ("attacker",)),
    ],
)
def test_admin_function__non_admin__reverts(vault, usdc, attacker, call):
    name, raw_args = call
    args = [usdc.address if a == "usdc" else attacker.address if a == "attacker" else a for a in raw_args]
    with ape.reverts("ownable: caller is not the owner"):
        getattr(vault, name)(*args, sender=attacker)


@pytest.mark.parametrize("role", ["coordinator", "pauser"])
def test_role__grant_and_revoke__updates_and_emits(vault, admin, attacker, role):
    getter = {"coordinator": vault.is_coordinator, "pauser": vault.is_pauser}[role]
    event = vault.RoleCoordinatorChanged if role == "coordinator" else vault.RolePauserChanged
    receipt = getattr(vault, f"grant_{role}")(attacker, sender=admin)
    assert getter(attacker)
    assert [(e.account, e.status) for e in logs(receipt, event)] == [(attacker.address, True)]
    receipt = getattr(vault, f"revoke_{role}")(attacker, sender=admin)
    assert not getter(attacker)
    assert [(e.account, e.status) for e in logs(receipt, event)] == [(attacker.address, False)]


@pytest.mark.parametrize(
    ("role", "reason"), [("coordinator", "vault: not a coordinator"), ("pauser", "vault: not a pauser")]
)
def test_revoke_role__account_never_held_it__reverts(vault, admin, attacker, role, reason):
    # Like every other revocation: a revocation that changes nothing is refused, not logged.
    with ape.reverts(reason):
        getattr(vault, f"revoke_{role}")(attacker, sender=admin)


@pytest.mark.parametrize("role", ["coordinator", "pauser"])
def test_grant_role__zero_address__reverts(vault, admin, role):
    with ape.reverts("vault: zero address"):
        getattr(vault, f"grant_{role}")("0x" + "00" * 20, sender=admin)


def test_pause__pauser_pauses_admin_unpauses(vault, pauser, admin, chain):
    receipt = vault.pause(sender=pauser)
    assert vault.paused()
    assert logs(receipt, vault.Paused)[0].until == receipt.timestamp + vault.MAX_PAUSE()
    with ape.reverts("ownable: caller is not the owner"):
        vault.unpause(sender=pauser)
    receipt = vault.unpause(sender=admin)
    assert not vault.paused()
    assert vault.paused_until() == receipt.timestamp
    with ape.reverts("vault: pause renewed too soon"):
        vault.pause(sender=admin)
    chain.pending_timestamp = receipt.timestamp + 2 * vault.epoch_length()
    vault.pause(sender=admin)
    assert vault.paused()


def test_pause__lasts_at_most_max_pause__ends_by_itself(vault, usdc, pauser, coordinator, chain):
    receipt = vault.pause(sender=pauser)
    chain.pending_timestamp = receipt.timestamp + vault.MAX_PAUSE() - 1
    with ape.reverts("vault: paused"):
        vault.settle(1, usdc, [], [], 0, 0, ROOT, sender=coordinator)
    chain.pending_timestamp = receipt.timestamp + vault.MAX_PAUSE()
    vault.settle(1, usdc, [], [], 0, 0, ROOT, sender=coordinator)  # nobody lifted it
    assert not vault.paused()
    assert vault.paused_seconds() == vault.MAX_PAUSE()


def test_pause__non_pauser__reverts(vault, attacker, coordinator):
    for account in (attacker, coordinator):
        with ape.reverts("vault: caller is not a pauser"):
            vault.pause(sender=account)


def test_set_thaw_period__below_max_pause__reverts(project, admin, usdc, escrow, vault):
    # The thaw starts at MAX_PAUSE.
    other = admin.deploy(project.CreditsVault, usdc, escrow, 5, 30, vault.signed_module())
    assert other.thaw_period() == 30
    with ape.reverts("vault: thaw period out of range"):
        other.set_thaw_period(29, sender=admin)
    other.set_thaw_period(30, sender=admin)


def test_set_thaw_period__in_range__applies_to_new_requests(vault, usdc, fund, buyer, admin):
    receipt = vault.set_thaw_period(3_600, sender=admin)
    assert logs(receipt, vault.ThawPeriodChanged)[0].new_period == 3_600
    fund(buyer, 10)
    receipt = vault.request_exit(usdc, 10, sender=buyer)
    assert vault.pending_exits(buyer, usdc).unlock_at == receipt.timestamp + 3_600


@pytest.mark.parametrize("period", [19, 86_401])
def test_set_thaw_period__out_of_range__reverts(vault, admin, period):
    with ape.reverts("vault: thaw period out of range"):
        vault.set_thaw_period(period, sender=admin)


def test_set_exit_market__admin__sets_and_emits(vault, admin, attacker):
    receipt = vault.set_exit_market(attacker, sender=admin)
    assert vault.exit_market() == attacker.address
    assert logs(receipt, vault.ExitMarketChanged)[0].new_market == attacker.address


def test_transfer_ownership__two_step__new_admin_accepts(vault, admin, org, attacker):
    vault.transfer_ownership(org, sender=admin)
    assert vault.pending_owner() == org
    with ape.reverts("ownable_2step: caller is not the new owner"):
        vault.accept_ownership(sender=attacker)
    vault.accept_ownership(sender=org)
    assert vault.owner() == org


# ─── views ───────────────────────────────────────────────────────────────────


def test_debitable__capped_account__is_min_of_balance_and_cap(vault, usdc, fund, cap, buyer):
    fund(buyer, 30 * USD)
    assert vault.debitable(buyer, usdc) == 0
    cap(buyer, per_epoch=10 * USD, total=25 * USD)
    assert vault.debitable(buyer, usdc) == quantize_per_epoch(10 * USD)


def test_next_settlement_at__after_a_settlement__is_the_next_window(vault, usdc, coordinator, chain):
    assert vault.next_settlement_at(usdc) == vault.genesis()
    receipt = vault.settle(1, usdc, [], [], 0, 0, ROOT, sender=coordinator)
    window = (receipt.timestamp - vault.genesis()) // vault.epoch_length()  # the settlement's own window
    assert vault.next_settlement_at(usdc) == vault.genesis() + (window + 1) * vault.epoch_length()


# ─── reentrancy through a malicious token ────────────────────────────────────


@pytest.fixture
def evil(project, vault, admin):
    """A listed withdrawable token that re-enters the vault from its transfers,
    holding 100 units in the vault as its own account."""
    token = admin.deploy(project.ReentrantToken)
    vault.list_asset(token, POLICY_WITHDRAWABLE, sender=admin)
    token.mint(token, 100, sender=admin)
    token.execute(token, token.approve.encode_input(vault, 2**256 - 1), sender=admin)
    token.execute(vault, vault.deposit.encode_input(token, 100), sender=admin)
    return token


def test_complete_exit__token_reenters_complete_exit__inner_call_blocked(vault, evil, admin, chain):
    evil.execute(vault, vault.request_exit.encode_input(evil, 100), sender=admin)
    chain.pending_timestamp += vault.thaw_period()
    evil.arm(vault, vault.complete_exit.encode_input(evil, 0, False), sender=admin)
    evil.execute(vault, vault.complete_exit.encode_input(evil, 0, False), sender=admin)
    assert evil.hook_calls() == 1 and not evil.hook_succeeded()
    assert evil.balanceOf(evil) == 100  # paid once
    assert vault.balance_of(evil, evil) == 0
    assert evil.balanceOf(vault) == 0


def test_deposit__token_reenters_deposit__inner_call_blocked(vault, evil, admin):
    evil.mint(evil, 50, sender=admin)
    evil.arm(vault, vault.deposit.encode_input(evil, 10), sender=admin)
    evil.execute(vault, vault.deposit.encode_input(evil, 40), sender=admin)
    assert evil.hook_calls() == 1 and not evil.hook_succeeded()
    assert vault.balance_of(evil, evil) == 140
    assert evil.balanceOf(vault) == 140


def test_balance_of__token_reads_it_mid_transfer__read_only_reentrancy_blocked(vault, evil, admin, chain):
    evil.execute(vault, vault.request_exit.encode_input(evil, 100), sender=admin)
    chain.pending_timestamp += vault.thaw_period()
    evil.arm(vault, vault.balance_of.encode_input(evil, evil), sender=admin)
    evil.execute(vault, vault.complete_exit.encode_input(evil, 0, False), sender=admin)
    assert evil.hook_calls() == 1 and not evil.hook_succeeded()


# ─── tokens that return False ────────────────────────────────────────────────


@pytest.fixture
def false_token(project, vault, admin, buyer):
    """A withdrawable token that can return False; the buyer holds 100 in the vault."""
    token = admin.deploy(project.FalseReturningToken)
    vault.list_asset(token, POLICY_WITHDRAWABLE, sender=admin)
    token.mint(buyer, 100, sender=buyer)
    token.approve(vault, 100, sender=buyer)
    vault.deposit(token, 100, sender=buyer)
    return token


def test_deposit__transfer_returns_false__reverts(vault, false_token, buyer):
    false_token.mint(buyer, 1, sender=buyer)
    false_token.approve(vault, 1, sender=buyer)
    false_token.set_failures(True, False, sender=buyer)
    with ape.reverts("vault: transfer failed"):
        vault.deposit(false_token, 1, sender=buyer)


def test_complete_exit__transfer_returns_false__reverts_and_keeps_the_exit(vault, false_token, buyer, chain):
    vault.request_exit(false_token, 100, sender=buyer)
    chain.pending_timestamp += vault.thaw_period()
    false_token.set_failures(True, False, sender=buyer)
    with ape.reverts("vault: transfer failed"):
        vault.complete_exit(false_token, 0, False, sender=buyer)
    false_token.set_failures(False, False, sender=buyer)
    vault.complete_exit(false_token, 0, False, sender=buyer)
    assert false_token.balanceOf(buyer) == 100


def test_exit_instant__spend_only_approve_returns_false__reverts(project, vault, escrow, admin, buyer, market, release):
    token = admin.deploy(project.FalseReturningToken)
    escrow.add_provider(token, 1_000, sender=admin)
    vault.list_asset(token, POLICY_SPEND_ONLY, sender=admin)
    token.mint(buyer, 10, sender=buyer)
    token.approve(vault, 10, sender=buyer)
    vault.deposit(token, 10, sender=buyer)
    token.set_failures(False, True, sender=buyer)
    nonce, expiry, signature = release(buyer, 10, asset=token)
    with ape.reverts("vault: approve failed"):
        vault.exit_instant(token, 10, 0, nonce, expiry, signature, sender=buyer)


def test_pause__already_paused__reverts(vault, pauser, admin):
    with ape.reverts("vault: not paused"):
        vault.unpause(sender=admin)
    vault.pause(sender=pauser)
    with ape.reverts("vault: already paused"):
        vault.pause(sender=pauser)


def test_current_window__time_passes__counts_epoch_lengths_since_genesis(vault, chain):
    # A view runs at the pending block's time, which the in-process chain takes from the
    # wall clock once that is past the last block; so the count is "at least" the target's.
    start = vault.current_window()
    target = vault.genesis() + (start + 3) * vault.epoch_length()
    chain.mine(timestamp=target)
    assert vault.current_window() >= start + 3
