"""The `apex-opt` command line: assembles the commands in apex_opt.commands and maps errors to exit
codes (2 = bad input, 3 = infeasible). Kept thin: every command calls a pure library function."""

from __future__ import annotations

import importlib
import sys

import click

from .errors import ApexError

COMMANDS = ["solve", "simulate", "estimate", "check", "catalog", "profile", "schema"]


class ApexGroup(click.Group):
    """Click group that turns apex-opt errors into one stderr line and an exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ApexError as exc:
            click.echo(f"apex-opt: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("apex-opt: interrupted", err=True)
            sys.exit(130)


@click.group(cls=ApexGroup, context_settings={"help_option_names": ["-h", "--help"],
                                              "max_content_width": 100})
@click.version_option(package_name="apex-opt")
def main() -> None:
    """Plan LLM serving deployments: which parallel plan (DP/PP/TP/EP, quantisation, engine
    limits) serves a model best on a cluster for a workload and SLOs, and how to launch it.

    \b
    Start here:
      apex-opt solve                      plan the embedded example (llama-3.1-70b on 8xH100)
      apex-opt models / clusters          what is bundled
      apex-opt check --model llama-3.1-70b --cluster h100-sxm-1x8
      apex-opt simulate --model llama-3.1-70b --cluster h100-sxm-1x8 --tp 8 --rate 2 \\
          --num-requests 200 --prompt-len 1000 --output-len 200

    Models are bundled names or paths to an HF config.json; clusters are bundled names or YAML
    files. Exit codes: 0 ok, 2 bad input, 3 infeasible (with an explanation).
    """


for _name in COMMANDS:
    _mod = importlib.import_module(f"apex_opt.commands.{_name}")
    for _cmd in getattr(_mod, "COMMANDS", [getattr(_mod, "command", None)]):
        if _cmd is not None:
            main.add_command(_cmd)


if __name__ == "__main__":  # pragma: no cover
    main()
