"""Scripted multi-agent conversations, looping and healthy, for measuring the loop detectors.

    .venv/bin/python -m bench.detection.corpus [--vocabulary tuning|unseen] [--seed N]
        [--per-class N] [--kind KIND ...] --out FILE.jsonl

Writes the ``tripwire replay`` JSONL format, each conversation preceded by a comment line with
its label (``# {"task": ..., "looping": true, "kind": "restate"}``), which the replay reader
skips. The same seed and vocabulary always give the same conversations.

Looping kinds (the loop starts after 0 to 3 ordinary messages and runs to the end):

* ``restate``: two agents restate the same few facts each round, in a new order, reworded,
  with a new opener and sign-off;
* ``handoff_cycle``: three agents hand the task round A -> B -> C -> A, each rewording its own
  content and varying its greeting and closing;
* ``tool_repeat``: an agent issues the same tool call (or the same two or three calls in turn),
  gets the same result, and words the text around it differently each time;
* ``near_repeat``: an agent sends the same message again with only a counter, punctuation,
  markdown or a suffix such as "(draft)" changed.

Healthy kinds:

* ``progress``: status reports whose numbers change every round (files processed, tests
  failing "(was 13)"), acknowledged by a supervisor;
* ``fixing``: a coder runs the tests (the same call every time), patches a different file after
  each run, and the failure count converges; a reviewer comments;
* ``handoff``: agents hand work on in a fixed rota with the same kind of greeting and sign-off,
  each message bringing new facts and recalling one old one;
* ``polling``: an agent polls a job with the same call while its status changes.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.detection.vocabulary import TUNING, UNSEEN, Vocabulary

LOOPING = ("restate", "handoff_cycle", "tool_repeat", "near_repeat")
HEALTHY = ("progress", "fixing", "handoff", "polling")
VOCABULARIES = {TUNING.name: TUNING, UNSEEN.name: UNSEEN}

Record = dict[str, Any]


@dataclass(frozen=True)
class Conversation:
    task: str
    kind: str
    looping: bool
    records: list[Record]

    @property
    def completions(self) -> int:
        return sum(r["role"] == "assistant" for r in self.records)


class _Writer:
    """Builds one conversation's records and the wording helpers its scripts share."""

    def __init__(self, rng: random.Random, vocabulary: Vocabulary, task: str) -> None:
        self.rng, self.v, self.task = rng, vocabulary, task
        self.records: list[Record] = []
        self.used_facts: set[str] = set()

    def say(self, agent: str, text: str, calls: Sequence[tuple[str, Any]] = ()) -> None:
        record: Record = {"task": self.task, "agent": agent, "role": "assistant", "text": text}
        if calls:
            record["tool_calls"] = [{"name": name, "arguments": args} for name, args in calls]
        self.records.append(record)

    def tool(self, agent: str, text: str) -> None:
        self.records.append({"task": self.task, "agent": agent, "role": "tool", "text": text})

    @property
    def completions(self) -> int:
        return sum(r["role"] == "assistant" for r in self.records)

    def fact(self) -> str:
        """A fact not used before in this conversation."""
        while True:
            subject = self.rng.choice(self.v.subjects)
            predicate = self.rng.choice(self.v.predicates).format(n=self.rng.randint(2, 90))
            text = f"{subject} {predicate}"
            if text not in self.used_facts:
                self.used_facts.add(text)
                return text[0].upper() + text[1:] + "."

    def reword(self, sentence: str) -> str:
        words = sentence.rstrip(".").split(" ")
        for index, word in enumerate(words):
            options = self.v.synonyms.get(word.lower())
            if options and self.rng.random() < 0.5:
                words[index] = self.rng.choice(options)
        text = " ".join(words) + "."
        if self.rng.random() < 0.3:
            text = f"{self.rng.choice(self.v.hedges)} {text[0].lower()}{text[1:]}"
        return text

    def layout(self, sentences: Sequence[str]) -> str:
        style = self.rng.choice(("prose", "prose", "bullets", "numbered", "bold"))
        if style == "bullets":
            return "\n".join(f"- {s}" for s in sentences)
        if style == "numbered":
            return "\n".join(f"{n}. {s}" for n, s in enumerate(sentences, 1))
        if style == "bold":
            return " ".join(f"**{s}**" if i == 0 else s for i, s in enumerate(sentences))
        return " ".join(sentences)

    def wrap(self, body: str, to: str, opener: str | None = None, closer: str | None = None) -> str:
        opener = (opener or self.rng.choice(self.v.openers)).format(to=to)
        closer = (closer or self.rng.choice(self.v.closers)).format(to=to)
        return f"{opener}\n{body}\n{closer}"

    def ordinary(self, agent: str, to: str) -> None:
        """A message that moves the task on: new facts, no loop."""
        facts = [self.fact() for _ in range(self.rng.randint(2, 4))]
        self.say(agent, self.wrap(self.layout(facts), to))

    def agents(self, count: int) -> list[str]:
        return self.rng.sample(self.v.agents, count)


