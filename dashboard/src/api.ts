// The dashboard server's JSON endpoints, and the user's API key (kept in this tab only).
import type { Address, Hex } from "viem";
import type { Release } from "./exit";

export interface AssetInfo {
  symbol: string;
  address: Address;
  decimals: number;
  kind: "usdc" | "provider";
  provider?: string | null;
  face_value_usd_micro?: number | null;
}

export interface Config {
  network: string;
  chain_id: number;
  deployment_block: number;
  contracts: Record<string, Address>;
  assets: AssetInfo[];
  rpc: string;
  gateway: string;
}

export interface Pool {
  address: Address;
  symbol: string;
  token: Address;
  token0: Address;
  token1: Address;
  fee: number;
  reserve0: string;
  reserve1: string;
  token_reserve: string;
  usdc_reserve: string;
  price: string;
  twap: Record<string, string | null>;
  history: { t: number; price: string }[];
  chain_time: number;
}

export interface UsageRecord {
  request_id: string;
  model: string;
  asset: string;
  input_tokens: number;
  output_tokens: number;
  cost: string;
  settled_at: number;
  status: string;
  lot_id: number | null;
  epoch: number | null;
  batch_status: string | null;
  tx_hash: string | null;
  // Where the charge stands, in words: settled on chain in epoch N, in a batch, waiting for
  // the next settlement, held back (and why), or refunded (and why).
  settlement: string;
  refund_reason: string | null;
  // capped: charged under the signed spend cap; signed (issue 23): covered by the session
  // key's ceiling voucher for its lane (the lane's total charged never exceeds `ceiling`).
  mode?: "capped" | "signed";
  voucher?: { session: number; lane: number; ceiling: string } | null;
}

// What the key's account spent per model and per UTC day (GET /api/usage-totals), exact units.
export interface UsageTotals {
  records: number;
  complete: boolean; // false: more records than the server reads for totals
  per_model: { model: string; asset: string; requests: number; tokens: number; cost: string }[];
  per_day: { day: string; asset: string; requests: number; cost: string }[];
}

export interface Epoch {
  id: number;
  asset: string;
  epoch: number;
  status: string;
  records: number;
  total: string;
  usage_root: Hex;
  tx_hash: string | null;
  created_at: number;
  error: string | null;
}

export interface Proof {
  asset: string;
  epoch: number;
  batch_status: string;
  leaf_version?: number; // absent: 1
  record: {
    request_id: string;
    account: Address;
    model: string;
    input_tokens: number;
    output_tokens: number;
    cost: string;
    lot_id: number;
    cache_read_tokens?: number; // version 2 leaves
    cache_write_tokens?: number;
    cache_write_1h_tokens?: number;
    reasoning_tokens?: number;
  };
  leaf: Hex;
  root: Hex;
  proof: Hex[];
}

export interface Balance {
  posted: string;
  held: string;
  locked: string;
  spendable: string;
  cap_remaining: string;
}

export interface Debt {
  id: number;
  asset: string;
  amount: string;
  outstanding: string;
  reason: string;
  source: string;
  created_at: number;
}

export interface AccountView {
  account: number;
  payer: number;
  key_prefix: string;
  default_asset: string | null;
  wallets: string[];
  balances: Record<string, Balance>;
  debts: Debt[];
}

export interface Challenge {
  binding: Record<string, unknown>;
  typed_data: {
    types: Record<string, { name: string; type: string }[]>;
    primaryType: string;
    domain: Record<string, unknown>;
    message: Record<string, unknown>;
  };
}

export interface LinkedAccount {
  provider: string;
  provider_id: Hex;
  account_id: string;
  account_ref: Hex;
  balance_usd_micro: number | null;
  balance_live: boolean;
  balance_error: string | null;
}

export interface TopupRule {
  id: number;
  provider: string;
  token: string;
  below_usd_micro: number;
  add_usd_micro: number;
  max_tokens_in: string;
  enabled: boolean;
  last_outcome: string | null;
}

export interface RedemptionRow {
  id: number;
  created_at: number;
  provider: string;
  token: string;
  usd_micro: number;
  tokens_in: string | null;
  status: string;
  rule_id: number | null;
  chain_redemption_id: number | null;
  billing_ref: Hex | null;
  receipt_usd_micro: number | null;
  redeem_tx: Hex | null;
  release_tx: Hex | null;
  error: string | null;
}

export interface RedemptionView {
  wallet: Address;
  agent: Address | null;
  accounts: LinkedAccount[];
  rules: TopupRule[];
  redemptions: RedemptionRow[];
}

export interface NewRule {
  wallet: Address;
  provider: string;
  token: string;
  below_usd: string;
  add_usd: string;
  max_tokens: string;
}

export interface OrgMember {
  account: number;
  name: string | null;
  joined_at: number;
  keys: { prefix: string; created_at: number; revoked: boolean; budget_asset: string | null; budget_remaining: string | null }[];
  budgets: { asset: string; remaining: string; held: string }[];
  usage: { asset: string; requests: number; cost: string; tokens: number }[];
}

export interface OrgDesk {
  org: number;
  name: string | null;
  wallets: string[];
  vault: Record<string, { posted: string; held: string; spendable: string; cap_remaining: string }>;
  members: OrgMember[];
}

export interface NewCapacity {
  provider: string;
  base_url: string;
  api_key: string;
  face_value_usd_micro: string;
  kind: "tokenized" | "listed";
  rate_bps: number;
  expires_at: number;
  bond: string;
  declare_resale_permitted: boolean;
}

