"""All PROMPTEX settings in one model. Every setting has a default that runs the
local demo; each can be changed with an environment variable PROMPTEX_<NAME>.

The market's profile: `promptex up` writes what it started (the chain's RPC URL, the
ledger, the deployments folder, the ports) into its market folder (`profile.json` in
PROMPTEX_UP_STATE_DIR, default `promptex-market/`), and every command reads it below the
environment: flags > environment > profile > defaults. The chain has no default: without
a flag, a variable or a profile, a command that needs it refuses with NO_MARKET instead
of trying port 8545, which may be someone else's chain.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from promptex.files import write_whole

NO_MARKET = "no market: run `promptex up` or pass --rpc-url"
PROFILE_FILE = "profile.json"
PROFILE_ASIDE = "profile.json.unreadable"  # a damaged profile, moved aside by `promptex up` (which writes it again)
REWRITE_PROFILE = "run `promptex up` again, which writes it again"
DEFAULT_MARKET_DIR = "promptex-market"
ChainUser = Literal["indexer", "coordinator", "agent", "attestor", "dashboard"]


class ConfigurationError(Exception):
    """The settings cannot run a service as asked (a key to set, a deployment to record);
    the message says what to do. The CLI shows it as a one-line error."""


def market_dir() -> Path:
    """The market's folder (`promptex up --state`): PROMPTEX_UP_STATE_DIR or promptex-market."""
    return Path(os.environ.get("PROMPTEX_UP_STATE_DIR") or DEFAULT_MARKET_DIR)


def read_profile(folder: Path | None = None) -> dict[str, Any]:
    """The settings the market's profile records ({} when there is none). A damaged one is
    a ConfigurationError naming the file and the way out: `promptex up` sets it aside and
    writes it again (`set_aside_unreadable_profile`)."""
    path = (folder or market_dir()) / PROFILE_FILE
    try:
        recorded = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())  # one line
        raise ConfigurationError(f"cannot read the market's profile {path} ({reason}): {REWRITE_PROFILE}") from None
    values = recorded.get("settings") if isinstance(recorded, dict) else None
    if not isinstance(values, dict):
        raise ConfigurationError(f"the market's profile {path} has no settings: {REWRITE_PROFILE}")
    _check_profile_values(path, values)
    return values


def _check_profile_values(path: Path, values: dict[str, Any]) -> None:
    """Each value the profile gives a setting is one that setting takes (a hand edit, or a
    version that recorded another type): else a ConfigurationError naming the file and the
    setting. Before, pydantic's refusal named the environment variable (`bad setting
    PROMPTEX_GATEWAY_PORT='x'`), which no one had set, and stopped `promptex up` too."""
    known = {name: value for name, value in values.items() if name in Settings.model_fields}
    if not known:
        return
    blank = Settings.model_construct()  # no sources read: only the one value is validated
    for name, value in known.items():
        try:
            Settings.__pydantic_validator__.validate_assignment(blank, name, value)
        except ValidationError as exc:
            why = exc.errors()[0].get("msg", "refused")
            raise ConfigurationError(
                f"the market's profile {path} has a bad {name} ({why}): {REWRITE_PROFILE}"
            ) from None


def set_aside_unreadable_profile(folder: Path) -> str | None:
    """For `promptex up`, the command that writes the profile, before it reads any setting:
    a profile that cannot be read (cut short, not JSON, no settings, a value its setting
    refuses) is moved aside to `profile.json.unreadable` and one line says so (None: the
    profile reads, or there is none). It stopped `up` itself before: every setting is read through it, and the
    advice of every command's error, to run `promptex up` again, failed the same way."""
    try:
        read_profile(folder)
    except ConfigurationError as exc:
        reason = str(exc).removesuffix(f": {REWRITE_PROFILE}")
        try:
            (folder / PROFILE_FILE).replace(folder / PROFILE_ASIDE)
        except OSError as moved:
            raise ConfigurationError(f"{reason}, and it cannot be moved aside ({moved}): remove it") from None
        return f"{reason}: moved aside to {PROFILE_ASIDE}; this `promptex up` writes it again"
    return None


def write_profile(folder: Path, profile: dict[str, object]) -> Path:
    """The market's profile, written whole into its folder (`write_whole`): a reader never
    sees half of it, and a power loss never leaves one that stops every command."""
    path = folder / PROFILE_FILE
    write_whole(path, json.dumps(profile, indent=2) + "\n")
    return path


