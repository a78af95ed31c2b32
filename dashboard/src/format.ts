import { formatUnits, parseUnits } from "viem";

/** A smallest-unit amount as whole units, trimmed to `places` decimals (rounded down). */
export function fmt(amount: bigint, decimals: number, places = 6): string {
  const text = formatUnits(amount, decimals);
  const [whole, frac = ""] = text.split(".");
  const cut = frac.slice(0, places).replace(/0+$/, "");
  const grouped = whole.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  return cut ? `${grouped}.${cut}` : grouped;
}

/** Whole units typed by a user → smallest units; an Error with a readable message otherwise. */
export function parseAmount(text: string, decimals: number, symbol: string): bigint {
  const clean = text.trim().replace(/,/g, "");
  if (!/^\d+(\.\d+)?$/.test(clean)) throw new Error(`Enter an amount of ${symbol}, e.g. 12.5`);
  const [, frac = ""] = clean.split(".");
  if (frac.length > decimals) throw new Error(`${symbol} has ${decimals} decimals; "${text}" has more`);
  const value = parseUnits(clean, decimals);
  if (value === 0n) throw new Error("Enter an amount above zero");
  return value;
}

export function short(hex: string, head = 6, tail = 4): string {
  return hex.length > head + tail + 2 ? `${hex.slice(0, head + 2)}…${hex.slice(-tail)}` : hex;
}

export function duration(seconds: number): string {
  if (seconds <= 0) return "ready";
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = Math.floor(seconds % 60);
  return h ? `${h} h ${m} min` : m ? `${m} min ${s} s` : `${s} s`;
}
