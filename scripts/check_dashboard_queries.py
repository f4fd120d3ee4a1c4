"""Checks every query of the Grafana dashboards with promtool (as recording rules, the one
form in which promtool parses PromQL offline). Part of `make check-alerts`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

DASHBOARDS = Path(__file__).resolve().parent.parent / "deploy/grafana/dashboards"


def main() -> int:
    rules = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                rules.append(
                    {
                        "record": f"dashboard:panel_{panel['id']}_{target['refId']}",
                        "expr": target["expr"],
                    }
                )
    if not rules:
        print("no dashboard queries found", file=sys.stderr)
        return 1
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as file:
        yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}, file)
        file.flush()
        promtool = shutil.which("promtool")
        if promtool is None:
            print("promtool is not installed (scripts/ensure_promtool.sh)", file=sys.stderr)
            return 1
        # Our own fixed arguments: a tool found on PATH and a file this script wrote.
        checked = subprocess.run([promtool, "check", "rules", file.name], check=False)  # noqa: S603
    if checked.returncode == 0:
        print(f"{len(rules)} dashboard queries parse")
    return checked.returncode


if __name__ == "__main__":
    sys.exit(main())
