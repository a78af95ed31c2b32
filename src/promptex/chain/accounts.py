"""Picking the signing account: an ape account alias, or a test account locally."""

from __future__ import annotations

from typing import Any

from ape import accounts, networks


def resolve_account(alias: str | None, index: int = 0) -> Any:
    """`alias` names an ape account (a keyfile made with `ape accounts import`);
    `TEST::N` names local test account N. Without an alias, a local chain uses
    test account `index` and a live network refuses."""
    if alias:
        if alias.startswith("TEST::"):
            return accounts.test_accounts[int(alias.removeprefix("TEST::"))]
        return accounts.load(alias)
    if networks.provider.network.name == "local":
        return accounts.test_accounts[index]
    raise ValueError("on a live network pass --account ALIAS (see `ape accounts list`)")


class NotThatWallet(Exception):
    """`signing_account(..., wallet=W)`: the alias names another address (`address`)."""

    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.address = address


def signing_account(alias: str | None, *, yes: bool, wallet: str | None = None) -> Any:
    """The account a command signs with (`resolve_account`); `yes` (a command's --yes): it
    signs without asking, a keyfile unlocked now (its passphrase asked, or
    APE_ACCOUNTS_<alias>_PASSPHRASE). `wallet`: NotThatWallet unless the account is that
    address, checked before anything is unlocked."""
    account = resolve_account(alias)
    if wallet is not None and str(account.address).lower() != wallet.lower():
        raise NotThatWallet(str(account.address))
    if yes and hasattr(account, "set_autosign"):
        account.set_autosign(True)
    return account


class ApeTxSigner:
    """An ape account (`signing_account`) as a `chain.sender.TxSigner`: the transaction dict
    made ape's transaction and signed by the account (a keyfile asks, or signs at once after
    --yes); what the seller commands sign with under --account ALIAS, beside a raw key."""

    def __init__(self, account: Any) -> None:
        self.account = account
        self.address = str(account.address)

    def sign(self, tx: dict[str, Any]) -> tuple[str, str]:
        txn = networks.ethereum.create_transaction(**{k: v for k, v in tx.items() if k != "from"})
        signed = self.account.sign_transaction(txn)
        if signed is None:
            raise ValueError(f"{self.address} did not sign the transaction")
        return "0x" + bytes(signed.txn_hash).hex(), "0x" + bytes(signed.serialize_transaction()).hex()
