"""The Dagster definitions of this project, loaded by ``dg.load_from_defs_folder`` (see
``pipelines/definitions.py``): one folder per source (its assets, checks and jobs), plus the marts,
the views, ``sync_all`` and the schedules. A module dropped here (``dg scaffold defs ...``) is
loaded with the rest."""

import warnings

import dagster as dg

# the daily assets' single-run backfill policy is a "beta" parameter: nothing for users to act on
warnings.filterwarnings("ignore", message="Parameter `backfill_policy`", category=dg.BetaWarning)
