// The playground's price of a request: what it pays at most per listed lot (the header
// x-promptex-max-rate-bps) and what a voucher holds for it. /v1/models gives a model's
// rates in an asset at its cheapest listed lot's rate (`pricing[ASSET].rate_bps`) and every
// listed lot that serves it (`lots`); a lot at another rate charges those rates × its rate ÷
// that one (the gateway's rule; the signing proxy's `RateBook.at`). A signed request's
// output is fitted to its hold at the priciest lot that may serve it, so a hold priced at
// the cheapest rate got fewer output tokens than asked, or a 402 voucher_below_input,
// whenever a pricier lot was free. tests/dashboard/test_hold.py checks it against the
// gateway's own bound (`metering.largest_output`).
import { parseAmount } from "./money";

export const MAX_RATE_HEADER = "x-promptex-max-rate-bps";
export const PER_REQUEST = 16; // the gateway's per-request and per-message allowance (an upper bound on tokens)
export const PER_MESSAGE = 8;
const RATE_DECIMALS = 12; // /v1/models' rates: whole units per million tokens, at most 12 decimals

export interface AssetPricing {
  input_per_million: string;
  output_per_million: string;
  rate_bps?: number; // the listed lots' rate these are at (absent: one price, a provider's own token)
}

export interface ModelInfo {
  id: string;
  owned_by: string;
  pricing: Record<string, AssetPricing>;
  lots?: { id: number; rate_bps: number }[]; // the listed lots that serve it now
}

/** The most a listed lot may charge a request for `model` paid in `symbol` (basis points of
 *  list price): the highest rate /v1/models listed for it — any lot may then serve. Null when
 *  the asset's price names no lot rate (one price) or no listed lot serves the model. */
export function maxRate(model: ModelInfo, symbol: string): number | null {
  const basis = model.pricing[symbol]?.rate_bps;
  const rates = (model.lots ?? []).map((lot) => lot.rate_bps).filter((r) => Number.isInteger(r) && r > 0);
  if (!basis || !rates.length) return null;
  return Math.max(basis, ...rates);
}

/** Smallest units `tokens` cost at `rate` (whole units per million tokens) × `rateBps` ÷
 *  `basisBps`, rounded up: exact integers. */
export function perMillion(rate: string, tokens: number, decimals: number, rateBps = 1, basisBps = 1): bigint {
  const scaled = parseAmount(rate, RATE_DECIMALS, "rate", true) * BigInt(tokens) * 10n ** BigInt(decimals) * BigInt(rateBps);
  const divisor = 10n ** BigInt(RATE_DECIMALS + 6) * BigInt(basisBps);
  return (scaled + divisor - 1n) / divisor;
}

/** What `inputs` in and `outputs` out cost in `symbol` at the cheapest listed rate (`rateBps`
 *  null), or at `rateBps`: each side rounded up, so never below the gateway's bound. */
export function costAt(model: ModelInfo, symbol: string, decimals: number, inputs: number, outputs: number, rateBps: number | null = null): bigint {
  const rates = model.pricing[symbol];
  const basis = rates.rate_bps;
  const [at, over] = rateBps !== null && basis ? [rateBps, basis] : [1, 1];
  return perMillion(rates.input_per_million, inputs, decimals, at, over) + perMillion(rates.output_per_million, outputs, decimals, at, over);
}

export interface PlaygroundPrice {
  typicalInputs: number;
  boundInputs: number;
  typical: bigint; // about what it costs at the cheapest lot
  most: bigint; // the hold: the most it may cost at any lot it lets serve
  maxRate: number | null; // sent as MAX_RATE_HEADER (null: none)
}

/** The playground's estimate for one user message of `promptBytes` bytes and `output` max tokens. */
export function playgroundPrice(model: ModelInfo, symbol: string, decimals: number, promptBytes: number, output: number): PlaygroundPrice {
  const typicalInputs = Math.ceil(promptBytes / 4) + PER_MESSAGE;
  const boundInputs = promptBytes + PER_REQUEST + PER_MESSAGE;
  const most = maxRate(model, symbol);
  return {
    typicalInputs,
    boundInputs,
    typical: costAt(model, symbol, decimals, typicalInputs, output),
    most: costAt(model, symbol, decimals, boundInputs, output, most),
    maxRate: most,
  };
}
