// Small text helpers; money has its own module (money.ts, mirrored from the Python one).
export { parseAmount } from "./money";

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
