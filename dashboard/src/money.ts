// Money for people, the front end's one formatter. It mirrors promptex/protocol/units.py
// (`amount_text`, `usd_value`, `usd_text`, `money`) rule for rule, and
// tests/dashboard/test_money.py feeds both the same cases: whole units at the asset's
// sensible precision, a provider token's USD value at the Oracle's TWAP beside it.
// Everything is bigint arithmetic on smallest units (no floats); inputs typed by a person
// are parsed from their decimal text, never via Number × 10**decimals.

export const USDC_SYMBOL = "USDC";
export const USDC_DECIMALS = 6;
export const TOKEN_DECIMALS = 18;
const USD_MICRO = 10n ** 6n;
// Oracle.consult's scale: USDC units = token units × price / PRICE_SCALE.
export const PRICE_SCALE = 10n ** 36n;
export const UNLIMITED_TEXT = "unlimited";
const SIGNIFICANT_DIGITS = 4; // amounts below one whole unit: enough digits to tell costs apart
const MOST_DECIMALS_SHOWN = 8; // dust below 10**-8 whole units reads "<0.00000001"

/** How a shown amount is rounded: to the nearest, or down/up (a refusal's "has" and "needs"). */
export type Rounding = "nearest" | "down" | "up";

export function decimalsOf(symbol: string): number {
  return symbol.toUpperCase() === USDC_SYMBOL ? USDC_DECIMALS : TOKEN_DECIMALS;
}

// Each provider token's face value (USD micro-units per whole token), as Python's
// PROVIDER_TOKENS: the market's config sets it once (chain.ts makeCtx).
const FACES = new Map<string, bigint>();

export function setFaceValues(faces: Iterable<[string, bigint | number | null | undefined]>): void {
  for (const [symbol, face] of faces) if (face != null) FACES.set(symbol.toUpperCase(), BigInt(face));
}

/** Decimals worth showing: at least 2, and enough that one step of the last digit is worth
 *  at most a cent at the token's face value (USD micro-units per whole token; unknown: $1). */
export function displayDecimals(symbol: string, faceUsdMicro?: bigint | number | null): number {
  const upper = symbol.toUpperCase();
  const known = faceUsdMicro ?? FACES.get(upper) ?? null;
  const face = upper === USDC_SYMBOL || known === null ? USD_MICRO : BigInt(known);
  let places = 2;
  while (face > (USD_MICRO / 100n) * 10n ** BigInt(places)) places += 1;
  return Math.min(places, decimalsOf(symbol));
}

const group = (digits: string) => digits.replace(/\B(?=(\d{3})+(?!\d))/g, ",");

/** `amount` smallest units as a grouped decimal rounded to `places`; below one whole unit it
 *  keeps SIGNIFICANT_DIGITS significant digits (at most `decimals`, MOST_DECIMALS_SHOWN). */
export function amountText(amount: bigint, decimals: number, places: number, rounding: Rounding = "nearest"): string {
  const negative = amount < 0n;
  const value = negative ? -amount : amount;
  const one = 10n ** BigInt(decimals);
  let shown = places;
  if (value > 0n && value < one) {
    const leadingZeros = decimals - value.toString().length; // 0.000123 → 3
    shown = Math.min(decimals, Math.max(places, Math.min(MOST_DECIMALS_SHOWN, leadingZeros + SIGNIFICANT_DIGITS)));
  }
  // `steps`: the magnitude in units of 10**-shown, rounded as the signed value asks.
  let steps: bigint;
  if (shown >= decimals) {
    steps = value * 10n ** BigInt(shown - decimals);
  } else {
    const divisor = 10n ** BigInt(decimals - shown);
    steps = value / divisor;
    const rest = value % divisor;
    const up =
      rounding === "nearest" ? 2n * rest >= divisor : rounding === "up" ? !negative && rest > 0n : negative && rest > 0n;
    if (up) steps += 1n;
  }
  if (value > 0n && steps === 0n) {
    const step = shown ? `0.${"0".repeat(shown - 1)}1` : "1"; // dust
    return `${negative ? ">-" : "<"}${step}`;
  }
  const digits = steps.toString().padStart(shown + 1, "0");
  const head = group(digits.slice(0, digits.length - shown));
  let tail = digits.slice(digits.length - shown);
  if (shown > places) tail = tail.replace(/0+$/, "").padEnd(places, "0");
  const text = tail ? `${head}.${tail}` : head;
  return (negative && steps > 0n ? "-" : "") + text;
}

