"""The documents and reproduce.py in step: every figure with the command that reproduces it, and every command's figure
where the documents say it is.

A figure is an HR@10 / NDCG@10 pair written with four decimals (0.6914 / 0.4147, in prose or in adjacent table
columns, bold or marked † alike). To add one: an Experiment in reproduce.EXPERIMENTS with `readme` set to the figure,
and the figure in a section of RESULTS.md that names `reproduce.py NAME` (and, for a headline, a row of the README's
results table naming it too).
"""
import os
import re

import reproduce
from conftest import REPO

FIGURE = re.compile(r"\b[01]\.\d{4}\b")
FIGURE_DOCS = ("README.md", "RESULTS.md")  # documents whose figures must each have an experiment
ALL_DOCS = ("README.md", "RESULTS.md", "PERFORMANCE.md", "USAGE.md", "DESIGN.md")


def figures(text):
    return FIGURE.findall(text)


def holds(text, figure):
    """Whether `text` writes the numbers of `figure` next to each other (markup, daggers and columns aside)."""
    wanted, found = figures(figure), figures(text)
    return any(found[i:i + len(wanted)] == wanted for i in range(len(found)))


def paragraphs(text):
    """Table rows one by one, other text by blank-line separated paragraphs."""
    for block in re.split(r"\n\s*\n", text):
        rows = [line for line in block.splitlines() if line.startswith("|")]
        yield from rows if rows else [block]


def test_every_experiments_figure_is_in_a_results_section_that_names_it():
    sections = [text for doc, _, text in reproduce.doc_sections() if doc == "RESULTS.md"]
    for name, experiment in reproduce.EXPERIMENTS.items():
        if experiment.readme:
            assert figures(experiment.readme), (name, experiment.readme)
            assert any(name in reproduce.cited(text) and holds(text, experiment.readme) for text in sections), \
                f"{name}: {experiment.readme} is not in a section of RESULTS.md that names it"


def test_every_cited_name_is_an_experiment_and_every_experiment_is_cited():
    cited = set().union(*(reproduce.cited(text) for _, _, text in reproduce.doc_sections()))
    assert cited == set(reproduce.EXPERIMENTS)


def test_every_figure_of_readme_and_results_has_an_experiment_in_its_section():
    """Each table row or paragraph with a figure lies in a section that names at least one reproduce.py experiment."""
    for doc, heading, text in reproduce.doc_sections():
        if doc in FIGURE_DOCS and any(figures(p) for p in paragraphs(text)):
            assert reproduce.cited(text) & set(reproduce.EXPERIMENTS), f"{doc}, {heading}: figures without a command"


def test_readme_summary_rows_match_their_experiments():
    """A row of the README's results table that names an experiment shows that experiment's figure."""
    (text,) = [text for doc, heading, text in reproduce.doc_sections() if (doc, heading) == ("README.md", "Results")]
    rows = [row for row in text.splitlines() if row.startswith("|") and reproduce.cited(row)]
    assert rows
    for row in rows:
        (name,) = reproduce.cited(row)
        assert holds(row, reproduce.EXPERIMENTS[name].readme), row


def test_the_docs_link_to_files_and_sections_that_exist():
    docs = {doc: open(os.path.join(REPO, doc), encoding="utf-8").read() for doc in ALL_DOCS}
    anchors = {doc: {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
                     for heading in re.findall(r"^#+ (.*)$", text, re.M)} for doc, text in docs.items()}
    for doc, text in docs.items():
        for target, anchor in re.findall(r"\]\(([A-Z]+\.md)?(?:#([\w-]+))?\)", text):
            target = target or doc
            assert target in docs, (doc, target)
            assert not anchor or anchor in anchors[target], (doc, target, anchor)


def test_the_docs_speak_of_the_project_alone():
    """A figure carries its commit and machine, never the work that made it: no issue numbers, sessions, rounds of
    work or agents (wandb's sweep agents aside)."""
    process = re.compile(r"\bissues? #?\d+|#\d+\b|\bsessions? \d+|\brounds? of work|\bagents?\b", re.I)
    for doc in ALL_DOCS:
        with open(os.path.join(REPO, doc), encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                found = process.search(re.sub(r"(sweep|wandb) agents?", "", line))
                assert not found, f"{doc}:{number}: {found.group()!r}"


def test_readme_is_a_front_door():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        assert len(f.read().splitlines()) <= 260