def _restate(w: _Writer, length: int) -> None:
    x, y = w.agents(2)
    for n in range(w.rng.randint(0, 3)):
        w.ordinary((x, y)[n % 2], (y, x)[n % 2])
    own = {x: [w.fact() for _ in range(w.rng.randint(3, 5))], y: [w.fact() for _ in range(3)]}
    turn = 0
    while w.completions < length:
        speaker, other = (x, y) if turn % 2 == 0 else (y, x)
        facts = own[speaker][:]
        w.rng.shuffle(facts)
        w.say(speaker, w.wrap(w.layout([w.reword(f) for f in facts]), other))
        turn += 1


def _handoff_cycle(w: _Writer, length: int) -> None:
    rota = w.agents(3)
    for n in range(w.rng.randint(0, 2)):
        w.ordinary(rota[n % 3], rota[(n + 1) % 3])
    own = {agent: [w.fact() for _ in range(w.rng.randint(2, 4))] for agent in rota}
    turn = 0
    while w.completions < length:
        speaker, following = rota[turn % 3], rota[(turn + 1) % 3]
        facts = [w.reword(f) for f in own[speaker]]
        if w.rng.random() < 0.5:
            w.rng.shuffle(facts)
        w.say(speaker, w.wrap(w.layout(facts), following))
        turn += 1


def _tool_repeat(w: _Writer, length: int) -> None:
    worker, boss = w.agents(2)
    supervised = w.rng.random() < 0.5
    tools = w.v.search_tools
    for _ in range(w.rng.randint(1, 2)):
        query = w.rng.choice(w.v.queries)
        w.say(worker, f"Looking up {query}.", [(w.rng.choice(tools), {"query": query})])
        w.tool(worker, f"{w.rng.randint(1, 40)} results for {query}: {w.fact()}")
    period = w.rng.choice((1, 1, 1, 2, 3))
    calls = [
        (w.rng.choice(tools), {"query": q, "limit": w.rng.choice((10, 20))})
        for q in w.rng.sample(w.v.queries, period)
    ]
    results = [f"{w.rng.randint(1, 40)} results: {w.fact()}" for _ in calls]
    intros = list(w.v.tool_intros)
    w.rng.shuffle(intros)
    turn = 0
    while w.completions < length:
        text = intros[turn % len(intros)]
        if w.rng.random() < 0.4:
            text += " " + w.reword(w.fact())
        w.say(worker, text, [calls[turn % period]])
        w.tool(worker, results[turn % period])
        if supervised and w.rng.random() < 0.35 and w.completions < length:
            w.say(boss, w.rng.choice(w.v.acks).format(pct=w.rng.randint(10, 90)))
        turn += 1


def _near_repeat(w: _Writer, length: int) -> None:
    writer, critic = w.agents(2)
    for n in range(w.rng.randint(0, 2)):
        w.ordinary((writer, critic)[n % 2], (critic, writer)[n % 2])
    body = w.layout([w.fact() for _ in range(w.rng.randint(3, 5))])
    opener, closer = w.rng.choice(w.v.openers), w.rng.choice(w.v.closers)
    counter, suffix = w.rng.choice(w.v.counters), w.rng.choice(w.v.suffixes)
    feedback = [w.fact() for _ in range(2)]
    critic_repeats = w.rng.random() < 0.5
    k = w.rng.randint(1, 3)
    while w.completions < length:
        variant = w.rng.choice(("counter", "punctuation", "suffix", "markdown"))
        text = body
        if variant == "counter":
            text = f"{counter.format(k=k)} {text}"
        elif variant == "punctuation":
            text = text.replace(". ", w.rng.choice(("; ", "! ", " - ", ".. "))).rstrip(".") + "!"
        elif variant == "suffix":
            text = f"{text} {suffix.format(k=k)}"
        else:
            text = text.replace("- ", "* ").replace("**", "") if "- " in text else f"**{text}**"
        w.say(writer, w.wrap(text, critic, opener, closer))
        k += 1
        if w.completions < length:
            if critic_repeats:
                note = " ".join(feedback) + f" ({counter.format(k=k - 1).rstrip(':.- ')})"
            else:
                note = w.rng.choice(w.v.acks).format(pct=w.rng.randint(10, 90))
            w.say(critic, note)


