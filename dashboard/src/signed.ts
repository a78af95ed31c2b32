// Signed mode in the browser (issue 23): the EIP-712 messages the playground signs, mirrored
// from promptex/protocol/vault.py (tests/dashboard/test_signed.py checks digests and
// signatures against it), and the x-promptex-voucher header of the gateway's wire.
//
// The wallet signs one SessionKey: an ephemeral key made in this tab may sign vouchers for
// `account` in `asset`, at most `maximum` in all (default $5), until `expiry` (at most 24 h).
// The session key then signs, per request, a Voucher: lane `lane` of the session may be
// charged at most `ceiling` in total (what was charged on the lane so far + this request's
// hold). The buyer's loss is bounded by the session's maximum whatever the page does.
import { hashTypedData, type Address, type Hex, type LocalAccount } from "viem";
import { generatePrivateKey, privateKeyToAccount } from "viem/accounts";
import { PRICE_SCALE, USDC_SYMBOL } from "./money";

export const DOMAIN_NAME = "PROMPTEX CreditsVault";
export const DOMAIN_VERSION = "1";
export const SESSION_DEFAULT_USD_MICRO = 5_000_000n; // the playground's default session maximum: $5
export const SESSION_MAX_SECONDS = 86_400n; // the playground's sessions last at most 24 h
export const VOUCHER_HEADER = "x-promptex-voucher";

export const SESSION_KEY_TYPES = {
  SessionKey: [
    { name: "account", type: "address" },
    { name: "asset", type: "address" },
    { name: "key", type: "address" },
    { name: "lanes", type: "uint256" },
    { name: "maximum", type: "uint256" },
    { name: "expiry", type: "uint256" },
    { name: "nonce", type: "uint256" },
  ],
} as const;

export const VOUCHER_TYPES = {
  Voucher: [
    { name: "account", type: "address" },
    { name: "asset", type: "address" },
    { name: "session", type: "uint256" },
    { name: "lane", type: "uint256" },
    { name: "ceiling", type: "uint256" },
  ],
} as const;

export interface SessionTerms {
  account: Address;
  asset: Address;
  key: Address; // the session key's address (its private key stays in this tab)
  lanes: bigint;
  maximum: bigint; // smallest units of `asset`, in all
  expiry: bigint; // unix seconds
  nonce: bigint; // the vault's session_nonce(account, asset): also the session's id
}

export interface VoucherTerms {
  account: Address;
  asset: Address;
  session: bigint;
  lane: bigint;
  ceiling: bigint; // smallest units the lane may be charged in total
}

export function vaultDomain(chainId: number, vault: Address) {
  return { name: DOMAIN_NAME, version: DOMAIN_VERSION, chainId, verifyingContract: vault } as const;
}

/** What the wallet is asked to sign (eth_signTypedData_v4): it shows the maximum and the expiry. */
export function sessionKeyTypedData(chainId: number, vault: Address, terms: SessionTerms) {
  return { domain: vaultDomain(chainId, vault), types: SESSION_KEY_TYPES, primaryType: "SessionKey" as const, message: terms };
}

export function voucherTypedData(chainId: number, vault: Address, terms: VoucherTerms) {
  return { domain: vaultDomain(chainId, vault), types: VOUCHER_TYPES, primaryType: "Voucher" as const, message: terms };
}

export function sessionKeyDigest(chainId: number, vault: Address, terms: SessionTerms): Hex {
  return hashTypedData(sessionKeyTypedData(chainId, vault, terms));
}

export function voucherDigest(chainId: number, vault: Address, terms: VoucherTerms): Hex {
  return hashTypedData(voucherTypedData(chainId, vault, terms));
}

/** A session key: a fresh one, or the one this tab made (its private key never leaves the tab). */
export function sessionAccount(privateKey: Hex = generatePrivateKey()): LocalAccount {
  return privateKeyToAccount(privateKey);
}

/** The session key's signature of a voucher (65 bytes, r ‖ s ‖ v). */
export function signVoucher(key: LocalAccount, chainId: number, vault: Address, terms: VoucherTerms): Promise<Hex> {
  return key.signTypedData(voucherTypedData(chainId, vault, terms));
}

/** The request header: session=<n>;lane=<l>;ceiling=<units>;sig=0x<65 bytes hex>. */
export function voucherHeader(terms: Pick<VoucherTerms, "session" | "lane" | "ceiling">, signature: Hex): string {
  return `session=${terms.session};lane=${terms.lane};ceiling=${terms.ceiling};sig=${signature.toLowerCase()}`;
}

