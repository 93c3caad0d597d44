"""The ``isolate`` command.  ``isolate run`` avoids importing click (see isolate.cli.options)."""

from __future__ import annotations

import sys


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["run"]:
        from isolate.cli.options import fast_parse

        parsed = fast_parse(args[1:])
        if parsed is not None and (parsed[1] or parsed[0].get("image")):
            from isolate.cli.run import execute_run

            code = execute_run(parsed[0], parsed[1])
            # The sandbox is gone and reaped; what the interpreter's finalization would do
            # (module teardown, a last garbage collection) is 1.5 ms of every run for nothing.
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            except OSError:
                pass
            import os

            os._exit(code)
    import click

    from isolate.cli.commands import cli
    from isolate.errors import IsolateError

    try:
        code = cli.main(args, prog_name="isolate", standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        # docker's contract: 125 when the runtime itself rejects the request (exit 2 is the
        # command's own "usage" status and must stay distinguishable).
        exc.show()
        sys.exit(125)
    except IsolateError as exc:
        print(f"isolate: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except OSError as exc:  # e.g. a store on a read-only filesystem: one line, not a traceback
        where = f": {exc.filename}" if exc.filename else ""
        print(f"isolate: {exc.strerror or exc}{where}", file=sys.stderr)
        sys.exit(125)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
