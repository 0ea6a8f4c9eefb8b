"""DVC adapter: the `data.dvc` pin, remotes (local folder or S3), push/pull, md5 lineage."""

from components.versioning.dvc import (
    DvcError,
    configure_remotes,
    dvc_add,
    dvc_md5,
    dvc_pull,
    dvc_push,
)

__all__ = ["DvcError", "configure_remotes", "dvc_add", "dvc_md5", "dvc_pull", "dvc_push"]
