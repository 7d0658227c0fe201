"""Check that a documentation move lost no figure: every number in README.md at COMMIT appears in the documents now.

    python3 tests/figures_kept.py d85db19        # the README before it was split into README, RESULTS, PERFORMANCE, USAGE
"""
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ("README.md", "RESULTS.md", "PERFORMANCE.md", "USAGE.md", "DESIGN.md")
NUMBER = re.compile(r"\d[\d,.]*\d|\d")


def main(commit):
    old = subprocess.run(["git", "show", f"{commit}:README.md"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    now = "".join(open(os.path.join(REPO, doc), encoding="utf-8").read()
                  for doc in DOCS if os.path.exists(os.path.join(REPO, doc)))
    lost = sorted(set(NUMBER.findall(old)) - set(NUMBER.findall(now)))
    figures = sorted(set(re.findall(r"\b\d\.\d{4}\b", old)))
    print(f"{len(set(NUMBER.findall(old)))} numbers in README.md at {commit} ({len(figures)} four-decimal figures); "
          f"lost: {', '.join(lost) or 'none'}")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "d85db19"))
