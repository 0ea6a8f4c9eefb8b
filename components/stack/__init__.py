"""The local service stack: MLflow, an S3 server, Prefect and Ray on loopback.

`up()` starts what is missing (a service whose address the user already exported is used as is),
waits for health, and writes the addresses to `<home>/stack.env`; `down()` stops only the
processes it started; `status()` reports each service with its URL. Both `up` and `down` hold a
file lock in the home, so concurrent calls wait for each other. `require_stack()` is what every
command that needs the services calls first. Service command lines live in
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
from components.stack.require import StackUnavailable, check_stack, require_stack

__all__ = [
    "StackError",
    "StackUnavailable",
    "check_stack",
    "down",
    "load_stack_env",
    "read_stack_env",
    "require_stack",
    "status",
    "up",
    "wallwm_home",
]
