"""gpushare node manager: kubelet device plugin, GPU placement and per-container limits."""
