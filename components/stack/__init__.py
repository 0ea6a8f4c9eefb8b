"""The local service stack: MLflow, an S3 server, Prefect and Ray on loopback.

`up()` starts what is missing (a service whose address the user already exported is used as is),
waits for health, and writes the addresses to `<home>/stack.env`; `down()` stops only the
processes it started; `status()` reports each service with its URL. Service command lines live in
`infra/local/services.yaml`; this package fills them in and supervises the processes.
"""

from components.stack.home import wallwm_home
from components.stack.lifecycle import (
    StackError,
    down,
    load_stack_env,
    read_stack_env,
    status,
    up,
)

__all__ = ["StackError", "down", "load_stack_env", "read_stack_env", "status", "up", "wallwm_home"]
