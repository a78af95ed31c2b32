"""The market as the dashboard shows it, read from the chain over JSON-RPC: the deployment's
addresses and tokens, and every pool with its reserves, spot price and Oracle TWAP."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

from web3.exceptions import ContractLogicError

from promptex.chain.deployments import Deployment, load_deployment
from promptex.chain.node import connect, deployed_contract
from promptex.protocol.providers import PROVIDER_TOKENS
from promptex.protocol.units import TOKEN_DECIMALS, USDC_DECIMALS, USDC_SYMBOL

TWAP_WINDOWS = (300, 3_600, 86_400)  # seconds: 5 min, 1 h, 24 h
MAX_POINTS = 48  # TWAP chart points per pool (the Oracle's ring holds at most CARDINALITY)

# The contracts a browser talks to (the rest stay server-side).
PUBLIC_CONTRACTS = (
    "USDC", "CreditsVault", "CreditEscrow", "Router", "Factory", "Oracle", "RedemptionEscrow", "Options", "Perp",
)  # fmt: skip


def public_config(deployment: Deployment) -> dict[str, Any]:
    """What the browser needs to talk to the chain: chain id, addresses, the assets."""
    providers = {t.symbol: t for t in PROVIDER_TOKENS}
    assets = [{"symbol": USDC_SYMBOL, "address": deployment.address("USDC"), "decimals": USDC_DECIMALS, "kind": "usdc"}]
    for symbol in deployment.token_symbols():
        spec = providers.get(symbol)
        assets.append(
            {
                "symbol": symbol,
                "address": deployment.address(f"token:{symbol}"),
                "decimals": TOKEN_DECIMALS,
                "kind": "provider",
                "provider": spec.provider if spec else None,
                "face_value_usd_micro": spec.face_value_usd_micro if spec else None,
            }
        )
    return {
        "network": deployment.network,
        "chain_id": deployment.chain_id,
        "deployment_block": deployment.block_number,  # where the browser starts reading event logs
        "contracts": {name: deployment.address(name) for name in PUBLIC_CONTRACTS if name in deployment.contracts},
        "assets": assets,
    }


class Market:
    """Reads pools and prices; one web3 connection to the node."""

    def __init__(self, rpc_url: str, network: str, deployments_dir: Path) -> None:
        self.w3 = connect(rpc_url, timeout=10)
        self.network = network
        self.deployments_dir = deployments_dir

    def deployment(self) -> Deployment:
        return load_deployment(self.network, self.deployments_dir)

    def now(self) -> int:
        """The chain's time, as the coordinator's door reads it (`chain.sender.Web3Sender.now`):
        the pending block's, what the next transaction will see."""
        return int(self.w3.eth.get_block("pending")["timestamp"])

    def _contract(self, deployment: Deployment, name: str, address: str | None = None) -> Any:
        return deployed_contract(self.w3, deployment, name, address)

    def pools(self) -> list[dict[str, Any]]:
        deployment = self.deployment()
        symbols = {deployment.address("USDC").lower(): USDC_SYMBOL}
        for symbol in deployment.token_symbols():
            symbols[deployment.address(f"token:{symbol}").lower()] = symbol
        factory = self._contract(deployment, "Factory")
        oracle = self._contract(deployment, "Oracle")
        now = int(self.w3.eth.get_block("latest")["timestamp"])
        out = []
        for i in range(int(factory.functions.pool_count().call())):
            address = factory.functions.all_pools(i).call()
            pool = self._contract(deployment, "PoolBlueprint", address)
            token0, token1 = pool.functions.token0().call(), pool.functions.token1().call()
            r0, r1, _ = pool.functions.get_reserves().call()
            fee = int(pool.functions.fee().call())
            sym0, sym1 = symbols.get(token0.lower(), token0), symbols.get(token1.lower(), token1)
            if sym1 == USDC_SYMBOL:
                token, token_reserve, usdc_reserve = token0, r0, r1
            elif sym0 == USDC_SYMBOL:
                token, token_reserve, usdc_reserve = token1, r1, r0
            else:
                token, token_reserve, usdc_reserve = token0, r0, 0
            symbol = symbols.get(token.lower(), token)
            # USDC per whole token: (usdc_reserve / 10**6) / (token_reserve / 10**18)
            scale = 10 ** (TOKEN_DECIMALS - USDC_DECIMALS)
            spot = Fraction(usdc_reserve * scale, token_reserve) if token_reserve else Fraction(0)
            out.append(
                {
                    "address": address,
                    "symbol": symbol,
                    "token": token,
                    "token0": token0,
                    "token1": token1,
                    "fee": fee,
                    "reserve0": str(r0),
                    "reserve1": str(r1),
                    "token_reserve": str(token_reserve),
                    "usdc_reserve": str(usdc_reserve),
                    # USDC smallest units per whole token (18 decimals), as a decimal string
                    "price": _decimal(spot),
                    "twap": {str(w): self._twap(oracle, token, w) for w in TWAP_WINDOWS},
                    "history": self._history(oracle, token),
                    "chain_time": now,
                }
            )
        return out

    def _twap(self, oracle: Any, token: str, window: int) -> str | None:
        """USDC per whole token over the window, or None while the Oracle does not cover it."""
        try:
            value = int(oracle.functions.consult(token, window).call())
        except (ContractLogicError, ValueError):
            return None
        return _decimal(Fraction(value, 10**18 * 10**USDC_DECIMALS))

    def _history(self, oracle: Any, token: str) -> list[dict[str, Any]]:
        """Average price between consecutive Oracle observations, oldest first: the TWAP chart."""
        try:
            count = min(int(oracle.functions.observation_count(token).call()), MAX_POINTS + 1)
            observations = [oracle.functions.observation(token, rank).call() for rank in range(count)]
        except (ContractLogicError, ValueError):
            return []
        observations.reverse()
        points = []
        for (t0, c0), (t1, c1) in zip(observations, observations[1:], strict=False):
            span = (t1 - t0) % 2**32
            if span:
                # the accumulator sums UQ112.112 (USDC units per token unit) × seconds, modulo 2**256
                average = Fraction((c1 - c0) % 2**256, span * 2**112)
                points.append({"t": t1, "price": _decimal(average * 10 ** (TOKEN_DECIMALS - USDC_DECIMALS))})
        return points


def _decimal(value: Fraction, places: int = 12) -> str:
    scaled = value.numerator * 10**places // value.denominator
    text = f"{scaled // 10**places}.{scaled % 10**places:0{places}d}".rstrip("0").rstrip(".")
    return text
