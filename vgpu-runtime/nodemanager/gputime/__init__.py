"""The GPU time scheduler: tokens of GPU time granted per physical GPU to the hooks of the
containers sharing it (`scheduler.py` decides, `server.py` serves the unix sockets,
`protocol.py` is the wire format, `client.py` a reference client, `quotas.py` the shares)."""
