"""Plans as people and programs read them: text with + ~ -/+ -, Markdown for a pull request's
comment, Graphviz DOT of the apply order, or versioned JSON. Secrets never appear: a plan's
cluster is redacted when the plan is made."""

from __future__ import annotations

import json
import re
from typing import Any

from rbee.net import hide_url_secrets
from rbee.wire.plan import Action, Plan

__all__ = ["placement_text", "plan_dot", "plan_json", "plan_markdown", "plan_text"]

_SYMBOL = {"create": "+", "update": "~", "replace": "-/+", "delete": "-"}
_ANSI = {"create": "32", "update": "33", "replace": "33", "delete": "31"}


def _paint(text: str, code: str, colour: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if colour else text


def _value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value)


def plan_text(plan: Plan, colour: bool = False) -> str:
    """Terraform-style text: one line per action, field changes under it, then a summary."""
    lines: list[str] = []
    for error in plan.errors:
        lines.append(_paint(f"Error: {error.address}: {error.message}", "31", colour))
    if plan.errors:
        lines.append("")
    if plan.refresh_only:
        lines += _drift_lines(plan)
    elif not plan.actions and plan.errors:
        lines.append("No changes beyond the errors above: those parts are left as they are.")
    elif not plan.actions:
        lines.append("No changes. The cluster matches the configuration.")
    else:
        width = max(len(a.address) for a in plan.actions)
        lines += ["rbee will perform the following actions:", ""]
        for action in plan.actions:
            symbol = _paint(f"{_SYMBOL[action.op]:>3}", _ANSI[action.op], colour)
            lines.append(f"  {symbol} {action.address:<{width}}  {action.reason}")
            if action.placement:
                lines.append(f"        on {placement_text(action)}")
            for change in action.changes:
                lines.append(
                    f"        ~ {change.field}: {_value(change.old)} → {_value(change.new)}"
                )
    if plan.scaling:
        width = max(len(note.address) for note in plan.scaling)
        lines += ["", "Elastic, scaled by the queen within their range:"]
        lines += [f"  {note.address:<{width}}  {note.message}" for note in plan.scaling]
    if plan.unmanaged:
        lines += ["", "Unmanaged, kept (set `prune: true` or pass --prune to remove):"]
        lines += [f"  {note.address}: {note.message}" for note in plan.unmanaged]
    if plan.targets:
        lines += ["", f"Targeted: {', '.join(plan.targets)} (and what they depend on)."]
    if plan.actions and not plan.refresh_only:
        counts = plan.counts()
        lines += [
            "",
            f"Plan: {counts['add']} to add, {counts['change']} to change, "
            f"{counts['destroy']} to destroy.",
        ]
    return "\n".join(lines) + "\n"


def placement_text(action: Action) -> str:
    """Where a split worker's weights and KV cache go, device by device:
    `cpu 0.5 GB + cuda:0 21.3 GB + cuda:1 20.1 GB + gpu2/cuda:0 (rpc) 9.8 GB`."""
    parts = []
    for share in action.placement:
        if not share.total_bytes:
            continue
        where = share.device if share.hive == action.hive else f"{share.hive}/{share.device}"
        rpc = " (rpc)" if share.rpc else ""
        parts.append(f"{where}{rpc} {share.total_bytes / 1e9:.1f} GB")
    return " + ".join(parts)


def _drift_lines(plan: Plan) -> list[str]:
    if not plan.drift:
        return ["No drift. The cluster matches the configuration."]
    lines = ["The cluster has drifted from the configuration:", ""]
    width = max(len(note.address) for note in plan.drift)
    lines += [f"  {note.address:<{width}}  {note.message}" for note in plan.drift]
    lines += ["", f"Drift: {len(plan.drift)} resources differ. Nothing was changed."]
    return lines


def plan_json(plan: Plan) -> str:
    """The plan as versioned JSON (`format_version`, schema in schemas/plan.schema.json)."""
    body = plan.model_dump(mode="json")
    body["summary"] = plan.counts()
    return json.dumps(body, indent=2) + "\n"


_EMOJI = {"create": "🟢", "update": "🟡", "replace": "🟠", "delete": "🔴"}
_VERB = {"create": "add", "update": "change", "replace": "replace", "delete": "destroy"}


