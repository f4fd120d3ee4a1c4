"""The command groups of `gmbsync`, one module each; `main.py` registers them in this order.

Each module has `register(groups, add_common)`, which adds its subcommands to the parser and
points each at a function `run(context) -> exit code`. A new group (queue control: `pause` and
`resume`, say) is a new module here, listed in MODULES.
"""

from clients.cli.commands import accounts, diagnostics, enqueue, jobs, schedule, status, token

MODULES = (enqueue, jobs, status, diagnostics, accounts, schedule, token)