/** USD micro-units an amount is worth: USDC 1:1; a provider token at `twap` (Oracle.consult's
 *  value), rounded down; null when the price is unknown. */
export function usdValue(amount: bigint, symbol: string, twap: bigint | null | undefined): bigint | null {
  if (symbol.toUpperCase() === USDC_SYMBOL) return amount;
  if (twap == null) return null;
  const value = ((amount < 0n ? -amount : amount) * twap) / PRICE_SCALE;
  return amount < 0n ? -value : value;
}

/** Dollars for people: "$1,234.56", "$0.0012", "-$3.50". */
export function usdText(usdMicro: bigint, rounding: Rounding = "nearest"): string {
  const text = amountText(usdMicro, USDC_DECIMALS, 2, rounding);
  return text.startsWith("-") ? `-$${text.slice(1)}` : `$${text}`;
}

export interface MoneyOptions {
  twap?: bigint | null; // the token's Oracle.consult value: adds its dollars beside it
  unlimited?: bigint | null; // the sentinel that means "no limit", shown as the word
  rounding?: Rounding;
  face?: bigint | number | null; // the token's face value (USD micro per whole token)
  symbol?: boolean; // false: the number only (a table column already names the asset)
}

/** An amount of an asset for people: "14,587.48 CLD ($61.53)", "50.00 USDC"; the dollars
 *  beside a token's amount are rounded as the amount is. */
export function money(amount: bigint, symbol: string, options: MoneyOptions = {}): string {
  const { twap = null, unlimited = null, rounding = "nearest", face = null } = options;
  if (unlimited !== null && amount >= unlimited) return UNLIMITED_TEXT;
  const upper = symbol.toUpperCase();
  const number = amountText(amount, decimalsOf(upper), displayDecimals(upper, face), rounding);
  const text = options.symbol === false ? number : `${number} ${upper}`;
  const usd = upper === USDC_SYMBOL ? null : usdValue(amount, upper, twap);
  return usd === null ? text : `${text} (${usdText(usd, rounding)})`;
}

/** A balance, or what is left to spend, for people: `money` rounded DOWN (its dollars too), so
 *  a person never reads more than there is (9,999,993 USDC units: "9.99 USDC", not "10.00"). */
export function balance(amount: bigint, symbol: string, options: Omit<MoneyOptions, "rounding"> = {}): string {
  return money(amount, symbol, { ...options, rounding: "down" });
}

/** Whole units typed by a person → smallest units, exactly (string arithmetic, no float);
 *  an Error with a readable message otherwise. Commas group digits; zero is refused. */
export function parseAmount(text: string, decimals: number, symbol: string, allowZero = false): bigint {
  const clean = text.trim().replace(/,/g, "");
  const match = /^(\d+)(?:\.(\d+))?$/.exec(clean) ?? /^()\.(\d+)$/.exec(clean);
  if (!match) throw new Error(`Enter an amount of ${symbol}, e.g. 12.5`);
  const [, whole, frac = ""] = match;
  if (frac.length > decimals) throw new Error(`${symbol} has ${decimals} decimals; "${text.trim()}" has more`);
  const value = BigInt(whole || "0") * 10n ** BigInt(decimals) + BigInt(frac.padEnd(decimals, "0") || "0");
  if (value === 0n && !allowZero) throw new Error("Enter an amount above zero");
  return value;
}
