// viem clients: reads through the dashboard's read-only /rpc, writes through the user's
// EIP-1193 wallet (MetaMask and friends), every transaction simulated before it is signed.
import {
  BaseError,
  ContractFunctionRevertedError,
  createPublicClient,
  createWalletClient,
  custom,
  defineChain,
  http,
  type Abi,
  type Address,
  type Chain,
  type ContractFunctionArgs,
  type ContractFunctionName,
  type EIP1193Provider,
  type Hash,
  type PublicClient,
  type WalletClient,
} from "viem";
import type { AssetInfo, Config } from "./api";
import { short } from "./format";
import { setFaceValues } from "./money";
import { h, notice } from "./ui";

declare global {
  interface Window {
    ethereum?: EIP1193Provider;
  }
}

export interface Ctx {
  config: Config;
  chain: Chain;
  client: PublicClient;
  assets: AssetInfo[];
  asset(symbol: string): AssetInfo;
  usdc: AssetInfo;
}

export function makeCtx(config: Config): Ctx {
  const rpc = new URL(config.rpc, location.origin).toString();
  const chain = defineChain({
    id: config.chain_id,
    name: config.network === "local" ? "PROMPTEX local (anvil)" : config.network,
    nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
    rpcUrls: { default: { http: [rpc] } },
  });
  const client = createPublicClient({ chain, transport: http(rpc), pollingInterval: 500 }) as PublicClient;
  const bySymbol = new Map(config.assets.map((a) => [a.symbol, a]));
  setFaceValues(config.assets.map((a) => [a.symbol, a.face_value_usd_micro]));
  return {
    config,
    chain,
    client,
    assets: config.assets,
    asset(symbol: string) {
      const found = bySymbol.get(symbol);
      if (!found) throw new Error(`unknown asset ${symbol}`);
      return found;
    },
    usdc: bySymbol.get("USDC")!,
  };
}

export function walletClient(ctx: Ctx, provider: EIP1193Provider): WalletClient {
  return createWalletClient({ chain: ctx.chain, transport: custom(provider) });
}

// ─── Errors a user can cause, in words ──────────────────────────────────────

