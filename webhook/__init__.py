"""gpushare admission webhook: GPU request validation, priority, sidecar injection."""
