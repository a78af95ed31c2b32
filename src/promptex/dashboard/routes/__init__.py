"""The dashboard server's routes, one module per area; `create_app` assembles them."""