def _progress(w: _Writer, length: int) -> None:
    worker, boss = w.agents(2)
    template = w.rng.choice(w.v.progress)
    total = w.rng.randint(200, 5000)
    done, failing, errors = w.rng.randint(5, 50), w.rng.randint(15, 40), w.rng.randint(0, 3)
    previous = failing + w.rng.randint(1, 4)
    pct = 100 * done // total
    acks = list(w.v.acks)
    w.rng.shuffle(acks)
    turn = 0
    while w.completions < length:
        if "was" in template:  # a count that falls, with the one it fell from
            a, b = failing, previous
        else:
            a, b = done, total
        text = template.format(a=a, b=b, c=pct, d=errors)
        if w.rng.random() < 0.5:
            text += " " + w.fact()
        w.say(worker, text)
        if w.completions < length and w.rng.random() < 0.7:
            w.say(boss, acks[turn % len(acks)].format(pct=pct))
        previous, failing = failing, max(failing - w.rng.randint(0, 3), 0)
        done += w.rng.randint(total // 40, total // 12)
        pct = min(100 * done // total, 99)
        errors += w.rng.choice((0, 0, 1, 2))
        turn += 1


def _fixing(w: _Writer, length: int) -> None:
    coder, reviewer = w.agents(2)
    failing, passing = w.rng.randint(6, 14), w.rng.randint(40, 200)
    files, causes = list(w.v.files), list(w.v.causes)
    w.rng.shuffle(files)
    w.rng.shuffle(causes)
    intros = ["Running the test suite.", "Let me run the tests now.", "Checking the tests."]
    turn = 0
    while w.completions < length:
        w.say(coder, f"{intros[turn % 3]} Last run: {failing} failing.", [("run_tests", {})])
        w.tool(coder, f"{failing} failed, {passing} passed")
        file, cause = files[turn % len(files)], causes[turn % len(causes)]
        if w.completions >= length:
            break
        was = failing
        failing = max(failing - w.rng.choice((0, 1, 1, 2, 3)), 0)
        passing += was - failing
        w.say(
            coder,
            f"Tests: {was} failing. The failure in {file} comes from {cause}; patching it.",
            [("edit_file", {"path": file, "patch": f"fix {cause}"})],
        )
        w.tool(coder, f"Updated {file} (+{w.rng.randint(1, 30)} -{w.rng.randint(0, 20)} lines)")
        if w.completions < length and w.rng.random() < 0.5:
            w.say(reviewer, f"Looked at {file}: {cause} explains it. {w.fact()}")
        turn += 1


def _handoff(w: _Writer, length: int) -> None:
    rota = w.agents(w.rng.randint(3, 4))
    opener, closer = w.rng.choice(w.v.openers), w.rng.choice(w.v.closers)
    said: list[str] = []
    turn = 0
    while w.completions < length:
        speaker, following = rota[turn % len(rota)], rota[(turn + 1) % len(rota)]
        facts = [w.fact() for _ in range(w.rng.randint(2, 4))]
        if said and w.rng.random() < 0.6:
            facts.insert(0, w.reword(w.rng.choice(said)))
        said += facts
        w.say(speaker, w.wrap(w.layout(facts), following, opener, closer))
        turn += 1


def _polling(w: _Writer, length: int) -> None:
    worker = w.agents(1)[0]
    job = w.rng.randint(1000, 9999)
    pct = w.rng.randint(0, 20)
    phrases = ["Job {job} at {pct}%, checking again.", "Still running ({pct}%).",
               "Status of {job}: {pct}% done; polling.", "{pct}% now. Waiting a bit longer.",
               "Not finished yet, {pct}% complete."]  # fmt: skip
    while w.completions < length:
        text = w.rng.choice(phrases).format(job=job, pct=pct)
        w.say(worker, text, [("get_job_status", {"job": job})])
        pct = min(pct + w.rng.randint(3, 15), 100)
        w.tool(worker, f"job {job}: {'done' if pct == 100 else 'running'}, {pct}% complete")
        if pct == 100:
            w.say(worker, f"Job {job} finished. {w.fact()}")
            break


SCRIPTS: dict[str, Callable[[_Writer, int], None]] = {
    "restate": _restate,
    "handoff_cycle": _handoff_cycle,
    "tool_repeat": _tool_repeat,
    "near_repeat": _near_repeat,
    "progress": _progress,
    "fixing": _fixing,
    "handoff": _handoff,
    "polling": _polling,
}


def generate(vocabulary: str, seed: int, per_class: int) -> list[Conversation]:
    """``per_class`` conversations of every kind, looping and healthy, in a fixed order."""
    words = VOCABULARIES[vocabulary]
    conversations = []
    for kind in (*LOOPING, *HEALTHY):
        for index in range(per_class):
            rng = random.Random(f"{seed}/{vocabulary}/{kind}/{index}")
            task = f"{vocabulary}-{seed}-{kind}-{index:03d}"
            writer = _Writer(rng, words, task)
            SCRIPTS[kind](writer, rng.randint(10, 18))
            conversations.append(Conversation(task, kind, kind in LOOPING, writer.records))
    return conversations


def write_jsonl(conversations: Sequence[Conversation], out: Path) -> None:
    with out.open("w", encoding="utf-8") as file:
        for conversation in conversations:
            label = {"task": conversation.task, "looping": conversation.looping}
            file.write(f"# {json.dumps(label | {'kind': conversation.kind})}\n")
            for record in conversation.records:
                file.write(json.dumps(record) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--vocabulary", choices=sorted(VOCABULARIES), default=TUNING.name)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--per-class", type=int, default=5)
    parser.add_argument("--kind", action="append", choices=[*LOOPING, *HEALTHY], help="only these")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    conversations = generate(args.vocabulary, args.seed, args.per_class)
    if args.kind:
        conversations = [c for c in conversations if c.kind in args.kind]
    write_jsonl(conversations, args.out)
    print(f"{len(conversations)} conversations written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
