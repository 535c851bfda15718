"""Print the Grafana dashboard's PromQL expressions as a Prometheus rule file, with Grafana's
variables replaced by values Prometheus accepts, so ``promtool check rules`` checks their syntax.
The file is JSON, which promtool reads as the YAML it is a subset of.

    python deploy/grafana/dashboard_queries.py DASHBOARD.json > queries.rules.json
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

# Range variables become a duration, selection variables a regex matching anything.
_RANGES: Final = re.compile(r"\$(__rate_interval|__interval|__range)\b")
_SELECTIONS: Final = re.compile(r"\$\{?(\w+)\}?")


def expressions(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """``(where, expr)`` for every panel target and annotation query."""
    for panel in dashboard.get("panels", []):
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                yield f"panel {inner['id']} {target['refId']}", target["expr"]
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if "expr" in annotation:
            yield f"annotation {annotation['name']}", annotation["expr"]


def as_prometheus(expr: str) -> str:
    return _SELECTIONS.sub(".*", _RANGES.sub("5m", expr))


def rule_file(dashboard: dict[str, Any]) -> dict[str, Any]:
    rules = [
        {"record": f"dashboard:query_{index}", "expr": as_prometheus(expr)}
        for index, (_, expr) in enumerate(expressions(dashboard))
    ]
    return {"groups": [{"name": "dashboard-queries", "rules": rules}]}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write(__doc__ or "")
        return 2
    dashboard = json.loads(Path(argv[0]).read_text())
    sys.stdout.write(json.dumps(rule_file(dashboard), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