const REASONS: [RegExp, string][] = [
  [/router: insufficient output/, "Slippage exceeded: the price moved past your tolerance since the quote. Nothing was swapped — get a new quote or allow more slippage."],
  [/router: insufficient [ab] amount/, "Slippage exceeded: the pool's price moved past your tolerance. Nothing was added or removed — reload the pool or allow more slippage."],
  [/redemption: expiry in the past/, "The grant's expiry is in the past. Nothing changed."],
  [/redemption: slippage above maximum/, "That slippage is above the escrow's maximum (50 %). Nothing changed."],
  [/redemption: daily limit out of range/, "That daily limit is out of range. Nothing changed."],
  [/redemption: no grant/, "There is no grant to revoke. Nothing changed."],
  [/vault: amount exceeds balance/, "That is more than your balance in the vault. Nothing was sent."],
  [/vault: exit already pending/, "A withdrawal of this asset is already pending: complete or cancel it first."],
  [/vault: exit still thawing/, "This withdrawal is still thawing; wait for the countdown to end."],
  [/vault: no pending exit/, "There is no pending withdrawal of this asset."],
  [/vault: cap expired/, "The spend cap's expiry is in the past."],
  [/vault: no active session/, "There is no active session for this asset on chain (not registered yet, ended or already revoked). Nothing changed."],
  [/perp: leverage too high/, "Leverage too high: the margin left after the open fee, times the market's maximum leverage, must cover the notional. Nothing was sent — add margin or lower the notional."],
  [/perp: margin below fee/, "The margin does not even cover the open fee. Nothing was sent."],
  [/perp: notional too small/, "The notional is below the market's minimum (1 USDC). Nothing was sent."],
  [/perp: open interest cap/, "That would take this side's open interest past its cap (a share of the pool's liquidity). Nothing was sent — open less, or wait for more liquidity."],
  [/perp: pool cannot cover the reserve/, "The pool's liquidity cannot cover this position's maximum gain. Nothing was sent."],
  [/perp: payout below minimum/, "The payout fell below your minimum since the preview (the TWAP moved). Nothing changed — reload and try again."],
  [/perp: withdrawal exceeds free liquidity/, "Open positions reserve that liquidity: withdraw fewer shares. Nothing changed."],
  [/perp: not enough shares/, "You hold fewer pool shares than that. Nothing changed."],
  [/perp: market not active/, "This market is not open for new positions. Nothing was sent."],
  [/oracle: window not covered/, "The Oracle has too little price history for this token's TWAP yet (a keeper's Oracle.update every period builds it). Nothing was sent."],
  [/options: collateral not a whole usdc unit/, "With these terms the collateral per unit is not a whole USDC unit: change the strike, the bound or the size. Nothing was sent."],
  [/options: cap not above strike/, "A capped call's cap must be above its strike. Nothing was sent."],
  [/options: floor not below strike/, "A put's floor must be below its strike (0 for none). Nothing was sent."],
  [/options: seller lacks units/, "The seller no longer holds the units on offer. Nothing was bought."],
  [/options: offer too small/, "The offer has fewer units left than that. Nothing was bought."],
  [/options: own offer/, "That is your own offer. Nothing was bought."],
  [/options: offer closed/, "That offer is filled or cancelled. Nothing was bought."],
  [/options: series expired/, "The series has expired: it can no longer be written, offered or bought. Nothing changed."],
  [/options: window start not retained/, "The Oracle no longer holds the observation this settlement needs: too late to settle."],
  [/escrow: caller is not an attestor/, "This server's attestor key does not hold the escrow's attestor role on this chain. No lot was opened."],
  [/escrow: bond below minimum/, "The bond is below the escrow's minimum for this face value. No lot was opened."],
  [/escrow: bond not the token's share/, "A tokenized lot's bond is exactly its token's share of the face value, no more and no less. No lot was opened."],
  [/escrow: face value too small to mint/, "That face value is too small to mint any tokens. No lot was opened."],
  [/escrow: expiry in the past/, "The lot's expiry is in the past on chain. No lot was opened."],
  [/escrow: bond transfer failed/, "The escrow could not take the bond: approve it first (and hold that much USDC). No lot was opened."],
  [/escrow: bond not approved for this lot/, "The escrow takes a bond only against an allowance of exactly that amount: approve it first. No lot was opened."],
  [/exceeds balance|insufficient balance/, "Insufficient balance in your wallet. Nothing was sent."],
  [/exceeds allowance|insufficient allowance/, "The contract is not approved to move this much; approve first."],
  [/expired|deadline/, "The transaction's deadline passed before it was mined. Nothing changed."],
];

export function isRejection(err: unknown): boolean {
  if (err instanceof BaseError) {
    return Boolean(err.walk((e) => (e as { code?: number }).code === 4001 || (e as Error).name === "UserRejectedRequestError"));
  }
  return (err as { code?: number })?.code === 4001;
}

export function explain(err: unknown): string {
  if (isRejection(err)) return "You rejected the request in your wallet. Nothing was sent and nothing changed.";
  let text = "";
  if (err instanceof BaseError) {
    const revert = err.walk((e) => e instanceof ContractFunctionRevertedError);
    if (revert instanceof ContractFunctionRevertedError) {
      text = revert.reason ?? revert.data?.errorName ?? revert.shortMessage;
    } else {
      text = err.details || err.shortMessage;
    }
  } else if (err instanceof Error) {
    text = err.message;
  } else {
    text = String(err);
  }
  return readable(text) ?? `The transaction would fail: ${text}`;
}

/** A contract's revert reason (from a transaction or a server's answer) in words, if known. */
export function readable(text: string): string | null {
  for (const [pattern, message] of REASONS) if (pattern.test(text)) return message;
  return null;
}

// ─── Sending a transaction with visible states ───────────────────────────────

const GAS_MARGIN_PERCENT = 125n;

export interface Write<abi extends Abi, fn extends ContractFunctionName<abi, "nonpayable" | "payable">> {
  address: Address;
  abi: abi;
  functionName: fn;
  args: ContractFunctionArgs<abi, "nonpayable" | "payable", fn>;
}

/**
 * Simulate, ask the wallet to sign, wait for the receipt; every state shown in `status`.
 * Returns the receipt's hash, or null if anything stopped it (the reason is shown).
 */
export async function send<abi extends Abi, fn extends ContractFunctionName<abi, "nonpayable" | "payable">>(
  ctx: Ctx,
  wallet: WalletClient,
  account: Address,
  status: HTMLElement,
  label: string,
  write: Write<abi, fn>,
): Promise<Hash | null> {
  notice(status, "pending", `${label}: checking…`);
  let hash: Hash;
  try {
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    const { request } = await ctx.client.simulateContract({ ...(write as any), account });
    // A margin over the estimate, as the coordinator's: state moves a little between the
    // estimate and the block that includes it (a pool writes its price accumulators only
    // in the first block of a new timestamp), and an exact estimate then runs out of gas.
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    const gas = await ctx.client.estimateContractGas({ ...(write as any), account });
    notice(status, "pending", `${label}: confirm in your wallet…`);
    hash = await wallet.writeContract({ ...request, account, chain: ctx.chain, gas: (gas * GAS_MARGIN_PERCENT) / 100n });
  } catch (err) {
    notice(status, "error", explain(err));
    return null;
  }
  notice(status, "pending", `${label}: pending — waiting for `, h("code", {}, short(hash, 10, 8)), " to be mined…");
  try {
    const receipt = await ctx.client.waitForTransactionReceipt({ hash, timeout: 120_000 });
    if (receipt.status !== "success") {
      notice(status, "error", `${label} failed: the transaction reverted in block ${receipt.blockNumber}. Nothing changed.`);
      return null;
    }
    notice(status, "ok", `${label}: confirmed in block ${receipt.blockNumber} `, h("code", {}, short(hash, 10, 8)));
    return hash;
  } catch (err) {
    notice(status, "error", `${label}: no receipt yet for ${short(hash)} (${explain(err)}).`);
    return null;
  }
}
