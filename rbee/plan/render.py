"""Plans as people and programs read them: text with +/~/-, or JSON."""

from __future__ import annotations

import json

from rbee.plan.planner import Plan

__all__ = ["plan_json", "plan_text"]

_SYMBOL = {"create": "+", "update": "~", "replace": "-/+", "delete": "-"}


def plan_text(plan: Plan) -> str:
    """Terraform-style text: one line per action, then a summary line."""
    if not plan.has_changes:
        return "No changes. The cluster matches the configuration.\n"
    width = max(len(a.address) for a in plan.actions)
    lines = ["rbee will perform the following actions:", ""]
    for action in plan.actions:
        symbol = _SYMBOL[action.op]
        lines.append(f"  {symbol:>3} {action.address:<{width}}  {action.reason}")
    counts = plan.counts()
    lines += [
        "",
        f"Plan: {counts['add']} to add, {counts['change']} to change, "
        f"{counts['destroy']} to destroy.",
    ]
    return "\n".join(lines) + "\n"


def plan_json(plan: Plan) -> str:
    """The plan as versioned JSON (`format_version`), with counts."""
    body = plan.model_dump(mode="json")
    body["summary"] = plan.counts()
    return json.dumps(body, indent=2) + "\n"
