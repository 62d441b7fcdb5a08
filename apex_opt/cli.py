"""The `apex-opt` command line: assembles the commands in apex_opt.commands and maps errors to exit
codes (2 = bad input, 3 = infeasible). Kept thin: every command calls a pure library function."""

from __future__ import annotations

import importlib
import sys
import warnings

import click

from .errors import ApexError, ApexWarning

COMMANDS = ["solve", "simulate", "estimate", "check", "catalog", "engines", "profile", "schema"]


#: click >= 8.2 raises this (a UsageError) for a bare `apex-opt`: print the help, not an error line.
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _show_warning(message, category, filename, lineno, file=None, line=None,
                  _default=warnings.showwarning):
    """ApexWarnings as one ``apex-opt: warning: ...`` line on stderr; others as Python prints them."""
    if issubclass(category, ApexWarning):
        click.echo(f"apex-opt: warning: {message}", err=True)
    else:
        _default(message, category, filename, lineno, file, line)


class ApexGroup(click.Group):
    """Click group that turns apex-opt errors into one stderr line and an exit code.

    Click's own usage errors (unknown option, bad value, missing argument) get the same one-line
    ``apex-opt: error: ...`` form and exit 2 instead of click's multi-line usage block."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        with warnings.catch_warnings():
            warnings.simplefilter("default", ApexWarning)
            warnings.showwarning = _show_warning
            try:
                rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            except _NO_ARGS_IS_HELP as exc:
                click.echo(exc.format_message(), err=True)  # the help text itself
                sys.exit(2)
            except click.UsageError as exc:
                where = exc.ctx.command_path if exc.ctx is not None else "apex-opt"
                msg = " ".join(exc.format_message().split())
                click.echo(f"apex-opt: error: {msg} (see '{where} --help')", err=True)
                sys.exit(2)
            except click.ClickException as exc:
                click.echo(f"apex-opt: error: {' '.join(exc.format_message().split())}", err=True)
                sys.exit(exc.exit_code)
            except click.Abort:
                click.echo("apex-opt: interrupted", err=True)
                sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)

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