/** The session's maximum in `symbol`'s smallest units: `usdMicro` dollars' worth — USDC 1:1, a
 *  provider token at its TWAP (rounded down: the bound is never above what the buyer chose);
 *  null without a TWAP. */
export function sessionMaximum(symbol: string, usdMicro: bigint, twap: bigint | null): bigint | null {
  if (symbol.toUpperCase() === USDC_SYMBOL) return usdMicro;
  if (twap === null || twap <= 0n) return null;
  return (usdMicro * PRICE_SCALE) / twap;
}

/** A session's expiry: `hours` from the chain's now, never more than 24 h. */
export function sessionExpiry(chainNow: bigint, hours: number): bigint {
  const seconds = BigInt(Math.max(1, Math.floor(hours * 3600)));
  return chainNow + (seconds < SESSION_MAX_SECONDS ? seconds : SESSION_MAX_SECONDS);
}

/** The next voucher's ceiling: the lane's charged total plus this request's hold, never above
 *  what the session has left (`maximum − charged on every lane`); null when nothing is left.
 *  Above the lane's highest accepted ceiling (`accepted`): the gateway serves a voucher once
 *  (409 voucher_used), so ceilings rise strictly per lane. */
export function nextCeiling(laneCharged: bigint, hold: bigint, maximum: bigint, sessionCharged: bigint, accepted = 0n): bigint | null {
  const left = maximum - sessionCharged;
  if (left <= 0n) return null;
  const ceiling = laneCharged + (hold < left ? hold : left);
  return ceiling > accepted ? ceiling : accepted + 1n;
}

// ─── This tab's session (sessionStorage: gone when the tab closes, as the API key) ───────

export interface TabSession {
  chainId: number;
  vault: Address;
  account: Address;
  asset: Address;
  symbol: string;
  privateKey: Hex; // the session key's: never sent anywhere
  key: Address;
  session: string; // the vault's session_nonce when signed: the session's id
  lanes: number;
  maximum: string; // smallest units
  expiry: string; // unix seconds
}

const storageName = (account: Address, symbol: string) => `promptex.session.${account.toLowerCase()}.${symbol.toUpperCase()}`;

export function tabSession(account: Address, symbol: string): TabSession | null {
  const saved = sessionStorage.getItem(storageName(account, symbol));
  return saved ? (JSON.parse(saved) as TabSession) : null;
}

export function keepTabSession(session: TabSession): void {
  sessionStorage.setItem(storageName(session.account, session.symbol), JSON.stringify(session));
}

export function forgetTabSession(account: Address, symbol: string): void {
  sessionStorage.removeItem(storageName(account, symbol));
}

/** One lane of the current session, as `GET /v1/promptex/lanes` reports it. */
export interface LaneReport {
  session: number;
  lane: number;
  charged_units: string;
  settled_units: string;
  in_flight: boolean;
  voucher?: { ceiling: string } | null; // the highest voucher the lane accepted
}

export interface LanesReport {
  asset: string;
  session: number | null;
  key?: Address;
  maximum?: string;
  open?: boolean;
  data: LaneReport[];
}

/** The voucher header for the next request paid from `tab`'s session, whose hold is at most
 *  `hold`; null while the chain has not registered this session (the request goes capped),
 *  an Error when the session cannot cover any more. */
export async function voucherFor(tab: TabSession, report: LanesReport, hold: bigint): Promise<string | null> {
  if (report.session === null || String(report.session) !== tab.session || report.key?.toLowerCase() !== tab.key.toLowerCase()) return null;
  if (report.open === false) throw new Error("This tab's session has ended (revoked or expired): start a new one.");
  const lanes = Array.from({ length: tab.lanes }, (_, lane) => report.data.find((l) => l.lane === lane) ?? { lane, charged_units: "0", in_flight: false, voucher: null });
  const free = lanes.find((l) => !l.in_flight);
  if (!free) throw new Error("Every lane of this session has a request in flight: wait for one to finish.");
  const sessionCharged = lanes.reduce((sum, l) => sum + BigInt(l.charged_units), 0n);
  const ceiling = nextCeiling(BigInt(free.charged_units), hold, BigInt(tab.maximum), sessionCharged, BigInt(free.voucher?.ceiling ?? "0"));
  if (ceiling === null) throw new Error("This session's maximum is spent: start a new session (or send without one once it ends).");
  const terms = { account: tab.account, asset: tab.asset, session: BigInt(tab.session), lane: BigInt(free.lane), ceiling };
  const signature = await signVoucher(sessionAccount(tab.privateKey), tab.chainId, tab.vault, terms);
  return voucherHeader(terms, signature);
}
