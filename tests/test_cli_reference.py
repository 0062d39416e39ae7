"""docs/cli.md is what the parser says: regenerate it with `python -m torchdecoupled.cli_reference > docs/cli.md`."""
import os

from torchdecoupled.cli_reference import reference

DOC = os.path.join(os.path.dirname(__file__), "..", "docs", "cli.md")


def test_the_cli_reference_is_generated_from_the_parser():
    with open(DOC) as f:
        assert f.read() == reference(), "docs/cli.md is out of date: python -m torchdecoupled.cli_reference > docs/cli.md"


def test_the_reference_names_every_command():
    text = reference()
    for cmd in ("train", "compare", "schedule", "plot", "methods", "bench"):
        assert f"## `torchdecoupled {cmd}`" in text
