"""The gpushare scheduler extender: GPU placement decided once, at bind, and recorded on the pod."""
