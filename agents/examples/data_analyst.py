"""The data-analysis agent: plan (LLM) → calculate (tool) → interpret (LLM) → detect (tool) →
report (LLM), over a list of numbers.

Run it with `agentfsm demo`. Set `AGENTFSM_FAIL_AT=detect` (or `agentfsm demo --fail-at detect`)
to make the anomaly detector fail and watch `agentfsm resume` continue from there without
repeating the model requests already paid for.
"""

from __future__ import annotations

import json
import os
import re
import statistics

from pydantic import BaseModel, Field

from agents import Agent, llm, tool
from agents.examples._offline import choose_model, offline_model
from statemachine import StepContext

__all__ = ["Analysis", "analyst"]


class Analysis(BaseModel):
    """The analyst's memory."""

    dataset: list[float] = Field(min_length=1)
    plan: str = ""
    stats: dict[str, float] = {}
    interpretation: str = ""
    anomalies: list[float] = []
    report: str = ""


def calculate(memory: Analysis) -> dict[str, float]:
    data = memory.dataset
    return {
        "count": len(data),
        "mean": round(statistics.fmean(data), 4),
        "median": round(statistics.median(data), 4),
        "stdev": round(statistics.pstdev(data), 4),
        "min": min(data),
        "max": max(data),
    }


class InjectedFailure(RuntimeError):
    """Raised on purpose (AGENTFSM_FAIL_AT) to show recovery."""


def detect_anomalies(memory: Analysis, ctx: StepContext) -> list[float]:
    """Values more than two standard deviations from the mean (median absolute deviation
    based, so one huge value cannot hide itself by inflating the deviation)."""
    if os.environ.get("AGENTFSM_FAIL_AT") == ctx.trigger:
        raise InjectedFailure(f"anomaly detector told to fail (AGENTFSM_FAIL_AT={ctx.trigger})")
    data = memory.dataset
    median = statistics.median(data)
    mad = statistics.median(abs(x - median) for x in data) or 1e-9
    return [x for x in data if abs(x - median) / (1.4826 * mad) > 3.5]


def _offline_reply(prompt: str) -> str:
    """What the offline model says: a deterministic reading of the numbers in the prompt."""
    found = re.search(r"```json\n(.*?)\n```", prompt, re.S)
    facts = json.loads(found.group(1)) if found else {}
    if prompt.startswith("Plan"):
        n = len(facts.get("dataset", []))
        return (
            f"1. Compute summary statistics of the {n} values. 2. Interpret centre and spread."
            " 3. Flag outliers with a robust (median-based) test. 4. Report findings."
        )
    if prompt.startswith("Interpret"):
        s = facts.get("stats", {})
        skew = "right-skewed" if s.get("mean", 0) > s.get("median", 0) else "roughly symmetric"
        return (
            f"The mean ({s.get('mean')}) against the median ({s.get('median')}) suggests the data"
            f" is {skew}; the spread (stdev {s.get('stdev')}) runs from {s.get('min')} to"
            f" {s.get('max')}."
        )
    anomalies = facts.get("anomalies", [])
    flagged = ", ".join(str(a) for a in anomalies) if anomalies else "none"
    return (
        f"Report: {int(facts.get('stats', {}).get('count', 0))} values analysed."
        f" {facts.get('interpretation', '')} Anomalies flagged: {flagged}."
    )


def _facts(memory: Analysis, *fields: str) -> str:
    return "```json\n" + json.dumps(memory.model_dump(include=set(fields))) + "\n```"


analyst: Agent[Analysis] = Agent(
    name="data_analyst",
    version=1,
    memory=Analysis,
    model=choose_model(lambda: offline_model("analyst", _offline_reply)),
    initial="new",
    final=["done"],
    transitions=[
        llm(
            "plan",
            "new",
            "planned",
            into="plan",
            prompt=lambda m: f"Plan an analysis of this dataset.\n{_facts(m, 'dataset')}",
            instructions="You are a careful data analyst. Answer in at most four short steps.",
        ),
        tool("calculate", "planned", "computed", calculate, into="stats", retries=2),
        llm(
            "interpret",
            "computed",
            "interpreted",
            into="interpretation",
            prompt=lambda m: f"Interpret these statistics in two sentences.\n{_facts(m, 'stats')}",
        ),
        tool(
            "detect",
            "interpreted",
            "checked",
            detect_anomalies,
            into="anomalies",
            retries=2,
            backoff=0.05,
        ),
        llm(
            "report",
            "checked",
            "done",
            into="report",
            prompt=lambda m: (
                "Report the findings for a reader in one paragraph.\n"
                + _facts(m, "stats", "interpretation", "anomalies")
            ),
        ),
    ],
)
