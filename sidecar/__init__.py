"""gpushare accounting sidecar: reports a GPU pod's usage intervals to the timekeeper."""
