"""``dg`` as ``make ui`` / ``affwh ui`` run it: Dagster's own CLI, minus one warning nobody can act on.

The project's instance configuration is ``dagster.yaml`` in the project root, and the CLI copies it
into ``DAGSTER_HOME`` before starting the UI. ``dg dev`` runs from the project root and, seeing a
``dagster.yaml`` there while ``DAGSTER_HOME`` is elsewhere, warns that the file "will not be used to
configure Dagster". True of Dagster, already handled here (the copy in ``DAGSTER_HOME`` is used), and
alarming on every start; so that one log record is dropped. Every other line of dg is unchanged.
"""

import logging
import sys

_IGNORED = "will not be used to configure Dagster"


class _CopiedInstanceConfig(logging.Filter):
    """Drops dg dev's warning about the project root's dagster.yaml (its copy is the one used)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _IGNORED not in record.getMessage()


def main() -> int:
    # on the "dagster" logger itself: dg dev re-configures its handlers, never its filters
    logging.getLogger("dagster").addFilter(_CopiedInstanceConfig())
    from dagster_dg_cli.cli import main as dg_main

    sys.argv[0] = "dg"
    return dg_main()


if __name__ == "__main__":
    sys.exit(main())