// A lot's upstream health as the gateways recorded it (GET /api/seller/health).
export interface LotHealth {
  lot: number;
  chain_lot_id: number | null;
  provider: string;
  requests: number;
  errors: number;
  error_rate: number;
  mean_latency_ms: number | null;
  last_error: string | null;
  last_error_at: number | null;
  key_refused_at: number | null;
  circuit_open: boolean;
}

export interface OpenedLot {
  lot: number;
  chain_lot_id: number;
  tx: Hex;
}

export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
  ) {
    super(message);
  }
}

const KEY_STORAGE = "promptex.apiKey";

export function apiKey(): string | null {
  return sessionStorage.getItem(KEY_STORAGE);
}

export function setApiKey(key: string | null): void {
  if (key) sessionStorage.setItem(KEY_STORAGE, key.trim());
  else sessionStorage.removeItem(KEY_STORAGE);
}

async function call<T>(path: string, init: RequestInit = {}, withKey = false): Promise<T> {
  const headers = new Headers(init.headers);
  if (init.body) headers.set("content-type", "application/json");
  if (withKey) {
    const key = apiKey();
    if (!key) throw new ApiError("Paste an API key, or get one by signing with your wallet (Utilize page).", 401);
    headers.set("authorization", `Bearer ${key}`);
  }
  let response: Response;
  try {
    response = await fetch(path, { ...init, headers });
  } catch {
    throw new ApiError("The PROMPTEX server does not answer. Is `promptex dashboard` running?", 0);
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = body?.error?.message ?? body?.error ?? `${response.status} ${response.statusText}`;
    throw new ApiError(String(message), response.status);
  }
  return body as T;
}

export const api = {
  config: () => call<Config>("/api/config"),
  pools: () => call<Pool[]>("/api/pools"),
  epochs: () => call<Epoch[]>("/api/epochs"),
  challenge: (wallet: Address) =>
    call<Challenge>("/api/keys/challenge", { method: "POST", body: JSON.stringify({ wallet }) }),
  bind: (binding: Record<string, unknown>, signature: Hex) =>
    call<{ key: string; account: number; prefix: string }>("/api/keys/bind", {
      method: "POST",
      body: JSON.stringify({ binding, signature }),
    }),
  account: () => call<AccountView>("/api/account", {}, true),
  usage: () => call<UsageRecord[]>("/api/usage", {}, true),
  /** Queue a wallet-signed SessionKey with the coordinator's relay (signed mode, issue 23). */
  sessionKey: (form: { account: Address; asset: string; key: Address; lanes: number; maximum: string; expiry: string; nonce: string; signature: Hex }) =>
    call<{ queued: number; account: Address; asset: string; nonce: number }>("/api/session-keys", { method: "POST", body: JSON.stringify(form) }, true),
  /** The coordinator's door, through this server (issue 21): the wallet's next ExitRequest nonce, and a
   *  wallet-signed ExitRequest → the release the coordinator co-signed. No API key: the signature is the credential. */
  exitNonce: (account: Address) => call<{ account: Address; nonce: number }>(`/api/exits/nonce?account=${account}`),
  requestExit: (body: Record<string, string>) =>
    call<{ release: Release; message: string }>("/api/exits", { method: "POST", body: JSON.stringify(body) }),
  usageTotals: () => call<UsageTotals>("/api/usage-totals", {}, true),
  /** Every usage record as CSV text (the key's own), for a download. */
  usageCsv: async (): Promise<{ text: string; filename: string }> => {
    const key = apiKey();
    if (!key) throw new ApiError("Use an API key first.", 401);
    const response = await fetch("/api/usage.csv", { headers: { authorization: `Bearer ${key}` } });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new ApiError(String(body?.error ?? response.statusText), response.status);
    }
    const filename = /filename="([^"]+)"/.exec(response.headers.get("content-disposition") ?? "")?.[1] ?? "promptex-usage.csv";
    return { text: await response.text(), filename };
  },
  usageRecord: (id: string) => call<UsageRecord>(`/api/usage/${encodeURIComponent(id)}`, {}, true),
  redemption: (wallet: Address) => call<RedemptionView>(`/api/redemption?wallet=${wallet}`, {}, true),
  addRule: (rule: NewRule) =>
    call<{ id: number }>("/api/redemption/rules", { method: "POST", body: JSON.stringify(rule) }, true),
  linkAccount: (form: { wallet: Address; provider: string; account_id: string; credential: string }) =>
    call<{ provider: string; account_id: string; account_ref: Hex; balance_usd_micro: number }>("/api/redemption/accounts", { method: "POST", body: JSON.stringify(form) }, true),
  switchRule: (wallet: Address, id: number, enabled: boolean) =>
    call<{ id: number; enabled: boolean }>(`/api/redemption/rules/${id}`, { method: "POST", body: JSON.stringify({ wallet, enabled }) }, true),
  org: () => call<OrgDesk>("/api/org", {}, true),
  addMember: (member: { name?: string; budget_asset?: string; budget?: string }) =>
    call<{ account: number; key: string; prefix: string }>("/api/org/members", { method: "POST", body: JSON.stringify(member) }, true),
  addCapacity: (capacity: NewCapacity) =>
    call<OpenedLot>("/api/seller/capacity", { method: "POST", body: JSON.stringify(capacity) }, true),
  sellerHealth: () => call<LotHealth[]>("/api/seller/health", {}, true),
  proof: (id: string) => call<Proof>(`/api/usage/${encodeURIComponent(id)}/proof`, {}, true),
};
