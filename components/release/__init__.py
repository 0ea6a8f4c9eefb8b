"""Release services: publishing bundles to S3 channels (`publish`) and the director that
assigns releases to robots in staged rollouts (`director`)."""

from components.release.director import Director
from components.release.publish import default_keys_dir, keyring, publish_release, repository

__all__ = ["Director", "default_keys_dir", "keyring", "publish_release", "repository"]
