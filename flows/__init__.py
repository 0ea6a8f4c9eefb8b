"""Prefect flows (one file per stage, `retrain.py` chains them) and the `wallwm` CLI.

Importing this package points the process at the running local stack: the addresses in
`$WALLWM_HOME/stack.env` are loaded into the environment (variables the user set win) before
Prefect, MLflow or Ray are imported, because those read their settings at import time.
"""

from components.stack.lifecycle import load_stack_env

load_stack_env()
