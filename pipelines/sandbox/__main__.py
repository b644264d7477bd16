"""Serve the sandbox: ``python -m pipelines.sandbox [--scale small] [--port 0] [--env-file F]``.

Prints ``export VAR=value`` lines for every variable a sync against it needs: each source's base
URL and credentials, the warehouse clock that follows the sandbox's simulated one and, with
``--leads-dir`` (``make sandbox`` / ``affwh sandbox`` pass it), the cpa.moe lead register and
payouts file (without them a sync would find no leads to poll and empty ``cpamoe_payouts``). It
writes them to ``--env-file`` as JSON too when given, which is how the CLI finds a sandbox it
started. This module imports nothing of ``pipelines`` outside the sandbox, so the variable names
are spelled here.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
from datetime import datetime
from pathlib import Path

from pipelines.sandbox.server import Sandbox
from pipelines.sandbox.world import SCALES


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipelines.sandbox", description=__doc__)
    parser.add_argument("--scale", default="small", choices=sorted(SCALES))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--anchor", help="simulated 'now' at start (ISO-8601); default: this hour")
    parser.add_argument("--env-file", help="write the environment as JSON here once serving")
    parser.add_argument(
        "--leads-dir",
        help="write the world's cpa.moe leads as a register CSV here and a demo payouts CSV beside "
        "it (and point CPAMOE_LEADS_DIR and CPAMOE_PAYOUTS_FILE at them)",
    )
    parser.add_argument(
        "--metapic-rate-limit", type=int,
        help="Metapic requests served per minute (advertised in x-ratelimit-limit, 429 beyond; "
        "default: the documented 300)",
    )
    args = parser.parse_args(argv)

    anchor = datetime.fromisoformat(args.anchor) if args.anchor else None
    sandbox = Sandbox(scale=args.scale, seed=args.seed, anchor=anchor, metapic_rate_limit=args.metapic_rate_limit)

    if args.leads_dir:
        from pipelines.sandbox.register import PAYOUTS_FILE, write_demo_payouts, write_lead_register

        write_lead_register(sandbox, Path(args.leads_dir))
        write_demo_payouts(Path(args.leads_dir).parent / PAYOUTS_FILE)

    def ready(sb: Sandbox) -> None:
        env = {
            **sb.env(),
            "SANDBOX_URL": sb.base_url,
            # the warehouse clock follows the simulated one (durations, alert due times, earning days)
            "WAREHOUSE_CLOCK_URL": sb.base_url + "/_sandbox/clock",
        }
        if args.leads_dir:
            env["CPAMOE_LEADS_DIR"] = str(Path(args.leads_dir).resolve())
            env["CPAMOE_PAYOUTS_FILE"] = str((Path(args.leads_dir).parent / PAYOUTS_FILE).resolve())
        if args.env_file:
            tmp = args.env_file + ".tmp"
            with open(tmp, "w") as f:
                json.dump(env, f)
            os.replace(tmp, args.env_file)
        for key, value in env.items():
            print(f"export {key}={shlex.quote(value)}")
        if not args.leads_dir:
            print("# no --leads-dir: CPAMOE_LEADS_DIR and CPAMOE_PAYOUTS_FILE not set (cpa.moe leads stay unpolled)")
        print(f"# sandbox ({args.scale}) serving on {sb.base_url}; Ctrl-C to stop", file=sys.stderr)
        sys.stdout.flush()

    signal.signal(signal.SIGTERM, lambda *_: sandbox.stop())
    sandbox.serve_forever(args.host, args.port, on_ready=ready)


if __name__ == "__main__":
    main()
