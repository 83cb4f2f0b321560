"""The pod's supervisor: runpod/start.sh prepares the environment and execs this (standard library only: it runs
before anything is installed).

    python runpod/supervise.py           # serve until SIGTERM, restarting what exits
    python runpod/supervise.py --once    # no restarts: the first service to exit stops everything, with its status

The pod never dies during set-up, and its page answers within seconds:
1. Stale processes named in $WORKSPACE/run/*.pid (a pod restart) are stopped; then a status page of its own holds
   the page's port (every path answers the status line; /health 503 "starting"; /pod/status JSON) until an app
   takes the port over.
2. The notebooks are copied onto the volume; the mode is gpu when nvidia-smi lists a GPU.
3. The gpu preset is checked first, in seconds: the driver (`checks.py driver`) and HF_TOKEN. Then the page's
   packages (requirements.txt) are installed once and `models.py check` asks the hub whether the token may read
   every model (the gated Gemma 2 and Orpheus). Any failure: the cpu preset with the reason on the page, for good;
   the supervisor keeps running and exits 0 at SIGTERM.
4. The app starts on the cpu preset (on the gpu path always first, even when the GPU is ready at once), JupyterLab
   beside it. On the gpu path the page says "preparing the GPU" with real figures while, in the background,
   requirements-gpu.txt is installed, doctor runs, `checks.py gpu` (torch sees CUDA, a CUDA op, vLLM imports) and
   `checks.py toolkit`, and `models.py download` fetches the models (the bytes in the Hugging Face cache against
   the hub's sizes). Then the gpu preset loads beside the cpu one and the port is handed over when it is ready
   ("switching to the GPU"): the app writes VOICEKIT_HANDOVER_FILE once its kit is loaded and waits for the port;
   the supervisor stops whatever held it.
5. Supervision: an app or JupyterLab that exits is restarted after 1, 2, 4 ... 60 s (back to 1 s after a run of
   over a minute); the status page holds the port meanwhile. The health watch asks the serving app's /health every
   VOICEKIT_HEALTH_INTERVAL seconds: an error answer (a dead engine) or no answer three times in a row (hung) stops
   it, to be restarted. The gpu preset exiting three times in a row, each within 30 minutes of its start: the cpu
   preset, with the reason.
6. SIGTERM: everything stops, exit 0.

Logs in $WORKSPACE/logs (install, models, checks, app, app-gpu, jupyter), pid files and status.json in
$WORKSPACE/run. runpod/README.md, "What start.sh does", lists the environment variables.

This file is the command line; the supervisor is made of the modules beside it, imported by name (this folder goes
on sys.path): pod_status.py (the status line, status.json, the status page, download progress), pod_process.py
(the configuration, stopping processes, restart delays, the gpu preset's failure count, the install marker),
pod_setup.py (the checks, the installs, the password, preparing the GPU) and pod_supervisor.py (the Supervisor: the
app and its port handover, JupyterLab, the health watch, SIGTERM). checks.py and models.py run as its steps.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the modules beside this file, imported by name
from pod_process import PodConfig
from pod_supervisor import Supervisor


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="supervise.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--once", action="store_true", help="no restarts: the first service to exit stops "
                        "everything, with its status")
    args = parser.parse_args(argv)
    supervisor = Supervisor(PodConfig.from_env(os.environ, once=args.once))
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: supervisor.stopping.set())
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
