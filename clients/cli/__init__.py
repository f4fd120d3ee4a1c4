"""`gmbsync`: the operator's command line over QueueService and SyncService.

Built on the blocking clients (`clients.blocking`). `main.py` assembles the parser from the
command groups listed in `commands/__init__.py` (one module per group) and turns every error
into one line on stderr and a documented exit code (`exitcodes.py`); `context.py` resolves
addresses and credentials from flags and the environment; `output.py` prints tables, or JSON
with `--json`.
"""
