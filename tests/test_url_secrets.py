"""Credentials inside URLs (`https://user:${PASS}@host/…`, presigned `?sig=…`) are hidden
wherever rbee prints or stores a URL: one function, here case by case, then in the plan as
text, as Markdown and in its stored copy of the cluster."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from rbee.config.models import Cluster
from rbee.net import hide_url_secrets
from rbee.plan.observed import Observed
from rbee.plan.planner import plan
from rbee.plan.render import plan_markdown, plan_text

CASES = Path(__file__).parent / "plan" / "cases"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("add from https://alice:s3cret@h.example/m.gguf (cpu)",
         "add from https://(sensitive)@h.example/m.gguf (cpu)"),
        ("https://h.example/m.gguf?sig=abc&Expires=1",
         "https://h.example/m.gguf?sig=(sensitive)&Expires=(sensitive)"),
        ("https://tok@h.example/p?x", "https://(sensitive)@h.example/p?(sensitive)"),
        ("fetch 'https://u:p@h:8443/a?b=c' failed",
         "fetch 'https://(sensitive)@h:8443/a?b=(sensitive)' failed"),
        ("http://[::1]:9/a", "http://[::1]:9/a"),
        ("hf://org/repo/file.gguf@main", "hf://org/repo/file.gguf@main"),  # @ in the path
        ("file:///data/m.gguf", "file:///data/m.gguf"),
        ("no URL at all", "no URL at all"),
    ],
)  # fmt: skip
def test_a_urls_user_password_and_query_values_are_hidden(text: str, shown: str) -> None:
    assert hide_url_secrets(text) == shown


def test_a_plan_shows_and_stores_no_credential_of_a_source() -> None:
    doc = YAML(typ="safe").load((CASES / "empty_cluster.yaml").read_text())
    source = "https://alice:s3cret@models.example/gemma.gguf?sig=t0ken"
    doc["desired"]["models"][0]["source"] = source
    the_plan = plan(
        Cluster.model_validate(doc["desired"]),
        Observed.model_validate(doc["observed"]),
        "http://127.0.0.1:7833",
        rbee_version="0.1.0",
    )
    shown = "https://(sensitive)@models.example/gemma.gguf?sig=(sensitive)"
    for text in (plan_text(the_plan), plan_markdown(the_plan), json.dumps(the_plan.cluster)):
        assert "s3cret" not in text and "t0ken" not in text and "alice" not in text
    assert f"add from {shown}" in plan_text(the_plan)
    assert the_plan.cluster["models"][0]["source"] == shown
