// The connected wallet and its states: no wallet, not connected, wrong network, connected.
import { getAddress, numberToHex, type Address, type EIP1193Provider, type WalletClient } from "viem";
import { explain, walletClient, type Ctx } from "./chain";
import { short } from "./format";
import { clear, h, notice } from "./ui";

export type WalletState =
  | { kind: "none" }
  | { kind: "disconnected"; error?: string }
  | { kind: "wrong-network"; account: Address; chainId: number }
  | { kind: "connected"; account: Address; client: WalletClient };

type Listener = (state: WalletState) => void;

export class Wallet {
  state: WalletState;
  private listeners = new Set<Listener>();
  private provider: EIP1193Provider | undefined;

  constructor(private ctx: Ctx) {
    this.provider = window.ethereum;
    this.state = this.provider ? { kind: "disconnected" } : { kind: "none" };
    if (this.provider?.on) {
      this.provider.on("accountsChanged", () => void this.refresh());
      this.provider.on("chainChanged", () => void this.refresh());
    }
  }

  subscribe(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private set(state: WalletState): void {
    // Wallets repeat themselves (MetaMask answers eth_requestAccounts and also emits
    // accountsChanged): a state that changes nothing must not redraw the page, or a form
    // filled in between is wiped (the browser test's option writer lost its terms that way).
    if (sameState(this.state, state)) return;
    this.state = state;
    for (const listener of this.listeners) listener(state);
  }

  /** The connected account, or null (with the state showing why). */
  get account(): Address | null {
    return this.state.kind === "connected" ? this.state.account : null;
  }

  get client(): WalletClient | null {
    return this.state.kind === "connected" ? this.state.client : null;
  }

  async connect(): Promise<void> {
    if (!this.provider) return this.set({ kind: "none" });
    try {
      await this.provider.request({ method: "eth_requestAccounts" });
    } catch (err) {
      return this.set({ kind: "disconnected", error: explain(err).replace("the request", "the connection request") });
    }
    await this.refresh();
  }

  /** Re-read accounts and chain (after connecting, or when the wallet says they changed). */
  async refresh(): Promise<void> {
    if (!this.provider) return this.set({ kind: "none" });
    const accounts = (await this.provider.request({ method: "eth_accounts" })) as string[];
    if (!accounts.length) return this.set({ kind: "disconnected" });
    const account = getAddress(accounts[0]);
    const chainId = Number(await this.provider.request({ method: "eth_chainId" }));
    if (chainId !== this.ctx.chain.id) return this.set({ kind: "wrong-network", account, chainId });
    this.set({ kind: "connected", account, client: walletClient(this.ctx, this.provider) });
  }

  async switchNetwork(): Promise<string | null> {
    if (!this.provider) return null;
    const chainId = numberToHex(this.ctx.chain.id);
    try {
      await this.provider.request({ method: "wallet_switchEthereumChain", params: [{ chainId }] });
    } catch (err) {
      if ((err as { code?: number }).code === 4902) {
        try {
          await this.provider.request({
            method: "wallet_addEthereumChain",
            params: [
              {
                chainId,
                chainName: this.ctx.chain.name,
                nativeCurrency: this.ctx.chain.nativeCurrency,
                rpcUrls: [...this.ctx.chain.rpcUrls.default.http],
              },
            ],
          });
        } catch (inner) {
          return explain(inner);
        }
      } else {
        return explain(err);
      }
    }
    await this.refresh();
    return null;
  }
}

function sameState(a: WalletState, b: WalletState): boolean {
  if (a.kind !== b.kind) return false;
  if (a.kind === "connected" && b.kind === "connected") return a.account === b.account;
  if (a.kind === "wrong-network" && b.kind === "wrong-network") return a.account === b.account && a.chainId === b.chainId;
  return a.kind === "none"; // "disconnected" may carry a new error to show
}

/** The header's wallet badge, and a panel for pages that need a connected wallet. */
export function renderWalletBadge(el: HTMLElement, wallet: Wallet): void {
  const draw = (state: WalletState) => {
    el.dataset.wallet = state.kind;
    switch (state.kind) {
      case "none":
        clear(el, h("span.badge.warn", {}, "No wallet"));
        break;
      case "disconnected":
        clear(el, h("button#connect", { onclick: () => void wallet.connect() }, "Connect wallet"));
        break;
      case "wrong-network":
        clear(el, h("span.badge.warn", {}, `Wrong network (${state.chainId})`), " ", h("code", {}, short(state.account)));
        break;
      case "connected":
        clear(el, h("span.badge.ok", {}, "●"), " ", h("code#account", { title: state.account }, short(state.account)));
        break;
    }
  };
  wallet.subscribe(draw);
  draw(wallet.state);
}

/** Explains what is missing before a page can act for the user; null when connected. */
export function walletGate(wallet: Wallet, ctx: Ctx): HTMLElement | null {
  const state = wallet.state;
  const box = h("div.notice.gate", { "data-wallet-gate": state.kind });
  switch (state.kind) {
    case "connected":
      return null;
    case "none":
      notice(
        box,
        "error",
        h("strong", {}, "No wallet found. "),
        "Install a browser wallet such as MetaMask (any EIP-1193 wallet works), then reload this page. Market prices and settlement records stay readable without one.",
      );
      return box;
    case "disconnected":
      notice(
        box,
        state.error ? "error" : "info",
        state.error ? h("strong", {}, state.error + " ") : "Connect your wallet to see your balances and act. ",
        h("button", { onclick: () => void wallet.connect() }, "Connect wallet"),
      );
      return box;
    case "wrong-network": {
      const result = h("span");
      notice(
        box,
        "error",
        h("strong", {}, "Wrong network. "),
        `Your wallet is on chain ${state.chainId}; PROMPTEX here runs on ${ctx.chain.name} (chain ${ctx.chain.id}). `,
        h(
          "button#switch-network",
          {
            onclick: async () => {
              const error = await wallet.switchNetwork();
              if (error) result.textContent = " " + error;
            },
          },
          "Switch network",
        ),
        result,
      );
      return box;
    }
  }
}
