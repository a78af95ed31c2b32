// PROMPTEX dashboard: a hash-routed single page over the dashboard server's API, the
// chain (read through /rpc) and the user's wallet (EIP-1193).
import "./style.css";
import { api } from "./api";
import { makeCtx, type Ctx } from "./chain";
import { clear, h, notice } from "./ui";
import { Wallet, renderWalletBadge } from "./wallet";
import { portfolioPage } from "./pages/portfolio";
import { marketPage } from "./pages/market";
import { utilizePage } from "./pages/utilize";
import { usagePage } from "./pages/usage";
import { sellPage } from "./pages/sell";
import { redemptionPage } from "./pages/redemption";
import { enterprisePage } from "./pages/enterprise";
import { hedgePage } from "./pages/hedge";

export interface App {
  ctx: Ctx;
  wallet: Wallet;
  /** Re-render the current page (after a transaction, say). */
  refresh(): void;
}

/** A page draws into `root`; it may return a cleanup (timers) run when it is left. */
export type Page = (root: HTMLElement, app: App) => void | (() => void);

const PAGES: [string, string, Page][] = [
  ["portfolio", "Portfolio", portfolioPage],
  ["market", "Market", marketPage],
  ["utilize", "Utilize", utilizePage],
  ["usage", "Usage & settlement", usagePage],
  ["hedge", "Hedge", hedgePage],
  ["sell", "Sell capacity", sellPage],
  ["redemption", "Redemption", redemptionPage],
  ["enterprise", "Enterprise", enterprisePage],
];

async function start(): Promise<void> {
  const page = document.getElementById("page")!;
  const nav = document.getElementById("nav")!;
  const banner = document.getElementById("banner")!;
  let ctx: Ctx;
  try {
    ctx = makeCtx(await api.config());
  } catch (err) {
    notice(banner, "error", `Cannot load the market: ${(err as Error).message}`);
    return;
  }
  const wallet = new Wallet(ctx);
  renderWalletBadge(document.getElementById("wallet")!, wallet);
  let cleanup: (() => void) | void;
  const app: App = { ctx, wallet, refresh: () => route() };

  function route(): void {
    const name = location.hash.replace(/^#\/?/, "").split("?")[0] || "portfolio";
    const entry = PAGES.find(([id]) => id === name) ?? PAGES[0];
    clear(nav, ...PAGES.map(([id, label]) => h("a", { href: `#/${id}`, class: id === entry[0] ? "active" : "" }, label)));
    if (cleanup) cleanup();
    const root = h("section", { "data-page": entry[0] });
    clear(page, root);
    cleanup = entry[2](root, app);
  }

  window.addEventListener("hashchange", route);
  wallet.subscribe(() => route());
  route();
  await wallet.refresh().catch(() => undefined); // already-authorized wallets connect silently
  document.body.dataset.ready = "1";
}

void start();
