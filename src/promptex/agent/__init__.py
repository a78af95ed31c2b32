"""The redemption agent: sells a user's provider tokens into the RedemptionEscrow, buys
credits on the user's linked provider account through its billing API, and releases the
escrowed USDC to the operator against the provider's signed receipt. Auto-topup rules
start redemptions when a linked balance runs low."""