# Markdown and HTML that a string from the YAML (a source URL, a name in a reason) could use
# to inject into a pull request's comment mid-line: links and images (`[`), HTML (`<`),
# emphasis and strike-through, code spans, table cells, and @mentions that notify people.
_MARKDOWN = re.compile(r"([\\`*_\[\]|~])")


def _cell(text: str) -> str:
    """Plain text for a Markdown table cell or list item: one line, credentials in URLs hidden,
    every character Markdown or HTML would act on escaped."""
    text = hide_url_secrets(text).replace("\r", " ").replace("\n", " ")
    text = _MARKDOWN.sub(r"\\\1", text)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace("@", "&#64;")


def _code(text: str) -> str:
    """`text` as an inline code span whatever backticks it holds (CommonMark: a fence longer
    than any run inside), on one line, pipes escaped (GitHub splits table cells on them even
    in code), credentials in URLs hidden."""
    text = hide_url_secrets(text).replace("\r", " ").replace("\n", " ")
    text = text.replace("|", "\\|")
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    padded = f" {text} " if text.startswith("`") or text.endswith("`") else text
    return f"{fence}{padded}{fence}"


def plan_markdown(plan: Plan) -> str:
    """A pull request's comment: the summary line, a table of actions, then one collapsed
    details block per action with its field changes and what it waits for."""
    counts = plan.counts()
    lines = ["### rbee plan", ""]
    if plan.errors:
        lines += [f"> **Error** `{e.address}`: {_cell(e.message)}" for e in plan.errors]
        lines.append("")
    if plan.refresh_only:
        lines.append(f"**Drift:** {len(plan.drift)} resources differ. Nothing is changed.")
        lines += ["", "| resource | drift |", "|---|---|"]
        lines += [f"| `{n.address}` | {_cell(n.message)} |" for n in plan.drift]
        return "\n".join(lines) + "\n"
    if not plan.actions:
        lines.append("**No changes.** The cluster matches the configuration.")
    else:
        lines += [
            f"**Plan:** {counts['add']} to add, {counts['change']} to change, "
            f"{counts['destroy']} to destroy.",
            "",
            "| | action | resource | why |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {_EMOJI[a.op]} | {_VERB[a.op]} | `{a.address}` | {_cell(a.reason)} |"
            for a in plan.actions
        ]
        lines.append("")
        for action in plan.actions:
            lines += ["<details>", f"<summary><code>{action.address}</code></summary>", ""]
            lines.append(f"- {_VERB[action.op]}: {_cell(action.reason)}")
            if action.placement:
                lines.append(f"- on {_cell(placement_text(action))}")
            for change in action.changes:
                old, new = _code(_value(change.old)), _code(_value(change.new))
                lines.append(f"- {_code(change.field)}: {old} → {new}")
            if action.depends_on:
                waits = ", ".join(f"`{d}`" for d in action.depends_on)
                lines.append(f"- after {waits}")
            lines += ["", "</details>", ""]
    if plan.scaling:
        lines += ["", "Elastic, scaled by the queen within their range:", ""]
        lines += [f"- `{n.address}`: {_cell(n.message)}" for n in plan.scaling]
    if plan.unmanaged:
        lines += ["", "Unmanaged, kept (`prune: true` or `--prune` removes them):", ""]
        lines += [f"- `{n.address}`: {_cell(n.message)}" for n in plan.unmanaged]
    return "\n".join(lines).rstrip("\n") + "\n"


def plan_dot(plan: Plan) -> str:
    """The apply graph as Graphviz DOT: one node per action (coloured by what it does), an
    edge from each action to what waits for it."""
    colours = {"create": "palegreen", "update": "khaki", "replace": "orange", "delete": "salmon"}
    lines = ["digraph rbee_plan {", "  rankdir=LR;", '  node [shape=box, style="rounded,filled"];']
    known = {a.address for a in plan.actions}
    for action in plan.actions:
        label = f"{_SYMBOL[action.op]} {action.address}"
        lines.append(f"  {json.dumps(action.address)} [label={json.dumps(label)}, "
                     f"fillcolor={colours[action.op]}];")  # fmt: skip
    for action in plan.actions:
        for dependency in action.depends_on:
            if dependency in known:
                lines.append(f"  {json.dumps(dependency)} -> {json.dumps(action.address)};")
    lines.append("}")
    return "\n".join(lines) + "\n"
