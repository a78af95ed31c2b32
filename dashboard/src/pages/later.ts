// Pages whose backends have no browser-facing API yet: what exists, and how to use it now.
import type { Page } from "../main";
import { h } from "../ui";

export const redemptionPage: Page = (root, app) => {
  const escrow = app.ctx.config.contracts.RedemptionEscrow;
  root.append(
    h("h1", {}, "Redemption"),
    h(
      "p.notice.info",
      {},
      "Read-only for now. Linking AI accounts, agent grants (scope, limits, expiry, revoke), auto-topup rules and redemption history with receipts are served by the redemption agent's CLI: ",
      h("code", {}, "promptex redeem"),
      ", ",
      h("code", {}, "promptex redemptions"),
      ", ",
      h("code", {}, "promptex agent"),
      ". The browser views come next.",
    ),
    h("p", {}, "RedemptionEscrow on this chain: ", h("code", {}, escrow ?? "not deployed")),
  );
};

export const enterprisePage: Page = (root) => {
  root.append(
    h("h1", {}, "Enterprise desk"),
    h(
      "p.notice.info",
      {},
      "Not built in the browser yet. Org accounts, member keys and per-key budgets exist in the ledger and the CLI (",
      h("code", {}, "promptex buyer org-key"),
      "); an org's usage shows on the Usage page with the org's key.",
    ),
  );
};
