"""The provider billing API as the agent sees it, and its HTTP client.

`add_credits` is idempotent by key: calling it again with the same key returns the
first purchase's receipt and buys nothing, which is what makes a retry after a crash
or a timeout safe; the same key with another purchase (another escrow redemption id,
sale or amount) is refused and buys nothing. The receipt carries exactly the fields
RedemptionEscrow.release checks, signed (EIP-712) by the provider's billing signer: the
escrow redemption id AND the sale (`promptex.protocol.redemption.sale_id`: the agent's
key and its redeem's nonce), so a receipt never releases another sale a reorg put under
the same id.

That refusal is a KEY CONFLICT (`BillingError.key_conflict`): the key already bought
another purchase, so nothing is ever bought under it for this one, and the agent stops
asking (after a reorg moved a sale whose purchase bought for its old escrow id: rejected,
for the user to refund). Each provider says it its own way, and its adapter must map its
own answers to it (`HttpBilling.key_conflict`): the fake billing API answers 409
(`KEY_CONFLICT`); Stripe answers a key reused with other parameters 400
`idempotency_error`, and its 409 means "a request with this key is in flight", which must
be retried, never read as "already bought" (it may yet buy: `promptex redeem` and
`promptex agent run` asking at one moment). Any answer an adapter does not map is retried.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import httpx


@dataclass(frozen=True)
class BillingAccount:
    """A linked account as the billing API knows it; `credential` is the scoped key."""

    provider: str
    account_id: str
    account_salt: bytes
    account_ref: bytes
    credential: str
    billing_url: str


@dataclass(frozen=True)
class BillingReceipt:
    redemption_id: int
    sale: bytes  # bytes32: the sale the credits were bought for (`sale_id`)
    provider: bytes  # bytes32
    account_ref: bytes  # bytes32
    usd_micro: int
    billing_ref: bytes  # bytes32: the provider's receipt id
    signature: bytes  # 65 bytes


class BillingError(Exception):
    """The billing API failed, timed out or refused; `retryable` says whether to try again,
    `status` is the HTTP status it answered (None: no answer, or an unreadable one), and
    `key_conflict` whether the adapter read the answer as its provider's key conflict (the
    idempotency key already bought another purchase: see the module's docstring)."""

    def __init__(
        self, message: str, *, retryable: bool = True, status: int | None = None, key_conflict: bool = False
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.key_conflict = key_conflict


KEY_CONFLICT = 409  # the fake billing API's answer to a key that already bought another purchase


class BillingAdapter(Protocol):
    def balance(self, account: BillingAccount) -> int: ...

    def add_credits(
        self, account: BillingAccount, usd_micro: int, idempotency_key: str, *, redemption_id: int, sale: bytes
    ) -> BillingReceipt: ...


def _hex(value: str) -> bytes:
    return bytes.fromhex(value.removeprefix("0x"))


def receipt_from_json(body: dict[str, Any]) -> BillingReceipt:
    return BillingReceipt(
        redemption_id=int(body["redemption_id"]),
        sale=_hex(body["sale"]),
        provider=_hex(body["provider"]),
        account_ref=_hex(body["account_ref"]),
        usd_micro=int(body["usd_micro"]),
        billing_ref=_hex(body["billing_ref"]),
        signature=_hex(body["signature"]),
    )


class HttpBilling:
    """A billing API over HTTP (the fake one's wire format). 5xx, 429, timeouts and
    connection errors are retryable; other 4xx are not. A real provider's adapter
    overrides `key_conflict` (and its paths and bodies) with its own answers."""

    def key_conflict(self, response: httpx.Response) -> bool:
        """Whether `response` says the idempotency key already bought another purchase: the
        fake billing API's 409. Stripe's would be a 400 whose error type is
        `idempotency_error` (its 409, a request with the key in flight, is not one)."""
        return response.status_code == KEY_CONFLICT

    def __init__(self, timeout: float = 10.0, transport: httpx.BaseTransport | None = None) -> None:
        self._client = httpx.Client(timeout=timeout, transport=transport)

    def close(self) -> None:
        self._client.close()

    def _call(self, method: str, account: BillingAccount, path: str, **kwargs: Any) -> dict[str, Any]:
        url = account.billing_url.rstrip("/") + path
        headers = {"authorization": f"Bearer {account.credential}", **kwargs.pop("headers", {})}
        try:
            response = self._client.request(method, url, headers=headers, **kwargs)
        except httpx.TimeoutException:
            raise BillingError(f"billing API timed out ({method} {path})") from None
        except httpx.HTTPError as exc:
            raise BillingError(f"billing API unreachable ({type(exc).__name__})") from None
        if response.status_code >= 400:
            retryable = response.status_code >= 500 or response.status_code == 429
            raise BillingError(
                f"billing API answered {response.status_code}: {response.text[:200]}", retryable=retryable,
                status=response.status_code, key_conflict=self.key_conflict(response),
            )  # fmt: skip
        try:
            body: dict[str, Any] = response.json()
        except ValueError:
            raise BillingError("billing API answered something that is not JSON") from None
        return body

    def balance(self, account: BillingAccount) -> int:
        body = self._call("GET", account, f"/v1/accounts/{account.account_id}/balance")
        return int(body["usd_micro"])

    def add_credits(
        self, account: BillingAccount, usd_micro: int, idempotency_key: str, *, redemption_id: int, sale: bytes
    ) -> BillingReceipt:
        body = self._call(
            "POST",
            account,
            f"/v1/accounts/{account.account_id}/credits",
            headers={"idempotency-key": idempotency_key},
            json={
                "usd_micro": usd_micro,
                "redemption_id": redemption_id,
                "sale": "0x" + sale.hex(),
                "provider": account.provider,
                "account_salt": "0x" + account.account_salt.hex(),
            },
        )
        try:
            return receipt_from_json(body)
        except (KeyError, ValueError) as exc:
            raise BillingError(f"billing API answered a malformed receipt ({exc})") from None
