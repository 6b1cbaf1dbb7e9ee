"""gpushare timekeeper: GPU-time budgets per namespace, the usage ledger and its REST API."""