class ProfileSettingsSource(PydanticBaseSettingsSource):
    """The profile's values, for the settings they name (others, e.g. from a newer
    version, are ignored)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the whole file once

    def __call__(self) -> dict[str, Any]:
        fields = self.settings_cls.model_fields
        return {name: value for name, value in read_profile().items() if name in fields}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PROMPTEX_")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Arguments (what the CLI's flags pass) > environment > the market's profile.
        return init_settings, env_settings, dotenv_settings, file_secret_settings, ProfileSettingsSource(settings_cls)

    # ─── The market ──────────────────────────────────────────────────────────
    # The chain's JSON-RPC endpoint for every service and command that has none of its own
    # (below: indexer_rpc_url, …). None: the profile's; no profile: NO_MARKET.
    rpc_url: str | None = None

    def chain_rpc_url(self, service: ChainUser) -> str:
        """The chain `service` uses: its own setting, else the market's; else ConfigurationError."""
        url = self.optional_rpc_url(service)
        if url is None:
            raise ConfigurationError(NO_MARKET)
        return url

    def gateway_client_wait_seconds(self) -> float:
        """How long a client of the gateway (the dashboard's /v1 pass-through, `promptex proxy`)
        waits for an answer: the gateway's request deadline and 30 s for its settle. The gateway
        waits for a long plain answer up to its deadline and charges it when it comes: a client
        that gave up earlier would lose an answer it paid for."""
        return self.gateway_request_deadline_seconds + 30.0

    def optional_rpc_url(self, service: ChainUser) -> str | None:
        own: str | None = getattr(self, f"{service}_rpc_url")
        if service == "dashboard":
            own = own or self.indexer_rpc_url
        return own or self.rpc_url

    # Where deployments/<network>.json and the ABIs are written and read.
    deployments_dir: Path = Path("deployments")

    # ─── Ledger ──────────────────────────────────────────────────────────────
    # SQLite file (zero configuration, one gateway process) or postgresql://user@host/db
    # for many gateway processes.
    ledger_url: str = "sqlite:///promptex-ledger.sqlite3"
    # Connections per process (PostgreSQL; as many again may overflow).
    ledger_pool_size: int = 10
    # PostgreSQL: how long a new connection (the pool's, a process's lock connection, a
    # ledger thread's) may take before it fails; libpq's least is 2. Without it, a database
    # host that drops packets held a reserve for the OS's connect timeout (minutes). A URL's
    # own `connect_timeout` wins.
    ledger_connect_timeout_seconds: int = Field(default=5, ge=2)
    # How long a SQLite writer waits for the write lock before giving up.
    ledger_busy_timeout_ms: int = 30_000
    # SQLite: FULL makes every commit survive power loss; NORMAL only a process crash (faster).
    ledger_sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    # The EIP-712 domain's chainId in wallet-binding messages, and how long one may be signed.
    wallet_binding_chain_id: int = 31337
    wallet_binding_ttl_seconds: int = 600
    # PostgreSQL: lot capacity a gateway process leases at a time (USD micro at list price),
    # so concurrent holds do not all queue on the lot's row; see ledger.holds.capacity.
    ledger_capacity_slice_usd_micro: int = 5_000_000

    # ─── Metering ────────────────────────────────────────────────────────────
    # A model catalog file replacing the one shipped in promptex/metering/catalog.toml.
    model_catalog: Path | None = None
    # Protocol fee on USDC-paid requests, in basis points on top of the listed lot's price.
    protocol_fee_bps: int = 500

    # ─── Gateway (/v1) ───────────────────────────────────────────────────────
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8080
    # What a request pays in when neither the key nor the x-promptex-asset header says:
    # "USDC" or "provider" (the model's provider token).
    gateway_default_asset: str = "USDC"
    # Largest request body accepted (bytes); larger ones get 413.
    gateway_max_body_bytes: int = 1_048_576
    # Output tokens a hold covers (and the limit sent upstream) when a request names no
    # max_tokens, and the most a request may name.
    gateway_default_max_tokens: int = 4_096
    gateway_max_output_tokens: int = 32_768
    # How long a hold lives if the gateway dies mid-request (a running gateway extends the
    # holds of requests still in flight, up to their deadline): at least the upstream
    # timeouts (connect + gateway_upstream_timeout_seconds) plus the margin.
    gateway_hold_ttl_seconds: int = 300
    gateway_hold_margin_seconds: float = 60.0
    # How often the gateway sweeps expired holds (any process's) and extends its own.
    gateway_sweep_seconds: float = 10.0
    # Upstream timeouts: connecting; then a stream's head and between streamed chunks, and the
    # whole of a plain answer (or a stream's wait for its first content) plus its output limit
    # at the floor rate below, within the request's deadline (`Gateway.upstream_wait`): "hi"
    # with max_tokens 100 fails over after 125 s, a 16k-token answer waits until the deadline.
    gateway_upstream_connect_timeout_seconds: float = 5.0
    gateway_upstream_timeout_seconds: float = 120.0
    gateway_upstream_floor_tokens_per_second: float = 20.0
    # The longest a request is served, from its arrival (the openai SDK's own default
    # timeout): past it a request not yet answered is cancelled (504, its hold released)
    # and a stream is cut off (charged as cut short). An expired hold's late answer is
    # settled until this plus gateway_hold_margin_seconds after its hold was made — its
    # late-answer horizon, until which it keeps its key's budget — and refused after it.
    gateway_request_deadline_seconds: float = 600.0
    # Signed mode: the time left to the coordinator to settle a request's charge before its
    # session's vouchers stop settling on chain (the close of its last window): no charge
    # lands on a lane later than that close less this (the ledger refuses it: settled never,
    # it would be refunded to the buyer and its seller left unpaid). A voucher whose request
    # could be charged later (arrival + the request deadline + the hold margin) is served
    # under a deadline cut to fit — that close less this, less the hold margin, less now —
    # and refused, 403 session_ending, once the cut deadline would be below the next setting.
    gateway_signed_settle_seconds: float = 120.0
    gateway_signed_min_deadline_seconds: float = 30.0
    # Requests served at once by this process, and per lot; beyond them: fast 429s.
    gateway_max_inflight: int = 512
    gateway_lot_max_inflight: int = 128
    # No one client can starve the others (promptex.gateway.admission, .guard). Before any
    # of the slots above is taken, a request's headers must arrive within the header
    # timeout and its body within the body timeout (408, or the connection closed), and
    # one client address may hold at most so many connections and requests in flight, one
    # API key so many requests in flight (429 beyond them). Client addresses are the
    # socket's, or X-Forwarded-For's when the connection comes from one of the trusted
    # proxies (their own connections are not limited per address).
    gateway_header_timeout_seconds: float = 10.0
    gateway_body_timeout_seconds: float = 30.0
    gateway_max_connections_per_address: int = 256
    gateway_max_inflight_per_address: int = 128
    gateway_max_inflight_per_key: int = 64
    gateway_trusted_proxies: list[str] = []
    # Lot health (promptex.gateway.health): a lot whose upstream failed this many times in
    # a row, or among its last twice as many answers, is skipped for the cool-down, then
    # probed by one request.
    gateway_lot_breaker_failures: int = 5
    gateway_lot_breaker_cooldown_seconds: float = 30.0
    # The operator's address: /metrics (Prometheus), /healthz, /readyz — never the public
    # one. Port 0: not served. `--workers N` serves worker i on port + i.
    gateway_metrics_host: str = "127.0.0.1"
    gateway_metrics_port: int = 9464
    # Logs: one JSON object a line carrying the request id ("json"), or plain text; an
    # access log line per /v1 request (off by default: it costs CPU at load).
    gateway_log_format: Literal["json", "text"] = "json"
    gateway_access_log: bool = False
    # JSON nested deeper than this (objects and arrays) is refused with 400.
    gateway_max_json_depth: int = 32
    # Past saturation, shed load with fast 429s, refused before the body is read (see
    # promptex.gateway.overload): while, for a whole window, the event loop woke up later
    # than gateway_shed_wait_ms, or ledger calls waited that long for a thread, or more
    # than gateway_shed_accept_backlog connections waited to be accepted (Linux) — and at
    # least gateway_shed_min_inflight requests are in flight (without requests piling up,
    # lag is a busy machine descheduling the process, not overload).
    gateway_shed_wait_ms: float = 20.0
    gateway_shed_accept_backlog: int = 4
    gateway_shed_window_ms: float = 50.0
    gateway_shed_min_inflight: int = 32
    # New connections the event loop accepts per iteration (copies of the listening
    # socket; see promptex.serving.listening_sockets): a burst of new clients is answered,
    # or refused with 429, instead of waiting in the kernel's accept queue.
    gateway_accept_per_iteration: int = 16
    # How often lots and their remaining face value are re-read from the database.
    gateway_lot_refresh_seconds: float = 2.0
    # How long a looked-up API key is trusted before it is read again (revocation delay).
    gateway_key_cache_seconds: float = 5.0
    # SQLite ledger: seconds between the gateway's WAL checkpoints, run in the background
    # instead of inside a request's commit (0: leave them to SQLite, in the commits).
    gateway_sqlite_checkpoint_seconds: float = 2.0
    # Threads for ledger calls (reserve, settle, release) on PostgreSQL; SQLite gets one
    # (it has one writer at a time). Keep it within ledger_pool_size. Three keep a core
    # busy (about 3,000 calls a second at 1 ms a round trip); more only add lock waits on
    # a hot balance row, and CPU when the database shares the gateway's core (bench: 8
    # threads cost PostgreSQL ~15 % more CPU a request than 3).
    gateway_ledger_threads: int = 3
    # Group commit on SQLite: holds, settles and releases that queue for the ledger thread
    # while it is busy commit together, up to this many (`gateway.ledger_threads`); 1: off.
    gateway_ledger_group_max: int = 64
    # A hold's, settle's or release's write that finds the SQLite ledger idle (nothing
    # queued for the ledger thread, the write lock free at once, such writes coming less
    # often than one each `gateway_ledger_inline_gap_ms` on average) runs on the event loop
    # itself instead of waking the ledger thread and then being woken by it
    # (`gateway.ledger_threads`). "normal": only where commits do not wait for the disk
    # (synchronous NORMAL); "always": with FULL too (the loop then waits for each
    # commit's fsync: 0.05-8 ms measured, not for production); "off" (the default
    # until a quiet A/B shows it pays, see the README's "Where it goes now"): never.
    gateway_ledger_inline: Literal["off", "normal", "always"] = "off"
    gateway_ledger_inline_gap_ms: float = 1.0
    # Paying a model in another provider's token converts through the Oracle's TWAP of the
    # paying token, read over this JSON-RPC endpoint (None, the default: no payment across
    # tokens — experimental: the coordinator quarantines such records, it cannot settle
    # them on chain, so the listed seller is not paid; leave it off outside tests) from
    # the deployment deployments/<gateway_twap_network>.json, averaged over the window,
    # re-read every refresh interval in the background; a price older than max_age is not
    # used (such requests get 503 and move no money).
    gateway_twap_rpc_url: str | None = None
    gateway_twap_network: str = "local"
    gateway_twap_window_seconds: int = 1_800
    gateway_twap_refresh_seconds: float = 30.0
    gateway_twap_max_age_seconds: float = 120.0
    # Envelope encryption of sellers' upstream keys: a master key (base64 of 32 bytes) from
    # the environment, or a file of id:base64 lines (the last is current; created if missing).
    gateway_master_key: SecretStr | None = None
    gateway_master_key_file: Path = Path("promptex-master.key")

    # ─── Buyers ──────────────────────────────────────────────────────────────
    # Welcome credit for a new buyer's first bound wallet, spend-only, from the treasury's
    # promotional account. 0 by default: on a live network someone must fund the treasury
    # with real money first. `promptex up` sets 10 USDC in its profile (it funds the local
    # treasury with test dollars).
    welcome_credit_asset: str = "USDC"
    welcome_credit_amount: int = 0  # smallest units
    welcome_credit_treasury: str = "promotions"

    # ─── Sellers ─────────────────────────────────────────────────────────────
    # The network whose deployment (deployments/<network>.json) lots are opened on, its
    # node, and the attestor's private key (an account with CreditEscrow's attestor role;
    # None on the local network: anvil's development account 7 or 0, whichever has it).
    attestor_network: str = "local"
    attestor_private_key: SecretStr | None = None
    attestor_rpc_url: str | None = None  # None: rpc_url, the market's chain
    # The seller's own key (never logged), for `promptex seller add-capacity` to approve the
    # bond and `promptex seller close` to close; without it the seller approves from its
    # wallet (add-capacity then says what is missing) and cannot close from the CLI.
    seller_private_key: SecretStr | None = None
    # A lot stops being routed one settlement epoch (the vault's) and this margin before its
    # expiry, so the coordinator posts its last usage while the escrow still draws it.
    seller_posting_margin_seconds: int = 300
    # How long a seller command waits for its transaction's receipt.
    seller_tx_timeout_seconds: float = 120.0

    # ─── Indexer ─────────────────────────────────────────────────────────────
    # The chain it follows: the JSON-RPC endpoint, and the deployment whose contracts it reads.
    indexer_rpc_url: str | None = None  # None: rpc_url, the market's chain
    indexer_network: str = "local"
    # Index only up to head − N. 0 suits anvil (it never reorgs by itself; the indexer still
    # rewinds any reorg it sees); use ~12 on an L1, more on chains with deep reorgs.
    indexer_confirmations: int = 0
    # First block to index on an empty ledger; None: the block the followed contracts were
    # deployed in (found from the chain), or 0 when the node cannot tell.
    indexer_start_block: int | None = None
    # Seconds between polls once caught up.
    indexer_poll_seconds: float = 2.0
    # eth_getLogs block ranges adapt between 1 and this many blocks, aiming at about
    # indexer_target_logs logs per batch (one database transaction each).
    indexer_max_block_range: int = 2_000
    indexer_target_logs: int = 10_000
    # Seconds before one JSON-RPC request is abandoned (the block range then shrinks).
    indexer_rpc_timeout_seconds: float = 30.0
    # Block hashes kept for reorg detection: a reorg deeper than this stops the indexer.
    indexer_keep_blocks: int = 10_000
    # Seconds between progress lines in the log.
    indexer_log_seconds: float = 10.0

    # ─── Coordinator ─────────────────────────────────────────────────────────
    # The chain it settles on: the JSON-RPC endpoint and the deployment (deployments/<network>.json).
    coordinator_rpc_url: str | None = None  # None: rpc_url, the market's chain
    coordinator_network: str = "local"
    # The vault coordinator's (and escrow settler's) key; never logged. None on the local
    # network: anvil's public development account 0, the deploy's default coordinator.
    coordinator_private_key: SecretStr | None = None
    # Seconds between passes (each settles at most once per asset per epoch window).
    coordinator_poll_seconds: float = 2.0
    # How long a co-signed instant-exit release stays usable (seconds).
    coordinator_release_expiry_seconds: int = 600
    # The coordinator's HTTP door (promptex.coordinator.door: wallet-signed instant exits and
    # SessionKeys): where `promptex coordinator` serves it (port 0: not served; a port taken
    # is logged and settlement goes on), how many requests a wallet may have answered per
    # hour, and the URL commands and the dashboard post to (None: no door known — `promptex
    # up` writes its door's URL into the market's profile).
    coordinator_door_host: str = "127.0.0.1"
    coordinator_door_port: int = 8086
    coordinator_door_requests_per_hour: int = 6
    coordinator_door_url: str | None = None
    # Leader lease: how long a pass's lease lasts, and this instance's name (None: host:pid).
    # A restarted instance with the same name takes its lease back at once.
    coordinator_lease_seconds: int = 30
    coordinator_instance_id: str | None = None
    # How long to wait for a receipt before leaving a transaction to the next pass.
    coordinator_tx_timeout_seconds: float = 120.0
    # A quarantined usage record is tried again in a later epoch this often while its cause
    # may still be fixed (a wallet bound, capacity opened, a cap renewed), and refunded to
    # its payer in the ledger this long after it was served if it still cannot settle (at
    # once when the chain can never settle it: its lot never opened, or ended).
    coordinator_quarantine_retry_seconds: int = 600
    coordinator_quarantine_refund_seconds: int = 86_400
    # Blocks after which a mined transaction is final to the coordinator: receipts this
    # recent are re-checked each pass, and a failed batch's records settle under a later
    # epoch (or are refunded) only once its failure is this deep. Lower it only on a chain
    # whose reorgs are shallower (a local anvil has none, and mines only as it is sent to).
    coordinator_reorg_window_blocks: int = Field(default=128, ge=1)

    # ─── Redemption agent ────────────────────────────────────────────────────
    # The chain it redeems on: the JSON-RPC endpoint and the deployment (deployments/<network>.json).
    agent_rpc_url: str | None = None  # None: rpc_url, the market's chain
    agent_network: str = "local"
    # The agent's signing key (the address users grant); never logged. None on the local
    # network: anvil's public development account 8 (0x23618e81E3f5cdF7f54C3d65f7FBc0aBf5B21E8f).
    agent_private_key: SecretStr | None = None
    # Seconds between passes (advance redemptions, send notifications) and between rule checks.
    agent_poll_seconds: float = 5.0
    agent_rules_interval_seconds: float = 60.0
    # Latest block time of a redeem's swap, from signing (a stale rebroadcast reverts: tokens stay).
    agent_swap_deadline_seconds: int = 300
    # How long to wait for a receipt before leaving a transaction to the next pass.
    agent_tx_timeout_seconds: float = 60.0
    # Provider billing API: the URL a linked account uses unless it names its own, the
    # timeout of one call, and the retry backoff (doubling from the first to the most).
    agent_billing_url: str = "http://127.0.0.1:9100"
    agent_billing_timeout_seconds: float = 10.0
    agent_billing_retry_seconds: int = 5
    agent_billing_retry_max_seconds: int = 300
    # Credits are never bought this close to a redemption's refund deadline: past it the
    # user may refund, and the operator would not be reimbursed.
    agent_purchase_margin_seconds: int = 600
    # Notifications over SMTP; without a host they stay in the outbox, marked unsent.
    agent_smtp_host: str | None = None
    agent_smtp_port: int = 587
    agent_smtp_user: str | None = None
    agent_smtp_password: SecretStr | None = None
    agent_smtp_from: str = "promptex-agent@localhost"
    agent_smtp_starttls: bool = True
    # The fake provider billing API (`promptex fake-billing`): port, and its receipt signing
    # key (None on the local network: anvil's public development account 9,
    # 0xa0Ee7A142d267C1f36714E4a8F75612F20a79720, to register as the billing signer).
    agent_fake_billing_port: int = 9100
    agent_fake_billing_private_key: SecretStr | None = None

    # ─── promptex up ─────────────────────────────────────────────────────────
    # The local market's folder: the chain's state (anvil --state), so a restart keeps it.
    up_state_dir: Path = Path("promptex-market")
    # Seconds between anvil's dumps of its state (it also dumps when stopped).
    up_state_interval_seconds: int = 10

    # ─── Dashboard ───────────────────────────────────────────────────────────
    # `promptex dashboard`: the chain its read-only /rpc proxy and pools view read (None:
    # indexer_rpc_url), the deployment (None: indexer_network), the gateway it serves as /v1
    # on its own origin (None: http://gateway_host:gateway_port), the built front end (None:
    # dashboard/dist of the checkout).
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = 8090
    dashboard_rpc_url: str | None = None
    dashboard_network: str | None = None
    dashboard_gateway_url: str | None = None
    dashboard_dist_dir: Path | None = None
    # The upstream base URLs a seller may onboard from the dashboard. The server calls the
    # URL a seller types (to verify the key), so without a list any key holder could make
    # it probe any host and port. Exact match, a trailing slash ignored; the operator's
    # own `promptex seller add-capacity` takes any URL. Env: a JSON list.
    dashboard_seller_base_urls: list[str] = [
        "https://api.openai.com/v1",
        "https://api.anthropic.com/v1",
        "https://generativelanguage.googleapis.com/v1beta/openai",
    ]

    # ─── Buyer's proxy (signed mode) ─────────────────────────────────────────
    # `promptex proxy`: the local endpoint (always on the loopback address), the gateway it
    # forwards to (None: http://gateway_host:gateway_port) with the buyer's API key (None:
    # the local market's demo buyer), the session grant `promptex session create` wrote
    # (None: <market folder>/session.json; the voucher logs go beside it), the output a
    # request naming no max_tokens is held for, the most one request may hold (None: no
    # limit but the session maximum), how long a request waits for a free lane, and N, the
    # buyer's bound: signing stops when answers on one lane without the lane's total (an
    # error, a stream without its last event, a connection dropped after the request left)
    # may have cost more than N − 1 of the lane's largest hold (each its hold until a later
    # answer's total shows what it charged: then that), so at most N holds per lane; and
    # its tolerance, in basis points of the lane's exactly checked units, allowed beyond the
    # N − 1 holds (100: 1 %; 0: none) so an honest gateway's small losses (a crash after a
    # settle) do not add up to a stop over a long session.
    proxy_port: int = 8788
    proxy_gateway_url: str | None = None
    proxy_api_key: SecretStr | None = None
    proxy_session_file: Path | None = None
    proxy_default_output_tokens: int = 1_024
    proxy_max_hold_units: int | None = None
    proxy_lane_wait_seconds: float = 30.0
    proxy_stop_after_errors: int = 3
    proxy_stop_tolerance_bp: int = Field(default=100, ge=0, le=10_000)
    proxy_reasoning_bp: int = Field(default=10_000, ge=0, le=10_000)  # `buyerside.signer.REASONING_BP`


@lru_cache(maxsize=1)
def settings() -> Settings:
    return Settings()
