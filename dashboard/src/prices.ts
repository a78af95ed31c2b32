// Money on a page: the one formatter (money.ts) with each provider token's Oracle TWAP over
// the same half hour the CLI uses (`promptex wallet balances`), read from the chain through
// /rpc, so a token's amount shows its dollars beside it, and totals add up in dollars.
import { oracleAbi } from "./abi";
import type { Ctx } from "./chain";
import { money, usdText, usdValue, USDC_SYMBOL, type MoneyOptions } from "./money";

export const TWAP_WINDOW = 1_800n; // seconds: the USD beside provider tokens (as the CLI's)

export class Prices {
  /** `twaps`: Oracle.consult per token symbol; null while the Oracle does not cover the window. */
  constructor(readonly twaps: Map<string, bigint | null>) {}

  twap(symbol: string): bigint | null {
    return this.twaps.get(symbol.toUpperCase()) ?? null;
  }

  /** "14,587.48 CLD ($61.53)": whole units at the asset's precision, dollars at the TWAP. */
  money(amount: bigint | string, symbol: string, options: MoneyOptions = {}): string {
    return money(BigInt(amount), symbol, { twap: this.twap(symbol), ...options });
  }

  /** A balance, or what is left to spend: rounded down, its dollars too (money.ts `balance`). */
  balance(amount: bigint | string, symbol: string, options: Omit<MoneyOptions, "rounding"> = {}): string {
    return this.money(amount, symbol, { ...options, rounding: "down" });
  }

  /** The amount without the USD beside it (a form's echo, a pool's reserve). */
  plain(amount: bigint | string, symbol: string, options: MoneyOptions = {}): string {
    return this.money(amount, symbol, { ...options, twap: null });
  }

  /** USD micro-units, or null when a provider token has no TWAP yet. */
  usd(amount: bigint, symbol: string): bigint | null {
    return usdValue(amount, symbol, symbol.toUpperCase() === USDC_SYMBOL ? null : this.twap(symbol));
  }

  /** "$1,234.56 at the Oracle's 30-minute TWAP" (balances: rounded down), and what was left out for want of a price. */
  total(parts: { amount: bigint; symbol: string }[]): { usd: bigint; text: string; unpriced: string[] } {
    let usd = 0n;
    const unpriced = new Set<string>();
    for (const { amount, symbol } of parts) {
      if (amount === 0n) continue;
      const value = this.usd(amount, symbol);
      if (value === null) unpriced.add(symbol);
      else usd += value;
    }
    const minutes = Number(TWAP_WINDOW) / 60;
    const left = unpriced.size ? ` (${[...unpriced].join(", ")} without a TWAP yet not counted)` : "";
    return { usd, text: `${usdText(usd, "down")} at the Oracle's ${minutes}-minute TWAP${left}`, unpriced: [...unpriced] };
  }
}

/** Every provider token's TWAP, read once per page draw. */
export async function loadPrices(ctx: Ctx): Promise<Prices> {
  const oracle = ctx.config.contracts.Oracle;
  const entries = await Promise.all(
    ctx.assets
      .filter((a) => a.kind === "provider")
      .map(async (a): Promise<[string, bigint | null]> => {
        if (!oracle) return [a.symbol, null];
        const value = await ctx.client
          .readContract({ address: oracle, abi: oracleAbi, functionName: "consult", args: [a.address, TWAP_WINDOW] })
          .catch(() => null); // not tracked yet, or the window not covered: shown without dollars
        return [a.symbol, value];
      }),
  );
  return new Prices(new Map(entries));
}
