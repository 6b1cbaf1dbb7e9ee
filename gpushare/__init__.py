"""gpushare: fractional GPU sharing and GPU-time budgets for Kubernetes.

This small package holds what several parts must agree on (resource names and units,
annotation keys, the charge model) and the single `gpushare` command line. The parts
themselves live in their own packages and never import each other.
"""

__version__ = "0.1.0"
